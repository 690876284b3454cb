//! Shared by the daemon's integration tests: scratch directories, mounting the daemon or
//! the kernel's overlay, and a guard that always unmounts.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Why a test did not run, as `skip` records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not run as root (`scripts/test.sh` refuses to run without root).
    NeedsRoot,
    /// Does not apply here by design (another test covers this machine's case).
    Expected,
    /// A check that should have run here and could not: fails CI.
    Missing,
}

/// Reports a test (or a case of one) that does not run: on the real stderr (libtest's
/// capture only intercepts print!/eprint!) and as a line `KIND<TAB>TEST<TAB>-<TAB>REASON`
/// appended to the file named by `UNIONFS_SKIP_LOG` (set by `scripts/test.sh`, which
/// lists the skips at the end and fails CI on a `missing` one).
pub fn skip(name: &str, kind: Skip, reason: &str) {
    use std::io::Write as _;
    let word = match kind {
        Skip::NeedsRoot => "needs-root",
        Skip::Expected => "expected",
        Skip::Missing => "missing",
    };
    let _ = writeln!(std::io::stderr(), "SKIPPED ({word}): {name}: {reason}");
    let Some(log) = std::env::var_os("UNIONFS_SKIP_LOG") else {
        return;
    };
    let line = format!("{word}\t{name}\t-\t{reason}\n");
    // One write in append mode: lines from tests running at once do not mix.
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .unwrap_or_else(|e| panic!("recording a skip in {log:?}: {e}"));
}

/// False (after reporting the skip) unless run as root.
pub fn require_root(name: &str, why: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(name, Skip::NeedsRoot, why);
    false
}

/// The daemon built for this test run (never looked up through PATH: /usr/bin/unionfs is
/// another program).
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_unionfs"))
}

/// A scratch directory under /tmp, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let mut n = 0u32;
        loop {
            let p = PathBuf::from(format!("/tmp/unionfs-it-{tag}-{}-{n}", std::process::id()));
            if std::fs::create_dir(&p).is_ok() {
                return Scratch(p);
            }
            n += 1;
        }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    pub fn mkdirs(&self, rels: &[&str]) {
        for r in rels {
            std::fs::create_dir_all(self.path(r)).unwrap_or_else(|e| panic!("mkdir {r}: {e}"));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Unmounts on drop, also when the test panics; lazily as a last resort.
pub struct Mounted(pub PathBuf);

impl Mounted {
    pub fn unmount(&mut self) {
        if self.0.as_os_str().is_empty() {
            return;
        }
        let p = std::mem::take(&mut self.0);
        if nix::mount::umount(&p).is_err() {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
        // The daemon exits once the kernel tells it the mount is gone.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// The `-o` string of a union, the same for the daemon and the kernel's overlay.
pub fn union_opts(lower: &str, upper: &Path, work: &Path, extra: &str) -> String {
    let mut o = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if !extra.is_empty() {
        o.push(',');
        o.push_str(extra);
    }
    o
}

pub fn mount_unionfs(lower: &str, upper: &Path, work: &Path, mnt: &Path, extra: &str) -> Mounted {
    let o = union_opts(lower, upper, work, extra);
    let out = Command::new(bin())
        .arg("-o")
        .arg(&o)
        .arg(mnt)
        .output()
        .unwrap_or_else(|e| panic!("run unionfs: {e}"));
    assert!(
        out.status.success(),
        "unionfs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Mounted(mnt.to_path_buf())
}

pub fn mount_kernel(lower: &str, upper: &Path, work: &Path, mnt: &Path, extra: &str) -> Mounted {
    let o = union_opts(lower, upper, work, extra);
    nix::mount::mount(
        Some("overlay"),
        mnt,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(o.as_str()),
    )
    .unwrap_or_else(|e| panic!("mount overlay {o}: {e}"));
    Mounted(mnt.to_path_buf())
}

/// A sorted listing of a tree: path, type, mode, size, and content of regular files.
pub fn snapshot(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(e) => {
                out.push(format!("{}: {e}", dir.display()));
                return;
            }
        };
        names.sort();
        for p in names {
            use std::os::unix::fs::MetadataExt;
            let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            let md = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) => {
                    out.push(format!("{rel}: {e}"));
                    continue;
                }
            };
            let ft = md.file_type();
            let content = if ft.is_file() {
                String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned()
            } else if ft.is_symlink() {
                std::fs::read_link(&p)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let size = if ft.is_dir() { 0 } else { md.size() };
            out.push(format!(
                "{rel} {:o} {} {size} {content:?}",
                md.mode(),
                md.uid()
            ));
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// One line of /proc/self/mountinfo: the fields the tests look at.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    /// Per-mount options (field 6), e.g. "ro,nosuid,nodev,relatime".
    pub mount_opts: String,
    pub fstype: String,
    pub source: String,
    pub super_opts: String,
}

/// Undoes the octal escapes (`\040` etc.) of mountinfo fields (the daemon's own parser).
pub fn unescape_mountinfo(s: &str) -> String {
    String::from_utf8_lossy(&unionfs::options::unescape_mountinfo(s.as_bytes())).into_owned()
}

pub fn mountinfo() -> Vec<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_else(|e| panic!("read /proc/self/mountinfo: {e}"));
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(MountEntry {
                mount_point: PathBuf::from(unescape_mountinfo(f.get(4)?)),
                mount_opts: f.get(5)?.to_string(),
                fstype: f.get(sep + 1)?.to_string(),
                source: unescape_mountinfo(f.get(sep + 2)?),
                super_opts: f.get(sep + 3)?.to_string(),
            })
        })
        .collect()
}

/// The top-most mount on `mnt`, if any. Only the parent is resolved (never the mount point
/// itself, which would ask a possibly hung daemon).
pub fn mount_entry(mnt: &Path) -> Option<MountEntry> {
    let canon = match (mnt.parent(), mnt.file_name()) {
        (Some(p), Some(n)) => std::fs::canonicalize(p)
            .map(|p| p.join(n))
            .unwrap_or_else(|_| mnt.to_path_buf()),
        _ => mnt.to_path_buf(),
    };
    mountinfo()
        .into_iter()
        .rev()
        .find(|e| e.mount_point == canon)
}

/// Polls `cond` every 20 ms until it holds (true) or `timeout` passes (false).
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `cmd` with stdout and stderr piped and reads both to EOF, giving up after
/// `timeout`. Err(reason) when the pipes stay open that long (e.g. a daemon that kept
/// them); the child itself, if still running then, is killed by its PID.
pub fn output_with_timeout(
    cmd: &mut Command,
    timeout: std::time::Duration,
) -> Result<std::process::Output, String> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut o = Vec::new();
        let mut e = Vec::new();
        let errs = std::thread::spawn(move || {
            if let Some(p) = err.as_mut() {
                let _ = p.read_to_end(&mut e);
            }
            e
        });
        if let Some(p) = out.as_mut() {
            let _ = p.read_to_end(&mut o);
        }
        let e = errs.join().unwrap_or_default();
        let _ = tx.send((o, e));
    });
    match rx.recv_timeout(timeout) {
        Ok((stdout, stderr)) => {
            let end = std::time::Instant::now() + timeout;
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        return Ok(std::process::Output {
                            status,
                            stdout,
                            stderr,
                        })
                    }
                    Ok(None) if std::time::Instant::now() < end => {
                        std::thread::sleep(std::time::Duration::from_millis(20))
                    }
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!(
                            "{cmd:?} closed its pipes but did not exit within {timeout:?}"
                        ));
                    }
                    Err(e) => return Err(format!("wait for {cmd:?}: {e}")),
                }
            }
        }
        Err(_) => {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let status = child.wait();
            Err(format!(
                "{cmd:?}: stdout/stderr still open after {timeout:?} (child status {status:?})"
            ))
        }
    }
}
