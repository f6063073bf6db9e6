//! Resource limits of a runner: `runner.limits` and an environment's `limits`.
//!
//! Defaults (used for any field the host config leaves out): memory 4GiB, pids 4096,
//! cpus 2, disk 8GiB, timeout 6h, audit_log 256MiB. An environment's `limits` override
//! `runner.limits` field by field; [`Limits::effective`] does that merge. Bounds are
//! checked at the node (see `units`): memory >= 16MiB, disk >= 1MiB, audit_log >= 1MiB,
//! 16 <= pids <= 4194304, 0 < cpus <= 1024, timeout > 0.
//!
//! `audit_log` bounds the bytes of audit events one job may cause. Every decision is one
//! line (DESIGN.md 3.4), so a job that loops over denied connections would otherwise
//! write tens of megabytes a second to the host's disk for as long as its timeout
//! allows; a job that reaches the bound is stopped instead (see `egress::audit_log`).

use std::time::Duration;

use serde::Deserialize;

use super::units::{
    format_duration, format_size, Cpus, Pids, Size, Timeout, GIB, MIB, MIN_AUDIT_LOG, MIN_DISK,
    MIN_MEMORY,
};

/// Limits as written; `None` means "inherit" (from `runner.limits`, then the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(from = "RawLimits")]
pub struct Limits {
    /// Memory in bytes (cgroup memory.max).
    pub memory: Option<u64>,
    /// Maximum number of processes and threads (cgroup pids.max).
    pub pids: Option<u64>,
    /// CPU quota in CPUs (cgroup cpu.max).
    pub cpus: Option<f64>,
    /// Writable scratch space in bytes.
    pub disk: Option<u64>,
    /// Longest a job may run.
    pub timeout: Option<Duration>,
    /// Most bytes of audit events a job may cause before it is stopped.
    pub audit_log: Option<u64>,
}

/// Limits with every field decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EffectiveLimits {
    /// Memory in bytes.
    pub memory: u64,
    /// Maximum number of processes and threads.
    pub pids: u64,
    /// CPU quota in CPUs.
    pub cpus: f64,
    /// Writable scratch space in bytes.
    pub disk: u64,
    /// Longest a job may run.
    pub timeout: Duration,
    /// Most bytes of audit events a job may cause before it is stopped.
    pub audit_log: u64,
}

/// The limits that apply when the host config says nothing.
pub const DEFAULT_LIMITS: EffectiveLimits = EffectiveLimits {
    memory: 4 * GIB,
    pids: 4096,
    cpus: 2.0,
    disk: 8 * GIB,
    timeout: Duration::from_secs(6 * 3600),
    audit_log: 256 * MIB,
};

impl Limits {
    /// Every field set to the default.
    pub fn defaults() -> Limits {
        DEFAULT_LIMITS.into()
    }

    /// `self` where set, else `base`.
    pub fn or(&self, base: &Limits) -> Limits {
        Limits {
            memory: self.memory.or(base.memory),
            pids: self.pids.or(base.pids),
            cpus: self.cpus.or(base.cpus),
            disk: self.disk.or(base.disk),
            timeout: self.timeout.or(base.timeout),
            audit_log: self.audit_log.or(base.audit_log),
        }
    }

    /// Fills the fields still unset with [`DEFAULT_LIMITS`].
    pub fn effective(&self) -> EffectiveLimits {
        let d = DEFAULT_LIMITS;
        EffectiveLimits {
            memory: self.memory.unwrap_or(d.memory),
            pids: self.pids.unwrap_or(d.pids),
            cpus: self.cpus.unwrap_or(d.cpus),
            disk: self.disk.unwrap_or(d.disk),
            timeout: self.timeout.unwrap_or(d.timeout),
            audit_log: self.audit_log.unwrap_or(d.audit_log),
        }
    }

    /// The fields that are set, as `memory 4GiB, pids 4096`; "inherited" when none is.
    pub(crate) fn describe(&self) -> String {
        let parts: Vec<String> = [
            self.memory.map(|v| format!("memory {}", format_size(v))),
            self.pids.map(|v| format!("pids {v}")),
            self.cpus.map(|v| format!("cpus {v}")),
            self.disk.map(|v| format!("disk {}", format_size(v))),
            self.timeout
                .map(|v| format!("timeout {}", format_duration(v))),
            self.audit_log
                .map(|v| format!("audit_log {}", format_size(v))),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            "inherited".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

impl From<EffectiveLimits> for Limits {
    fn from(e: EffectiveLimits) -> Limits {
        Limits {
            memory: Some(e.memory),
            pids: Some(e.pids),
            cpus: Some(e.cpus),
            disk: Some(e.disk),
            timeout: Some(e.timeout),
            audit_log: Some(e.audit_log),
        }
    }
}

impl std::fmt::Display for EffectiveLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&Limits::from(*self).describe())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<Size<MIN_MEMORY>>,
    pids: Option<Pids>,
    cpus: Option<Cpus>,
    disk: Option<Size<MIN_DISK>>,
    timeout: Option<Timeout>,
    audit_log: Option<Size<MIN_AUDIT_LOG>>,
}

impl From<RawLimits> for Limits {
    fn from(raw: RawLimits) -> Limits {
        Limits {
            memory: raw.memory.map(|s| s.0),
            pids: raw.pids.map(|p| p.0),
            cpus: raw.cpus.map(|c| c.0),
            disk: raw.disk.map(|s| s.0),
            timeout: raw.timeout.map(|t| t.0),
            audit_log: raw.audit_log.map(|s| s.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::testing::assert_table;
    use crate::config::units::MIB;

    fn parse(text: &str) -> Result<Limits, String> {
        crate::config::testing::parse("l.yaml", text)
    }

    #[test]
    fn full_limits_parse() {
        let l = parse(
            "memory: 512MiB\npids: 100\ncpus: 0.5\ndisk: 1G\ntimeout: 1h30m\naudit_log: 64MiB\n",
        )
        .unwrap();
        assert_eq!(
            l,
            Limits {
                memory: Some(512 * MIB),
                pids: Some(100),
                cpus: Some(0.5),
                disk: Some(GIB),
                timeout: Some(Duration::from_secs(5400)),
                audit_log: Some(64 * MIB),
            }
        );
        assert_eq!(parse("{}\n").unwrap(), Limits::default());
        assert_eq!(parse("cpus: 2\n").unwrap().cpus, Some(2.0));
        assert_eq!(parse("memory: 1073741824\n").unwrap().memory, Some(GIB));
    }

    #[test]
    fn bad_limits_point_at_the_value() {
        assert_table(
            parse,
            &[
            ("memory: 4GB\n", "l.yaml:1:9: memory: `4GB` is not a size; a size is a number of bytes or a whole number with a unit: 64KiB, 512MiB, 4GiB, 1TiB (K, M, G, T mean the same)"),
            ("memory: 8MiB\n", "l.yaml:1:9: memory: `8MiB` is too small; the minimum is 16MiB"),
            ("pids: 4\n", "l.yaml:1:7: pids: `4` is out of range; give a number of processes from 16 to 4194304"),
            ("cpus: 0\n", "l.yaml:1:7: cpus: `0` is out of range; give a number of CPUs above 0 and at most 1024"),
            ("cpus: 2000\n", "l.yaml:1:7: cpus: `2000` is out of range; give a number of CPUs above 0 and at most 1024"),
            ("disk: 10\n", "l.yaml:1:7: disk: `10` is too small; the minimum is 1MiB"),
            ("audit_log: 512KiB\n", "l.yaml:1:12: audit_log: `512KiB` is too small; the minimum is 1MiB"),
            ("pids: 100\ntimeout: 0s\n", "l.yaml:2:10: timeout: `0s` is zero; a timeout must be positive, e.g. `30m`"),
            ("timeout: 30\n", "l.yaml:1:10: timeout: `30` has no unit; write a duration such as `30m`, `90s`, `6h` or `1h30m`"),
            ("memory: [1]\n", "l.yaml:1:9: memory: invalid type: sequence, expected a size like 4GiB"),
            ("swap: 1G\n", "l.yaml:1:1: unknown field `swap`"),
            ],
        );
    }

    #[test]
    fn merge_is_field_by_field() {
        let runner = Limits::defaults();
        let env = Limits {
            memory: Some(GIB),
            ..Limits::default()
        };
        let e = env.or(&runner).effective();
        assert_eq!(e.memory, GIB);
        assert_eq!(e.pids, 4096);
        assert_eq!(e.timeout, Duration::from_secs(6 * 3600));
        assert_eq!(e.audit_log, 256 * MIB);
        assert_eq!(
            DEFAULT_LIMITS.to_string(),
            "memory 4GiB, pids 4096, cpus 2, disk 8GiB, timeout 6h, audit_log 256MiB"
        );
    }
}
