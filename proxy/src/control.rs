//! The control channel through which the agent registers clients: a unix socket speaking
//! JSON lines, one request and one reply per line.
//!
//! ```text
//! → {"op":"set_client","ip":"10.249.0.2","runner":"r-3","job":"j-1","egress":{"mode":"enforce","allow":[{"host":"example.com"}]}}
//! ← {"ok":true}
//! → {"op":"remove_client","ip":"10.249.0.2"}
//! ← {"ok":true}
//! → {"op":"set_client","ip":"x"}
//! ← {"ok":false,"error":"..."}
//! ```
//!
//! `egress` has exactly the form of the host config's `egress:` section (DESIGN.md 3.3)
//! and is validated and compiled the same way; a policy that does not compile is refused
//! and the previous registration stays. Unknown fields and operations are errors.
//!
//! Security: the socket is created with mode 0600, so only its owner (the agent's user)
//! can connect; runners never reach it (it is a filesystem socket outside their mount
//! namespace, and THREATS.md "what sits beside" lists it as a target). Lines are capped at
//! 1 MiB so a confused peer cannot make the proxy buffer without end.

use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::clients::{ClientEntry, ClientTable};
use crate::config::EgressConfig;
use crate::policy::Policy;

/// One request on the control channel.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Registers or replaces a client.
    SetClient {
        /// The runner's source address.
        ip: IpAddr,
        /// Runner name for audit events.
        runner: String,
        /// Job id for audit events.
        job: String,
        /// The runner's egress policy.
        egress: EgressConfig,
    },
    /// Forgets a client.
    RemoveClient {
        /// The runner's source address.
        ip: IpAddr,
    },
}

/// The reply to one request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Reply {
    /// Whether the request was carried out.
    pub ok: bool,
    /// What went wrong, when not ok.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

const MAX_LINE: usize = 1 << 20;

/// Applies one request line to the table.
pub fn apply(clients: &ClientTable, line: &str) -> Reply {
    let request: Request = match serde_json::from_str(line) {
        Ok(request) => request,
        Err(err) => {
            return Reply {
                ok: false,
                error: Some(format!("bad request: {err}")),
            }
        }
    };
    match request {
        Request::SetClient {
            ip,
            runner,
            job,
            egress,
        } => match Policy::new(&egress) {
            Ok(policy) => {
                tracing::info!(%ip, %runner, %job, rules = policy.len(), "client registered");
                clients.set(
                    ip,
                    ClientEntry::new(Some(runner), Some(job), Arc::new(policy)),
                );
                Reply {
                    ok: true,
                    error: None,
                }
            }
            Err(err) => Reply {
                ok: false,
                error: Some(format!("invalid policy: {err}")),
            },
        },
        Request::RemoveClient { ip } => {
            let known = clients.remove(ip);
            tracing::info!(%ip, known, "client removed");
            Reply {
                ok: true,
                error: None,
            }
        }
    }
}

/// Creates the socket at `path` with mode 0600, replacing a stale socket file.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the control channel until the task is dropped.
pub async fn serve(clients: Arc<ClientTable>, listener: UnixListener) {
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while sessions.try_join_next().is_some() {}
        sessions.spawn(session(Arc::clone(&clients), stream));
    }
}

async fn session(clients: Arc<ClientTable>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE as u64 + 1);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply = if line.len() > MAX_LINE {
            Reply {
                ok: false,
                error: Some("request line too long".to_owned()),
            }
        } else {
            apply(&clients, String::from_utf8_lossy(&line).trim())
        };
        let mut text = serde_json::to_string(&reply).unwrap_or_default();
        text.push('\n');
        if write.write_all(text.as_bytes()).await.is_err() || line.len() > MAX_LINE {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_remove() {
        let table = ClientTable::default();
        let reply = apply(
            &table,
            r#"{"op":"set_client","ip":"10.249.0.2","runner":"r-3","job":"j-1","egress":{"allow":[{"host":"example.com"}]}}"#,
        );
        assert_eq!(
            reply,
            Reply {
                ok: true,
                error: None
            }
        );
        let entry = table.get("10.249.0.2".parse().unwrap()).unwrap();
        assert_eq!(entry.runner.as_deref(), Some("r-3"));
        assert_eq!(entry.policy.len(), 1);
        assert!(apply(&table, r#"{"op":"remove_client","ip":"10.249.0.2"}"#).ok);
        assert!(table.get("10.249.0.2".parse().unwrap()).is_none());
    }

    #[test]
    fn requests_serialise_to_what_apply_reads() {
        let table = ClientTable::default();
        let request = Request::SetClient {
            ip: "10.249.0.3".parse().unwrap(),
            runner: "r".into(),
            job: "j".into(),
            egress: EgressConfig::default(),
        };
        let line = serde_json::to_string(&request).unwrap();
        assert!(line.starts_with(r#"{"op":"set_client""#), "{line}");
        assert!(apply(&table, &line).ok);
    }

    #[test]
    fn errors_are_replies() {
        let table = ClientTable::default();
        for line in [
            "not json",
            r#"{"op":"explode"}"#,
            r#"{"op":"remove_client","ip":"10.0.0.1","extra":1}"#,
            r#"{"op":"set_client","ip":"10.0.0.1","runner":"r","job":"j","egress":{"allow":[{"host":"*.com"}]}}"#,
            r#"{"op":"set_client","ip":"10.0.0.1","runner":"r","job":"j","egress":{"allow":[],"colour":1}}"#,
        ] {
            let reply = apply(&table, line);
            assert!(!reply.ok, "{line}");
            assert!(reply.error.is_some());
        }
        assert!(table.get("10.0.0.1".parse().unwrap()).is_none());
    }

    #[tokio::test]
    async fn over_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let table = Arc::new(ClientTable::default());
        let server = tokio::spawn(serve(Arc::clone(&table), listener));
        let stream = UnixStream::connect(&path).await.unwrap();
        let (read, mut write) = stream.into_split();
        write
            .write_all(b"{\"op\":\"set_client\",\"ip\":\"10.249.0.9\",\"runner\":\"r\",\"job\":\"j\",\"egress\":{}}\n{\"op\":\"nope\"}\n")
            .await
            .unwrap();
        let mut lines = BufReader::new(read).lines();
        assert_eq!(lines.next_line().await.unwrap().unwrap(), r#"{"ok":true}"#);
        assert!(lines
            .next_line()
            .await
            .unwrap()
            .unwrap()
            .starts_with(r#"{"ok":false"#));
        assert!(table.get("10.249.0.9".parse().unwrap()).is_some());
        server.abort();
    }
}
