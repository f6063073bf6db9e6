//! Sizes, durations, CPU counts and other scalar settings, parsed from their YAML text.
//!
//! Accepted forms (anything else is an error that lists them):
//! - sizes: a plain number of bytes (`1048576`) or a whole number with a binary unit:
//!   `KiB`/`K`, `MiB`/`M`, `GiB`/`G`, `TiB`/`T` (all powers of 1024: cgroup memory.max
//!   and tmpfs sizes are page-based, so decimal units would only surprise);
//! - durations: humantime forms such as `30s`, `20m`, `6h`, `1h30m`; a bare number is
//!   rejected (seconds or minutes? the reader cannot tell), and so are zero and anything
//!   above 30 days;
//! - cpus: a number (integer or decimal) above 0 and at most 1024;
//! - pids: an integer from 16 (a shell and a build tool need a few) to 4194304
//!   (PID_MAX_LIMIT of include/linux/threads.h on 64-bit kernels);
//! - max_concurrent: an integer of at least 1.
//!
//! Each type is a [`ScalarForm`], so an error points at the offending value.

use std::time::Duration;

use super::de::{scalar_deserialize, ScalarForm};

/// 1 KiB.
pub const KIB: u64 = 1 << 10;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;
/// 1 TiB.
pub const TIB: u64 = 1 << 40;

const SIZE_FORMS: &str = "a size is a number of bytes or a whole number with a unit: \
                          64KiB, 512MiB, 4GiB, 1TiB (K, M, G, T mean the same)";

/// A size in bytes of at least `MIN` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size<const MIN: u64>(pub u64);

/// Parses a size without a lower bound.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a size; {SIZE_FORMS}");
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(bad());
    }
    let multiplier = match unit {
        "" => 1,
        "KiB" | "K" => KIB,
        "MiB" | "M" => MIB,
        "GiB" | "G" => GIB,
        "TiB" | "T" => TIB,
        _ => return Err(bad()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("`{text}` is too large a size"))
}

impl<const MIN: u64> ScalarForm for Size<MIN> {
    const EXPECTING: &'static str = "a size like 4GiB";

    fn parse(text: &str) -> Result<Self, String> {
        let bytes = parse_size(text)?;
        if bytes < MIN {
            return Err(format!(
                "`{text}` is too small; the minimum is {}",
                format_size(MIN)
            ));
        }
        Ok(Size(bytes))
    }
}

/// Minimum memory limit: below this even bash and the runner's own helpers fail oddly.
pub const MIN_MEMORY: u64 = 16 * MIB;
/// Minimum disk (scratch) size.
pub const MIN_DISK: u64 = MIB;
/// Minimum audit log budget of a job.
pub const MIN_AUDIT_LOG: u64 = MIB;

/// Formats bytes with the largest binary unit that divides them exactly.
pub fn format_size(bytes: u64) -> String {
    for (unit, name) in [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")] {
        if bytes != 0 && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Longest timeout accepted: far beyond any CI job, and small enough that adding it to a
/// clock reading can never overflow (`Instant + Duration` panics on overflow).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// A duration above zero and at most [`MAX_TIMEOUT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timeout(pub Duration);

impl ScalarForm for Timeout {
    const EXPECTING: &'static str = "a duration like 30m";

    fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!(
                "`{text}` has no unit; write a duration such as `30m`, `90s`, `6h` or `1h30m`"
            ));
        }
        let duration = humantime::parse_duration(trimmed).map_err(|err| {
            format!("`{text}` is not a duration ({err}); write e.g. `30m`, `90s`, `6h` or `1h30m`")
        })?;
        if duration.is_zero() {
            return Err(format!(
                "`{text}` is zero; a timeout must be positive, e.g. `30m`"
            ));
        }
        if duration > MAX_TIMEOUT {
            return Err(format!(
                "`{text}` is longer than the maximum timeout of 30 days"
            ));
        }
        Ok(Timeout(duration))
    }
}

/// Formats a duration the way users write it (`6h`, `1h 30m`).
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// Upper bound on `cpus`: far above any host this runs on, low enough to catch typos.
pub const MAX_CPUS: f64 = 1024.0;

/// A CPU quota in CPUs (cgroup cpu.max quota/period), above 0 and at most [`MAX_CPUS`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cpus(pub f64);

impl ScalarForm for Cpus {
    const EXPECTING: &'static str = "a number of CPUs like 2 or 0.5";

    fn parse(text: &str) -> Result<Self, String> {
        let plain = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && text.bytes().filter(|&b| b == b'.').count() <= 1
            && text != ".";
        let value = if plain {
            text.parse::<f64>().ok()
        } else {
            None
        };
        match value {
            Some(v) if v > 0.0 && v <= MAX_CPUS => Ok(Cpus(v)),
            Some(_) => Err(format!(
                "`{text}` is out of range; give a number of CPUs above 0 and at most 1024"
            )),
            None => Err(format!(
                "`{text}` is not a number of CPUs; write e.g. `2` or `0.5`"
            )),
        }
    }
}

/// Lowest `pids` limit accepted.
pub const MIN_PIDS: u64 = 16;
/// PID_MAX_LIMIT on 64-bit kernels (include/linux/threads.h): pids.max cannot usefully
/// exceed it.
pub const MAX_PIDS: u64 = 4_194_304;

/// A pids.max value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pids(pub u64);

impl ScalarForm for Pids {
    const EXPECTING: &'static str = "a number of processes like 4096";

    fn parse(text: &str) -> Result<Self, String> {
        match parse_integer(text) {
            Some(n) if (MIN_PIDS..=MAX_PIDS).contains(&n) => Ok(Pids(n)),
            Some(_) => Err(format!(
                "`{text}` is out of range; give a number of processes from {MIN_PIDS} to {MAX_PIDS}"
            )),
            None => Err(format!("`{text}` is not a whole number of processes")),
        }
    }
}

/// `runner.max_concurrent`: at least one runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MaxConcurrent(pub u32);

impl ScalarForm for MaxConcurrent {
    const EXPECTING: &'static str = "a number of runners like 4";

    fn parse(text: &str) -> Result<Self, String> {
        match parse_integer(text).map(u32::try_from) {
            Some(Ok(n)) if n >= 1 => Ok(MaxConcurrent(n)),
            _ => Err(format!(
                "`{text}` is not a whole number of runners of at least 1"
            )),
        }
    }
}

/// Only plain decimal digits: YAML's `0x10` or `1_000` forms are refused to keep one
/// spelling per value.
fn parse_integer(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

scalar_deserialize!(
    Size<MIN_MEMORY>,
    // Also Size<MIN_AUDIT_LOG>: the same minimum makes it the same type.
    Size<MIN_DISK>,
    Timeout,
    Cpus,
    Pids,
    MaxConcurrent
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_accepted_form() {
        for (text, bytes) in [
            ("4GiB", 4 * GIB),
            ("4G", 4 * GIB),
            ("512MiB", 512 * MIB),
            ("512M", 512 * MIB),
            ("64KiB", 64 * KIB),
            ("64K", 64 * KIB),
            ("1TiB", TIB),
            ("1T", TIB),
            ("1048576", MIB),
            ("0", 0),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn sizes_rejected_with_the_accepted_forms() {
        for text in [
            "4GB", "4 GiB", "4gib", "1.5GiB", "GiB", "", "-1", "4Gi", "4GiBs", " 4GiB", "0x10",
        ] {
            let err = parse_size(text).unwrap_err();
            assert!(err.contains("64KiB, 512MiB, 4GiB, 1TiB"), "{text}: {err}");
            assert!(err.starts_with(&format!("`{text}` is not a size")), "{err}");
        }
        assert!(parse_size("99999999999TiB")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn size_minimums() {
        assert_eq!(Size::<MIN_MEMORY>::parse("16MiB"), Ok(Size(16 * MIB)));
        assert_eq!(
            Size::<MIN_MEMORY>::parse("15MiB").unwrap_err(),
            "`15MiB` is too small; the minimum is 16MiB"
        );
        assert_eq!(Size::<MIN_DISK>::parse("1M"), Ok(Size(MIB)));
        assert_eq!(
            Size::<MIN_DISK>::parse("1000").unwrap_err(),
            "`1000` is too small; the minimum is 1MiB"
        );
    }

    #[test]
    fn size_formatting_round_trips() {
        for bytes in [4 * GIB, 512 * MIB, 64 * KIB, TIB, 1000, 3 * GIB + MIB] {
            assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
        assert_eq!(format_size(3 * GIB + MIB), "3073MiB");
        assert_eq!(format_size(0), "0");
    }

    #[test]
    fn durations() {
        for (text, secs) in [
            ("30s", 30),
            ("20m", 1200),
            ("6h", 21600),
            ("1h30m", 5400),
            ("1h 30m", 5400),
            ("30d", 30 * 86400),
        ] {
            assert_eq!(
                Timeout::parse(text),
                Ok(Timeout(Duration::from_secs(secs))),
                "{text}"
            );
        }
        for (text, want) in [
            ("30", "`30` has no unit; write a duration such as `30m`"),
            ("0", "`0` has no unit"),
            ("1.5", "`1.5` has no unit"),
            ("0s", "`0s` is zero; a timeout must be positive, e.g. `30m`"),
            ("0h0m", "is zero"),
            ("soon", "`soon` is not a duration"),
            ("", "is not a duration"),
            ("-5m", "is not a duration"),
            ("31d", "`31d` is longer than the maximum timeout of 30 days"),
            ("99999999999999y", "is not a duration"),
        ] {
            let err = Timeout::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
            assert!(
                err.contains("30m") || err.contains("30 days"),
                "{text}: {err}"
            );
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h 30m");
    }

    #[test]
    fn cpus() {
        assert_eq!(Cpus::parse("2"), Ok(Cpus(2.0)));
        assert_eq!(Cpus::parse("0.5"), Ok(Cpus(0.5)));
        assert_eq!(Cpus::parse("1024"), Ok(Cpus(1024.0)));
        for text in ["0", "0.0", "1024.5", "5000"] {
            assert!(
                Cpus::parse(text).unwrap_err().contains("out of range"),
                "{text}"
            );
        }
        for text in ["two", "-1", ".nan", ".inf", "1e3", "", ".", "1.2.3"] {
            assert!(
                Cpus::parse(text)
                    .unwrap_err()
                    .contains("is not a number of CPUs"),
                "{text}"
            );
        }
    }

    #[test]
    fn pids_and_max_concurrent() {
        assert_eq!(Pids::parse("16"), Ok(Pids(16)));
        assert_eq!(Pids::parse("4194304"), Ok(Pids(MAX_PIDS)));
        assert!(Pids::parse("15")
            .unwrap_err()
            .contains("from 16 to 4194304"));
        assert!(Pids::parse("4194305").unwrap_err().contains("out of range"));
        assert!(Pids::parse("1.5")
            .unwrap_err()
            .contains("not a whole number"));
        assert_eq!(MaxConcurrent::parse("4"), Ok(MaxConcurrent(4)));
        assert!(MaxConcurrent::parse("0").is_err());
        assert!(MaxConcurrent::parse("4294967296").is_err());
        assert!(MaxConcurrent::parse("four").is_err());
    }
}
