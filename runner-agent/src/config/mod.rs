//! Job files and host configuration (DESIGN.md 3.2 and 3.3): parsing and validation.
//!
//! What: [`JobFile`] is what a user submits; [`HostConfig`] is what the operator
//! configures; [`HostConfig::resolve`] fits the one to the other and yields a
//! [`ResolvedJob`] (environment, image, limits, timeout); [`render_effective`] prints the
//! result for `runner-agent check`.
//!
//! Invariants:
//! - Both formats are strict: unknown keys are errors, and every error reads
//!   `FILE:LINE:COLUMN: what was wrong, what was expected` wherever a place exists. Rules
//!   about one node are checked while deserializing that node (see `de`), rules across
//!   nodes right after parsing, located by scanning the text again (see `locate`).
//! - A value that passed parsing is valid: consumers never re-check sizes, names or
//!   ranges.
//! - Nothing here defaults to openness: an environment without `egress` allows nothing,
//!   and the built-in config (used without `--config`) has one environment `default`
//!   with no egress and no secrets.
//!
//! Why: these files are the product's interface, and a mistake in them decides what a job
//! can reach. An operator must be able to see exactly which line is wrong and why.
//!
//! The individual rules and defaults are documented in the module of each part:
//! `job` (job file keys), `host` (host config sections, defaults, cross checks),
//! `environment` (environments and secrets), `claims` (`match` and its patterns),
//! `limits` and `units` (sizes, durations, limits), `names` (names and paths),
//! `resolve` (how a job gets its environment, image, limits and timeout).

mod claims;
mod de;
mod environment;
mod error;
#[cfg(test)]
mod examples;
mod host;
mod job;
mod limits;
mod locate;
mod names;
mod resolve;
#[cfg(test)]
mod testing;
mod units;

pub use claims::{
    claim_value, event_claim, ref_claim, repository_claim, workflow_claim, ClaimMatch, Claims,
    Pattern,
};
pub use environment::{
    Approval, Delivery, Environment, SecretSpec, DEFAULT_APPROVAL_TIMEOUT, DEFAULT_FORMAT,
};
pub use error::ConfigError;
pub use host::{
    default_runner_pool, HostConfig, NetworkConfig, RunnerConfig, ADDRESSES_PER_RUNNER,
    DEFAULT_IMAGE, DEFAULT_MAX_CONCURRENT, DEFAULT_RUN_DIR, DEFAULT_STATE_DIR,
};
pub use job::{JobFile, Step, DEFAULT_ENVIRONMENT, MAX_JOB_EXPANSION, MAX_JOB_FILE_BYTES};
pub use limits::{EffectiveLimits, Limits, DEFAULT_LIMITS};
pub use names::{check_environment_name, check_secret_name, is_unprintable, IMAGES};
pub use resolve::{render_effective, ResolvedJob};
pub use units::{format_duration, format_size, parse_size, GIB, KIB, MIB, TIB};
