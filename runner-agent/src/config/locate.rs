//! Finds where a key's value is written in a YAML text, for errors raised after parsing.
//!
//! serde_yaml keeps no positions in parsed values, so checks that involve two places
//! (`state_dir` against `run_dir`, a job's `environment` against the host config) find
//! the position again by scanning the text. This handles what these files use: block
//! mappings by indentation, comments, quoted keys, and one level of flow mapping at the
//! end of a path (`network: { runner_pool: 10.0.0.0/8 }`). When it cannot tell, it
//! returns `None` and the error is reported against the file without a line: never at a
//! wrong place.

/// 1-based `(line, column)` of the value of `path` (keys from the top level), or of the
/// key itself when its value starts on a later line.
pub(crate) fn value_position(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let (&last, parents) = path.split_last()?;
    let mut depth = 0;
    let mut parent_indent: Option<usize> = None;
    let mut child_indent: Option<usize> = None;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start_matches(' ');
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("---") {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if parent_indent.is_some_and(|p| indent <= p) {
            return None; // the parent's block ended without the key
        }
        match child_indent {
            None => child_indent = Some(indent),
            Some(c) if c != indent => continue, // deeper (or odd) lines of a sibling
            Some(_) => {}
        }
        let Some((key, rest_offset)) = split_key(trimmed) else {
            continue;
        };
        let wanted = if depth == parents.len() {
            last
        } else {
            parents[depth]
        };
        if key != wanted {
            continue;
        }
        let line_no = index + 1;
        let rest = &trimmed[rest_offset..];
        let value_skip = rest.len() - rest.trim_start().len();
        let value = rest.trim_start();
        let value_col = char_col(line, indent + rest_offset + value_skip);
        if depth == parents.len() {
            if value.is_empty() || value.starts_with('#') {
                return Some((line_no, indent + 1));
            }
            return Some((line_no, value_col));
        }
        if value.starts_with('{') && depth + 1 == parents.len() {
            // `parent: { ..., last: value }` on one line.
            return find_in_flow(value, last).map(|offset| {
                (
                    line_no,
                    char_col(line, indent + rest_offset + value_skip + offset),
                )
            });
        }
        if !(value.is_empty() || value.starts_with('#')) {
            return None; // a scalar or flow value where a mapping was expected
        }
        depth += 1;
        parent_indent = Some(indent);
        child_indent = None;
    }
    None
}

/// `key: rest` → (key without quotes, byte offset of `rest` in `line`).
fn split_key(line: &str) -> Option<(&str, usize)> {
    let (key, after) = match line.chars().next()? {
        quote @ ('"' | '\'') => {
            let end = line[1..].find(quote)? + 1;
            (&line[1..end], end + 1)
        }
        _ => {
            let colon = line.find(':')?;
            (line[..colon].trim_end(), colon)
        }
    };
    let rest = &line[after..];
    let rest = rest.trim_start_matches(' ');
    let colon_at = line.len() - rest.len();
    let tail = rest.strip_prefix(':')?;
    if !(tail.is_empty() || tail.starts_with([' ', '\t'])) {
        return None; // `a:b` is a scalar, not a key
    }
    Some((key, colon_at + 1))
}

/// Byte offset of the value of `key` inside a one-line flow mapping `{ a: 1, key: v }`.
fn find_in_flow(flow: &str, key: &str) -> Option<usize> {
    let mut search = 0;
    while let Some(found) = flow[search..].find(key) {
        let start = search + found;
        let before = flow[..start].trim_end_matches(' ');
        let after = &flow[start + key.len()..];
        if (before.ends_with('{') || before.ends_with(',')) && after.trim_start().starts_with(':') {
            let after_colon = after.trim_start()[1..].trim_start();
            return Some(flow.len() - after_colon.len());
        }
        search = start + key.len();
    }
    None
}

/// 1-based column (in characters, as serde_yaml counts) of byte offset `byte` in `line`.
fn char_col(line: &str, byte: usize) -> usize {
    line[..byte].chars().count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_in_block_and_flow_forms() {
        let text = "\
# comment
state_dir: /var/lib/x   # trailing
network:
  upstream_dns: [1.2.3.4]
  runner_pool: 10.0.0.0/16
runner:
  limits: { memory: 1GiB }
  image: host
\"run_dir\" : /run/x
environments:
  ci:
    egress: {}
job_name_with_colon_value: a:b
";
        assert_eq!(value_position(text, &["state_dir"]), Some((2, 12)));
        assert_eq!(
            value_position(text, &["network", "runner_pool"]),
            Some((5, 16))
        );
        assert_eq!(
            value_position(text, &["network", "upstream_dns"]),
            Some((4, 17))
        );
        assert_eq!(value_position(text, &["runner", "image"]), Some((8, 10)));
        assert_eq!(
            value_position(text, &["runner", "limits", "memory"]),
            Some((7, 21))
        );
        assert_eq!(value_position(text, &["run_dir"]), Some((9, 13)));
        assert_eq!(value_position(text, &["environments"]), Some((10, 1)));
        assert_eq!(
            value_position(text, &["environments", "ci", "egress"]),
            Some((12, 13))
        );
        assert_eq!(value_position(text, &["network", "missing"]), None);
        assert_eq!(value_position(text, &["runner_pool"]), None);
        assert_eq!(value_position(text, &["upstream_dns"]), None);
    }

    #[test]
    fn flow_parent_on_one_line() {
        let text = "network: { upstream_dns: [1.1.1.1], runner_pool: 10.0.0.0/8 }\n";
        assert_eq!(
            value_position(text, &["network", "runner_pool"]),
            Some((1, 50))
        );
        assert_eq!(value_position(text, &["network", "pool"]), None);
    }

    #[test]
    fn ignores_nested_keys_of_the_same_name() {
        let text = "steps:\n  - run: x\n    environment: nope\nenvironment:   ci\n";
        assert_eq!(value_position(text, &["environment"]), Some((4, 16)));
        assert_eq!(value_position("steps: []\n", &["environment"]), None);
    }

    #[test]
    fn counts_columns_in_characters() {
        assert_eq!(value_position("\"é\": x\n", &["é"]), Some((1, 6)));
    }
}
