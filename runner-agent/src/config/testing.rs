//! Helpers shared by the unit tests of this module: parse a snippet, and check a table
//! of invalid inputs against the exact `FILE:LINE:COLUMN: message` they must produce.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Parses `text` as `T` through the strict loader, naming the file `file`.
pub(crate) fn parse<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, String> {
    egress_proxy::yaml::parse_str(Path::new(file), text).map_err(|e| e.to_string())
}

/// For each `(input, want)`: `parse(input)` must fail with a message starting with
/// `want`, or succeed when `want` is empty. Every row is checked before failing, so one
/// run shows every mismatch.
pub(crate) fn assert_table<T: std::fmt::Debug>(
    parse: impl Fn(&str) -> Result<T, String>,
    table: &[(&str, &str)],
) {
    let mut failures = Vec::new();
    for (text, want) in table {
        match parse(text) {
            Ok(value) if !want.is_empty() => {
                failures.push(format!("{text:?} parsed as {value:?}\n want {want}"))
            }
            Err(err) if want.is_empty() || !err.starts_with(want) => {
                failures.push(format!("{text:?}\n got  {err}\n want {want}"))
            }
            _ => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
