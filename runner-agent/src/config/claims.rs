//! An environment's `match:` section and the glob patterns it uses.
//!
//! A job's claims (repository, ref, workflow, event) decide whether it may use an
//! environment's secrets. Every field given in `match:` must match (AND across fields);
//! within a field, any one pattern matching is enough (OR across the list). A field left
//! out does not constrain the job; a field given requires the job to carry that claim.
//!
//! Patterns follow GitHub's filter pattern syntax ("Filter pattern cheat sheet", GitHub
//! Actions workflow syntax docs), restricted to its unambiguous core:
//! - `*` matches any run of characters except `/` (so `refs/tags/v*` does not match
//!   `refs/tags/v1/evil`);
//! - `**` matches any run of characters, `/` included;
//! - `?` makes the character just before it optional (`refs/heads/mains?` matches `main`
//!   and `mains`), as in GitHub; it is not a single-character wildcard;
//! - `\` makes the next character literal.
//!
//! `+`, `[`, `]` and a leading `!` have other meanings in GitHub's syntax that are not
//! implemented; they are refused unless escaped, so a pattern never silently means
//! something narrower or wider than its author read. Matching is on whole strings.

use serde::Deserialize;

use super::de::{scalar_deserialize, EmptyHint, NonEmpty, ScalarForm};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// The character is optional (`c?`).
    Optional(char),
    /// `*`: any run without `/`.
    Star,
    /// `**`: any run.
    DoubleStar,
}

/// A compiled pattern, with the text it was written as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

impl Pattern {
    /// Compiles `text`, or says what is wrong with it.
    pub fn new(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("an empty pattern matches nothing; remove it or write `*`".to_owned());
        }
        if text.starts_with('!') {
            return Err(format!(
                "pattern `{text}`: negation with a leading `!` is not supported; \
                 write `\\!` for a literal `!`"
            ));
        }
        let mut tokens = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped) => tokens.push(Token::Literal(escaped)),
                    None => return Err(format!("pattern `{text}` ends with a lone `\\`")),
                },
                '*' => {
                    if chars.next_if_eq(&'*').is_some() {
                        if chars.peek() == Some(&'*') {
                            return Err(format!("pattern `{text}` has `***`; use `*` or `**`"));
                        }
                        tokens.push(Token::DoubleStar);
                    } else {
                        tokens.push(Token::Star);
                    }
                }
                '?' => match tokens.pop() {
                    Some(Token::Literal(prev)) => tokens.push(Token::Optional(prev)),
                    _ => {
                        return Err(format!(
                            "pattern `{text}`: `?` makes the character before it optional \
                             and must follow a plain character"
                        ))
                    }
                },
                '+' | '[' | ']' => {
                    return Err(format!(
                    "pattern `{text}`: `{c}` is not supported; write `\\{c}` for a literal `{c}`"
                ))
                }
                _ => tokens.push(Token::Literal(c)),
            }
        }
        Ok(Pattern {
            text: text.to_owned(),
            tokens,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the whole of `subject` matches.
    ///
    /// Dynamic programming over (token, character) positions: O(tokens × chars) with no
    /// backtracking blow-up, whatever the number of stars.
    pub fn matches(&self, subject: &str) -> bool {
        let text: Vec<char> = subject.chars().collect();
        let n = text.len();
        // next[j]: tokens[i+1..] match text[j..]; filled from the last token backwards.
        let mut next = vec![false; n + 1];
        next[n] = true;
        for token in self.tokens.iter().rev() {
            let mut cur = vec![false; n + 1];
            for j in (0..=n).rev() {
                let here = text.get(j).copied();
                cur[j] = match *token {
                    Token::Literal(c) => here == Some(c) && next[j + 1],
                    Token::Optional(c) => next[j] || (here == Some(c) && next[j + 1]),
                    Token::Star => next[j] || (here.is_some_and(|h| h != '/') && cur[j + 1]),
                    Token::DoubleStar => next[j] || (here.is_some() && cur[j + 1]),
                };
            }
            next = cur;
        }
        next[0]
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl ScalarForm for Pattern {
    const EXPECTING: &'static str = "a pattern like `refs/tags/v*`";

    fn parse(text: &str) -> Result<Self, String> {
        Pattern::new(text)
    }
}

scalar_deserialize!(Pattern);

/// What a job says about itself. Later these come from a verified source (a GitHub OIDC
/// token or webhook); on the CLI they are the operator's `--repository` etc.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// `owner/name`.
    pub repository: Option<String>,
    /// Full ref, e.g. `refs/tags/v1.2`.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// Workflow file path, e.g. `.github/workflows/release.yaml`.
    pub workflow: Option<String>,
    /// Triggering event, e.g. `push`.
    pub event: Option<String>,
}

/// Checks a claim given on the command line (`--repository`, `--ref`, `--workflow`,
/// `--event`): names and paths, never control or invisible formatting characters
/// ([`super::is_unprintable`]). Whoever picks a branch or a
/// workflow file's name picks the claim, and claims are shown to the operator who
/// approves a job (`runner-agent approve`): a carriage return or an escape sequence there
/// could rewrite what the approver sees.
pub fn claim_value(text: &str) -> Result<String, String> {
    match text.chars().find(|&c| super::is_unprintable(c)) {
        Some(c) => Err(format!(
            "contains the {} character U+{:04X}; a claim is a name or a path",
            if c.is_control() {
                "control"
            } else {
                "invisible formatting"
            },
            c as u32
        )),
        None => Ok(text.to_owned()),
    }
}

/// `--repository`: [`claim_value`], and a path of names (`owner/name`, or deeper for
/// forges with groups) made of letters, digits, `.`, `_` and `-`, none of them `.` or
/// `..`. Patterns match claims as text, so a claim must be what it looks like: `acme/*`
/// or `acme/app/../app` would otherwise be matched by patterns meant for other names.
pub fn repository_claim(text: &str) -> Result<String, String> {
    let text = claim_value(text)?;
    let segments: Vec<&str> = text.split('/').collect();
    if segments.len() < 2 {
        return Err(format!("`{text}` is not owner/name"));
    }
    for segment in segments {
        check_path_segment(&text, segment)?;
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
        {
            return Err(format!(
                "`{text}` is not a repository name: `{c}` (names hold letters, digits, `.`, `_` and `-`)"
            ));
        }
    }
    Ok(text)
}

/// `--ref`: [`claim_value`], and a full git ref that `git check-ref-format` accepts
/// (git-check-ref-format(1)): under `refs/`, no empty component, none starting with `.`
/// or ending with `.lock`, no `..`, `@{`, space, `~ ^ : ? * [ \`, and not ending with
/// `.` or `/`. A claim `refs/tags/v*` or `refs/tags/../heads/x` would otherwise be
/// matched, as text, by patterns meant for real tags.
pub fn ref_claim(text: &str) -> Result<String, String> {
    let text = claim_value(text)?;
    let not = |why: String| Err(format!("`{text}` is not a git ref: {why}"));
    if !text.starts_with("refs/") {
        return not("give it in full, under refs/ (refs/heads/main, refs/tags/v1.0)".into());
    }
    if let Some(c) = text
        .chars()
        .find(|c| c.is_ascii_control() || " ~^:?*[\\".contains(*c))
    {
        return not(format!("it holds `{c}`"));
    }
    for bad in ["..", "@{"] {
        if text.contains(bad) {
            return not(format!("it holds `{bad}`"));
        }
    }
    if text.ends_with('.') {
        return not("it ends with `.`".into());
    }
    for component in text.split('/') {
        if component.is_empty() {
            return not("it has an empty component".into());
        }
        if component.starts_with('.') || component.ends_with(".lock") {
            return not(format!("component `{component}`"));
        }
    }
    Ok(text)
}

/// `--workflow`: [`claim_value`], and a relative path without empty, `.` or `..`
/// components and without the pattern characters `* ? [ \`.
pub fn workflow_claim(text: &str) -> Result<String, String> {
    let text = claim_value(text)?;
    if let Some(c) = text.chars().find(|c| "*?[\\".contains(*c)) {
        return Err(format!("`{text}` is not a workflow path: it holds `{c}`"));
    }
    for segment in text.split('/') {
        check_path_segment(&text, segment)?;
    }
    Ok(text)
}

/// `--event`: an event name, lower-case letters, digits and `_` (`push`,
/// `pull_request`, `workflow_dispatch`).
pub fn event_claim(text: &str) -> Result<String, String> {
    let text = claim_value(text)?;
    if text.is_empty()
        || !text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "`{text}` is not an event name (lower-case letters, digits and `_`, as `push`)"
        ));
    }
    Ok(text)
}

/// Refuses an empty, `.` or `..` component of the path `text`.
fn check_path_segment(text: &str, segment: &str) -> Result<(), String> {
    match segment {
        "" => Err(format!("`{text}` has an empty component")),
        "." | ".." => Err(format!("`{text}` has a `{segment}` component")),
        _ => Ok(()),
    }
}

/// `match:` of an environment: each field, when given, is a non-empty list of patterns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClaimMatch {
    /// Repository patterns (`acme/*`).
    pub repositories: Option<Vec<Pattern>>,
    /// Ref patterns (`refs/tags/v*`).
    pub refs: Option<Vec<Pattern>>,
    /// Workflow path patterns.
    pub workflows: Option<Vec<Pattern>>,
    /// Event name patterns.
    pub events: Option<Vec<Pattern>>,
}

impl ClaimMatch {
    /// The fields in file order, with their YAML key, the claim they test and the flag
    /// of `runner-agent run` that gives it.
    fn fields<'a>(&'a self, claims: &'a Claims) -> [Field<'a>; 4] {
        [
            (
                "repositories",
                &self.repositories,
                &claims.repository,
                "--repository",
            ),
            ("refs", &self.refs, &claims.git_ref, "--ref"),
            ("workflows", &self.workflows, &claims.workflow, "--workflow"),
            ("events", &self.events, &claims.event, "--event"),
        ]
    }

    /// The first given field that `claims` do not match (a missing claim fails any field
    /// that is given).
    fn first_failing<'a>(&'a self, claims: &'a Claims) -> Option<Field<'a>> {
        self.fields(claims)
            .into_iter()
            .find(|(_, patterns, claim, _)| {
                patterns.as_ref().is_some_and(|patterns| {
                    !claim
                        .as_deref()
                        .is_some_and(|value| patterns.iter().any(|p| p.matches(value)))
                })
            })
    }

    /// `Ok` when every given field matches `claims`; otherwise the key of the first field
    /// that did not.
    pub fn matches(&self, claims: &Claims) -> Result<(), String> {
        match self.first_failing(claims) {
            Some((key, ..)) => Err(key.to_owned()),
            None => Ok(()),
        }
    }

    /// Why `claims` do not match, for the operator: the first failing field, the claim
    /// (or that it is missing, with the flag that gives it) and the patterns it failed.
    /// `None` when they match.
    pub fn mismatch(&self, claims: &Claims) -> Option<String> {
        let (key, patterns, claim, flag) = self.first_failing(claims)?;
        let list: Vec<String> = patterns
            .iter()
            .flatten()
            .map(|p| format!("`{p}`"))
            .collect();
        let list = list.join(", ");
        Some(match claim {
            None => format!(
                "{key}: the job gave no {flag} claim; the environment requires one of {list}"
            ),
            Some(value) => format!("{key}: `{value}` matches none of {list}"),
        })
    }

    /// One line per given field, `key: p1, p2`, for `runner-agent check`.
    pub(crate) fn describe(&self) -> Vec<String> {
        let none = Claims::default();
        self.fields(&none)
            .into_iter()
            .filter_map(|(key, patterns, ..)| {
                patterns.as_ref().map(|p| {
                    let list: Vec<&str> = p.iter().map(Pattern::as_str).collect();
                    format!("{key}: {}", list.join(", "))
                })
            })
            .collect()
    }
}

/// Why a `match` field may not be an empty list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PatternsHint;

impl EmptyHint for PatternsHint {
    const HINT: &'static str =
        "this list is empty, so no job could match; list at least one pattern or leave the field out";
}

type Patterns = Option<NonEmpty<Pattern, PatternsHint>>;

/// One field of `match`: its key, its patterns, and the claim they test.
/// (YAML key, patterns, claim, CLI flag of the claim).
type Field<'a> = (
    &'static str,
    &'a Option<Vec<Pattern>>,
    &'a Option<String>,
    &'static str,
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    repositories: Patterns,
    refs: Patterns,
    workflows: Patterns,
    events: Patterns,
}

impl TryFrom<RawMatch> for ClaimMatch {
    type Error = String;

    fn try_from(raw: RawMatch) -> Result<Self, String> {
        let out = ClaimMatch {
            repositories: raw.repositories.map(|l| l.0),
            refs: raw.refs.map(|l| l.0),
            workflows: raw.workflows.map(|l| l.0),
            events: raw.events.map(|l| l.0),
        };
        if out
            .fields(&Claims::default())
            .iter()
            .all(|(_, p, ..)| p.is_none())
        {
            return Err(
                "`match` is empty; give at least one of repositories, refs, workflows, events, \
                 or leave `match` out"
                    .to_owned(),
            );
        }
        Ok(out)
    }
}

impl<'de> Deserialize<'de> for ClaimMatch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::de::checked_map::<D, RawMatch, ClaimMatch>(
            d,
            "a mapping with repositories, refs, workflows or events",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Claims are matched as text: a claim must be what it looks like (an attack run
    /// noted that `refs/tags/v*` as a claim matched the pattern `refs/tags/v*`).
    #[test]
    fn claims_must_have_the_form_of_what_they_name() {
        for good in ["acme/app", "Acme-1/app.rs_2", "group/sub/project"] {
            assert_eq!(repository_claim(good).unwrap(), good);
        }
        for bad in [
            "",
            "acme",
            "acme/",
            "acme//app",
            "./acme/app",
            "acme/app/../app",
            "acme/*",
            "acme/app ",
        ] {
            assert!(repository_claim(bad).is_err(), "{bad:?}");
        }
        for good in [
            "refs/heads/main",
            "refs/tags/v1.2.0",
            "refs/pull/12/merge",
            "refs/heads/feature/x-y",
        ] {
            assert_eq!(ref_claim(good).unwrap(), good);
        }
        for bad in [
            "",
            "main",
            "refs/tags/v*",
            "refs/tags/../heads/x",
            "refs/heads/a..b",
            "refs/heads/",
            "refs//heads/x",
            "refs/heads/.hidden",
            "refs/heads/x.lock",
            "refs/heads/x.",
            "refs/heads/a b",
            "refs/heads/a~1",
            "refs/heads/a^",
            "refs/heads/a:b",
            "refs/heads/a?",
            "refs/heads/a[",
            "refs/heads/a\\b",
            "refs/heads/a@{1}",
        ] {
            assert!(ref_claim(bad).is_err(), "{bad:?}");
        }
        for good in [".github/workflows/ci.yaml", "ci/release.yml"] {
            assert_eq!(workflow_claim(good).unwrap(), good);
        }
        for bad in [
            "",
            "/etc/x.yaml",
            ".github/../x.yaml",
            ".github//w.yaml",
            ".github/workflows/*.yaml",
        ] {
            assert!(workflow_claim(bad).is_err(), "{bad:?}");
        }
        for good in ["push", "pull_request", "workflow_dispatch"] {
            assert_eq!(event_claim(good).unwrap(), good);
        }
        for bad in ["", "Push", "push ", "pull-request", "push*"] {
            assert!(event_claim(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn claims_with_control_characters_are_refused() {
        assert_eq!(claim_value("refs/tags/v1.2").unwrap(), "refs/tags/v1.2");
        assert_eq!(
            claim_value(".github/workflows/ci.yaml").unwrap(),
            ".github/workflows/ci.yaml"
        );
        for bad in [
            "refs/tags/v1\r",
            "x\u{1b}[2K",
            "a\nb",
            "del\u{7f}",
            "c1\u{9b}",
            "refs/heads/main\u{202e}\u{2066}v1.0",
            "acme/app\u{200b}",
            "refs/tags/v1\u{2029}",
        ] {
            let err = claim_value(bad).unwrap_err();
            assert!(
                err.contains("control character") || err.contains("invisible formatting character"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn pattern_table() {
        for (pattern, subject, want) in [
            ("refs/tags/v*", "refs/tags/v1.2", true),
            ("refs/tags/v*", "refs/tags/v", true),
            ("refs/tags/v*", "refs/tags/v1/x", false),
            ("refs/tags/v*", "refs/heads/v1", false),
            ("refs/**", "refs/tags/v1/x", true),
            ("refs/**", "refs/", true),
            ("refs/**", "ref", false),
            ("**", "", true),
            ("*", "", true),
            ("*", "a/b", false),
            ("acme/*", "acme/app", true),
            ("acme/*", "acme/app/x", false),
            ("acme/app", "acme/app", true),
            ("acme/app", "acme/app2", false),
            ("acme/app", "acme/ap", false),
            ("mains?", "main", true),
            ("mains?", "mains", true),
            ("mains?", "mainss", false),
            ("v1.?0", "v10", true),
            ("v1.?0", "v1.0", true),
            ("v1.?0", "v1x0", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a**c", "a/b/c", true),
            ("a*c", "a/c", false),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("a\\+b", "a+b", true),
            (
                ".github/workflows/*.yaml",
                ".github/workflows/release.yaml",
                true,
            ),
            (
                ".github/workflows/*.yaml",
                ".github/workflows/sub/release.yaml",
                false,
            ),
            ("**/release.yaml", ".github/workflows/release.yaml", true),
            ("é*", "éa", true),
        ] {
            let p = Pattern::new(pattern).unwrap();
            assert_eq!(p.matches(subject), want, "{pattern} vs {subject}");
        }
    }

    #[test]
    fn many_stars_stay_fast() {
        let p = Pattern::new(&"*a".repeat(50)).unwrap();
        let subject = "a".repeat(49) + "b";
        let start = std::time::Instant::now();
        assert!(!p.matches(&subject));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn pattern_syntax_errors() {
        for (pattern, want) in [
            ("", "empty pattern"),
            ("!main", "negation"),
            ("?a", "`?` makes the character before it optional"),
            ("*?", "must follow a plain character"),
            ("a??", "must follow a plain character"),
            ("a+", "`+` is not supported; write `\\+`"),
            ("[ab]", "`[` is not supported"),
            ("a]", "`]` is not supported"),
            ("***", "`***`"),
            ("a\\", "lone `\\`"),
        ] {
            let err = Pattern::new(pattern).unwrap_err();
            assert!(err.contains(want), "{pattern}: {err}");
        }
    }

    fn claims(repository: &str, git_ref: &str, workflow: &str, event: &str) -> Claims {
        Claims {
            repository: Some(repository.into()),
            git_ref: Some(git_ref.into()),
            workflow: Some(workflow.into()),
            event: Some(event.into()),
        }
    }

    fn release_match() -> ClaimMatch {
        let list = |items: &[&str]| Some(items.iter().map(|p| Pattern::new(p).unwrap()).collect());
        ClaimMatch {
            repositories: list(&["acme/app"]),
            refs: list(&["refs/tags/v*"]),
            workflows: list(&[".github/workflows/release.yaml"]),
            events: list(&["push", "workflow_dispatch"]),
        }
    }

    #[test]
    fn claim_match_table() {
        let m = release_match();
        let wf = ".github/workflows/release.yaml";
        for (c, want) in [
            (claims("acme/app", "refs/tags/v1", wf, "push"), Ok(())),
            (
                claims("acme/app", "refs/tags/v1", wf, "workflow_dispatch"),
                Ok(()),
            ),
            (
                claims("evil/app", "refs/tags/v1", wf, "push"),
                Err("repositories"),
            ),
            (
                claims("acme/app", "refs/heads/main", wf, "push"),
                Err("refs"),
            ),
            (
                claims("acme/app", "refs/tags/v1/x", wf, "push"),
                Err("refs"),
            ),
            (
                claims(
                    "acme/app",
                    "refs/tags/v1",
                    ".github/workflows/ci.yaml",
                    "push",
                ),
                Err("workflows"),
            ),
            (
                claims("acme/app", "refs/tags/v1", wf, "pull_request"),
                Err("events"),
            ),
        ] {
            assert_eq!(m.matches(&c), want.map_err(str::to_owned), "{c:?}");
        }
        let mut missing = claims("acme/app", "refs/tags/v1", wf, "push");
        missing.git_ref = None;
        assert_eq!(m.matches(&missing), Err("refs".to_owned()));
        let why = m.mismatch(&missing).unwrap();
        assert!(
            why.starts_with("refs: the job gave no --ref claim"),
            "{why}"
        );
        // Fields left out do not constrain.
        let only_repo = ClaimMatch {
            repositories: release_match().repositories,
            ..ClaimMatch::default()
        };
        assert_eq!(
            only_repo.matches(&Claims {
                repository: Some("acme/app".into()),
                ..Claims::default()
            }),
            Ok(())
        );
    }
}

#[cfg(test)]
mod reference {
    //! Cross-checks the dynamic-programming matcher against a plain recursive one on
    //! many generated patterns and subjects.
    use super::*;

    /// Backtracking reference: obviously correct, exponential in the worst case.
    fn reference(tokens: &[Token], text: &[char]) -> bool {
        match tokens.split_first() {
            None => text.is_empty(),
            Some((Token::Literal(c), rest)) => {
                text.first() == Some(c) && reference(rest, &text[1..])
            }
            Some((Token::Optional(c), rest)) => {
                reference(rest, text) || (text.first() == Some(c) && reference(rest, &text[1..]))
            }
            Some((Token::Star, rest)) => (0..=text.len())
                .take_while(|&n| n == 0 || text[n - 1] != '/')
                .any(|n| reference(rest, &text[n..])),
            Some((Token::DoubleStar, rest)) => {
                (0..=text.len()).any(|n| reference(rest, &text[n..]))
            }
        }
    }

    #[test]
    fn matcher_agrees_with_reference() {
        // A fixed linear congruential sequence keeps the test reproducible.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = |n: u64| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) % n
        };
        let pieces = ["a", "b", "/", "*", "**", "a?", "/?"];
        let letters = ['a', 'b', '/'];
        let mut checked = 0;
        for _ in 0..3000 {
            let pattern: String = (0..next(6)).map(|_| pieces[next(7) as usize]).collect();
            let Ok(compiled) = Pattern::new(&pattern) else {
                continue; // e.g. `***` or empty: refused, not matched
            };
            for _ in 0..8 {
                let subject: Vec<char> = (0..next(7)).map(|_| letters[next(3) as usize]).collect();
                let text: String = subject.iter().collect();
                assert_eq!(
                    compiled.matches(&text),
                    reference(&compiled.tokens, &subject),
                    "{pattern} vs {text}"
                );
                checked += 1;
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
