//! Operator approval of jobs in environments with `approval: required`.
//!
//! A job that needs approval writes a request, `state_dir/approvals/JOB-ID.pending`, and
//! waits; nothing of its environment exists yet (no sandbox, no secret read, no egress).
//! An operator lists the waiting jobs with `runner-agent approve` and approves one with
//! `runner-agent approve JOB-ID` (or refuses it with `--reject`), which writes
//! `JOB-ID.approved` (or `.rejected`) beside the request. The waiting job polls for that
//! answer; it is refused when the environment's `approval_timeout` passes first.
//!
//! Invariants:
//! - an approval names one job id, and job ids are never reused (a timestamp and 80 random
//!   bits), so an approval cannot be replayed for another job; the job removes the request
//!   and the answer once it has read them;
//! - only root can write under `state_dir/approvals` (0700): a job inside a sandbox cannot
//!   see it at all (state_dir is masked there), and no unprivileged user can approve;
//! - `approve` refuses ids that are not waiting (unknown, timed out, already answered), and
//!   requests left by a job that is no longer running (its process is gone) are removed
//!   rather than approved, so an approval never lands on nothing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::{is_unprintable, Claims};
use crate::files::{create_private_dir, write_private};
use crate::record::rfc3339;
use crate::run::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK};

/// How often a waiting job looks for its answer.
const POLL: Duration = Duration::from_millis(200);

/// Approval could not be asked for or given.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// The approvals directory or a file in it could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A request or answer file is not what this version writes.
    #[error("{path}: not a readable approval file: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The id is not a job id.
    #[error("`{0}` is not a job id (they look like j-01JD3M0Q8V5X6W7Y8Z9A0B1C2D)")]
    BadId(String),
    /// No job with that id waits for approval.
    #[error("no job {job} is waiting for approval (under {dir}); it may have timed out, been answered already, or never asked. `runner-agent approve` lists the waiting jobs")]
    NotWaiting {
        /// The id.
        job: String,
        /// The approvals directory.
        dir: PathBuf,
    },
    /// The job asked, but its process is gone.
    #[error("job {0} asked for approval but is no longer running; its request was removed")]
    Gone(String),
    /// The job was already answered.
    #[error("job {job} was already {answer}")]
    AlreadyAnswered {
        /// The id.
        job: String,
        /// `approved` or `rejected`.
        answer: &'static str,
    },
}

/// What a waiting job tells the operator about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    /// The job id.
    pub job: String,
    /// The job's name.
    pub name: String,
    /// The environment it asks for.
    pub environment: String,
    /// Its claims.
    pub claims: Claims,
    /// When it asked (RFC 3339).
    pub requested_at: String,
    /// When it gives up (RFC 3339).
    pub expires_at: String,
    /// The waiting `runner-agent run` process.
    pub pid: u32,
}

/// The operator's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The job id.
    pub job: String,
    /// Who answered: the user name (from sudo when run through it) and uid.
    pub by: String,
    /// When (RFC 3339).
    pub at: String,
}

/// How waiting ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Approved: go on.
    Approved(Approval),
    /// An operator refused the job.
    Rejected(Approval),
    /// Nobody answered within the timeout.
    TimedOut,
}

/// The approvals directory of one state directory.
#[derive(Debug, Clone)]
pub struct Approvals {
    dir: PathBuf,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> ApprovalError + '_ {
    move |source| ApprovalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Job ids as `run::new_job_id` makes them: `j-` and 26 Crockford base32 characters.
pub fn is_job_id(id: &str) -> bool {
    id.len() == 28
        && id.starts_with("j-")
        && id[2..]
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
}

impl Approvals {
    /// The approvals of `state_dir`.
    pub fn new(state_dir: &Path) -> Approvals {
        Approvals {
            dir: state_dir.join("approvals"),
        }
    }

    fn file(&self, job: &str, suffix: &str) -> PathBuf {
        self.dir.join(format!("{job}.{suffix}"))
    }

    fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ApprovalError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ApprovalError::Corrupt {
                        path: path.to_owned(),
                        reason: e.to_string(),
                    })
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(io_at(path)(err)),
        }
    }

    /// Files the request of a job that is about to wait.
    pub fn request(&self, request: &ApprovalRequest) -> Result<(), ApprovalError> {
        create_private_dir(&self.dir).map_err(io_at(&self.dir))?;
        let path = self.file(&request.job, "pending");
        let bytes = serde_json::to_vec_pretty(request).map_err(|e| ApprovalError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_private(&path, &bytes).map_err(io_at(&path))
    }

    /// Removes the request and any answer of `job` (the job does this when it stops
    /// waiting, whatever the outcome).
    pub fn withdraw(&self, job: &str) {
        for suffix in ["pending", "approved", "rejected"] {
            let _ = std::fs::remove_file(self.file(job, suffix));
        }
    }

    /// Waits until `job` is answered or `timeout` passes. Withdraws the request before
    /// returning (also on error).
    pub async fn wait(&self, job: &str, timeout: Duration) -> Result<Outcome, ApprovalError> {
        let deadline = Instant::now() + timeout;
        let outcome = loop {
            if let Some(answer) = Self::read::<Approval>(&self.file(job, "approved"))? {
                break Outcome::Approved(answer);
            }
            if let Some(answer) = Self::read::<Approval>(&self.file(job, "rejected"))? {
                break Outcome::Rejected(answer);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Outcome::TimedOut;
            }
            tokio::time::sleep(left.min(POLL)).await;
        };
        self.withdraw(job);
        Ok(outcome)
    }

    /// The jobs waiting now, oldest first. Requests of jobs whose process is gone are
    /// removed and not listed.
    pub fn waiting(&self) -> Result<Vec<ApprovalRequest>, ApprovalError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io_at(&self.dir)(err)),
        };
        let mut waiting = Vec::new();
        for entry in entries {
            let path = entry.map_err(io_at(&self.dir))?.path();
            let Some(job) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".pending"))
                .filter(|j| is_job_id(j))
            else {
                continue;
            };
            if let Some(request) = Self::read::<ApprovalRequest>(&path)? {
                if process_alive(request.pid) {
                    waiting.push(request);
                } else {
                    self.withdraw(job);
                }
            }
        }
        waiting.sort_by(|a, b| a.job.cmp(&b.job));
        Ok(waiting)
    }

    /// Answers the request of `job`: approves it, or rejects it when `approve` is false.
    pub fn answer(&self, job: &str, approve: bool) -> Result<Approval, ApprovalError> {
        if !is_job_id(job) {
            return Err(ApprovalError::BadId(job.to_owned()));
        }
        let pending = self.file(job, "pending");
        let Some(request) = Self::read::<ApprovalRequest>(&pending)? else {
            return Err(ApprovalError::NotWaiting {
                job: job.to_owned(),
                dir: self.dir.clone(),
            });
        };
        if request.job != job {
            return Err(ApprovalError::Corrupt {
                path: pending,
                reason: format!("it names job {}", request.job),
            });
        }
        if !process_alive(request.pid) {
            self.withdraw(job);
            return Err(ApprovalError::Gone(job.to_owned()));
        }
        for answer in ["approved", "rejected"] {
            if self.file(job, answer).exists() {
                return Err(ApprovalError::AlreadyAnswered {
                    job: job.to_owned(),
                    answer,
                });
            }
        }
        let approval = Approval {
            job: job.to_owned(),
            by: operator(),
            at: crate::record::now(),
        };
        let path = self.file(job, if approve { "approved" } else { "rejected" });
        let bytes = serde_json::to_vec_pretty(&approval).map_err(|e| ApprovalError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_private(&path, &bytes).map_err(io_at(&path))?;
        Ok(approval)
    }
}

/// `runner-agent approve [JOB-ID] [--reject] [--config HOST.yaml]`: answers a waiting
/// job, or lists the waiting jobs when no id is given. Returns the exit code: 0 done,
/// 1 the answer could not be given (no such waiting job, I/O), 64 bad input.
pub fn command(config: Option<&Path>, job: Option<&str>, reject: bool) -> i32 {
    let host = match crate::config::HostConfig::load_or_builtin(config) {
        Ok(host) => host,
        Err(err) => {
            eprintln!("error: {err}");
            return EXIT_BAD_INPUT;
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("error: runner-agent approve needs root: approvals live under {}, which only root may write", host.state_dir.display());
        return EXIT_FAILED;
    }
    let approvals = Approvals::new(&host.state_dir);
    let Some(job) = job else {
        if reject {
            eprintln!("error: --reject needs the id of the job to reject");
            return EXIT_BAD_INPUT;
        }
        return match approvals.waiting() {
            Ok(waiting) if waiting.is_empty() => {
                println!("no job is waiting for approval");
                EXIT_OK
            }
            Ok(waiting) => {
                for request in waiting {
                    println!("{}", describe_request(&request));
                }
                EXIT_OK
            }
            Err(err) => {
                eprintln!("error: {err}");
                EXIT_FAILED
            }
        };
    };
    match approvals.answer(job, !reject) {
        Ok(answer) => {
            println!(
                "{} {job} (by {})",
                if reject { "rejected" } else { "approved" },
                answer.by
            );
            EXIT_OK
        }
        Err(err @ ApprovalError::BadId(_)) => {
            eprintln!("error: {err}");
            EXIT_BAD_INPUT
        }
        Err(err) => {
            eprintln!("error: {err}");
            EXIT_FAILED
        }
    }
}

/// One line per waiting job: id, name, environment, claims, since and until when.
/// `text` with its control and invisible formatting characters escaped (`\u{1b}`,
/// `\u{202e}`; [`is_unprintable`]): the listing goes to the
/// approving operator's terminal, and a job's name (from its job file) or a claim written
/// by an older agent must not be able to move the cursor, erase a line or retitle the
/// window there.
fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(is_unprintable) {
        return std::borrow::Cow::Borrowed(text);
    }
    text.chars()
        .map(|c| {
            if is_unprintable(c) {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

fn describe_request(request: &ApprovalRequest) -> String {
    let claims = &request.claims;
    let mut parts = Vec::new();
    for (label, value) in [
        ("repository", &claims.repository),
        ("ref", &claims.git_ref),
        ("workflow", &claims.workflow),
        ("event", &claims.event),
    ] {
        if let Some(value) = value {
            parts.push(format!("{label}={}", printable(value)));
        }
    }
    format!(
        "{}  job `{}` for environment `{}`  [{}]  waiting since {}, refused at {}",
        printable(&request.job),
        printable(&request.name),
        printable(&request.environment),
        if parts.is_empty() {
            "no claims".to_owned()
        } else {
            parts.join(" ")
        },
        request.requested_at,
        request.expires_at
    )
}

/// Builds the request a job files before it waits.
pub fn new_request(
    job: &str,
    name: &str,
    environment: &str,
    claims: &Claims,
    timeout: Duration,
) -> ApprovalRequest {
    let now = std::time::SystemTime::now();
    ApprovalRequest {
        job: job.to_owned(),
        name: name.to_owned(),
        environment: environment.to_owned(),
        claims: claims.clone(),
        requested_at: rfc3339(now),
        expires_at: rfc3339(now + timeout),
        pid: std::process::id(),
    }
}

/// Whether `pid` is a live process (signal 0 probes without sending anything; kill(2)).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// Who is answering: `SUDO_USER` when run through sudo (the person behind root), the
/// account name of the real uid, and the uid itself.
fn operator() -> String {
    let uid = nix::unistd::getuid();
    let account = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "?".to_owned());
    match std::env::var("SUDO_USER") {
        Ok(sudo) if !sudo.is_empty() => format!("{sudo} (as {account}, uid {uid})"),
        _ => format!("{account} (uid {uid})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "j-01JD3M0Q8V5X6W7Y8Z9A0B1C2D";

    fn claims() -> Claims {
        Claims {
            repository: Some("acme/app".into()),
            git_ref: Some("refs/tags/v1".into()),
            workflow: None,
            event: Some("push".into()),
        }
    }

    #[test]
    fn the_listing_shows_control_characters_escaped() {
        let claims = Claims {
            workflow: Some(".github/workflows/x\n\u{1b}]0;pwned\u{7}.yaml".into()),
            ..claims()
        };
        let request = new_request(
            JOB,
            "deploy\r\u{1b}[2Kj-FAKE  job `fine`",
            "release",
            &claims,
            Duration::from_secs(60),
        );
        let line = describe_request(&request);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(
            line.contains("job `deploy\\u{d}\\u{1b}[2Kj-FAKE  job `fine``"),
            "{line}"
        );
        assert!(
            line.contains("workflow=.github/workflows/x\\u{a}\\u{1b}]0;pwned\\u{7}.yaml"),
            "{line}"
        );
        assert_eq!(printable("refs/tags/v1"), "refs/tags/v1");
        // Reordering and invisible characters are escaped too (Trojan Source).
        assert_eq!(
            printable("main\u{202e}\u{2066}v1.0\u{200b}\u{2028}"),
            "main\\u{202e}\\u{2066}v1.0\\u{200b}\\u{2028}"
        );
        assert_eq!(printable("prüfen – 構築"), "prüfen – 構築");
    }

    #[test]
    fn job_ids_are_recognised() {
        assert!(is_job_id(JOB));
        assert!(is_job_id(&crate::run::new_job_id()));
        for bad in [
            "",
            "j-",
            "j-../../etc/passwd",
            "x-01JD3M0Q8V5X6W7Y8Z9A0B1C2D",
        ] {
            assert!(!is_job_id(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn an_approved_job_goes_on_and_its_files_are_gone() {
        let state = tempfile::tempdir().unwrap();
        let approvals = Approvals::new(state.path());
        let request = new_request(JOB, "deploy", "release", &claims(), Duration::from_secs(5));
        approvals.request(&request).unwrap();
        assert_eq!(approvals.waiting().unwrap(), vec![request]);
        // Only root may enter the directory or read a request.
        let mode = |path: &Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(path).unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode(&state.path().join("approvals")), 0o700);
        assert_eq!(mode(&approvals.file(JOB, "pending")), 0o600);
        let given = approvals.answer(JOB, true).unwrap();
        assert!(given.by.contains("uid"));
        assert!(matches!(
            approvals.answer(JOB, true),
            Err(ApprovalError::AlreadyAnswered { .. })
        ));
        let outcome = approvals.wait(JOB, Duration::from_secs(5)).await.unwrap();
        assert_eq!(outcome, Outcome::Approved(given));
        assert_eq!(
            std::fs::read_dir(state.path().join("approvals"))
                .unwrap()
                .count(),
            0
        );
        assert!(matches!(
            approvals.answer(JOB, true),
            Err(ApprovalError::NotWaiting { .. })
        ));
    }

    #[test]
    fn a_request_filed_under_another_jobs_name_is_not_answered() {
        let state = tempfile::tempdir().unwrap();
        let approvals = Approvals::new(state.path());
        let other = "j-01JD3M0Q8V5X6W7Y8Z9A0B1C2E";
        approvals
            .request(&new_request(
                other,
                "d",
                "release",
                &claims(),
                Duration::from_secs(5),
            ))
            .unwrap();
        std::fs::rename(
            approvals.file(other, "pending"),
            approvals.file(JOB, "pending"),
        )
        .unwrap();
        let err = approvals.answer(JOB, true).unwrap_err();
        assert!(matches!(err, ApprovalError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(other), "{err}");
        assert!(!approvals.file(JOB, "approved").exists());
    }

    #[tokio::test]
    async fn unanswered_jobs_time_out_and_rejected_ones_are_refused() {
        let state = tempfile::tempdir().unwrap();
        let approvals = Approvals::new(state.path());
        approvals
            .request(&new_request(JOB, "d", "release", &claims(), Duration::ZERO))
            .unwrap();
        let outcome = approvals
            .wait(JOB, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(approvals.waiting().unwrap().is_empty());

        approvals
            .request(&new_request(JOB, "d", "release", &claims(), Duration::ZERO))
            .unwrap();
        approvals.answer(JOB, false).unwrap();
        let outcome = approvals.wait(JOB, Duration::from_secs(5)).await.unwrap();
        assert!(matches!(outcome, Outcome::Rejected(_)));
    }

    #[test]
    fn answers_need_a_live_waiting_job() {
        let state = tempfile::tempdir().unwrap();
        let approvals = Approvals::new(state.path());
        assert!(matches!(
            approvals.answer("nonsense", true),
            Err(ApprovalError::BadId(_))
        ));
        assert!(matches!(
            approvals.answer(JOB, true),
            Err(ApprovalError::NotWaiting { .. })
        ));
        let mut request = new_request(JOB, "d", "release", &claims(), Duration::ZERO);
        request.pid = u32::MAX; // no such process
        approvals.request(&request).unwrap();
        assert!(matches!(
            approvals.answer(JOB, true),
            Err(ApprovalError::Gone(_))
        ));
        assert!(!state
            .path()
            .join("approvals")
            .join(format!("{JOB}.pending"))
            .exists());
        std::fs::write(
            state
                .path()
                .join("approvals")
                .join(format!("{JOB}.pending")),
            b"{not json",
        )
        .unwrap();
        let err = approvals.answer(JOB, true).unwrap_err().to_string();
        assert!(
            err.contains(".pending: not a readable approval file"),
            "{err}"
        );
    }
}
