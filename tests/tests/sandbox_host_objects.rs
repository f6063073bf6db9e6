//! The host's objects as a job sees them, attacked from inside real sandboxes as root:
//! host files of every shape (modes, owners, special directories, sockets, FIFOs, device
//! nodes, symlinks across trees) are read only as the host's `nobody` may, nothing the job
//! writes reaches them; and kernel objects a job makes (SysV IPC, POSIX message queues,
//! abstract sockets, /dev/shm, background processes) are gone for the next job of its
//! slot and never reach the host's.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runner_agent_tests::agent::{describe, World};
use runner_agent_tests::host_files::{chmod, RemoveOnDrop};
use runner_agent_tests::require_privilege;

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

/// Whether the host's user `nobody` (no groups) can read `path` (following symlinks).
fn nobody_reads(path: &Path) -> Option<String> {
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(path)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every `MARK-...-{tag}` token in `text`.
fn marks(text: &str, tag: &str) -> BTreeSet<String> {
    let suffix = format!("-{tag}");
    text.split(|c: char| c.is_whitespace() || c == '\'' || c == '"' || c == ':')
        .filter(|w| w.starts_with("MARK-") && w.ends_with(&suffix))
        .map(str::to_owned)
        .collect()
}

/// A host unix socket listener that records whatever connects to it.
struct SocketTrap {
    stop: Arc<AtomicBool>,
    hits: Arc<Mutex<Vec<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SocketTrap {
    fn bind(path: &Path, mode: u32) -> SocketTrap {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        chmod(path, mode);
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(Mutex::new(Vec::new()));
        let (stop2, hits2, name) = (stop.clone(), hits.clone(), path.display().to_string());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream
                            .set_read_timeout(Some(Duration::from_millis(500)))
                            .ok();
                        let mut buf = [0u8; 256];
                        let n = stream.read(&mut buf).unwrap_or(0);
                        hits2
                            .lock()
                            .unwrap()
                            .push(format!("{name}: {:?}", String::from_utf8_lossy(&buf[..n])));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        SocketTrap {
            stop,
            hits,
            thread: Some(thread),
        }
    }

    fn hits(&self) -> Vec<String> {
        self.hits.lock().unwrap().clone()
    }
}

impl Drop for SocketTrap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An abstract unix socket of the host's network namespace (the test's own).
fn abstract_listener(name: &str) -> (std::os::unix::net::UnixListener, Arc<Mutex<Vec<String>>>) {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    (listener, Arc::new(Mutex::new(Vec::new())))
}

/// Host files of every shape in every kind of tree; the job, root inside, tries to read,
/// write and connect to all of them. Oracle: the host's `nobody` (no groups) reading the
/// same path. Whatever the job reads must be readable by `nobody`; nothing it writes may
/// reach the host; no host socket, FIFO or device may be reached.
#[test]
fn host_files_of_every_shape_are_read_only_as_nobody_may() {
    require_privilege!();
    let world = World::new("", "");
    let tag = format!("ra-shape-{}", std::process::id());
    let bases: Vec<PathBuf> = vec![
        PathBuf::from(format!("/var/lib/{tag}")),
        PathBuf::from(format!("/etc/{tag}")),
        PathBuf::from(format!("/opt/{tag}")),
        PathBuf::from(format!("/usr/local/{tag}")),
        PathBuf::from(format!("/srv/{tag}")),
        PathBuf::from(format!("/{tag}-data")),
    ];
    let stage = PathBuf::from(format!("/{tag}-stage"));
    let mut cleanup: Vec<PathBuf> = bases.clone();
    cleanup.push(stage.clone());
    let _cleanup = RemoveOnDrop(cleanup);
    std::fs::create_dir_all(&stage).unwrap();
    chmod(&stage, 0o700);

    let mut files: Vec<PathBuf> = Vec::new();
    let mut sockets = Vec::new();
    let mut fifos: Vec<PathBuf> = Vec::new();
    let mut devices: Vec<PathBuf> = Vec::new();
    let write = |path: &Path, mode: u32| {
        std::fs::write(
            path,
            format!(
                "MARK-{}-{tag}\n",
                path.display().to_string().replace('/', "_")
            ),
        )
        .unwrap();
        chmod(path, mode);
    };
    for (i, base) in bases.iter().enumerate() {
        std::fs::create_dir_all(base).unwrap();
        chmod(base, 0o755);
        let f = |n: &str| base.join(n);
        for (name, mode) in [
            ("f600", 0o600),
            ("f640", 0o640),
            ("f060", 0o060),
            ("f602", 0o602),
            ("f604", 0o604),
        ] {
            write(&f(name), mode);
            files.push(f(name));
        }
        write(&f("u1000"), 0o600);
        chown(&f("u1000"), 1000, 1000);
        files.push(f("u1000"));
        write(&f("g1000"), 0o660);
        chown(&f("g1000"), 0, 1000);
        files.push(f("g1000"));
        for (dir, mode) in [
            ("d711", 0o711),
            ("d733", 0o733),
            ("d2750", 0o2750),
            ("d1777", 0o1777),
            ("d2755", 0o2755),
            ("d0755", 0o755),
        ] {
            std::fs::create_dir_all(f(dir)).unwrap();
            write(&f(dir).join("known"), 0o644);
            write(&f(dir).join("priv"), 0o600);
            chown(&f(dir).join("priv"), 1000, 1000);
            files.push(f(dir).join("known"));
            files.push(f(dir).join("priv"));
            chmod(&f(dir), mode);
        }
        std::fs::create_dir_all(f("d0755/deep/deeper")).unwrap();
        write(&f("d0755/deep/deeper/f600"), 0o600);
        files.push(f("d0755/deep/deeper/f600"));
        // Created public, made private just before the job.
        write(&f("later"), 0o644);
        files.push(f("later"));
        // Private elsewhere, renamed in.
        write(&stage.join(format!("renamed{i}")), 0o600);
        std::fs::rename(stage.join(format!("renamed{i}")), f("renamed")).unwrap();
        files.push(f("renamed"));
        // Private inode with a second name in a closed directory.
        write(&stage.join(format!("linked{i}")), 0o600);
        std::fs::hard_link(stage.join(format!("linked{i}")), f("linked")).unwrap();
        files.push(f("linked"));
        // Public in a private directory, linked into the tree.
        write(&stage.join(format!("publink{i}")), 0o644);
        std::fs::hard_link(stage.join(format!("publink{i}")), f("publink")).unwrap();
        files.push(f("publink"));
        // Symlink to the next base's private file.
        let next = &bases[(i + 1) % bases.len()];
        std::os::unix::fs::symlink(next.join("f600"), f("sl-next-f600")).unwrap();
        std::os::unix::fs::symlink(next.join("d711/known"), f("sl-next-d711")).unwrap();
        files.push(f("sl-next-f600"));
        files.push(f("sl-next-d711"));
        // Special files, open to everyone.
        sockets.push(SocketTrap::bind(&f("sock"), 0o777));
        nix::unistd::mkfifo(&f("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
        chmod(&f("fifo"), 0o666);
        fifos.push(f("fifo"));
        nix::sys::stat::mknod(
            &f("kmsg"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 11),
        )
        .unwrap();
        chmod(&f("kmsg"), 0o666);
        devices.push(f("kmsg"));
    }
    for base in &bases {
        chmod(&base.join("later"), 0o600);
    }
    // The host end of every FIFO, holding it open both ways so a writer never blocks.
    let fifo_ends: Vec<std::fs::File> = fifos
        .iter()
        .map(|p| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p)
                .unwrap()
        })
        .collect();
    // Something for a reader inside to find.
    for mut end in &fifo_ends {
        use std::io::Write;
        end.write_all(format!("MARK-fifo-content-{tag}\n").as_bytes())
            .unwrap();
    }
    let abstract_name = format!("ra-abstract-{tag}");
    let (abs_listener, _abs_hits) = abstract_listener(&abstract_name);

    let list = |paths: &[PathBuf]| {
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let dirs: Vec<PathBuf> = bases
        .iter()
        .flat_map(|b| {
            ["", "d711", "d733", "d2750", "d1777", "d2755", "d0755"]
                .iter()
                .map(move |d| if d.is_empty() { b.clone() } else { b.join(d) })
        })
        .collect();
    let job = world.job(
        "shapes.yaml",
        &format!(
            r#"name: shapes
steps:
  - name: read and write everything
    run: |
      set +e
      for f in {files}; do
        c=$(cat "$f" 2>/dev/null) && echo "READ $f $c"
      done
      for d in {dirs}; do ls -A "$d" 2>/dev/null | sed "s|^|LS $d/|"; done
      grep -rs "MARK-" /etc /var /opt /usr/local /srv /{tag}-data 2>/dev/null | grep -- "-{tag}" | sed 's/^/GREP /' | head -100
      for f in {files}; do echo "WRITE-{tag}" >> "$f" 2>/dev/null && echo "WROTE-INSIDE $f"; done
      for d in {dirs}; do touch "$d/new-{tag}" 2>/dev/null && echo "CREATED-INSIDE $d"; done
      python3 - {sockets} <<'PY'
      import os, socket, sys, errno
      for path in sys.argv[1:]:
          s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
          s.settimeout(2)
          try:
              s.connect(path)
              s.sendall(b"SOCK-FROM-JOB")
              print("SOCKET-CONNECTED", path, flush=True)
          except OSError as e:
              print("socket refused", path, e, flush=True)
          s.close()
      s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
      try:
          s.connect("\0{abstract_name}")
          print("ABSTRACT-CONNECTED", flush=True)
      except OSError as e:
          print("abstract refused", e, flush=True)
      PY
      for p in {fifos}; do
        python3 - "$p" <<'PY'
      import os, sys
      p = sys.argv[1]
      try:
          fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
          data = os.read(fd, 200)
          print("FIFO-READ", p, data, flush=True)
      except OSError as e:
          print("fifo read refused", p, e, flush=True)
      try:
          fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
          os.write(fd, b"FIFO-FROM-JOB-{tag}\n")
          print("FIFO-WROTE", p, flush=True)
      except OSError as e:
          print("fifo write refused", p, e, flush=True)
      PY
      done
      for d in {devices}; do
        echo "KMSG-FROM-JOB-{tag}" > "$d" 2>/dev/null && echo "DEVICE-WROTE $d"
        head -c 64 "$d" >/dev/null 2>&1 && echo "DEVICE-READ $d"
      done
      true
"#,
            files = list(&files),
            dirs = list(&dirs),
            sockets = list(&sockets.iter().zip(&bases).map(|(_, b)| b.join("sock")).collect::<Vec<_>>()),
            fifos = list(&fifos),
            devices = list(&devices),
        ),
    );
    let output = world.run(&job);
    std::thread::sleep(Duration::from_millis(300));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{}", describe(&output));
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));

    let mut problems = Vec::new();
    // Reads: every mark seen inside must be readable by nobody on the host.
    let mut nobody_marks = BTreeSet::new();
    for f in &files {
        if let Some(text) = nobody_reads(f) {
            nobody_marks.extend(marks(&text, &tag));
        }
    }
    nobody_marks.insert(format!("MARK-fifo-content-{tag}"));
    for seen in marks(&stdout, &tag) {
        if !nobody_marks.contains(&seen) {
            let lines: Vec<&str> = stdout.lines().filter(|l| l.contains(&seen)).collect();
            problems.push(format!(
                "read inside what nobody may not read: {seen}: {lines:?}"
            ));
        }
    }
    // Listings: the names in a directory nobody cannot list must not be listed.
    for d in &dirs {
        let nobody_lists = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "ls",
                "-A",
            ])
            .arg(d)
            .output()
            .unwrap()
            .status
            .success();
        if !nobody_lists {
            let prefix = format!("LS {}/", d.display());
            let listed: Vec<&str> = stdout.lines().filter(|l| l.starts_with(&prefix)).collect();
            if !listed.is_empty() {
                problems.push(format!(
                    "listed inside what nobody may not list: {listed:?}"
                ));
            }
        }
    }
    // Writes: nothing reached the host.
    for f in &files {
        if let Ok(text) = std::fs::read_to_string(f) {
            if text.contains("WRITE-") {
                problems.push(format!("the job wrote into host file {}", f.display()));
            }
        }
    }
    for d in &dirs {
        if d.join(format!("new-{tag}")).exists() {
            problems.push(format!("the job created a host file in {}", d.display()));
        }
    }
    for s in &sockets {
        for hit in s.hits() {
            problems.push(format!("the job reached a host unix socket: {hit}"));
        }
    }
    if abs_listener.accept().is_ok() || stdout.contains("ABSTRACT-CONNECTED") {
        problems.push("the job reached the host's abstract unix socket".into());
    }
    for (end, path) in fifo_ends.iter().zip(&fifos) {
        let mut buf = vec![0u8; 4096];
        let n = (&*end).read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]);
        if text.contains("FIFO-FROM-JOB") {
            problems.push(format!("the job wrote into host FIFO {}", path.display()));
        }
        if !text.contains("MARK-fifo-content") {
            problems.push(format!(
                "the job drained host FIFO {} (host data gone: {text:?})",
                path.display()
            ));
        }
    }
    let dmesg = std::process::Command::new("dmesg").output().unwrap();
    if String::from_utf8_lossy(&dmesg.stdout).contains(&format!("KMSG-FROM-JOB-{tag}")) {
        problems.push("the job wrote into the host's kernel log through a device node".into());
    }
    for line in stdout.lines() {
        if [
            "SOCKET-CONNECTED",
            "FIFO-READ",
            "FIFO-WROTE",
            "DEVICE-WROTE",
            "DEVICE-READ",
        ]
        .iter()
        .any(|m| line.starts_with(m))
        {
            println!("note (inside only, not the host's object): {line}");
        }
    }
    drop(sockets);
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}

/// Whether `key_hex` appears in the host's SysV IPC tables (the test's own IPC namespace).
fn host_sysvipc_has_key(key_hex: &str) -> bool {
    let key = match i64::from_str_radix(key_hex.trim_start_matches("0x"), 16) {
        Ok(k) => k as i32,
        Err(_) => return false,
    };
    ["shm", "msg", "sem"].iter().any(|t| {
        std::fs::read_to_string(format!("/proc/sysvipc/{t}"))
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|k| k.parse::<i32>().ok())
                    == Some(key)
            })
    })
}

/// What one job of a slot leaves in kernel objects that are not files (SysV IPC, POSIX
/// message queues, keyrings, /dev/shm, abstract sockets, a background process) must not
/// be met by the next job of the same slot, nor land in the host's namespaces.
#[test]
fn kernel_objects_do_not_outlive_the_job_into_the_next_one_of_its_slot() {
    require_privilege!();
    let world = World::new("max_concurrent: 1", "");
    let tag = format!("ra-persist-{}", std::process::id());
    let first = world.job(
        "first.yaml",
        &format!(
            r#"name: first
steps:
  - name: leave things behind
    run: |
      set +e
      echo "SHM-KEY $(ipcmk -M 4096 2>&1)"
      echo "MSG-KEY $(ipcmk -Q 2>&1)"
      echo "SEM-KEY $(ipcmk -S 1 2>&1)"
      ipcs -a | sed 's/^/IPCS1 /'
      echo left > /dev/shm/{tag}
      python3 - <<'PY'
      import ctypes, os
      rt = ctypes.CDLL("librt.so.1", use_errno=True)
      rt.mq_open.restype = ctypes.c_int
      fd = rt.mq_open(b"/{tag}", os.O_CREAT | os.O_RDWR, 0o666, None)
      print("MQ-OPEN", fd, os.strerror(ctypes.get_errno()) if fd < 0 else "ok", flush=True)
      if fd >= 0:
          rt.mq_send(fd, b"persist", 7, 0)
      libc = ctypes.CDLL(None, use_errno=True)
      libc.syscall.restype = ctypes.c_long
      # add_key("user", "{tag}", "v", 1, KEY_SPEC_USER_KEYRING)
      r = libc.syscall(248, b"user", b"{tag}", b"v", 1, -4)
      print("ADD-KEY", r, os.strerror(ctypes.get_errno()) if r < 0 else "ok", flush=True)
      r = libc.syscall(248, b"user", b"{tag}-s", b"v", 1, -3)
      print("ADD-KEY-SESSION", r, os.strerror(ctypes.get_errno()) if r < 0 else "ok", flush=True)
      PY
      # A background listener on an abstract socket, detached from the step.
      setsid python3 -c '
      import socket, time
      s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
      s.bind("\0{tag}")
      s.listen(1)
      time.sleep(600)
      ' </dev/null >/dev/null 2>&1 &
      sleep 0.5
      true
"#
        ),
    );
    let second = world.job(
        "second.yaml",
        &format!(
            r#"name: second
steps:
  - name: look for what the first left
    run: |
      set +e
      echo "SLOT $RUNNER_NAME"
      ipcs -a | sed 's/^/IPCS2 /'
      test -e /dev/shm/{tag} && echo "PERSISTED-shm-file"
      python3 - <<'PY'
      import ctypes, os, socket
      rt = ctypes.CDLL("librt.so.1", use_errno=True)
      fd = rt.mq_open(b"/{tag}", os.O_RDWR, 0, None)
      if fd >= 0:
          print("PERSISTED-mqueue", flush=True)
      libc = ctypes.CDLL(None, use_errno=True)
      libc.syscall.restype = ctypes.c_long
      # request_key("user", "{tag}", NULL, 0)
      r = libc.syscall(249, b"user", b"{tag}", None, 0)
      if r >= 0:
          print("PERSISTED-key", flush=True)
      s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
      try:
          s.connect("\0{tag}")
          print("PERSISTED-abstract-socket", flush=True)
      except OSError:
          pass
      PY
      ps -eo pid,comm,args | grep -v grep | grep -q "{tag}" && echo "PERSISTED-process"
      true
"#
        ),
    );
    let out1 = world.run(&first);
    println!("{}", describe(&out1));
    let stdout1 = String::from_utf8_lossy(&out1.stdout).into_owned();
    assert_eq!(out1.status.code(), Some(0), "{}", describe(&out1));
    let out2 = world.run(&second);
    println!("{}", describe(&out2));
    let stdout2 = String::from_utf8_lossy(&out2.stdout).into_owned();
    assert_eq!(out2.status.code(), Some(0), "{}", describe(&out2));
    let mut problems: Vec<String> = stdout2
        .lines()
        .filter(|l| l.starts_with("PERSISTED"))
        .map(|l| format!("second job met: {l}"))
        .collect();
    // SysV objects of the first, listed in the second (a key and owner match).
    for line in stdout1.lines().filter(|l| l.starts_with("IPCS1 0x")) {
        let key = line.split_whitespace().nth(1).unwrap_or("");
        if key != "0x00000000"
            && stdout2
                .lines()
                .any(|l| l.starts_with("IPCS2 ") && l.split_whitespace().nth(1) == Some(key))
        {
            problems.push(format!("second job lists the first's SysV object {key}"));
        }
        if host_sysvipc_has_key(key) {
            problems.push(format!(
                "SysV object {key} of the job is in the host's IPC namespace"
            ));
        }
    }
    if std::path::Path::new(&format!("/dev/shm/{tag}")).exists() {
        let _ = std::fs::remove_file(format!("/dev/shm/{tag}"));
        problems.push("the job's /dev/shm file is on the host".into());
    }
    if std::path::Path::new(&format!("/dev/mqueue/{tag}")).exists() {
        problems.push("the job's message queue is on the host".into());
    }
    for key in ["ADD-KEY ", "ADD-KEY-SESSION "] {
        if stdout1
            .lines()
            .any(|l| l.starts_with(key) && l.ends_with(" ok"))
        {
            problems.push(format!(
                "{key}: the job created a kernel key (keyrings are not namespaced)"
            ));
        }
    }
    assert!(problems.is_empty(), "holes:\n{}", problems.join("\n"));
}
