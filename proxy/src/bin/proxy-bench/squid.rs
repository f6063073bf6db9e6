//! Squid, the proxy egress-proxy is measured against: started from a generated config in
//! a scratch directory (never the system config or service) with the same allow-list,
//! listening on loopback and, for the runner topology, on the runner link's host side.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::allowlist::names;
use crate::topology::{BULK_NAME, RUNNER_HOST_SIDE};

pub(crate) struct Squid {
    child: Option<Child>,
    /// Its listener on loopback.
    pub(crate) addr: SocketAddr,
    /// Its listener on the runner link's host side, if the runner topology is measured.
    pub(crate) runner_addr: Option<SocketAddr>,
}

impl Squid {
    /// `runner_bulk`: the runner topology's bulk server, if it is measured; then Squid
    /// also listens on the runner link and knows [`BULK_NAME`].
    pub(crate) fn start(
        dir: &Path,
        rules: usize,
        runner_bulk: Option<SocketAddr>,
    ) -> anyhow::Result<Squid> {
        let free_port = |ip: Ipv4Addr| -> anyhow::Result<u16> {
            let probe = std::net::TcpListener::bind((ip, 0))?;
            Ok(probe.local_addr()?.port())
        };
        let addr: SocketAddr = (Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST)?).into();
        let runner_addr: Option<SocketAddr> = match runner_bulk {
            Some(_) => Some((RUNNER_HOST_SIDE, free_port(RUNNER_HOST_SIDE)?).into()),
            None => None,
        };
        let d = dir.display();
        let mut domains = names(rules);
        let mut hosts: String = names(rules)
            .iter()
            .map(|n| format!("127.0.0.1 {n}\n"))
            .collect();
        let mut ports = format!("http_port {addr}\n");
        if let (Some(bulk), Some(listen)) = (runner_bulk, runner_addr) {
            domains.push(BULK_NAME.to_owned());
            hosts.push_str(&format!("{} {BULK_NAME}\n", bulk.ip()));
            ports.push_str(&format!("http_port {listen}\n"));
        }
        std::fs::write(dir.join("domains.txt"), domains.join("\n") + "\n")?;
        std::fs::write(dir.join("hosts"), hosts)?;
        // Our own config only: no system config, no cache, no helpers; DNS limited to
        // loopback so nothing is ever asked outside (names come from hosts_file).
        let conf = format!(
            "{ports}pid_filename {d}/squid.pid\ncache_log {d}/cache.log\naccess_log stdio:{d}/access.log\ncache deny all\ncache_mem 8 MB\nhosts_file {d}/hosts\ndns_nameservers 127.0.0.1\nacl allowed dstdomain \"{d}/domains.txt\"\nhttp_access allow allowed\nhttp_access deny all\ncoredump_dir {d}\ncache_effective_user proxy\nshutdown_lifetime 0 seconds\nworkers 1\n"
        );
        std::fs::write(dir.join("squid.conf"), conf)?;
        // squid drops to the `proxy` user and must still write its logs and pid file.
        let chown = |p: &Path| std::os::unix::fs::chown(p, Some(13), Some(13));
        chown(dir)?;
        let child = Command::new("squid")
            .args(["-N", "-f"])
            .arg(dir.join("squid.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting squid")?;
        let squid = Squid {
            child: Some(child),
            addr,
            runner_addr,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        for listen in std::iter::once(addr).chain(runner_addr) {
            while TcpStream::connect(listen).is_err() {
                if Instant::now() > deadline {
                    bail!("squid did not start on {listen}; see {d}/cache.log");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(squid)
    }

    /// Process id of the running Squid (its CPU time counts in the tunnel measurements).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        self.stop();
    }
}
