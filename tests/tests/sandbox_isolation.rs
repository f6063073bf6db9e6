//! Isolation of a runner, attacked from inside as root: it sees only its own processes,
//! hostname and network, /sys is read-only, masked host paths are hidden, and root inside
//! can neither change the host root nor load kernel code, call bpf() or mount.

use runner_agent_tests::agent::{describe, World, HOST_MARKER_IF};
use runner_agent_tests::host_files::{chmod, RemoveOnDrop};
use runner_agent_tests::require_privilege;

/// Every check prints `OK <name>` as its last act; a check that fails stops the step
/// (bash -e), so a missing OK line names the property that did not hold.
const CHECKS: &[&str] = &[
    "processes",
    "hostname",
    "network",
    "sys",
    "masks",
    "ownership",
    "overlay",
    "kernel",
    "mount",
];

#[test]
fn a_job_sees_only_its_sandbox_and_cannot_touch_the_host() {
    require_privilege!();
    let world = World::new("", "");
    let marker = format!("isolation-{}", std::process::id());
    std::fs::write(world.state_dir.join("secret"), "top secret").unwrap_or_else(|_| {
        std::fs::create_dir_all(&world.state_dir).unwrap();
        std::fs::write(world.state_dir.join("secret"), "top secret").unwrap();
    });
    let host_name = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let job = world.job(
        "isolation.yaml",
        &format!(
            r#"name: isolation
steps:
  - name: own processes
    run: |
      n=$(ls /proc | grep -cE '^[0-9]+$')
      echo "processes visible: $n"
      test "$n" -lt 10
      tr '\0' ' ' < /proc/1/cmdline | grep -q __sandbox-init
      echo OK processes
  - name: own hostname
    run: |
      test "$(hostname)" = "$RUNNER_NAME"
      test "$(hostname)" != "{host_name}"
      echo OK hostname
  - name: own network only
    run: |
      links=$(ls /sys/class/net | sort | tr '\n' ' ')
      echo "links: $links"
      test "$links" = "eth0 lo "
      test ! -e /sys/class/net/{HOST_MARKER_IF}
      # only the connected /30, no default route (destination 00000000)
      cat /proc/net/route
      ! awk 'NR>1 && $2=="00000000"' /proc/net/route | grep -q .
      # no IPv6 address on eth0 (not even link-local)
      ! grep -q eth0 /proc/net/if_inet6
      # the veth's largest MTU: its only peer is the host side (network::RUNNER_LINK_MTU)
      echo "eth0 mtu: $(cat /sys/class/net/eth0/mtu)"
      test "$(cat /sys/class/net/eth0/mtu)" = {mtu}
      echo OK network
  - name: read-only sys
    run: |
      if echo 1 > /sys/kernel/mm/ksm/run 2>/dev/null; then echo "wrote to /sys"; exit 1; fi
      if mkdir /sys/fs/cgroup/escape 2>/dev/null; then echo "made a cgroup"; exit 1; fi
      awk '$2=="/sys" {{print $4}}' /proc/mounts | grep -qE '(^|,)ro(,|$)'
      echo OK sys
  - name: masked host paths
    run: |
      test ! -e /etc/shadow
      test -z "$(ls -A /root)"
      test -z "$(ls -A /home)"
      test ! -e {state}/secret
      ! grep -rqs "top secret" /tmp /var /run 2>/dev/null
      echo OK masks
  - name: ownership
    run: |
      test "$(stat -c %U:%G /usr/bin)" = "root:root"
      test "$(id -u)" = 0
      echo OK ownership
  - name: overlay
    run: |
      echo changed > /usr/local/{marker}
      echo "root:x:0:0:changed:/root:/bin/bash" >> /etc/passwd
      mkdir -p /usr/lib/{marker}.d && touch /usr/bin/{marker}
      echo OK overlay
  - name: no kernel reach
    run: |
      # finit_module(313), init_module(175), bpf(321), perf_event_open(298), kexec_load(246)
      for nr in 313 175 321 298 246; do
        perl -e '$r = syscall($ARGV[0], 0, 0, 0); exit($r == -1 && $!{{EPERM}} ? 0 : 1)' $nr \
          || {{ echo "syscall $nr was not refused with EPERM"; exit 1; }}
      done
      if cat /proc/kcore | head -c1 | grep -q .; then echo "read kcore"; exit 1; fi
      if echo 1 > /proc/sys/vm/drop_caches 2>/dev/null; then echo "wrote /proc/sys"; exit 1; fi
      if echo b > /proc/sysrq-trigger 2>/dev/null; then echo "wrote sysrq-trigger"; exit 1; fi
      # raw and packet sockets need CAP_NET_RAW over the network namespace: not ours
      perl -e 'use Socket; socket(my $s, PF_INET, SOCK_RAW, 1) ? exit 1 : exit 0' \
        || {{ echo "opened a raw socket"; exit 1; }}
      perl -e 'use Socket; socket(my $s, 17, SOCK_RAW, 0) ? exit 1 : exit 0' \
        || {{ echo "opened a packet socket"; exit 1; }}
      # pid 1 (the init that talks to the agent) cannot be inspected or killed
      if ls /proc/1/fd >/dev/null 2>&1; then echo "listed init's fds"; exit 1; fi
      kill -9 1 2>/dev/null || true
      sleep 0.1
      tr '\0' ' ' < /proc/1/cmdline | grep -q __sandbox-init
      echo OK kernel
  - name: no mounts or namespaces
    run: |
      if mount -t tmpfs none /mnt 2>/dev/null; then echo "mounted"; exit 1; fi
      if mount --bind / /mnt 2>/dev/null; then echo "bind-mounted"; exit 1; fi
      if umount /proc 2>/dev/null; then echo "unmounted /proc"; exit 1; fi
      if unshare -U true 2>/dev/null; then echo "new user namespace"; exit 1; fi
      if unshare -n true 2>/dev/null; then echo "new net namespace"; exit 1; fi
      if hostname evil 2>/dev/null; then echo "changed hostname"; exit 1; fi
      if ip addr add 10.9.9.9/32 dev eth0 2>/dev/null; then echo "added address"; exit 1; fi
      echo OK mount
"#,
            state = world.state_dir.display(),
            mtu = runner_agent::network::RUNNER_LINK_MTU,
        ),
    );
    let output = world.run(&job);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    for check in CHECKS {
        assert!(
            stdout.lines().any(|l| l == format!("OK {check}")),
            "check {check} did not pass\n{}",
            describe(&output)
        );
    }
    // The job's writes went to its own layer, never to the host.
    assert!(!std::path::Path::new(&format!("/usr/local/{marker}")).exists());
    assert!(!std::path::Path::new(&format!("/usr/bin/{marker}")).exists());
    assert!(!std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .contains("changed"));
    world.assert_job_left_nothing(&output);
}

/// The job's root may change the trees packages install into (the host's root appears as
/// its own there), but reads the host's files only as the host's "other" users may. Host
/// files that no mask names, readable by their owner alone: once any of them was readable
/// inside (TLS keys, other services' state, another agent's secret store).
#[test]
fn a_job_reads_the_hosts_files_only_as_anyone_may_and_still_installs_packages() {
    use std::os::unix::fs::PermissionsExt;
    require_privilege!();
    let world = World::new("", "");
    let tag = format!("ra-private-{}", std::process::id());
    // In an idmapped tree (/var) and in the rest of the host (/srv), and in /etc.
    let var = std::path::PathBuf::from(format!("/var/lib/{tag}"));
    let srv = std::path::PathBuf::from(format!("/srv/{tag}"));
    let etc_key = std::path::PathBuf::from(format!("/etc/{tag}.key"));
    let _cleanup = RemoveOnDrop(vec![var.clone(), srv.clone(), etc_key.clone()]);
    for dir in [&var, &srv] {
        std::fs::create_dir_all(dir.join("closed")).unwrap();
        std::fs::write(dir.join("closed/inside"), format!("SECRET-closed-{tag}")).unwrap();
        chmod(&dir.join("closed"), 0o700);
        std::fs::write(dir.join("key"), format!("SECRET-key-{tag}")).unwrap();
        chmod(&dir.join("key"), 0o600);
        std::fs::write(dir.join("group-key"), format!("SECRET-group-{tag}")).unwrap();
        chmod(&dir.join("group-key"), 0o640);
        std::fs::write(dir.join("public"), format!("PUBLIC-{tag}")).unwrap();
        chmod(&dir.join("public"), 0o644);
    }
    std::fs::write(&etc_key, format!("SECRET-etc-{tag}")).unwrap();
    chmod(&etc_key, 0o600);

    let job = world.job(
        "private.yaml",
        &format!(
            r#"name: private
steps:
  - name: read the host's private files
    run: |
      set +e
      for dir in {var} {srv}; do
        for f in key group-key closed/inside public; do cat "$dir/$f"; echo; done
        ls -A "$dir/closed"
        cp -a "$dir/key" /tmp/copied && cat /tmp/copied
        chmod 644 "$dir/key" && cat "$dir/key"
        grep -rs SECRET "$dir"
      done
      cat {etc_key}
      grep -rs "SECRET-" /etc /var /srv 2>/dev/null | head -3
      true
  - name: install a package
    run: |
      mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/bin
      printf 'Package: {tag}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.invalid>\nDescription: probe\n' > /tmp/pkg/DEBIAN/control
      printf '#!/bin/sh\necho INSTALLED-{tag}\n' > /tmp/pkg/usr/bin/{tag}
      chmod 755 /tmp/pkg/usr/bin/{tag}
      dpkg-deb --build /tmp/pkg /tmp/pkg.deb >/dev/null
      dpkg -i /tmp/pkg.deb >/dev/null
      {tag}
      echo "10.9.9.9 {tag}" >> /etc/hosts && grep -q {tag} /etc/hosts && echo ETC-WRITABLE
  - name: the rest of the host is read-only
    run: |
      if touch {srv}/new 2>/dev/null; then echo "wrote into {srv}"; exit 1; fi
      test "$(stat -c %U /usr/bin)" = root
      test "$(stat -c %U {srv})" = nobody
      echo REST-READ-ONLY
"#,
            var = var.display(),
            srv = srv.display(),
            etc_key = etc_key.display(),
        ),
    );
    let output = world.run(&job);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        !stdout.contains("SECRET-"),
        "a private host file was read inside:\n{}",
        describe(&output)
    );
    assert_eq!(
        stdout.matches(&format!("PUBLIC-{tag}")).count(),
        2,
        "{}",
        describe(&output)
    );
    for line in [
        format!("INSTALLED-{tag}"),
        "ETC-WRITABLE".to_owned(),
        "REST-READ-ONLY".to_owned(),
    ] {
        assert!(stdout.contains(&line), "no {line}:\n{}", describe(&output));
    }
    // Nothing of it reached the host.
    assert!(!std::path::Path::new(&format!("/usr/bin/{tag}")).exists());
    assert!(!std::fs::read_to_string("/etc/hosts")
        .unwrap()
        .contains(&tag));
    assert_eq!(
        std::fs::metadata(var.join("key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    world.assert_job_left_nothing(&output);
}

/// What the layers show of a tree is what its clone holds, and that is what is judged:
/// files under a filesystem mounted inside /var (the clone shows what lies under the
/// mount; the live tree, once walked instead, showed the mount's content), a btrfs
/// subvolume (part of the same mount with a device number of its own, once skipped) and
/// a tree whose top is closed to other users (/opt at 0700, once never judged). Each was
/// read inside by an attack run from a sandbox. The host's mounts are made in a private
/// mount namespace of the agent's, so this host's own stay as they are.
#[test]
fn private_files_under_mounts_in_subvolumes_and_closed_trees_stay_hidden() {
    require_privilege!();
    let world = World::new("", "");
    let tag = format!("ra-under-{}", std::process::id());
    let under_tmpfs = std::path::PathBuf::from(format!("/var/lib/{tag}-tmpfs"));
    let under_bind = std::path::PathBuf::from(format!("/var/lib/{tag}-bind"));
    let public = std::path::PathBuf::from(format!("/var/lib/{tag}-public"));
    let _cleanup = RemoveOnDrop(vec![
        under_tmpfs.clone(),
        under_bind.clone(),
        public.clone(),
    ]);
    for dir in [&under_tmpfs, &under_bind] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("under"), format!("SECRET-under-{tag}")).unwrap();
        chmod(&dir.join("under"), 0o600);
    }
    std::fs::create_dir_all(&public).unwrap();
    std::fs::write(public.join("readme"), format!("PUBLIC-{tag}")).unwrap();

    // 1. Files under mounts in /var.
    let job = world.job(
        "mounts.yaml",
        &format!(
            "name: mounts\nsteps:\n  - name: read\n    run: |\n      set +e\n      cat {t}/under {b}/under\n      true\n",
            t = under_tmpfs.display(),
            b = under_bind.display()
        ),
    );
    let output = world.run_with_mounts(
        &format!(
            "mount -t tmpfs -o mode=0755 none {t}\nmount --bind {p} {b}",
            t = under_tmpfs.display(),
            b = under_bind.display(),
            p = public.display()
        ),
        &job,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(!stdout.contains("SECRET-"), "{}", describe(&output));

    // 2. /opt closed to other users: what is under it is private, whatever its own mode.
    let job = world.job(
        "closed.yaml",
        "name: closed\nsteps:\n  - name: read\n    run: |\n      set +e\n      cat /opt/app/token /opt/top-token\n      true\n",
    );
    let output = world.run_with_mounts(
        &format!(
            "mount -t tmpfs -o mode=0700 none /opt\nmkdir -m 755 /opt/app\necho SECRET-closed-{tag} > /opt/app/token\necho SECRET-top-{tag} > /opt/top-token\nchmod 644 /opt/app/token /opt/top-token"
        ),
        &job,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(!stdout.contains("SECRET-"), "{}", describe(&output));

    // 3. A btrfs /opt with a 0700 subvolume holding a 0600 file, beside a plain 0700
    // directory and a 0600 file; a public file shows that /opt itself is there.
    if std::process::Command::new("mkfs.btrfs")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "mkfs.btrfs is missing (scripts/setup.sh installs btrfs-progs)"
        );
        println!("skipped the btrfs part: no mkfs.btrfs (package btrfs-progs)");
        return;
    }
    let image = world.dir.path().join("opt.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let mkfs = std::process::Command::new("mkfs.btrfs")
        .args(["-q", "-f"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(mkfs.status.success(), "mkfs.btrfs: {mkfs:?}");
    let job = world.job(
        "btrfs.yaml",
        "name: btrfs\nsteps:\n  - name: read\n    run: |\n      set +e\n      cat /opt/public /opt/machines/key /opt/plain/key /opt/top-key\n      true\n",
    );
    let output = world.run_with_mounts(
        &format!(
            "mount -o loop {image} /opt\nbtrfs subvolume create /opt/machines >/dev/null\necho SECRET-subvolume-{tag} > /opt/machines/key\nmkdir /opt/plain\necho SECRET-plain-{tag} > /opt/plain/key\necho SECRET-top-{tag} > /opt/top-key\necho PUBLIC-btrfs-{tag} > /opt/public\nchmod 600 /opt/machines/key /opt/plain/key /opt/top-key\nchmod 700 /opt/machines /opt/plain\nchmod 644 /opt/public\nchmod 755 /opt",
            image = image.display()
        ),
        &job,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(!stdout.contains("SECRET-"), "{}", describe(&output));
    assert!(
        stdout.contains(&format!("PUBLIC-btrfs-{tag}")),
        "{}",
        describe(&output)
    );
}

/// Private host files whose names are not UTF-8, or hold a newline, a comma or a colon,
/// in the scanned trees: hidden like any other (and the job still runs).
#[test]
fn private_files_with_odd_names_are_hidden() {
    use std::os::unix::ffi::OsStrExt;
    require_privilege!();
    let world = World::new("", "");
    let tag = format!("ra-odd-{}", std::process::id());
    let base = std::path::PathBuf::from(format!("/var/lib/{tag}"));
    let _cleanup = RemoveOnDrop(vec![base.clone()]);
    std::fs::create_dir_all(&base).unwrap();
    chmod(&base, 0o755);
    let names: Vec<Vec<u8>> = vec![
        b"new\nline".to_vec(),
        b"comma,colon:key".to_vec(),
        b"back\\slash".to_vec(),
        b" lead-space".to_vec(),
    ];
    for (i, name) in names.iter().enumerate() {
        let path = base.join(std::ffi::OsStr::from_bytes(name));
        std::fs::write(&path, format!("SECRET-odd{i}-{tag}\n")).unwrap();
        chmod(&path, 0o600);
    }
    let job = world.job(
        "odd.yaml",
        &format!(
            "name: odd\nsteps:\n  - name: read\n    run: |\n      set +e\n      ls -A {b} | od -c | head\n      cat {b}/* {b}/*/* 2>&1\n      echo STEP-RAN\n      true\n",
            b = base.display()
        ),
    );
    let output = world.run(&job);
    println!("{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains("SECRET-"),
        "private files with odd names were read:\n{}",
        describe(&output)
    );
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));

    // Then one private file (or directory) whose name is not UTF-8: any host user who can
    // create a file somewhere in /var (a service's upload directory, /var/crash at 1777
    // on Ubuntu) creates it.
    let dir = base.join(std::ffi::OsStr::from_bytes(b"closed-\xfe-dir"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("inside"), format!("SECRET-odddir-{tag}\n")).unwrap();
    chmod(&dir, 0o700);
    let output = world.run(&job);
    println!("{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains("SECRET-"),
        "private files with odd names were read:\n{}",
        describe(&output)
    );
    assert_eq!(
        output.status.code(),
        Some(0),
        "one private directory with a non-UTF-8 name in /var stops every job on the host:\n{}",
        describe(&output)
    );
}

/// A step holds its stdin, stdout and stderr and nothing else of init's. The control
/// socket between the agent and init once leaked into every step as fd 3: a step could
/// read the next step's script and environment (its secrets) and forge init's messages
/// (fake refusals in the audit log, a step reported "ok" that never ran). (A process a
/// step leaves in the background holds what the step's shell held when it forked it.)
#[test]
fn a_step_holds_only_its_stdio() {
    require_privilege!();
    let world = World::new("", "");
    let job = world.job(
        "fds.yaml",
        r#"name: fds
steps:
  - name: look
    run: |
      ls /proc/$$/fd > /tmp/shell-fds
      echo "SHELL-FDS $(sort -n /tmp/shell-fds | tr '\n' ' ')"
"#,
    );
    let output = world.run(&job);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    // The listing is of the shell's own table (`$$`) by a child whose only redirection is
    // its own: a pipeline or a command substitution would have the shell hold pipes.
    assert!(
        stdout.contains("SHELL-FDS 0 1 2 \n"),
        "{}",
        describe(&output)
    );
    world.assert_job_left_nothing(&output);
}
