//! `runbox run` as root on both backends (unionfs over FUSE, the kernel's overlay): the
//! command's view (hostname, PID 1, loopback only, masked /proc), where its writes go,
//! whiteouts both ways, exit statuses and signals, cgroup limits, `--rm` and reuse.
//! Every test builds its own busybox image and store under /tmp/runbox-it-*, and its guard
//! fails the test if a mount, a process or a cgroup is left behind.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// One test body per backend: `NAME::fuse` and `NAME::kernel`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[test]
            fn fuse() {
                super::$name("fuse")
            }
            #[test]
            fn kernel() {
                super::$name("kernel")
            }
        }
    };
}

fn start(tag: &str, extra: &[E]) -> Option<Root> {
    if !need_root(tag) {
        return None;
    }
    let root = Root::new(tag);
    root.import_ok("bb", &busybox_tar(extra));
    Some(root)
}

fn run(root: &Root, backend: &str, args: &[&str]) -> Output {
    let mut a = vec!["run", "--backend", backend];
    a.extend_from_slice(args);
    root.run(&a)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status.code(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn basics(b: &str) {
    let Some(mut root) = start(&format!("basics-{b}"), &[]) else {
        return;
    };
    let name = root.name(&format!("basics-{b}"));
    let out = run(
        &root,
        b,
        &[
            "--rm",
            "--name",
            &name,
            "--hostname",
            "boxhost",
            "--verbose",
            "bb",
            "sh",
            "-c",
            "echo pid=$$; hostname; cat /etc/hostname; grep -c : /proc/net/dev; \
             grep -o '^ *[a-z0-9]*:' /proc/net/dev; cat /sys/class/net/lo/operstate; \
             ls /dev; test -e /proc/1/status && echo proc-ok; \
             (echo x > /proc/sysrq-trigger) 2>/dev/null && echo sysrq-writable; \
             (echo x > /proc/sys/kernel/domainname) 2>/dev/null && echo sys-writable; \
             head -c 4 /proc/keys | wc -c",
        ],
    );
    let s = ok(&out);
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines.first(), Some(&"pid=1"), "{s}");
    assert_eq!(lines.get(1), Some(&"boxhost"), "{s}");
    assert_eq!(lines.get(2), Some(&"boxhost"), "{s}");
    assert_eq!(lines.get(3), Some(&"1"), "only one interface: {s}");
    assert_eq!(lines.get(4).map(|l| l.trim()), Some("lo:"), "{s}");
    assert!(
        s.contains("\nnull\n") && s.contains("\nurandom\n") && s.contains("\npts\n"),
        "{s}"
    );
    assert!(s.contains("proc-ok"), "{s}");
    assert!(
        !s.contains("sysrq-writable") && !s.contains("sys-writable"),
        "{s}"
    );
    assert_eq!(lines.last(), Some(&"0"), "/proc/keys is masked: {s}");
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "backend: {}",
            if b == "fuse" { "unionfs" } else { "kernel" }
        )),
        "{err}"
    );
}
both!(basics);

fn writes_land_in_upper(b: &str) {
    let Some(mut root) = start(
        &format!("upper-{b}"),
        &[
            E::Dir("etc"),
            E::File("etc/motd", b"image\n"),
            E::File("etc/old", b"old\n"),
        ],
    ) else {
        return;
    };
    let name = root.name(&format!("upper-{b}"));
    let layer = root.layer("bb", 0);
    let before = snapshot(&layer);
    let s = ok(&run(
        &root,
        b,
        &[
            "--name",
            &name,
            "bb",
            "sh",
            "-c",
            "echo new > /new; echo more >> /etc/motd; rm /etc/old; mkdir /d; cat /etc/motd",
        ],
    ));
    assert_eq!(s, "image\nmore\n");
    assert_eq!(snapshot(&layer), before, "the image layer changed");
    let up = root.upper(&name);
    assert_eq!(std::fs::read(up.join("new")).unwrap_or_default(), b"new\n");
    assert_eq!(
        std::fs::read(up.join("etc/motd")).unwrap_or_default(),
        b"image\nmore\n"
    );
    let wh = std::fs::symlink_metadata(up.join("etc/old")).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout in upper"
    );
    assert!(
        !up.join("proc").exists() && !up.join("dev").exists(),
        "mount points stay out of the upper"
    );
    let diff = ok(&root.run(&["diff", &name]));
    assert_eq!(diff, "A /d\nC /etc\nC /etc/motd\nD /etc/old\nA /new\n");
    let ps = ok(&root.run(&["ps"]));
    assert!(
        ps.lines()
            .any(|l| l.starts_with(&name) && l.contains("exited(0)") && l.contains(b)),
        "{ps}"
    );
    let out = root.run(&["rmi", "bb"]);
    assert!(!out.status.success(), "rmi of an image in use");
    assert!(text(&out.stderr).contains(&name));
    ok(&root.run(&["rm", &name]));
    ok(&root.run(&["rmi", "bb"]));
}
both!(writes_land_in_upper);

fn layer_whiteouts_hide(b: &str) {
    if !need_root("layer_whiteouts_hide") {
        return;
    }
    let mut root = Root::new(&format!("wh-{b}"));
    let name = root.name(&format!("wh-{b}"));
    let base = busybox_tar(&[
        E::Dir("etc"),
        E::File("etc/gone", b"x"),
        E::File("etc/kept", b"k"),
        E::Dir("opq"),
        E::File("opq/below", b"b"),
    ]);
    let top = tar_of(&[
        E::Dir("etc"),
        E::File("etc/.wh.gone", b""),
        E::Dir("opq"),
        E::File("opq/.wh..wh..opq", b""),
        E::File("opq/above", b"a"),
    ]);
    let cfg = image_config(&["PATH=/bin"], &["sh"], "/");
    root.import_ok("layered", &oci_archive(&[base, top], &cfg, true));
    let s = ok(&run(
        &root,
        b,
        &[
            "--rm",
            "--name",
            &name,
            "layered",
            "sh",
            "-c",
            "ls -a /etc; echo --; ls -a /opq",
        ],
    ));
    assert_eq!(
        s, ".\n..\nhostname\nhosts\nkept\nresolv.conf\n--\n.\n..\nabove\n",
        "markers hide and are hidden"
    );
}
both!(layer_whiteouts_hide);

fn exit_status(b: &str) {
    let Some(mut root) = start(&format!("exit-{b}"), &[]) else {
        return;
    };
    let name = root.name(&format!("exit-{b}"));
    let out = run(
        &root,
        b,
        &["--rm", "--name", &name, "bb", "sh", "-c", "exit 7"],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    // A child killed by a signal: the shell reports 128+9 and exits with it.
    let out = run(
        &root,
        b,
        &[
            "--rm",
            "--name",
            &name,
            "bb",
            "sh",
            "-c",
            "sh -c 'kill -9 $$'; exit $?",
        ],
    );
    assert_eq!(out.status.code(), Some(137));
    let out = run(
        &root,
        b,
        &["--rm", "--name", &name, "bb", "no-such-command"],
    );
    assert_eq!(out.status.code(), Some(127));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no-such-command"), "{err}");
}
both!(exit_status);

/// The host pid of the process whose command line is exactly `argv`.
fn find_pid(argv: &[&str]) -> Option<i32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
        (std::fs::read(e.path().join("cmdline")).ok()? == want).then_some(pid)
    })
}

fn wait_for_pid(argv: &[&str]) -> i32 {
    let t = Instant::now();
    loop {
        if let Some(p) = find_pid(argv) {
            return p;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{argv:?} never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signals(b: &str) {
    let Some(mut root) = start(&format!("sig-{b}"), &[]) else {
        return;
    };
    let name = root.name(&format!("sig-{b}"));
    // Unique per test binary and backend (both backends run at once).
    let secs = format!("9{}{}", std::process::id(), b.len());
    // SIGKILL from the host to the command (PID 1): runbox exits 128+9.
    let child = root
        .cmd(&[
            "run",
            "--backend",
            b,
            "--rm",
            "--name",
            &name,
            "bb",
            "sleep",
            &secs,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let pid = wait_for_pid(&["sleep", &secs]);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));

    // SIGUSR1 to runbox is forwarded to a command that handles it.
    let mut child = root
        .cmd(&[
            "run",
            "--backend",
            b,
            "--rm",
            "--name",
            &name,
            "bb",
            "sh",
            "-c",
            "trap 'exit 42' USR1; echo ready; while :; do sleep 0.1; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut line = String::new();
    if let Some(so) = child.stdout.take() {
        let _ = BufReader::new(so).read_line(&mut line);
    }
    assert_eq!(line, "ready\n");
    let runbox_pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(runbox_pid, nix::sys::signal::Signal::SIGUSR1);
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(42), "{}", text(&out.stderr));

    // SIGTERM to runbox while the command ignores it (PID 1 without a handler): runbox
    // still ends it after its grace period, and unmounts (checked by the guard).
    let child = root
        .cmd(&["run", "--backend", b, "--name", &name, "bb", "sleep", &secs])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for_pid(&["sleep", &secs]);
    let ps = ok(&root.run(&["ps"]));
    assert!(
        ps.lines()
            .any(|l| l.starts_with(&name) && l.contains("running")),
        "{ps}"
    );
    let out = root.run(&["rm", &name]);
    assert!(!out.status.success(), "rm of a running container");
    assert!(
        text(&out.stderr).contains("running"),
        "{}",
        text(&out.stderr)
    );
    // A second run of the same name while the first runs is refused in one line.
    let out = run(&root, b, &["--name", &name, "bb", "true"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is running"), "{err}");
    let t = Instant::now();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(find_pid(&["sleep", &secs]).is_none());
    let merged = root.path.join(format!("containers/{name}/merged"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(
        !mounts.contains(&merged.display().to_string()),
        "still mounted"
    );
}
both!(signals);

fn memory_limit(b: &str) {
    let Some(mut root) = start(&format!("mem-{b}"), &[]) else {
        return;
    };
    let name = root.name(&format!("mem-{b}"));
    let out = run(
        &root,
        b,
        &[
            "--rm",
            "--name",
            &name,
            "--memory",
            "32m",
            "bb",
            "sh",
            "-c",
            "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived",
        ],
    );
    assert!(
        !text(&out.stdout).contains("survived"),
        "the hog was not stopped"
    );
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    // A small program under the same limit runs.
    let s = ok(&run(
        &root,
        b,
        &[
            "--rm", "--name", &name, "--memory", "32m", "bb", "echo", "small",
        ],
    ));
    assert_eq!(s, "small\n");
    let out = run(
        &root,
        b,
        &["--rm", "--name", &name, "--memory", "12q", "bb", "true"],
    );
    assert!(!out.status.success());
    assert_eq!(text(&out.stderr).lines().count(), 1);
}
both!(memory_limit);

fn pids_limit(b: &str) {
    let Some(mut root) = start(&format!("pids-{b}"), &[]) else {
        return;
    };
    let name = root.name(&format!("pids-{b}"));
    let t = Instant::now();
    let out = run(
        &root,
        b,
        &[
            "--rm",
            "--name",
            &name,
            "--pids",
            "20",
            "bb",
            "sh",
            "-c",
            "i=0; while [ $i -lt 100 ]; do sleep 1000 & i=$((i+1)); done; echo all-forked",
        ],
    );
    let err = text(&out.stderr);
    assert!(err.contains("fork"), "forks were not refused: {err}");
    assert!(!text(&out.stdout).contains("all-forked"));
    assert!(t.elapsed() < Duration::from_secs(60));
}
both!(pids_limit);

fn rm_and_reuse(b: &str) {
    let Some(mut root) = start(&format!("reuse-{b}"), &[]) else {
        return;
    };
    let name = root.name(&format!("reuse-{b}"));
    ok(&run(
        &root,
        b,
        &["--rm", "--name", &name, "bb", "sh", "-c", "echo x > /f"],
    ));
    assert!(
        !root.path.join("containers").join(&name).exists(),
        "--rm left the container"
    );
    assert_eq!(
        ok(&root.run(&["ps"])).lines().count(),
        1,
        "ps lists only its header"
    );

    ok(&run(
        &root,
        b,
        &["--name", &name, "bb", "sh", "-c", "echo first > /keep"],
    ));
    let s = ok(&run(&root, b, &["--name", &name, "bb", "cat", "/keep"]));
    assert_eq!(s, "first\n", "the second run sees the first run's files");
    ok(&root.run(&["rm", &name]));
    assert!(!root.path.join("containers").join(&name).exists());
    let out = root.run(&["rm", &name]);
    assert!(!out.status.success());
}
both!(rm_and_reuse);

fn user_env_workdir(b: &str) {
    if !need_root("user_env_workdir") {
        return;
    }
    let mut root = Root::new(&format!("defaults-{b}"));
    let name = root.name(&format!("defaults-{b}"));
    let cfg = image_config(
        &["PATH=/bin", "GREETING=hello"],
        &["sh", "-c", "echo $GREETING from $(pwd)"],
        "/work",
    );
    let layer = busybox_tar(&[
        E::Dir("work"),
        E::Dir("etc"),
        E::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:web:/var/www:/bin/sh\n",
        ),
        E::File("etc/group", b"root:x:0:\nwww:x:34:\nadm:x:4:www\n"),
    ]);
    root.import_ok("cfg", &docker_save(&[layer], &cfg));
    let s = ok(&run(&root, b, &["--rm", "--name", &name, "cfg"]));
    assert_eq!(s, "hello from /work\n", "image defaults");
    let s = ok(&run(
        &root,
        b,
        &[
            "--rm",
            "--name",
            &name,
            "--env",
            "GREETING=hi",
            "--workdir",
            "/bin",
            "--user",
            "1000:1001",
            "cfg",
            "sh",
            "-c",
            "echo $GREETING $(pwd) $(id -u) $(id -g) $(id -G)",
        ],
    ));
    assert_eq!(s, "hi /bin 1000 1001 1001\n");
    let s = ok(&run(
        &root,
        b,
        &[
            "--rm",
            "--name",
            &name,
            "--user",
            "www",
            "cfg",
            "sh",
            "-c",
            "echo $(id -u) $(id -g) $(id -G) $HOME",
        ],
    ));
    assert_eq!(
        s, "33 34 34 4 /var/www\n",
        "a user name from the image's /etc/passwd"
    );
    let out = run(
        &root,
        b,
        &["--rm", "--name", &name, "--user", "nobody", "cfg", "true"],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(
        text(&out.stderr).contains("nobody"),
        "{}",
        text(&out.stderr)
    );
    let s = ok(&run(
        &root,
        b,
        &["--rm", "--name", &name, "cfg", "sh", "-c", "echo $HOME"],
    ));
    assert_eq!(s, "/root\n");
}
both!(user_env_workdir);

fn net_host(b: &str) {
    let Some(mut root) = start(&format!("nethost-{b}"), &[]) else {
        return;
    };
    let name = root.name(&format!("nethost-{b}"));
    let host = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let want = host.lines().filter(|l| l.contains(':')).count();
    let s = ok(&run(
        &root,
        b,
        &[
            "--rm",
            "--name",
            &name,
            "--net",
            "host",
            "bb",
            "grep",
            "-c",
            ":",
            "/proc/net/dev",
        ],
    ));
    assert_eq!(s.trim(), want.to_string(), "the host's interfaces");
}
both!(net_host);

fn killed_runbox_then_rm(b: &str) {
    let Some(mut root) = start(&format!("killed-{b}"), &[]) else {
        return;
    };
    let name = root.name(&format!("killed-{b}"));
    let secs = format!("8{}{}", std::process::id(), b.len());
    let mut child = root
        .cmd(&[
            "run",
            "--backend",
            b,
            "--memory",
            "64m",
            "--name",
            &name,
            "bb",
            "sleep",
            &secs,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    wait_for_pid(&["sleep", &secs]);
    let _ = child.kill();
    let _ = child.wait();
    // The command dies with runbox (parent-death signals), the mount and cgroup stay.
    let t = Instant::now();
    while find_pid(&["sleep", &secs]).is_some() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the command outlived runbox"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ps = ok(&root.run(&["ps"]));
    assert!(
        ps.lines()
            .any(|l| l.starts_with(&name) && l.contains("dead")),
        "{ps}"
    );
    // rm cleans up what the killed runbox left: the union, the daemon, the cgroup.
    ok(&root.run(&["rm", &name]));
    assert!(!root.path.join("containers").join(&name).exists());
}
both!(killed_runbox_then_rm);

/// `run --trace` (no FILE): the union's events on runbox's stderr, with the command's
/// own stderr; the kernel backend has no trace and says so in one line.
#[test]
fn trace_to_stderr_and_kernel_refusal() {
    if !need_root("trace_to_stderr_and_kernel_refusal") {
        return;
    }
    let mut root = Root::new("trace");
    root.import_ok(
        "bb",
        &busybox_tar(&[E::Dir("etc"), E::File("etc/motd", b"image\n")]),
    );
    let name = root.name("trace");
    let out = root.run(&[
        "run",
        "--rm",
        "--name",
        &name,
        "--backend",
        "fuse",
        "--trace",
        "bb",
        "sh",
        "-c",
        "echo more >> /etc/motd",
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.lines().any(|l| l
            .starts_with("event=copy-up path=/etc/motd type=file from=lower1 bytes=6 ")
            && l.ends_with(" cause=open-write")),
        "{err}"
    );
    let out = root.run(&[
        "run",
        "--rm",
        "--backend",
        "kernel",
        "--trace",
        "bb",
        "true",
    ]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--trace needs the fuse backend"), "{err}");
}
