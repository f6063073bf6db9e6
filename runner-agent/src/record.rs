//! The job record: `state_dir/jobs/JOB-ID/record.json`, what an operator reads after the
//! fact to learn who ran what with which credentials.
//!
//! It names the environment, the job's claims, the approval (who and when), and each
//! secret released to the job by name, delivery and fingerprint, never by value. It is
//! written when the job is admitted (so a crash still leaves a record of what was
//! released), and rewritten with the outcome when the job ends. Jobs refused before
//! anything was released (approval rejected or timed out) get a record too.
//!
//! Writes are atomic and the file is 0600 in a 0700 directory (see `crate::files`). The
//! audit log of the job sits beside it (`audit.jsonl`) unless `--audit-log` moved it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::approval::Approval;
use crate::config::Claims;
use crate::files::{create_private_dir, write_private};

/// One secret given to the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReleasedSecret {
    /// Its name.
    pub name: String,
    /// `env`, `file` or `proxy`.
    pub deliver: String,
    /// The store's fingerprint of the value (keyed; reveals nothing of it).
    pub fingerprint: String,
    /// For `proxy`: the hosts the header is added for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// The approval part of the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalRecord {
    /// Whether the environment requires approval.
    pub required: bool,
    /// `approved`, `rejected`, `timed out` or `not required`.
    pub outcome: String,
    /// Who answered, when someone did.
    pub by: Option<String>,
    /// When they answered.
    pub at: Option<String>,
}

impl ApprovalRecord {
    /// No approval needed.
    pub fn not_required() -> ApprovalRecord {
        ApprovalRecord {
            required: false,
            outcome: "not required".to_owned(),
            by: None,
            at: None,
        }
    }

    /// An operator's answer.
    pub fn answered(outcome: &str, answer: &Approval) -> ApprovalRecord {
        ApprovalRecord {
            required: true,
            outcome: outcome.to_owned(),
            by: Some(answer.by.clone()),
            at: Some(answer.at.clone()),
        }
    }

    /// Nobody answered in time.
    pub fn timed_out() -> ApprovalRecord {
        ApprovalRecord {
            required: true,
            outcome: "timed out".to_owned(),
            by: None,
            at: None,
        }
    }
}

/// The record of one job.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    /// The job id.
    pub job: String,
    /// The job's name.
    pub name: String,
    /// The job file it came from.
    pub job_file: PathBuf,
    /// The environment it ran in.
    pub environment: String,
    /// What it claimed about itself.
    pub claims: Claims,
    /// Approval.
    pub approval: ApprovalRecord,
    /// Secrets given to it.
    pub secrets: Vec<ReleasedSecret>,
    /// The runner it ran on, once there is one.
    pub runner: Option<String>,
    /// Where its audit events are.
    pub audit_log: PathBuf,
    /// When it was admitted (RFC 3339).
    pub started_at: String,
    /// When it ended.
    pub ended_at: Option<String>,
    /// `running`, `succeeded`, `failed`, `refused` or `setup failed`.
    pub status: String,
    /// Why, when it did not succeed.
    pub detail: Option<String>,
    /// The exit code of `runner-agent run`.
    pub exit_code: Option<i32>,
}

/// The record could not be written.
#[derive(Debug, thiserror::Error)]
#[error("job record {path}: {source}")]
pub struct RecordError {
    path: PathBuf,
    source: std::io::Error,
}

/// `at` as RFC 3339 (UTC), the form of every time in records and approvals.
pub fn rfc3339(at: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Now, as RFC 3339 (UTC).
pub fn now() -> String {
    rfc3339(std::time::SystemTime::now())
}

/// The directory of a job's record and default audit log.
pub fn job_dir(state_dir: &Path, job: &str) -> PathBuf {
    state_dir.join("jobs").join(job)
}

impl JobRecord {
    /// Writes (or rewrites) the record under `state_dir`.
    pub fn write(&self, state_dir: &Path) -> Result<PathBuf, RecordError> {
        let dir = job_dir(state_dir, &self.job);
        let path = dir.join("record.json");
        let at = |source| RecordError {
            path: path.clone(),
            source,
        };
        create_private_dir(&dir).map_err(at)?;
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| at(e.into()))?;
        bytes.push(b'\n');
        write_private(&path, &bytes).map_err(at)?;
        Ok(path)
    }

    /// Marks the record ended with `status`, `detail` and `exit_code`, and rewrites it.
    pub fn finish(
        &mut self,
        state_dir: &Path,
        status: &str,
        detail: Option<String>,
        exit_code: i32,
    ) -> Result<PathBuf, RecordError> {
        self.ended_at = Some(now());
        self.status = status.to_owned();
        self.detail = detail;
        self.exit_code = Some(exit_code);
        self.write(state_dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_name_secrets_by_fingerprint_and_are_private() {
        let state = tempfile::tempdir().unwrap();
        let mut record = JobRecord {
            job: "j-01JD3M0Q8V5X6W7Y8Z9A0B1C2D".into(),
            name: "deploy".into(),
            job_file: "deploy.yaml".into(),
            environment: "release".into(),
            claims: Claims {
                repository: Some("acme/app".into()),
                ..Claims::default()
            },
            approval: ApprovalRecord::not_required(),
            secrets: vec![ReleasedSecret {
                name: "TOKEN".into(),
                deliver: "proxy".into(),
                fingerprint: "hmac-sha256:0123456789abcdef".into(),
                hosts: vec!["registry.example.com".into()],
            }],
            runner: None,
            audit_log: "audit.jsonl".into(),
            started_at: now(),
            ended_at: None,
            status: "running".into(),
            detail: None,
            exit_code: None,
        };
        let path = record.write(state.path()).unwrap();
        record.finish(state.path(), "succeeded", None, 0).unwrap();
        let value: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(value["status"], "succeeded");
        assert_eq!(value["exit_code"], 0);
        assert_eq!(value["claims"]["repository"], "acme/app");
        assert_eq!(value["secrets"][0]["name"], "TOKEN");
        assert_eq!(
            value["secrets"][0]["fingerprint"],
            "hmac-sha256:0123456789abcdef"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        for dir in [
            state.path().join("jobs"),
            job_dir(state.path(), &record.job),
        ] {
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
    }
}
