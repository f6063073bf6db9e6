//! Names and paths written in job files and host configs, each checked at its node.
//!
//! - environment names: `[a-z0-9][a-z0-9_-]{0,62}` (they appear in paths, cgroup and
//!   audit records, so they stay short and shell-safe);
//! - environment variable names: `[A-Za-z_][A-Za-z0-9_]*` (the portable form of POSIX.1-2017
//!   XBD 8.1, what every shell can `export`);
//! - secret names: `[A-Z_][A-Z0-9_]*` (delivered as variables or file names);
//! - images: only `host` exists;
//! - step `run`: non-empty text without NUL (execve(2) arguments are C strings);
//! - job and step `name`: one line of at most 200 characters without control
//!   characters (they are printed as headings: no terminal escape sequences);
//! - `working-directory`: absolute, or relative to the workspace without a `..` component
//!   (a relative path must not climb out of the workspace);
//! - `state_dir`/`run_dir`: absolute, not `/`, no `.` or `..` component (so that comparing
//!   them by components, as the nesting check does, is exact).

use std::path::{Component, Path, PathBuf};

use super::de::{scalar_deserialize, ScalarForm};

/// Images the agent can start runners from.
pub const IMAGES: &[&str] = &["host"];

/// Implements `Into<String>` for the string newtypes, for map keys.
macro_rules! into_string {
    ($($ty:ident),*) => {$(
        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }
    )*};
}

/// Whether `text` is one `first` byte followed by `rest` bytes.
fn identifier(text: &str, first: fn(u8) -> bool, rest: fn(u8) -> bool) -> bool {
    let mut bytes = text.bytes();
    bytes.next().is_some_and(first) && bytes.all(rest)
}

/// A valid environment name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvironmentName(pub String);

/// Checks an environment name, also used on the job's `environment:` value.
pub fn check_environment_name(text: &str) -> Result<(), String> {
    let first = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let rest = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
    if identifier(text, first, rest) && text.len() <= 63 {
        Ok(())
    } else {
        Err(format!(
            "`{text}` is not a valid environment name; use 1 to 63 characters of a-z, 0-9, \
             `_` and `-`, starting with a letter or digit"
        ))
    }
}

impl ScalarForm for EnvironmentName {
    const EXPECTING: &'static str = "an environment name like `ci`";

    fn parse(text: &str) -> Result<Self, String> {
        check_environment_name(text).map(|()| EnvironmentName(text.to_owned()))
    }
}

/// A valid environment variable name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvVarName(pub String);

impl ScalarForm for EnvVarName {
    const EXPECTING: &'static str = "a variable name like RUST_LOG";

    fn parse(text: &str) -> Result<Self, String> {
        let first = |b: u8| b.is_ascii_alphabetic() || b == b'_';
        if identifier(text, first, |b| b.is_ascii_alphanumeric() || b == b'_') {
            Ok(EnvVarName(text.to_owned()))
        } else {
            Err(format!(
                "`{text}` is not a valid variable name; use letters, digits and `_`, \
                 not starting with a digit"
            ))
        }
    }
}

/// A valid secret name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SecretName(pub String);

impl ScalarForm for SecretName {
    const EXPECTING: &'static str = "a secret name like DEV_TOKEN";

    fn parse(text: &str) -> Result<Self, String> {
        check_secret_name(text).map(|()| SecretName(text.to_owned()))
    }
}

/// Checks a secret name: `[A-Z_][A-Z0-9_]*` (usable as an environment variable name).
pub fn check_secret_name(text: &str) -> Result<(), String> {
    let first = |b: u8| b.is_ascii_uppercase() || b == b'_';
    let rest = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_';
    if identifier(text, first, rest) {
        Ok(())
    } else {
        Err(format!(
            "`{text}` is not a valid secret name; use upper-case letters, digits and `_`, \
             not starting with a digit"
        ))
    }
}

/// The name of an available image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageName(pub String);

impl ScalarForm for ImageName {
    const EXPECTING: &'static str = "an image name like `host`";

    fn parse(text: &str) -> Result<Self, String> {
        if IMAGES.contains(&text) {
            Ok(ImageName(text.to_owned()))
        } else {
            Err(format!(
                "unknown image `{text}` (available: {})",
                IMAGES.join(", ")
            ))
        }
    }
}

/// Non-empty text without NUL (step `run`, names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Text(pub String);

impl ScalarForm for Text {
    const EXPECTING: &'static str = "a non-empty string";

    fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            Err("this is empty; a non-empty string is expected".to_owned())
        } else if text.contains('\0') {
            Err("this contains a NUL character, which cannot be passed to a program".to_owned())
        } else {
            Ok(Text(text.to_owned()))
        }
    }
}

/// Whether `c` must never reach an operator's terminal as it is: a control character, an
/// invisible formatting character that reorders or hides what is shown around it (the
/// "Trojan Source" class: bidirectional overrides and isolates, zero-width characters,
/// line and paragraph separators; found by an attack run on the approval listing), any
/// other default-ignorable code point (Unicode's Default_Ignorable_Code_Point: variation
/// selectors, tag characters, Hangul fillers, invisible musical and Khmer signs; a later
/// run hid `refs/tags/v1.0<U+E0001>` from an approver with one), or a blank other than
/// the ASCII space (ideographic and other wide spaces, the braille blank: a later run
/// used 120 of them to push the agent's real verdict off the line a forged one began).
pub fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Default_Ignorable_Code_Point (DerivedCoreProperties.txt) and the other
            // format characters that hide or reorder text.
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
                // Blanks other than the ASCII space.
                | '\u{00A0}'
                | '\u{1680}'
                | '\u{2000}'..='\u{200A}'
                | '\u{202F}'
                | '\u{205F}'
                | '\u{2800}'
                | '\u{3000}'
        )
}

/// Longest job or step name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// A job or step name: printed as a heading and recorded in audit logs, so it is one
/// line without control characters (an escape sequence in a name could repaint the
/// operator's terminal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Name(pub String);

impl ScalarForm for Name {
    const EXPECTING: &'static str = "a name like `build`";

    fn parse(text: &str) -> Result<Self, String> {
        let Text(text) = Text::parse(text)?;
        if text.chars().any(is_unprintable) {
            return Err(
                "a name cannot contain control characters (newlines, tabs, escapes) \
                 or invisible formatting characters (bidirectional overrides, zero-width \
                 spaces, line separators)"
                    .to_owned(),
            );
        }
        if text.chars().count() > MAX_NAME_CHARS {
            return Err(format!(
                "this name is longer than {MAX_NAME_CHARS} characters"
            ));
        }
        // Runs of spaces become one: a name is printed before the agent's verdict on a
        // step, and spaces could push that verdict out of sight.
        Ok(Name(text.split_whitespace().collect::<Vec<_>>().join(" ")))
    }
}

/// A step's `working-directory`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkingDirectory(pub String);

impl ScalarForm for WorkingDirectory {
    const EXPECTING: &'static str = "a directory like `src`";

    fn parse(text: &str) -> Result<Self, String> {
        let Text(text) = Text::parse(text)?;
        let path = Path::new(&text);
        if path.is_relative() && path.components().any(|c| c == Component::ParentDir) {
            return Err(format!(
                "`{text}` leaves the workspace through `..`; \
                 give a path inside the workspace or an absolute path"
            ));
        }
        Ok(WorkingDirectory(text))
    }
}

/// `state_dir` or `run_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostDir(pub PathBuf);

impl ScalarForm for HostDir {
    const EXPECTING: &'static str = "an absolute directory like /var/lib/runner-agent";

    fn parse(text: &str) -> Result<Self, String> {
        let path = Path::new(text);
        if !path.is_absolute() {
            return Err(format!(
                "`{text}` is not an absolute path; write e.g. /var/lib/runner-agent"
            ));
        }
        if path
            .components()
            .any(|c| matches!(c, Component::CurDir | Component::ParentDir))
        {
            return Err(format!(
                "`{text}` contains `.` or `..`; write the plain absolute path"
            ));
        }
        if path.components().count() == 1 {
            return Err(
                "`/` cannot be used: the agent creates and removes files below this directory"
                    .to_owned(),
            );
        }
        Ok(HostDir(path.components().collect()))
    }
}

into_string!(
    Name,
    EnvironmentName,
    EnvVarName,
    SecretName,
    ImageName,
    Text,
    WorkingDirectory
);

scalar_deserialize!(
    Name,
    EnvironmentName,
    EnvVarName,
    SecretName,
    ImageName,
    Text,
    WorkingDirectory,
    HostDir
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Invisible characters and wide blanks hid a claim's tail from an approver and
    /// pushed a step's real verdict off its line (found by attack runs).
    #[test]
    fn invisible_characters_and_wide_blanks_are_unprintable() {
        for c in [
            '\u{E0001}',
            '\u{E0020}',
            '\u{E007F}',
            '\u{FE0F}',
            '\u{034F}',
            '\u{3164}',
            '\u{115F}',
            '\u{FFA0}',
            '\u{1D173}',
            '\u{180B}',
            '\u{17B4}',
            '\u{3000}',
            '\u{2003}',
            '\u{00A0}',
            '\u{2800}',
            '\u{202E}',
            '\u{200B}',
            '\u{1b}',
        ] {
            assert!(is_unprintable(c), "U+{:04X}", c as u32);
            // A ref claim ending in one once reached the approver as `refs/tags/v1.0`.
            assert!(crate::config::ref_claim(&format!("refs/tags/v1.0{c}")).is_err());
        }
        for c in ['a', ' ', 'é', '日', '€', '-', '\u{1F600}'] {
            assert!(!is_unprintable(c), "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn names_are_one_line_of_single_spaces() {
        assert_eq!(
            Name::parse("  build   and  test ").unwrap().0,
            "build and test"
        );
        assert!(Name::parse("build: ok (0.1s)\u{3000}\u{3000}").is_err());
    }

    #[test]
    fn environment_names() {
        for good in ["ci", "release", "a", "0", "a-b_c", &"x".repeat(63)] {
            assert!(EnvironmentName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "CI", "-ci", "_ci", "c.i", "c i", "é", &"x".repeat(64)] {
            let err = EnvironmentName::parse(bad).unwrap_err();
            assert!(
                err.contains("is not a valid environment name"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn variable_and_secret_names() {
        for good in ["RUST_LOG", "_x", "a1", "Path"] {
            assert!(EnvVarName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "1A", "A-B", "A B", "A=B", "Ä"] {
            assert!(
                EnvVarName::parse(bad)
                    .unwrap_err()
                    .contains("not a valid variable name"),
                "{bad}"
            );
        }
        for good in ["DEV_TOKEN", "_X", "A1"] {
            assert!(SecretName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "dev_token", "1A", "A-B", "Dev"] {
            assert!(
                SecretName::parse(bad)
                    .unwrap_err()
                    .contains("not a valid secret name"),
                "{bad}"
            );
        }
    }

    #[test]
    fn images() {
        assert_eq!(ImageName::parse("host"), Ok(ImageName("host".into())));
        assert_eq!(
            ImageName::parse("ubuntu").unwrap_err(),
            "unknown image `ubuntu` (available: host)"
        );
    }

    #[test]
    fn working_directories() {
        for good in ["src", "a/b", "/opt/x", "/a/../b", "./src", "a..b"] {
            assert!(WorkingDirectory::parse(good).is_ok(), "{good}");
        }
        for bad in ["..", "../x", "a/../../b", "a/.."] {
            assert!(
                WorkingDirectory::parse(bad)
                    .unwrap_err()
                    .contains("leaves the workspace"),
                "{bad}"
            );
        }
        assert!(WorkingDirectory::parse("").unwrap_err().contains("empty"));
    }

    #[test]
    fn host_dirs() {
        assert_eq!(
            HostDir::parse("/var/lib/x/"),
            Ok(HostDir("/var/lib/x".into()))
        );
        assert!(HostDir::parse("var/lib")
            .unwrap_err()
            .contains("not an absolute path"));
        assert!(HostDir::parse("/")
            .unwrap_err()
            .contains("`/` cannot be used"));
        assert!(HostDir::parse("//")
            .unwrap_err()
            .contains("`/` cannot be used"));
        assert!(HostDir::parse("/a/../b").unwrap_err().contains("`..`"));
        assert!(HostDir::parse("")
            .unwrap_err()
            .contains("not an absolute path"));
    }

    #[test]
    fn names() {
        assert_eq!(Name::parse("build & test"), Ok(Name("build & test".into())));
        // Visible non-ASCII stays allowed.
        assert_eq!(
            Name::parse("prüfen – 構築"),
            Ok(Name("prüfen – 構築".into()))
        );
        for bad in [
            "a\nb",
            "a\tb",
            "\u{1b}[2Jspoof",
            "x\u{7f}",
            // Reordering and invisible characters (Trojan Source).
            "harmless\u{202e}live-no-prod",
            "a\u{2066}b\u{2069}",
            "zero\u{200b}width",
            "line\u{2028}separator",
            "arabic\u{061c}mark",
            "bom\u{feff}",
        ] {
            assert!(
                Name::parse(bad).unwrap_err().contains("control characters"),
                "{bad:?}"
            );
        }
        assert!(Name::parse(&"x".repeat(200)).is_ok());
        assert!(Name::parse(&"x".repeat(201))
            .unwrap_err()
            .contains("longer than 200"));
        assert!(Name::parse(" ").unwrap_err().contains("empty"));
    }

    #[test]
    fn text() {
        assert!(Text::parse("  \n").unwrap_err().contains("empty"));
        assert!(Text::parse("a\0b").unwrap_err().contains("NUL"));
    }
}
