//! The daemon's command line as a user (or mount.fuse3) drives it: daemonizing only once the
//! mount is live, foreground and debug modes, ending on unmount, one-line errors for misuse,
//! and a few mount options whose effect can be seen from outside (read-only without upper,
//! escaped colons in lowerdir, volatile, passthrough=all), plus inode numbers, statfs and
//! sparse copy-up checked against the layers themselves.

mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::*;

/// How long the daemon may take to mount, answer, or exit.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The name of the running test (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("cli test")
        .to_string()
}

fn skip_unless_root() -> bool {
    !require_root(
        &test_name(),
        "needs root to mount FUSE and overlay file systems",
    )
}

fn opts(lower: &Path, upper: &Path, work: &Path, extra: &str) -> String {
    let mut o = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    if !extra.is_empty() {
        o.push(',');
        o.push_str(extra);
    }
    o
}

fn is_unionfs_mount(mnt: &Path) -> bool {
    mount_entry(mnt).is_some_and(|e| e.fstype == "fuse.unionfs")
}

/// Runs the daemon (without -f) with `args`; fails the test if it keeps its pipes open.
fn run_unionfs(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    output_with_timeout(&mut cmd, TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

/// Mounts with `-o o` on `mnt`, retrying while an earlier daemon on the same workdir may
/// still be on its way out. Panics with the last stderr if it never succeeds.
fn mount_retrying(o: &str, mnt: &Path) -> Mounted {
    let mnt_s = mnt.display().to_string();
    let end = std::time::Instant::now() + TIMEOUT;
    loop {
        let out = run_unionfs(&["-o", o, &mnt_s]);
        if out.status.success() {
            return Mounted(mnt.to_path_buf());
        }
        if std::time::Instant::now() >= end {
            panic!(
                "mount -o {o} {mnt_s} kept failing for {TIMEOUT:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// True once nobody holds an exclusive flock on `work` (the daemon holds it for its life).
fn wait_workdir_unlocked(work: &Path) -> bool {
    wait_until(TIMEOUT, || {
        fs::File::open(work)
            .ok()
            .is_some_and(|f| f.try_lock().is_ok())
    })
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(timeout, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// A daemon started in the foreground by this test: unmounts on drop, then gives the
/// child a moment to exit and kills it (by its PID) if it does not.
struct Foreground {
    child: Child,
    mnt: Mounted,
}

impl Foreground {
    fn spawn(args: &[&str], mnt: &Path, stderr: Stdio) -> Foreground {
        let child = Command::new(bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn unionfs {args:?}: {e}"));
        Foreground {
            child,
            mnt: Mounted(mnt.to_path_buf()),
        }
    }

    /// Polls until the mount is live; fails early if the child exits instead.
    fn wait_mounted(&mut self, mnt: &Path) {
        let mut exited = None;
        let ok = wait_until(TIMEOUT, || {
            if is_unionfs_mount(mnt) {
                return true;
            }
            exited = self.child.try_wait().ok().flatten();
            exited.is_some()
        });
        assert!(
            ok && exited.is_none(),
            "foreground unionfs did not mount {} (exited: {exited:?})",
            mnt.display()
        );
    }

    fn wait_exit(&mut self) -> Option<ExitStatus> {
        wait_child(&mut self.child, TIMEOUT)
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        self.mnt.unmount();
        if wait_child(&mut self.child, Duration::from_secs(5)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn run_tool(prog: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(prog);
    cmd.args(args);
    output_with_timeout(&mut cmd, TIMEOUT).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_work_empty(work: &Path) {
    let wd = work.join("work");
    let left: Vec<_> = fs::read_dir(&wd)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", wd.display()))
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert!(left.is_empty(), "{} not empty: {left:?}", wd.display());
}

#[test]
fn daemon_returns_when_live_and_releases_stderr() {
    if skip_unless_root() {
        return;
    }
    let s = Scratch::new("cli-daemon");
    s.mkdirs(&["l", "u", "w", "m"]);
    fs::write(s.path("l/f"), "from the lower\n").unwrap_or_else(|e| panic!("write l/f: {e}"));
    let mnt = s.path("m");
    let o = opts(&s.path("l"), &s.path("u"), &s.path("w"), "");
    let mut cmd = Command::new(bin());
    cmd.arg("-o").arg(&o).arg(&mnt);
    let mut guard = Mounted(mnt.clone());
    let out = match output_with_timeout(&mut cmd, TIMEOUT) {
        Ok(out) => out,
        Err(e) => {
            let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
            panic!("the daemon kept stdout/stderr open: {e}");
        }
    };
    assert!(
        out.status.success(),
        "unionfs exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // No polling: the mount must be live as soon as the command returned.
    let entry = mount_entry(&mnt);
    assert!(
        entry.as_ref().is_some_and(|e| e.fstype == "fuse.unionfs"),
        "not a fuse.unionfs mount right after exit: {entry:?}"
    );
    let want = fs::read(s.path("l/f")).unwrap_or_else(|e| panic!("read l/f: {e}"));
    let got = fs::read(mnt.join("f")).unwrap_or_else(|e| panic!("read m/f: {e}"));
    assert_eq!(got, want, "content of f through the mount");
    guard.unmount();
}

#[test]
fn foreground_exits_zero_after_fusermount_unmount() {
    if skip_unless_root() {
        return;
    }
    let (s, mnt, o) = one_file_union("cli-fg");
    let mnt_s = mnt.display().to_string();
    let mut fg = Foreground::spawn(&["-f", "-o", &o, &mnt_s], &mnt, Stdio::null());
    fg.wait_mounted(&mnt);
    fs::write(mnt.join("new"), "written through\n").unwrap_or_else(|e| panic!("write m/new: {e}"));
    let out = run_tool("fusermount3", &["-u", &mnt_s]);
    assert!(
        out.status.success(),
        "fusermount3 -u failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = fg.wait_exit();
    assert!(
        status.is_some_and(|st| st.success()),
        "foreground daemon after fusermount3 -u: {status:?} (None = still running after {TIMEOUT:?})"
    );
    assert!(
        !is_unionfs_mount(&mnt),
        "still mounted after fusermount3 -u"
    );
    assert_work_empty(&s.path("w"));
    let got = fs::read_to_string(s.path("u/new")).unwrap_or_else(|e| panic!("read u/new: {e}"));
    assert_eq!(got, "written through\n");
}

#[test]
fn umount_also_ends_the_daemon() {
    if skip_unless_root() {
        return;
    }
    let s = Scratch::new("cli-umount");
    s.mkdirs(&["l", "u", "w", "m", "m2"]);
    fs::write(s.path("l/f"), "lower\n").unwrap_or_else(|e| panic!("write l/f: {e}"));
    let mnt = s.path("m");
    let o = opts(&s.path("l"), &s.path("u"), &s.path("w"), "");
    let mut first = mount_retrying(&o, &mnt);
    fs::write(mnt.join("new"), "one\n").unwrap_or_else(|e| panic!("write m/new: {e}"));
    let out = run_tool("umount", &[&mnt.display().to_string()]);
    assert!(
        out.status.success(),
        "umount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    first.0 = PathBuf::new(); // already unmounted
    assert!(!is_unionfs_mount(&mnt), "still mounted after umount");
    // The daemon ends and frees the workdir: a second mount on it is then accepted.
    let mut second = mount_retrying(&o, &s.path("m2"));
    let got = fs::read_to_string(s.path("m2/new"))
        .unwrap_or_else(|e| panic!("read m2/new through the second mount: {e}"));
    assert_eq!(got, "one\n");
    second.unmount();
}

#[test]
fn debug_logs_requests() {
    if skip_unless_root() {
        return;
    }
    let s = Scratch::new("cli-debug");
    s.mkdirs(&["l", "u", "w", "m"]);
    let name = "probe_lookup_target";
    fs::write(s.path(&format!("l/{name}")), "x").unwrap_or_else(|e| panic!("write: {e}"));
    let mnt = s.path("m");
    let o = opts(&s.path("l"), &s.path("u"), &s.path("w"), "");
    let log_path = s.path("stderr.log");
    let log = fs::File::create(&log_path).unwrap_or_else(|e| panic!("create log: {e}"));
    let mnt_s = mnt.display().to_string();
    let mut fg = Foreground::spawn(&["-d", "-o", &o, &mnt_s], &mnt, Stdio::from(log));
    fg.wait_mounted(&mnt);
    let md = fs::metadata(mnt.join(name)).unwrap_or_else(|e| panic!("stat through mount: {e}"));
    assert_eq!(md.len(), 1);
    fg.mnt.unmount();
    let status = fg.wait_exit();
    assert!(
        status.is_some_and(|st| st.success()),
        "-d daemon after unmount: {status:?}"
    );
    let text = fs::read_to_string(&log_path).unwrap_or_else(|e| panic!("read log: {e}"));
    // fuser logs e.g. `FUSE(  6) ino 0x0000000000000001 LOOKUP name "probe_lookup_target"`.
    let quoted = format!("\"{name}\"");
    assert!(
        text.lines()
            .any(|l| l.to_ascii_uppercase().contains("LOOKUP") && l.contains(&quoted)),
        "no request line naming the LOOKUP of {quoted} in -d output:\n{}",
        text.lines().take(80).collect::<Vec<_>>().join("\n")
    );
}

/// A directory under /dev/shm (tmpfs), removed on drop.
struct ShmDir(PathBuf);

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn misuse_one_line_errors() {
    if skip_unless_root() {
        return;
    }
    let s = Scratch::new("cli-misuse");
    s.mkdirs(&[
        "l", "u", "w", "m", "m2", "u/m", "l/u", "u1", "w1", "m1", "u2", "w2", "k",
    ]);
    fs::write(s.path("l/f"), "lower\n").unwrap_or_else(|e| panic!("write l/f: {e}"));
    fs::write(s.path("afile"), "not a dir").unwrap_or_else(|e| panic!("write afile: {e}"));
    let p = |r: &str| s.path(r).display().to_string();
    let (l, u, w, m) = (p("l"), p("u"), p("w"), p("m"));

    let shm = ShmDir(PathBuf::from(format!(
        "/dev/shm/unionfs-it-cli-misuse-{}",
        std::process::id()
    )));
    fs::create_dir_all(&shm.0).unwrap_or_else(|e| panic!("mkdir {}: {e}", shm.0.display()));
    let shm_dev = fs::metadata(&shm.0).map(|m| m.dev()).unwrap_or(0);
    let tmp_dev = fs::metadata(s.path("u")).map(|m| m.dev()).unwrap_or(0);
    let shm_s = shm.0.display().to_string();

    // (case, a word the message must contain to show the intended refusal, argv, mount point)
    let mut cases: Vec<(&str, &str, Vec<String>, String)> = vec![
        (
            "missing lowerdir",
            "lowerdir",
            vec!["-o".into(), format!("upperdir={u},workdir={w}"), m.clone()],
            m.clone(),
        ),
        (
            "lowerdir does not exist",
            "nonexistent",
            vec![
                "-o".into(),
                format!(
                    "lowerdir={}/nonexistent,upperdir={u},workdir={w}",
                    s.0.display()
                ),
                m.clone(),
            ],
            m.clone(),
        ),
        (
            "lowerdir is a file",
            "afile",
            vec![
                "-o".into(),
                format!("lowerdir={},upperdir={u},workdir={w}", p("afile")),
                m.clone(),
            ],
            m.clone(),
        ),
        (
            "upperdir without workdir",
            "workdir",
            vec!["-o".into(), format!("lowerdir={l},upperdir={u}"), m.clone()],
            m.clone(),
        ),
        (
            "upperdir inside a lowerdir",
            "l/u",
            vec![
                "-o".into(),
                format!("lowerdir={l},upperdir={},workdir={w}", p("l/u")),
                m.clone(),
            ],
            m.clone(),
        ),
        (
            "mount point inside the upperdir",
            "u/m",
            vec![
                "-o".into(),
                format!("lowerdir={l},upperdir={u},workdir={w}"),
                p("u/m"),
            ],
            p("u/m"),
        ),
        (
            "duplicate upperdir=",
            "upperdir",
            vec![
                "-o".into(),
                format!("lowerdir={l},upperdir={u},upperdir={u},workdir={w}"),
                m.clone(),
            ],
            m.clone(),
        ),
        (
            "unknown flag --bogus",
            "--bogus",
            vec![
                "--bogus".into(),
                "-o".into(),
                format!("lowerdir={l},upperdir={u},workdir={w}"),
                m.clone(),
            ],
            m.clone(),
        ),
    ];
    if shm_dev != 0 && shm_dev != tmp_dev {
        cases.push((
            "workdir on another filesystem (/dev/shm)",
            "/dev/shm",
            vec![
                "-o".into(),
                format!("lowerdir={l},upperdir={u},workdir={shm_s}"),
                m.clone(),
            ],
            m.clone(),
        ));
    } else {
        skip(
            &test_name(),
            Skip::Missing,
            "case \"workdir on another filesystem\": /dev/shm is on the same filesystem as /tmp",
        );
    }

    let mut failures = Vec::new();
    let check = |what: &str, hint: &str, args: &[String], mnt: &str, failures: &mut Vec<String>| {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_unionfs(&argv);
        // Whatever happened, leave nothing mounted.
        let mounted = is_unionfs_mount(Path::new(mnt));
        drop(Mounted(PathBuf::from(mnt)));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let lines: Vec<&str> = err.lines().collect();
        let mut bad = Vec::new();
        if out.status.success() {
            bad.push("exit status 0".to_string());
        }
        if lines.len() != 1 || lines[0].trim().is_empty() || !lines[0].starts_with("unionfs: ") {
            bad.push(format!("stderr is not one 'unionfs: ' line: {err:?}"));
        } else if !lines[0].contains(hint) {
            bad.push(format!("message does not mention {hint:?}: {err:?}"));
        }
        if mounted {
            bad.push(format!("left a mount on {mnt}"));
        }
        if !bad.is_empty() {
            failures.push(format!("{what}: {} ({})", bad.join("; "), out.status));
        }
    };
    for (what, hint, args, mnt) in &cases {
        check(what, hint, args, mnt, &mut failures);
    }

    // The workdir of a live unionfs mount.
    {
        let o1 = format!("lowerdir={l},upperdir={},workdir={}", p("u1"), p("w1"));
        let _first = mount_retrying(&o1, &s.path("m1"));
        assert!(is_unionfs_mount(&s.path("m1")), "first mount not live");
        check(
            "workdir in use by another unionfs mount",
            "w1",
            &["-o".into(), o1.clone(), p("m2")],
            &p("m2"),
            &mut failures,
        );
        assert!(
            is_unionfs_mount(&s.path("m1")),
            "the first mount went away when a second one was refused"
        );
        // An upper layer on a union mount, as the kernel refuses one on an overlay.
        for d in ["m1/up", "m1/wk"] {
            fs::create_dir(s.path(d)).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
        }
        check(
            "upperdir on a unionfs mount",
            "a FUSE filesystem, which is not supported as upperdir",
            &[
                "-o".into(),
                format!(
                    "lowerdir={l},upperdir={},workdir={}",
                    p("m1/up"),
                    p("m1/wk")
                ),
                p("m2"),
            ],
            &p("m2"),
            &mut failures,
        );
    }
    // The workdir of a live kernel overlay mount.
    {
        let _k = mount_kernel(&l, &s.path("u2"), &s.path("w2"), &s.path("k"), "");
        let o2 = format!("lowerdir={l},upperdir={},workdir={}", p("u2"), p("w2"));
        check(
            "workdir in use by a kernel overlay",
            "w2",
            &["-o".into(), o2, p("m2")],
            &p("m2"),
            &mut failures,
        );
        for d in ["k/up", "k/wk"] {
            fs::create_dir(s.path(d)).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
        }
        check(
            "upperdir on a kernel overlay mount",
            "an overlay filesystem, which is not supported as upperdir",
            &[
                "-o".into(),
                format!("lowerdir={l},upperdir={},workdir={}", p("k/up"), p("k/wk")),
                p("m2"),
            ],
            &p("m2"),
            &mut failures,
        );
    }
    assert!(
        failures.is_empty(),
        "misuse cases:\n{}",
        failures.join("\n")
    );
}

#[test]
fn unknown_o_item_warns_but_mounts() {
    if skip_unless_root() {
        return;
    }
    let s = Scratch::new("cli-unknown");
    s.mkdirs(&["l", "u", "w", "m"]);
    fs::write(s.path("l/f"), "lower\n").unwrap_or_else(|e| panic!("write l/f: {e}"));
    let mnt = s.path("m");
    let o = opts(&s.path("l"), &s.path("u"), &s.path("w"), "frobnicate");
    let mut guard = Mounted(mnt.clone());
    let out = run_unionfs(&["-o", &o, &mnt.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "unionfs exited {}: {err}", out.status);
    assert!(is_unionfs_mount(&mnt), "not mounted");
    assert!(
        err.lines().any(|l| l.contains("frobnicate")),
        "no warning naming frobnicate on stderr: {err:?}"
    );
    let got = fs::read(mnt.join("f")).unwrap_or_else(|e| panic!("read m/f: {e}"));
    assert_eq!(got, b"lower\n");
    guard.unmount();
}

#[test]
fn source_argument_is_ignored() {
    if skip_unless_root() {
        return;
    }
    let (s, mnt, o) = one_file_union("cli-source");
    let mut guard = Mounted(mnt.clone());
    let out = run_unionfs(&["-o", &o, "mysource", &mnt.display().to_string()]);
    assert!(
        out.status.success(),
        "unionfs with a SOURCE argument exited {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_shows_lower_f(&s, &mnt);
    guard.unmount();
}

/// A scratch union with one lower file `f`: the scratch dir, the mount point, `-o`.
fn one_file_union(tag: &str) -> (Scratch, PathBuf, String) {
    let s = Scratch::new(tag);
    s.mkdirs(&["l", "u", "w", "m"]);
    fs::write(s.path("l/f"), "lower\n").unwrap_or_else(|e| panic!("write l/f: {e}"));
    let o = opts(&s.path("l"), &s.path("u"), &s.path("w"), "");
    let mnt = s.path("m");
    (s, mnt, o)
}

/// The mount point is a unionfs mount showing the lower file `f` as it is.
fn assert_shows_lower_f(s: &Scratch, mnt: &Path) {
    assert!(is_unionfs_mount(mnt), "not mounted as fuse.unionfs");
    let want = fs::read(s.path("l/f")).unwrap_or_else(|e| panic!("read l/f: {e}"));
    let got = fs::read(mnt.join("f")).unwrap_or_else(|e| panic!("read m/f: {e}"));
    assert_eq!(got, want);
}

/// `mount -t fuse PROG#SOURCE MNT -o ...` goes through mount.fuse3, which runs the daemon
/// with the source and mount point as arguments and the options after `-o`: the way
/// /etc/fstab and tools like containers-storage drive fuse-overlayfs.
#[test]
fn mount_fuse3_drives_the_daemon() {
    if skip_unless_root() {
        return;
    }
    let (s, mnt, o) = one_file_union("cli-mountfuse");
    let mut guard = Mounted(mnt.clone());
    let out = std::process::Command::new("mount")
        .args(["-t", "fuse"])
        .arg(format!("{}#unionfs", bin().display()))
        .arg(&mnt)
        .args(["-o", &o])
        .output()
        .unwrap_or_else(|e| panic!("run mount: {e}"));
    assert!(
        out.status.success(),
        "mount -t fuse failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_shows_lower_f(&s, &mnt);
    guard.unmount();
}

#[test]
fn ino_stable_across_copyup_and_remount() {
    if skip_unless_root() {
        return;
    }
    let s = Scratch::new("cli-ino");
    s.mkdirs(&["l", "u", "w", "m"]);
    fs::write(s.path("l/f"), "lower\n").unwrap_or_else(|e| panic!("write l/f: {e}"));
    let lower_ino = fs::metadata(s.path("l/f"))
        .unwrap_or_else(|e| panic!("stat l/f: {e}"))
        .ino();
    let mnt = s.path("m");
    let o = opts(&s.path("l"), &s.path("u"), &s.path("w"), "");
    let mut m = mount_retrying(&o, &mnt);
    let ino = |when: &str| {
        fs::metadata(mnt.join("f"))
            .unwrap_or_else(|e| panic!("stat m/f {when}: {e}"))
            .ino()
    };
    assert_eq!(ino("before copy-up"), lower_ino, "st_ino before copy-up");
    {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("f"))
            .unwrap_or_else(|e| panic!("open m/f for append: {e}"));
        f.write_all(b"appended\n")
            .unwrap_or_else(|e| panic!("append: {e}"));
    }
    assert!(s.path("u/f").exists(), "append did not copy f up");
    assert_eq!(ino("after copy-up"), lower_ino, "st_ino after copy-up");
    m.unmount();
    assert!(
        wait_workdir_unlocked(&s.path("w")),
        "daemon kept the workdir after unmount"
    );
    let mut m = mount_retrying(&o, &mnt);
    assert_eq!(ino("after remount"), lower_ino, "st_ino after remount");
    let got = fs::read_to_string(mnt.join("f")).unwrap_or_else(|e| panic!("read m/f: {e}"));
    assert_eq!(got, "lower\nappended\n");
    let upper_ino = fs::metadata(s.path("u/f"))
        .unwrap_or_else(|e| panic!("stat u/f: {e}"))
        .ino();
    assert_ne!(
        upper_ino, lower_ino,
        "the upper copy should be a new inode (else this test shows nothing)"
    );
    m.unmount();
}

#[test]
fn statfs_reports_upper() {
    if skip_unless_root() {
        return;
    }
    let s = Scratch::new("cli-statfs");
    s.mkdirs(&["l", "u", "w", "m"]);
    let mnt = s.path("m");
    let o = opts(&s.path("l"), &s.path("u"), &s.path("w"), "");
    let mut m = mount_retrying(&o, &mnt);
    let via = nix::sys::statvfs::statvfs(&mnt).unwrap_or_else(|e| panic!("statvfs m: {e}"));
    let up = nix::sys::statvfs::statvfs(&s.path("u")).unwrap_or_else(|e| panic!("statvfs u: {e}"));
    assert_eq!(via.block_size(), up.block_size(), "f_bsize");
    assert_eq!(via.blocks(), up.blocks(), "f_blocks");
    let (a, b) = (via.blocks_free(), up.blocks_free());
    assert!(
        a.abs_diff(b) <= b / 100,
        "f_bfree through the mount {a} vs upper {b}: more than 1% apart"
    );
    m.unmount();
}

#[test]
fn readonly_union_without_upper() {
    if skip_unless_root() {
        return;
    }
    let s = Scratch::new("cli-ro");
    s.mkdirs(&["l", "m"]);
    fs::write(s.path("l/f"), "lower only\n").unwrap_or_else(|e| panic!("write l/f: {e}"));
    let mnt = s.path("m");
    let mut guard = Mounted(mnt.clone());
    let o = format!("lowerdir={}", s.path("l").display());
    let out = run_unionfs(&["-o", &o, &mnt.display().to_string()]);
    assert!(
        out.status.success(),
        "read-only unionfs exited {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let got = fs::read(mnt.join("f")).unwrap_or_else(|e| panic!("read m/f: {e}"));
    assert_eq!(got, b"lower only\n");
    match fs::File::create(mnt.join("new")) {
        Ok(_) => panic!("creating a file in a union without upper succeeded"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EROFS), "create: {e}"),
    }
    assert!(!s.path("l/new").exists(), "file appeared in the lower");
    let entry = mount_entry(&mnt).unwrap_or_else(|| panic!("no mountinfo entry"));
    assert!(
        entry.mount_opts.split(',').any(|x| x == "ro"),
        "mountinfo options lack ro: {entry:?}"
    );
    guard.unmount();
}

#[test]
fn multiple_lowers_colon_escape() {
    if skip_unless_root() {
        return;
    }
    let s = Scratch::new("cli-colon");
    s.mkdirs(&["a:b", "c", "u", "w", "m"]);
    fs::write(s.path("a:b/fa"), "from a:b\n").unwrap_or_else(|e| panic!("write: {e}"));
    fs::write(s.path("c/fc"), "from c\n").unwrap_or_else(|e| panic!("write: {e}"));
    fs::write(s.path("a:b/both"), "top\n").unwrap_or_else(|e| panic!("write: {e}"));
    fs::write(s.path("c/both"), "bottom\n").unwrap_or_else(|e| panic!("write: {e}"));
    let lower = format!("{}\\:b:{}", s.path("a").display(), s.path("c").display());
    let mnt = s.path("m");
    let o = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        s.path("u").display(),
        s.path("w").display()
    );
    let mut m = mount_retrying(&o, &mnt);
    for (name, src) in [("fa", "a:b/fa"), ("fc", "c/fc"), ("both", "a:b/both")] {
        let want = fs::read(s.path(src)).unwrap_or_else(|e| panic!("read {src}: {e}"));
        let got = fs::read(mnt.join(name)).unwrap_or_else(|e| panic!("read m/{name}: {e}"));
        assert_eq!(got, want, "m/{name} should come from {src}");
    }
    m.unmount();
}

#[test]
fn volatile_mounts_and_copies_up() {
    if skip_unless_root() {
        return;
    }
    let s = Scratch::new("cli-volatile");
    s.mkdirs(&["l", "u", "w", "m"]);
    fs::write(s.path("l/f"), "lower\n").unwrap_or_else(|e| panic!("write l/f: {e}"));
    let mnt = s.path("m");
    let o = opts(&s.path("l"), &s.path("u"), &s.path("w"), "volatile");
    let mut m = mount_retrying(&o, &mnt);
    {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("f"))
            .unwrap_or_else(|e| panic!("open m/f for append: {e}"));
        f.write_all(b"more\n")
            .unwrap_or_else(|e| panic!("append: {e}"));
    }
    m.unmount();
    assert!(
        wait_workdir_unlocked(&s.path("w")),
        "daemon kept the workdir after unmount"
    );
    let lower = fs::read(s.path("l/f")).unwrap_or_else(|e| panic!("read l/f: {e}"));
    assert_eq!(lower, b"lower\n", "the lower changed");
    let mut want = lower;
    want.extend_from_slice(b"more\n");
    let got = fs::read(s.path("u/f")).unwrap_or_else(|e| panic!("read u/f: {e}"));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
}

#[test]
fn fsync_and_sparse_copyup() {
    if skip_unless_root() {
        return;
    }
    const SIZE: u64 = 64 << 20;
    const AT: u64 = 32 << 20;
    let s = Scratch::new("cli-sparse");
    s.mkdirs(&["l", "u", "w", "m"]);
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8 + 1).collect();
    {
        let mut f = fs::File::create(s.path("l/sparse")).unwrap_or_else(|e| panic!("create: {e}"));
        f.set_len(SIZE).unwrap_or_else(|e| panic!("set_len: {e}"));
        f.seek(SeekFrom::Start(AT))
            .unwrap_or_else(|e| panic!("seek: {e}"));
        f.write_all(&pattern)
            .unwrap_or_else(|e| panic!("write: {e}"));
        f.sync_all().unwrap_or_else(|e| panic!("fsync: {e}"));
    }
    let lmd = fs::metadata(s.path("l/sparse")).unwrap_or_else(|e| panic!("stat: {e}"));
    if lmd.blocks() * 512 >= 1 << 20 {
        skip(
            &test_name(),
            Skip::Missing,
            "/tmp does not keep the lower file sparse",
        );
        return;
    }
    let mnt = s.path("m");
    let o = opts(&s.path("l"), &s.path("u"), &s.path("w"), "");
    let mut m = mount_retrying(&o, &mnt);
    {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(mnt.join("sparse"))
            .unwrap_or_else(|e| panic!("open m/sparse for append: {e}"));
        f.write_all(b"Z").unwrap_or_else(|e| panic!("append: {e}"));
        f.sync_all()
            .unwrap_or_else(|e| panic!("fsync through the mount: {e}"));
    }
    let len = fs::metadata(mnt.join("sparse"))
        .unwrap_or_else(|e| panic!("stat m/sparse: {e}"))
        .len();
    assert_eq!(len, SIZE + 1, "size through the mount");
    m.unmount();
    assert!(
        wait_workdir_unlocked(&s.path("w")),
        "daemon kept the workdir after unmount"
    );
    let umd = fs::metadata(s.path("u/sparse")).unwrap_or_else(|e| panic!("stat u/sparse: {e}"));
    assert_eq!(umd.len(), SIZE + 1, "upper size");
    assert!(
        umd.blocks() * 512 < 1 << 20,
        "upper copy is not sparse: {} bytes allocated for {} (lower: {})",
        umd.blocks() * 512,
        umd.len(),
        lmd.blocks() * 512
    );
    // Whole content: the lower's bytes, then the appended one.
    let mut lf = fs::File::open(s.path("l/sparse")).unwrap_or_else(|e| panic!("open l: {e}"));
    let mut uf = fs::File::open(s.path("u/sparse")).unwrap_or_else(|e| panic!("open u: {e}"));
    let mut lb = vec![0u8; 1 << 20];
    let mut ub = vec![0u8; 1 << 20];
    for chunk in 0..(SIZE >> 20) {
        lf.read_exact(&mut lb)
            .unwrap_or_else(|e| panic!("read l chunk {chunk}: {e}"));
        uf.read_exact(&mut ub)
            .unwrap_or_else(|e| panic!("read u chunk {chunk}: {e}"));
        assert!(lb == ub, "upper differs from lower in MiB {chunk}");
    }
    let mut rest = Vec::new();
    uf.read_to_end(&mut rest)
        .unwrap_or_else(|e| panic!("read u tail: {e}"));
    assert_eq!(rest, b"Z", "appended byte");
    let mut at = vec![0u8; pattern.len()];
    uf.seek(SeekFrom::Start(AT))
        .unwrap_or_else(|e| panic!("seek: {e}"));
    uf.read_exact(&mut at)
        .unwrap_or_else(|e| panic!("read at 32 MiB: {e}"));
    assert!(
        at == pattern,
        "bytes at 32 MiB in the upper differ from the data written"
    );
}

/// SIGTERM (and SIGINT, SIGHUP) make the daemon unmount and exit 0 with its workdir
/// clean, instead of dying under a live mount.
#[test]
fn sigterm_unmounts_cleanly() {
    if skip_unless_root() {
        return;
    }
    let (s, mnt, o) = one_file_union("cli-sigterm");
    let mnt_s = mnt.display().to_string();
    let mut fg = Foreground::spawn(&["-f", "-o", &o, &mnt_s], &mnt, Stdio::null());
    fg.wait_mounted(&mnt);
    fs::write(mnt.join("f"), "changed\n").unwrap_or_else(|e| panic!("write m/f: {e}"));
    let pid = nix::unistd::Pid::from_raw(fg.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
        .unwrap_or_else(|e| panic!("kill -TERM {pid}: {e}"));
    let status = fg.wait_exit();
    assert!(
        status.is_some_and(|st| st.success()),
        "daemon after SIGTERM: {status:?} (None = still running after {TIMEOUT:?})"
    );
    assert!(!is_unionfs_mount(&mnt), "still mounted after SIGTERM");
    assert_work_empty(&s.path("w"));
    let got = fs::read_to_string(s.path("u/f")).unwrap_or_else(|e| panic!("read u/f: {e}"));
    assert_eq!(got, "changed\n");
}

/// The daemon killed (SIGKILL) in the middle of copying up a large file: the upper layer
/// holds either no copy or a complete one, never a partial file; the next mount removes
/// the half-built copy from the workdir and shows the lower file unchanged.
#[test]
fn killed_during_copyup_leaves_no_partial_file() {
    if skip_unless_root() {
        return;
    }
    let s = Scratch::new("cli-crash");
    s.mkdirs(&["l", "u", "w", "m"]);
    // Incompressible-looking data, large enough that the copy takes a while.
    let size: usize = 512 << 20;
    {
        use std::io::Write;
        let mut f = fs::File::create(s.path("l/big")).unwrap_or_else(|e| panic!("create: {e}"));
        let block: Vec<u8> = (0..1u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for _ in 0..(size >> 20) {
            f.write_all(&block)
                .unwrap_or_else(|e| panic!("write l/big: {e}"));
        }
    }
    let lower_len = fs::metadata(s.path("l/big")).map(|m| m.len()).unwrap_or(0);
    let mnt = s.path("m");
    let o = opts(&s.path("l"), &s.path("u"), &s.path("w"), "");
    let mnt_s = mnt.display().to_string();
    let mut fg = Foreground::spawn(&["-f", "-o", &o, &mnt_s], &mnt, Stdio::null());
    fg.wait_mounted(&mnt);
    // Open for append from another thread: the open blocks while the copy-up runs.
    let target = mnt.join("big");
    let writer = std::thread::spawn(move || {
        fs::OpenOptions::new()
            .append(true)
            .open(&target)
            .map(|_| ())
    });
    // Kill once the copy is under way in the workdir (or after a while regardless): the
    // daemon holds a file there with data in it, named or unnamed (O_TMPFILE), so look
    // through the daemon's descriptors rather than the directory.
    let work = s.path("w/work");
    let fds = PathBuf::from(format!("/proc/{}/fd", fg.child.id()));
    let started = wait_until(Duration::from_secs(10), || {
        fs::read_dir(&fds)
            .map(|rd| {
                rd.filter_map(|e| e.ok()).any(|e| {
                    fs::read_link(e.path()).is_ok_and(|t| t.starts_with(&work))
                        && fs::metadata(e.path()).is_ok_and(|m| m.is_file() && m.len() > 0)
                })
            })
            .unwrap_or(false)
    });
    let pid = nix::unistd::Pid::from_raw(fg.child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = fg.wait_exit();
    // The dead mount answers ENOTCONN; detach it.
    let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
    let _ = writer.join();
    assert!(
        started,
        "the copy-up was never seen under way in the workdir: the test did not interrupt it"
    );
    // Whatever the moment of the kill: no partial copy in upper.
    match fs::metadata(s.path("u/big")) {
        Err(_) => {}
        Ok(m) => assert_eq!(
            m.len(),
            lower_len,
            "partial copy-up in upper (killed mid-copy: {started})"
        ),
    }
    // The next mount cleans the workdir and shows the lower file whole.
    let mut again = mount_retrying(&o, &mnt);
    assert_work_empty(&s.path("w"));
    let through = fs::metadata(mnt.join("big")).map(|m| m.len()).unwrap_or(0);
    assert_eq!(through, lower_len);
    again.unmount();
}

/// More directories than the daemon may hold descriptors for: it keeps a bounded cache
/// of directory descriptors and reopens through the parents, so walking, creating,
/// renaming and removing still work everywhere.
#[test]
fn many_directories_within_a_small_fd_limit() {
    if skip_unless_root() {
        return;
    }
    let s = Scratch::new("cli-fdlimit");
    s.mkdirs(&["l", "u", "w", "m"]);
    for i in 0..40 {
        for j in 0..25 {
            fs::create_dir_all(s.path(&format!("l/d{i}/e{j}")))
                .unwrap_or_else(|e| panic!("mkdir: {e}"));
        }
        fs::write(s.path(&format!("l/d{i}/f")), format!("{i}"))
            .unwrap_or_else(|e| panic!("write: {e}"));
    }
    let mnt = s.path("m");
    let o = opts(&s.path("l"), &s.path("u"), &s.path("w"), "");
    let mut guard = Mounted(mnt.clone());
    // 256 descriptors at most: fewer than the 1,041 directories.
    let out = run_tool(
        "prlimit",
        &[
            "--nofile=256:256",
            "--",
            &bin().display().to_string(),
            "-o",
            &o,
            &mnt.display().to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut dirs = 0;
    let mut stack = vec![mnt.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("readdir {}: {e}", d.display())) {
            let e = e.unwrap_or_else(|e| panic!("entry in {}: {e}", d.display()));
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                dirs += 1;
                stack.push(e.path());
            }
        }
    }
    assert_eq!(dirs, 40 * 26, "directories seen through the mount");
    // Changes deep in directories whose descriptors were closed in between.
    for i in 0..40 {
        let d = mnt.join(format!("d{i}"));
        fs::write(d.join("e3/new"), "n").unwrap_or_else(|e| panic!("create in d{i}: {e}"));
        fs::rename(d.join("e3/new"), d.join("e4/moved"))
            .unwrap_or_else(|e| panic!("rename in d{i}: {e}"));
        let got = fs::read_to_string(d.join("f")).unwrap_or_else(|e| panic!("read d{i}/f: {e}"));
        assert_eq!(got, format!("{i}"));
        fs::remove_dir(d.join("e5")).unwrap_or_else(|e| panic!("rmdir d{i}/e5: {e}"));
    }
    for i in 0..40 {
        assert!(mnt.join(format!("d{i}/e4/moved")).exists());
        assert!(!mnt.join(format!("d{i}/e5")).exists());
    }
    guard.unmount();
}

/// A one-file union (`l/f` = "lower\n") mounted in the foreground with `-d` and `extra`
/// options, its debug log going to a file: the scratch, the mount point, the daemon, the log.
fn one_file_union_logged(tag: &str, extra: &str) -> (Scratch, PathBuf, Foreground, PathBuf) {
    let (s, mnt, o) = one_file_union(tag);
    let o = if extra.is_empty() {
        o
    } else {
        format!("{o},{extra}")
    };
    let log_path = s.path("stderr.log");
    let log = fs::File::create(&log_path).unwrap_or_else(|e| panic!("create log: {e}"));
    let mnt_s = mnt.display().to_string();
    let mut fg = Foreground::spawn(&["-d", "-o", &o, &mnt_s], &mnt, Stdio::from(log));
    fg.wait_mounted(&mnt);
    (s, mnt, fg, log_path)
}

fn read_log(log_path: &Path) -> String {
    fs::read_to_string(log_path).unwrap_or_else(|e| panic!("read log: {e}"))
}

/// Why passthrough is off in a daemon's `-d` log though it was asked for, if it is.
fn passthrough_unavailable(log: &str) -> Option<&str> {
    log.lines().find(|l| {
        l.contains("does not offer FUSE passthrough") || l.contains("passthrough refused")
    })
}

/// The READ requests (file data through the daemon) in a `-d` log; fuser logs each as
/// `FUSE(  8) ino 0x... READ fh FileHandle(1), offset 0, size 4096`.
fn read_requests(log: &str) -> usize {
    log.lines().filter(|l| l.contains(" READ fh ")).count()
}

/// `passthrough=all`: reading a lower file through the mount gives the lower's bytes and
/// sends the daemon no READ: the kernel reads the lower file itself. With the default
/// (`passthrough=upper` as root) the same read does come to the daemon.
#[test]
fn passthrough_all_reads_lower_file_without_the_daemon() {
    if skip_unless_root() {
        return;
    }
    let mut reads = Vec::new();
    for extra in ["passthrough=all", ""] {
        let (s, mnt, mut fg, log_path) = one_file_union_logged("cli-ptall-read", extra);
        let want = fs::read(s.path("l/f")).unwrap_or_else(|e| panic!("read l/f: {e}"));
        let got = fs::read(mnt.join("f")).unwrap_or_else(|e| panic!("read m/f: {e}"));
        assert_eq!(got, want, "-o {extra:?}: content through the mount");
        fg.mnt.unmount();
        let status = fg.wait_exit();
        assert!(
            status.is_some_and(|st| st.success()),
            "-o {extra:?}: {status:?}"
        );
        let log = read_log(&log_path);
        if let Some(why) = passthrough_unavailable(&log) {
            skip(
                &test_name(),
                Skip::Missing,
                &format!("no FUSE passthrough here: {why}"),
            );
            return;
        }
        reads.push((extra, read_requests(&log)));
    }
    // (mount options, READ requests logged)
    assert_eq!(reads[0].1, 0, "passthrough=all served READs: {reads:?}");
    assert!(
        reads[1].1 > 0,
        "the default mount served no READ: {reads:?}"
    );
}

/// `passthrough=all` and a lower file held open for reading (the kernel reads it itself):
/// the kernel would open the lower file for writing as the backing file of any write open
/// of the node, so such opens are refused (ETXTBSY) and copy nothing up; the lower stays as
/// it was. A copy-up that needs no open (truncate) still happens, and the fd opened before
/// it keeps reading the lower file: the divergence from the kernel's overlay that README
/// and `data_path` document. Once that fd is closed, writing works and opens read the copy.
/// With `passthrough=upper` the same writer succeeds at once and the old fd reads the copy,
/// as on the kernel's overlay.
#[test]
fn passthrough_all_lower_reader_keeps_lower_after_copyup() {
    if skip_unless_root() {
        return;
    }
    for extra in ["passthrough=all", "passthrough=upper"] {
        let all = extra == "passthrough=all";
        let (s, mnt, mut fg, log_path) = one_file_union_logged("cli-ptall-copyup", extra);
        if let Some(why) = passthrough_unavailable(&read_log(&log_path)) {
            skip(
                &test_name(),
                Skip::Missing,
                &format!("no FUSE passthrough here: {why}"),
            );
            return;
        }
        let f = mnt.join("f");
        let read_f = || fs::read(&f).unwrap_or_else(|e| panic!("-o {extra}: read m/f: {e}"));
        let read_old = |fd: &mut fs::File| {
            let mut v = Vec::new();
            fd.seek(SeekFrom::Start(0))
                .and_then(|_| fd.read_to_end(&mut v))
                .unwrap_or_else(|e| panic!("-o {extra}: read the old fd: {e}"));
            String::from_utf8_lossy(&v).into_owned()
        };
        let lower = || fs::read(s.path("l/f")).unwrap_or_else(|e| panic!("read l/f: {e}"));
        let mut before = fs::File::open(&f).unwrap_or_else(|e| panic!("-o {extra}: open m/f: {e}"));
        assert_eq!(read_old(&mut before), "lower\n");
        let append = || {
            fs::OpenOptions::new()
                .append(true)
                .open(&f)
                .and_then(|mut w| w.write_all(b"more\n"))
        };
        if all {
            for how in ["append", "read-write"] {
                let r = if how == "append" {
                    append()
                } else {
                    fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&f)
                        .map(|_| ())
                };
                let errno = r.err().and_then(|e| e.raw_os_error());
                assert_eq!(errno, Some(libc::ETXTBSY), "-o {extra}: {how} open");
            }
            assert!(!s.path("u/f").exists(), "a refused open copied up");
            // A copy-up without an open: the old fd still reads the lower file.
            nix::unistd::truncate(&f, 2).unwrap_or_else(|e| panic!("truncate m/f: {e}"));
            assert_eq!(read_f(), b"lo", "-o {extra}: a new open after truncate");
            assert_eq!(read_old(&mut before), "lower\n", "-o {extra}: the old fd");
            drop(before);
            append().unwrap_or_else(|e| panic!("-o {extra}: append once the fd closed: {e}"));
            assert_eq!(read_f(), b"lomore\n", "-o {extra}: after the append");
        } else {
            append().unwrap_or_else(|e| panic!("-o {extra}: append: {e}"));
            assert_eq!(read_f(), b"lower\nmore\n", "-o {extra}: a new open");
            assert_eq!(
                read_old(&mut before),
                "lower\nmore\n",
                "-o {extra}: the old fd"
            );
            drop(before);
        }
        let upper = fs::read(s.path("u/f")).unwrap_or_else(|e| panic!("read u/f: {e}"));
        assert_eq!(upper, read_f(), "-o {extra}: the upper copy");
        assert_eq!(lower(), b"lower\n", "-o {extra}: the lower changed");
        fg.mnt.unmount();
        let status = fg.wait_exit();
        assert!(
            status.is_some_and(|st| st.success()),
            "-o {extra}: {status:?}"
        );
    }
}

/// `noacl` (as fuse-overlayfs): ACL xattrs are neither shown nor settable through the
/// union, where without it they are; copy-up still keeps a lower file's ACL in upper.
#[test]
fn noacl_hides_acl_xattrs() {
    if skip_unless_root() {
        return;
    }
    let s = Scratch::new("cli-noacl");
    s.mkdirs(&["l", "u", "w", "m"]);
    fs::write(s.path("l/f"), "lower\n").unwrap_or_else(|e| panic!("write l/f: {e}"));
    let acl = "u::rw-,u:1000:---,g::r--,m::r--,o::r--";
    let out = run_tool(
        "setfacl",
        &["--set", acl, &s.path("l/f").display().to_string()],
    );
    assert!(out.status.success(), "setfacl on the lower file: {out:?}");
    let getfattr = |p: &Path| {
        run_tool(
            "getfattr",
            &["-n", "system.posix_acl_access", &p.display().to_string()],
        )
    };
    let l = s.path("l").display().to_string();
    for (extra, shown) in [("", true), ("noacl", false)] {
        let mut m = mount_unionfs(&l, &s.path("u"), &s.path("w"), &s.path("m"), extra);
        let out = getfattr(&s.path("m/f"));
        assert_eq!(
            out.status.success(),
            shown,
            "-o {extra:?}: getfattr: {out:?}"
        );
        let set = run_tool(
            "setfacl",
            &["-m", "u:1001:r", &s.path("m/f").display().to_string()],
        );
        assert_eq!(
            set.status.success(),
            shown,
            "-o {extra:?}: setfacl: {set:?}"
        );
        if !shown {
            // a copy-up (append) keeps the lower ACL in upper
            fs::OpenOptions::new()
                .append(true)
                .open(s.path("m/f"))
                .and_then(|mut f| f.write_all(b"more\n"))
                .unwrap_or_else(|e| panic!("append m/f: {e}"));
        }
        m.unmount();
        assert!(wait_workdir_unlocked(&s.path("w")), "daemon did not exit");
        if !shown {
            let out = getfattr(&s.path("u/f"));
            assert!(out.status.success(), "the copy lost its ACL: {out:?}");
        }
        fs::remove_file(s.path("u/f")).unwrap_or_else(|e| panic!("rm u/f: {e}"));
    }
}
