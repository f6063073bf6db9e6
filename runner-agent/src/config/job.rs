//! The job file (DESIGN.md 3.2): a subset of GitHub Actions step syntax.
//!
//! Keys (kebab-case exactly as documented; anything else is rejected):
//! - `name`: optional, default the file name without its extension; one line of at
//!   most 200 characters without control characters (names are printed as headings);
//! - `environment`: optional, default `default`; must be a valid environment name;
//! - `image`: optional; only `host` exists;
//! - `timeout`: optional duration for the whole job (capped later by the environment's
//!   limit, see `resolve`);
//! - `env`: optional mapping of variable names (`[A-Za-z_][A-Za-z0-9_]*`) to values
//!   (strings; numbers and booleans are taken as their text, as GitHub does);
//! - `steps`: required, a non-empty list. Each step has `run` (required, non-empty),
//!   `name` (default "Run " + the first line of `run`, cut to 60 characters),
//!   `env`, `working-directory` (absolute, or relative without `..`), `timeout` and
//!   `continue-on-error` (boolean, default false).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::de::{checked_map, unique_map, EmptyHint, EnvValue, NonEmpty};
use super::error::{read_file, ConfigError};
use super::names::{
    EnvVarName, EnvironmentName, ImageName, Name, Text, WorkingDirectory, MAX_NAME_CHARS,
};
use super::units::Timeout;

/// The environment a job uses when it names none.
pub const DEFAULT_ENVIRONMENT: &str = "default";

/// The largest job file read. A job file may come from the repository being built, and
/// the agent parses it as root outside every runner's limits; real ones are a few KiB.
/// The YAML loader holds about 200 bytes per byte of a file of tiny nested nodes before
/// anything can check them (1 MiB of `? ? ? ...` took 220 MB; found by an attack run),
/// so the limit also bounds that: about 55 MB.
pub const MAX_JOB_FILE_BYTES: u64 = 256 << 10;

/// What a job file's values may add up to once its aliases (`*name`) are replayed
/// (`egress_proxy::yaml::parse_str_within`; twenty times the file when that is more).
pub const MAX_JOB_EXPANSION: usize = 8 << 20;

/// Longest default step name, in characters, after "Run ".
const DEFAULT_NAME_CHARS: usize = 60;

/// A parsed job file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFile {
    /// The job's name (default: the file stem).
    pub name: String,
    /// The host environment that applies (default `default`).
    pub environment: String,
    /// Image requested by the job.
    pub image: Option<String>,
    /// Timeout of the whole job.
    pub timeout: Option<Duration>,
    /// Job-wide environment variables.
    pub env: BTreeMap<String, String>,
    /// The steps, in order; never empty.
    pub steps: Vec<Step>,
}

/// One step of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Heading printed before its output.
    pub name: String,
    /// The script, run with `bash -e`.
    pub run: String,
    /// Variables added for this step (over the job's).
    pub env: BTreeMap<String, String>,
    /// Directory to run in: absolute, or relative to the workspace.
    pub working_directory: Option<String>,
    /// Timeout of this step.
    pub timeout: Option<Duration>,
    /// Whether the job goes on (and counts as successful) when this step fails.
    pub continue_on_error: bool,
}

pub(crate) fn env_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let map = unique_map::<D, EnvVarName, EnvValue>(d, "a mapping of variable names to values")?;
    Ok(map.into_iter().map(|(k, v)| (k, v.0)).collect())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawStep {
    name: Option<Name>,
    run: Text,
    #[serde(default, deserialize_with = "env_map")]
    env: BTreeMap<String, String>,
    working_directory: Option<WorkingDirectory>,
    timeout: Option<Timeout>,
    #[serde(default)]
    continue_on_error: bool,
}

/// "Run " + the first non-blank line of the script, cut to 60 characters, with control
/// characters shown as spaces (the name is printed as a heading).
fn default_step_name(run: &str) -> String {
    let first = run
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    format!("Run {}", printable(first, DEFAULT_NAME_CHARS))
}

/// The first `max` characters of `text`, control and invisible formatting characters
/// shown as spaces.
fn printable(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| if super::is_unprintable(c) { ' ' } else { c })
        .collect()
}

impl TryFrom<RawStep> for Step {
    type Error = String;

    fn try_from(raw: RawStep) -> Result<Self, String> {
        let run = raw.run.0;
        Ok(Step {
            name: raw
                .name
                .map_or_else(|| default_step_name(&run), String::from),
            run,
            env: raw.env,
            working_directory: raw.working_directory.map(String::from),
            timeout: raw.timeout.map(|t| t.0),
            continue_on_error: raw.continue_on_error,
        })
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_map::<D, RawStep, Step>(d, "a step mapping with at least `run`")
    }
}

/// Why `steps` may not be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StepsHint;

impl EmptyHint for StepsHint {
    const HINT: &'static str = "the list is empty; a job needs at least one step with `run`";
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawJob {
    name: Option<Name>,
    environment: Option<EnvironmentName>,
    image: Option<ImageName>,
    timeout: Option<Timeout>,
    #[serde(default, deserialize_with = "env_map")]
    env: BTreeMap<String, String>,
    steps: NonEmpty<Step, StepsHint>,
}

impl JobFile {
    /// Reads and parses the job file at `path`.
    pub fn load(path: &Path) -> Result<JobFile, ConfigError> {
        JobFile::parse(path, &JobFile::read(path)?)
    }

    /// The text of the job file at `path`, refused beyond [`MAX_JOB_FILE_BYTES`].
    pub fn read(path: &Path) -> Result<String, ConfigError> {
        read_file(path, MAX_JOB_FILE_BYTES)
    }

    /// Parses `text`, read from `path` (used for messages and the default name).
    pub fn parse(path: &Path, text: &str) -> Result<JobFile, ConfigError> {
        let raw: RawJob = egress_proxy::yaml::parse_str_within(path, text, MAX_JOB_EXPANSION)?;
        let name = match raw.name {
            Some(name) => name.0,
            None => path
                .file_stem()
                .map(|s| printable(&s.to_string_lossy(), MAX_NAME_CHARS))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "job".to_owned()),
        };
        Ok(JobFile {
            name,
            environment: raw
                .environment
                .map_or_else(|| DEFAULT_ENVIRONMENT.to_owned(), String::from),
            image: raw.image.map(String::from),
            timeout: raw.timeout.map(|t| t.0),
            env: raw.env,
            steps: raw.steps.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobFile, String> {
        JobFile::parse(Path::new("jobs/build.yaml"), text).map_err(|e| e.to_string())
    }

    /// The example of DESIGN.md 3.2, verbatim.
    const DESIGN_EXAMPLE: &str = "\
name: build
environment: ci            # which host environment applies; optional, default \"default\"
image: host                # optional; default from host config
timeout: 30m               # optional; whole job
env:                       # optional; job-wide
  RUST_LOG: info
steps:
  - name: fetch index
    run: curl -fsS https://index.example.com/config.json
  - name: build
    run: |
      cargo build --release
    env: { CARGO_TERM_COLOR: never }
    working-directory: src
    timeout: 20m
    continue-on-error: false
";

    #[test]
    fn design_example_parses() {
        let job = parse(DESIGN_EXAMPLE).unwrap();
        assert_eq!(job.name, "build");
        assert_eq!(job.environment, "ci");
        assert_eq!(job.image.as_deref(), Some("host"));
        assert_eq!(job.timeout, Some(Duration::from_secs(1800)));
        assert_eq!(job.env["RUST_LOG"], "info");
        assert_eq!(job.steps.len(), 2);
        let build = &job.steps[1];
        assert_eq!(build.name, "build");
        assert_eq!(build.run, "cargo build --release\n");
        assert_eq!(build.env["CARGO_TERM_COLOR"], "never");
        assert_eq!(build.working_directory.as_deref(), Some("src"));
        assert_eq!(build.timeout, Some(Duration::from_secs(1200)));
        assert!(!build.continue_on_error);
        assert_eq!(job.steps[0].env, BTreeMap::new());
    }

    #[test]
    fn defaults() {
        let job = parse("steps:\n  - run: |\n\n      make all   \n      make test\n").unwrap();
        assert_eq!(job.name, "build");
        assert_eq!(job.environment, "default");
        assert_eq!(job.image, None);
        assert_eq!(job.timeout, None);
        assert_eq!(job.steps[0].name, "Run make all");
        assert!(!job.steps[0].continue_on_error);
        let long = format!("steps:\n  - run: echo {}\n", "x".repeat(100));
        let name = parse(&long).unwrap().steps[0].name.clone();
        assert_eq!(name, format!("Run echo {}", "x".repeat(55)));
        assert_eq!(name.chars().count(), 4 + 60);
        let escaped = parse("steps:\n  - run: \"printf x\\e[2J\\tdone\"\n").unwrap();
        assert_eq!(escaped.steps[0].name, "Run printf x [2J done");
        let stemless = JobFile::parse(Path::new(""), "steps: [ { run: x } ]\n").unwrap();
        assert_eq!(stemless.name, "job");
        let odd = JobFile::parse(Path::new("a\u{1b}b.yaml"), "steps: [ { run: x } ]\n").unwrap();
        assert_eq!(odd.name, "a b");
    }

    #[test]
    fn env_values_become_text() {
        let job = parse(
            "env:\n  A: 1\n  B: true\n  C: 3.10\n  D: \"3.10\"\n  _e: ''\n  F: -7\nsteps: [ { run: x, env: { G: false } } ]\n",
        )
        .unwrap();
        let got: Vec<(&str, &str)> = job
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("A", "1"),
                ("B", "true"),
                ("C", "3.1"),
                ("D", "3.10"),
                ("F", "-7"),
                ("_e", "")
            ]
        );
        assert_eq!(job.steps[0].env["G"], "false");
    }

    #[test]
    fn step_options() {
        let job = parse(
            "steps:\n  - run: x\n    working-directory: /opt/src\n    continue-on-error: true\n",
        )
        .unwrap();
        assert_eq!(job.steps[0].working_directory.as_deref(), Some("/opt/src"));
        assert!(job.steps[0].continue_on_error);
    }

    #[test]
    fn errors_point_at_the_node() {
        crate::config::testing::assert_table(
            parse,
            &[
            ("steps: []\n", "jobs/build.yaml:1:8: steps: the list is empty; a job needs at least one step with `run`"),
            ("name: x\n", "jobs/build.yaml:1:1: missing field `steps`"),
            ("steps:\n", "jobs/build.yaml:1:7: steps: the list is empty; a job needs at least one step with `run`"),
            ("steps:\n  - name: a\n", "jobs/build.yaml:2:5: steps[0]: missing field `run`"),
            ("steps:\n  - run: a\n  - name: b\n", "jobs/build.yaml:3:5: steps[1]: missing field `run`"),
            ("steps:\n  - run: \"\"\n", "jobs/build.yaml:2:10: steps[0].run: this is empty; a non-empty string is expected"),
            ("steps:\n  - run: a\n    working_directory: b\n", "jobs/build.yaml:3:5: steps[0]: unknown field `working_directory`, expected one of `name`, `run`, `env`, `working-directory`, `timeout`, `continue-on-error`"),
            ("steps:\n  - run: a\n    working-directory: ../up\n", "jobs/build.yaml:3:24: steps[0].working-directory: `../up` leaves the workspace through `..`; give a path inside the workspace or an absolute path"),
            ("steps:\n  - run: a\n    timeout: 20\n", "jobs/build.yaml:3:14: steps[0].timeout: `20` has no unit; write a duration such as `30m`, `90s`, `6h` or `1h30m`"),
            ("steps:\n  - run: a\n    continue-on-error: yes\n", "jobs/build.yaml:3:24: steps[0].continue-on-error: invalid type: string \"yes\", expected a boolean"),
            ("steps:\n  - run: a\n    env: { 1X: a }\n", "jobs/build.yaml:3:12: steps[0].env: `1X` is not a valid variable name; use letters, digits and `_`, not starting with a digit"),
            ("env:\n  A: a\n  A: b\nsteps: [ { run: a } ]\n", "jobs/build.yaml:2:3: env: `A` appears twice in this mapping; each key may appear once"),
            ("env:\n  A:\nsteps: [ { run: a } ]\n", "jobs/build.yaml:2:5: env.A: an environment value is missing; write \"\" for an empty value"),
            ("env:\n  A: [1]\nsteps: [ { run: a } ]\n", "jobs/build.yaml:2:6: env.A: invalid type: sequence, expected a string, number or boolean"),
            ("env: [A]\nsteps: [ { run: a } ]\n", "jobs/build.yaml:1:6: env: invalid type: sequence, expected a mapping of variable names to values"),
            ("environment: Release\nsteps: [ { run: a } ]\n", "jobs/build.yaml:1:14: environment: `Release` is not a valid environment name; use 1 to 63 characters of a-z, 0-9, `_` and `-`, starting with a letter or digit"),
            ("image: ubuntu-22.04\nsteps: [ { run: a } ]\n", "jobs/build.yaml:1:8: image: unknown image `ubuntu-22.04` (available: host)"),
            ("timeout: 0m\nsteps: [ { run: a } ]\n", "jobs/build.yaml:1:10: timeout: `0m` is zero; a timeout must be positive, e.g. `30m`"),
            ("runs-on: ubuntu\nsteps: [ { run: a } ]\n", "jobs/build.yaml:1:1: unknown field `runs-on`"),
            ("steps: [ { run: a, uses: actions/checkout@v4 } ]\n", "jobs/build.yaml:1:20: steps[0]: unknown field `uses`, expected one of `name`, `run`, `env`, `working-directory`, `timeout`, `continue-on-error`"),
            ("steps: { run: a }\n", "jobs/build.yaml:1:8: steps: invalid type: map, expected a non-empty list"),
            ("", "jobs/build.yaml: the file is empty"),
            ("name: a\nname: b\nsteps: [ { run: x } ]\n", "jobs/build.yaml:1:1: duplicate field `name`"),
            ("steps:\n\t- run: x\n", "jobs/build.yaml:2:1: found character that cannot start any token"),
            ("steps: [ { run: x }\n", "jobs/build.yaml:"),
            ("---\nsteps: [ { run: x } ]\n---\nsteps: [ { run: y } ]\n", "jobs/build.yaml: deserializing from YAML containing more than one document is not supported"),
            ("name: \"\"\nsteps: [ { run: a } ]\n", "jobs/build.yaml:1:7: name: this is empty; a non-empty string is expected"),
            ("steps: [ { run: a, name: \"x\\ny\" } ]\n", "jobs/build.yaml:1:26: steps[0].name: a name cannot contain control characters"),
            ],
        );
    }
}
