//! Processes in network namespaces of their own: the bench re-executing itself in a
//! private namespace (the *host* of the program docs), and the helper processes
//! ([`NsHelper`]) that hold the runner topology's other two namespaces.
//!
//! How the runner topology's sockets get into their namespaces: a socket stays in the
//! network namespace it was created in, and this crate has neither setns(2) (nix's `sched`
//! feature is not enabled for it) nor `unsafe`. So the client end and the bulk server of
//! the runner topology are helper processes of this same program ([`NsHelper`]), each
//! started with `unshare --net`, so each *holds* its namespace: the runner namespace
//! lives exactly as long as the client helper, the internet namespace as long as the
//! bulk helper. Nothing is named in `/run/netns`, and a helper exits when its standard
//! input closes, so no namespace, link or helper is left on the host however the bench
//! ends (an error, a panic, Ctrl-C or SIGKILL): the namespaces, and with them the veth
//! pairs, go when the helpers do. They run the same code as the loopback topology's
//! client and bulk server, and their CPU time is added to the path's (see
//! [`TunnelRun`](crate::tunnel::TunnelRun)).

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use anyhow::{bail, Context};

use crate::client::runner_client_request;
use crate::servers::serve_bulk;

/// Set in the re-executed child that already runs in its own network namespace.
pub(crate) const IN_NETNS: &str = "PROXY_BENCH_IN_NETNS";
/// Set in a helper process of the runner topology: its role ([`NsHelper`]).
pub(crate) const HELPER_ROLE: &str = "PROXY_BENCH_HELPER";

/// Re-runs this program in a new network namespace holding only a loopback interface:
/// the new-connection runs open tens of thousands of loopback connections, and a private
/// namespace gives them their own port space and TIME_WAIT table (tcp_tw_reuse is set
/// there, not on the host), and guarantees no packet can leave (its only other links,
/// those of the runner topology, lead to namespaces that the bench itself makes).
pub(crate) fn reexec_in_netns() -> anyhow::Result<std::process::ExitStatus> {
    let exe = std::env::current_exe()?;
    let mut script = String::from(
        "ip link set lo up && echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse && echo '1024 65000' > /proc/sys/net/ipv4/ip_local_port_range && exec \"$0\" \"$@\"",
    );
    script.push('\n');
    Command::new("unshare")
        .args(["--net", "--", "sh", "-c", &script])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(IN_NETNS, "1")
        .status()
        .context("running unshare --net (needs root)")
}

/// A helper process of the runner topology: this program again, started with
/// `unshare --net` so that it runs in (and holds) a network namespace of its own, driven
/// by one-line requests on its standard input, each answered by one line (`err ...` on
/// failure). Dropping it kills it, which removes its namespace and the veth end in it
/// (and so the whole veth pair); it also exits by itself when its standard input closes,
/// i.e. when the bench ends in any way, so nothing outlives the bench.
pub(crate) struct NsHelper {
    role: &'static str,
    /// Its process id, which names its namespace (`/proc/PID/ns/net`).
    pub(crate) pid: u32,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl NsHelper {
    pub(crate) fn spawn(role: &'static str) -> anyhow::Result<NsHelper> {
        let mut child = Command::new("unshare")
            .args(["--net", "--"])
            .arg(std::env::current_exe()?)
            .env(HELPER_ROLE, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the {role} helper with unshare --net"))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{role} helper: no pipes");
        };
        let mut helper = NsHelper {
            role,
            pid: child.id(),
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        // It says so once it runs in its namespace (unshare(1) execs it, so it keeps the
        // process id; taking the one it reports costs nothing).
        let ready = helper.reply()?;
        helper.pid = ready
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("{role} helper said `{ready}`"))?;
        Ok(helper)
    }

    fn reply(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the {} helper exited", self.role);
        }
        let line = line.trim_end().to_owned();
        if let Some(error) = line.strip_prefix("err ") {
            bail!("{} helper: {error}", self.role);
        }
        Ok(line)
    }

    pub(crate) fn request(&mut self, request: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{request}")?;
        self.stdin.flush()?;
        self.reply()
    }

    /// Runs `ip ARGS` in the helper's network namespace.
    pub(crate) fn ip(&self, args: &str) -> anyhow::Result<()> {
        let netns = format!("--net=/proc/{}/ns/net", self.pid);
        run(Command::new("nsenter")
            .args([netns.as_str(), "--", "ip"])
            .args(args.split_whitespace()))
        .with_context(|| format!("in the {} helper's namespace", self.role))
    }
}

impl Drop for NsHelper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion, failing with its standard error if it fails.
pub(crate) fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Entry point of a helper process ([`NsHelper`]): says `ready PID`, then serves requests
/// from standard input until it closes.
pub(crate) fn helper_main(role: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {}", std::process::id())?;
    out.flush()?;
    let mut lines = std::io::stdin().lock().lines();
    match role {
        // `open - ADDR NAME` (direct) or `open PROXY ADDR NAME`, then `go MIB`: the same
        // client code as the loopback topology's, in the runner namespace.
        "runner-client" => {
            let mut stream = None;
            for line in lines {
                let line = line?;
                let reply = runner_client_request(&line, &mut stream)
                    .unwrap_or_else(|e| format!("err {e:#}").replace('\n', " "));
                writeln!(out, "{reply}")?;
                out.flush()?;
            }
        }
        // `serve ADDR MIB`: the same bulk server as the loopback topology's, in the
        // internet namespace, until standard input closes.
        "internet-bulk" => {
            let line = lines.next().context("no serve request")??;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("bench-bulk")
                .enable_all()
                .build()?;
            let reply = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["serve", addr, mib] => {
                    let (addr, mib): (Ipv4Addr, u64) = (addr.parse()?, mib.parse()?);
                    match runtime.block_on(tokio::net::TcpListener::bind((addr, 0))) {
                        Ok(listener) => {
                            let port = listener.local_addr()?.port();
                            runtime.spawn(serve_bulk(listener, mib));
                            format!("port {port}")
                        }
                        Err(e) => format!("err binding {addr}: {e}"),
                    }
                }
                _ => format!("err unknown request `{line}`"),
            };
            writeln!(out, "{reply}")?;
            out.flush()?;
            for line in lines {
                line?;
            }
        }
        _ => bail!("unknown helper role `{role}`"),
    }
    Ok(())
}
