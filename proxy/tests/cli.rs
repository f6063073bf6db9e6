//! The standalone binary: `egress-proxy --policy FILE --listen ... --audit-log ...` on
//! loopback only. An allowed address (by `cidr` rule) is reached, another is denied with
//! a 403 and a deny line in the audit log, and a bad policy file exits with its location.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn request(proxy: u16, text: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", proxy)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(text.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn standalone_binary_serves_one_policy() {
    let dir = tempfile::tempdir().unwrap();
    // A one-shot origin server on loopback.
    let origin = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_port = origin.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = origin.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
            head.push(byte[0]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
            .unwrap();
    });
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "upstream_dns: [127.0.0.1]\negress:\n  allow:\n    - cidr: 127.0.0.1/32\n      ports: [{origin_port}]\n"
        ),
    )
    .unwrap();
    let audit = dir.path().join("audit.jsonl");
    let port = free_port();
    let dns_port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_egress-proxy"))
        .arg("--policy")
        .arg(&policy)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--dns-listen", &format!("127.0.0.1:{dns_port}")])
        .arg("--audit-log")
        .arg(&audit)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _running = Running(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "proxy did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let allowed = request(
        port,
        &format!("GET http://127.0.0.1:{origin_port}/ HTTP/1.1\r\nHost: 127.0.0.1:{origin_port}\r\nConnection: close\r\n\r\n"),
    );
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    assert!(allowed.ends_with("ok\n"), "{allowed}");
    server.join().unwrap();
    let denied = request(
        port,
        &format!("GET http://127.0.0.2:{origin_port}/ HTTP/1.1\r\nHost: 127.0.0.2:{origin_port}\r\nConnection: close\r\n\r\n"),
    );
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(&audit).unwrap_or_default();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let deny = lines.iter().find(|e| e["verdict"] == "deny");
        let allow = lines.iter().find(|e| e["verdict"] == "allow");
        if let (Some(deny), Some(allow)) = (deny, allow) {
            assert_eq!(deny["ip"], "127.0.0.2");
            assert_eq!(deny["reason"], "address literal not allowed");
            assert_eq!(allow["bytes_down"], 3);
            break;
        }
        assert!(Instant::now() < deadline, "audit log: {log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_bad_policy_file_is_refused_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("bad.yaml");
    std::fs::write(&policy, "egress:\n  allow:\n    - host: \"*.com\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_egress-proxy"))
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:3:"), "{err}");
    assert!(err.contains("public suffix"), "{err}");
}
