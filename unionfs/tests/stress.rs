//! Several processes working on the same few names at once (issue 14): random creates,
//! appends, truncates, reads (also through mmap), stats, chmods, chowns, utimes, setxattrs,
//! links, unlinks, renames within and across directories, mkdirs, rmdirs and readdirs on
//! 150 shared names over lower files, each process with its own fds and absolute paths.
//! An operation may fail only with an errno the kernel's overlay gives for it under the
//! same load (`Op::allowed`, learnt by running this load on it, which
//! `same_names_kernel_overlay_errnos` keeps doing); the daemon (run with `-f`, its stderr
//! kept) may log no error or warning; and the kernel's overlay, mounted over the same layers
//! once the daemon is gone, must show the tree that unionfs showed at the end (names, types,
//! modes, owners, sizes, contents, the user xattr). Counts per operation and errno are
//! printed on stderr (`--nocapture`) and are in the failure message.
//!
//! Also: copy-ups of big files must not hold up requests on other names (head of line).
//!
//! `STRESS_SECONDS` (per data path, default 8; the kernel's run takes a quarter of it),
//! `STRESS_SEED` (default from the clock, printed), `STRESS_WORKERS` (default 8),
//! `STRESS_OPS` (only these operations, e.g. `unlink,chmod`), `DIFFTEST_UNIONFS_OPTS` (more
//! `-o` options for every daemon, e.g. `uring=on`). A long run:
//! `STRESS_SECONDS=600 cargo test -p unionfs --test stress -- --nocapture`.
#![deny(unsafe_code)]

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use common::*;

/// The directories holding the shared names, and the names in each.
const DIRS: usize = 3;
const NAMES: usize = 50;
/// In `d0`, these names are lower directories holding one file: renaming them gives
/// `EXDEV`, removing them `ENOTEMPTY`.
const LOWER_DIR_NAMES: std::ops::Range<usize> = 45..50;
/// The one user xattr the load sets.
const XATTR: &str = "user.stress";
/// The environment variable that turns the `worker_child` entry point into a worker.
const WORKER_ENV: &str = "STRESS_WORKER";

/// One test at a time in this binary: each loads the machine, and the head-of-line test
/// measures times.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?}: {e}")),
    )
}

fn seconds() -> u64 {
    env_u64("STRESS_SECONDS").unwrap_or(8).max(1)
}

fn workers() -> usize {
    env_u64("STRESS_WORKERS").map_or(8, |n| n.max(1) as usize)
}

/// The operations of the load: `STRESS_OPS` (comma-separated names, e.g. `unlink,chmod`)
/// narrows the mix, to find which operations it takes to fail.
fn mix() -> Vec<(Op, u64)> {
    match std::env::var("STRESS_OPS") {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|n| {
                let op = Op::from_name(n.trim()).unwrap_or_else(|| {
                    let all: Vec<&str> = MIX.iter().map(|(o, _)| o.name()).collect();
                    panic!("STRESS_OPS: unknown operation {n:?}; they are {all:?}")
                });
                MIX.iter()
                    .copied()
                    .find(|(o, _)| *o == op)
                    .unwrap_or((op, 1))
            })
            .collect(),
        _ => MIX.to_vec(),
    }
}

/// How the load was chosen, for reports: the seed and any narrowing of the mix.
fn load_note(seed: u64) -> String {
    match std::env::var("STRESS_OPS") {
        Ok(v) if !v.trim().is_empty() => format!("STRESS_SEED={seed} STRESS_OPS={v}"),
        _ => format!("STRESS_SEED={seed}"),
    }
}

fn seed() -> u64 {
    env_u64("STRESS_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 % 1_000_000_000)
    })
}

/// xorshift64*: small, and the same sequence for the same seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        // Never zero (xorshift's fixed point), and nearby seeds far apart.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------------------
// The operations.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Create,
    Append,
    Truncate,
    Read,
    MmapRead,
    Stat,
    Chmod,
    Chown,
    Utimes,
    Setxattr,
    Link,
    Unlink,
    Rename,
    Mkdir,
    Rmdir,
    Readdir,
}

/// Each operation with its weight: the mix (appends, reads, chmods, unlinks and
/// renames) most often.
const MIX: [(Op, u64); 16] = [
    (Op::Create, 6),
    (Op::Append, 12),
    (Op::Truncate, 4),
    (Op::Read, 10),
    (Op::MmapRead, 5),
    (Op::Stat, 6),
    (Op::Chmod, 10),
    (Op::Chown, 4),
    (Op::Utimes, 4),
    (Op::Setxattr, 4),
    (Op::Link, 4),
    (Op::Unlink, 8),
    (Op::Rename, 10),
    (Op::Mkdir, 3),
    (Op::Rmdir, 3),
    (Op::Readdir, 5),
];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Append => "append",
            Op::Truncate => "truncate",
            Op::Read => "read",
            Op::MmapRead => "mmap-read",
            Op::Stat => "stat",
            Op::Chmod => "chmod",
            Op::Chown => "chown",
            Op::Utimes => "utimes",
            Op::Setxattr => "setxattr",
            Op::Link => "link",
            Op::Unlink => "unlink",
            Op::Rename => "rename",
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::Readdir => "readdir",
        }
    }

    fn from_name(s: &str) -> Option<Op> {
        MIX.iter().map(|(o, _)| *o).find(|o| o.name() == s)
    }

    /// The errnos the kernel's overlay gives for this operation under this load (seen in
    /// runs of `same_names_kernel_overlay_errnos`): the name is gone or was never there,
    /// is taken, or is of the other type; a directory with lower content cannot be
    /// renamed (no redirect_dir) or is not empty. And, rarely (a few in 100,000), `EEXIST`
    /// from any operation that copies up: two copy-ups of one file racing with a link or
    /// rename onto its name.
    fn allowed(self) -> &'static [Errno] {
        use Errno::*;
        match self {
            Op::Create => &[EEXIST, EISDIR],
            Op::Append | Op::Truncate => &[ENOENT, EISDIR, EEXIST],
            Op::Read => &[ENOENT, EISDIR],
            // EFAULT: the file changed under the mapping (see `mmap_read`).
            Op::MmapRead => &[ENOENT, EFAULT],
            Op::Stat => &[ENOENT],
            Op::Chmod | Op::Chown | Op::Utimes | Op::Setxattr => &[ENOENT, EEXIST],
            Op::Link => &[ENOENT, EEXIST, EPERM],
            Op::Unlink => &[ENOENT, EISDIR],
            Op::Rename => &[ENOENT, EXDEV, EISDIR, ENOTDIR, ENOTEMPTY, EEXIST],
            Op::Mkdir => &[EEXIST],
            Op::Rmdir => &[ENOENT, ENOTDIR, ENOTEMPTY],
            Op::Readdir => &[ENOENT, ENOTDIR],
        }
    }
}

/// Which step of an operation failed, and how.
#[derive(Debug)]
struct Fail {
    step: &'static str,
    errno: Errno,
}

fn io_fail(step: &'static str) -> impl Fn(std::io::Error) -> Fail {
    move |e| Fail {
        step,
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
    }
}

fn nix_fail(step: &'static str) -> impl Fn(Errno) -> Fail {
    move |errno| Fail { step, errno }
}

/// A shared name: `dD/fNN`.
fn shared_name(rng: &mut Rng) -> String {
    format!(
        "d{}/f{:02}",
        rng.below(DIRS as u64),
        rng.below(NAMES as u64)
    )
}

/// One worker's state: where, who, and a sink for mmap'd bytes.
struct Worker {
    mnt: PathBuf,
    id: usize,
    seq: u64,
    sink: std::os::fd::OwnedFd,
}

impl Worker {
    fn tag(&mut self) -> String {
        self.seq += 1;
        format!("w{}.{};", self.id, self.seq)
    }

    /// Runs one operation on random names; what the operation involved, for a report.
    fn run(&mut self, op: Op, rng: &mut Rng) -> (String, Result<(), Fail>) {
        let rel = shared_name(rng);
        let p = self.mnt.join(&rel);
        match op {
            Op::Create => {
                let mut o = OpenOptions::new();
                o.write(true).mode(0o644);
                match rng.below(3) {
                    0 => o.create_new(true),
                    1 => o.create(true).truncate(true),
                    _ => o.create(true).append(true),
                };
                let tag = self.tag();
                let r = o
                    .open(&p)
                    .map_err(io_fail("open"))
                    .and_then(|mut f| f.write_all(tag.as_bytes()).map_err(io_fail("write")));
                (rel, r)
            }
            Op::Append => {
                let tag = self.tag();
                let r = OpenOptions::new()
                    .append(true)
                    .open(&p)
                    .map_err(io_fail("open"))
                    .and_then(|mut f| f.write_all(tag.as_bytes()).map_err(io_fail("write")));
                (rel, r)
            }
            Op::Truncate => {
                let len = rng.below(24) as i64;
                (
                    rel,
                    nix::unistd::truncate(&p, len).map_err(nix_fail("truncate")),
                )
            }
            Op::Read => {
                let mut buf = Vec::new();
                let r = fs::File::open(&p)
                    .map_err(io_fail("open"))
                    .and_then(|mut f| f.read_to_end(&mut buf).map_err(io_fail("read")))
                    .map(|_| ());
                (rel, r)
            }
            Op::MmapRead => (rel, mmap_read(&p, &self.sink)),
            Op::Stat => (
                rel,
                fs::symlink_metadata(&p)
                    .map(|_| ())
                    .map_err(io_fail("lstat")),
            ),
            Op::Chmod => {
                let mode = rng.pick(&[0o600, 0o640, 0o644, 0o664, 0o755, 0o700]);
                let r = fs::set_permissions(&p, fs::Permissions::from_mode(mode));
                (rel, r.map_err(io_fail("chmod")))
            }
            Op::Chown => {
                let id = rng.pick(&[0, 1, 1000, 65534]);
                let r = std::os::unix::fs::lchown(&p, Some(id), Some(id));
                (rel, r.map_err(io_fail("lchown")))
            }
            Op::Utimes => {
                let t = nix::sys::time::TimeVal::new(1_600_000_000 + rng.below(1 << 20) as i64, 0);
                (
                    rel,
                    nix::sys::stat::utimes(&p, &t, &t).map_err(nix_fail("utimes")),
                )
            }
            Op::Setxattr => {
                let v = self.tag();
                (
                    rel,
                    sys::lsetxattr(&p, XATTR, v.as_bytes()).map_err(nix_fail("lsetxattr")),
                )
            }
            Op::Link => {
                let to = shared_name(rng);
                let r = fs::hard_link(&p, self.mnt.join(&to)).map_err(io_fail("link"));
                (format!("{rel} {to}"), r)
            }
            Op::Unlink => (rel, fs::remove_file(&p).map_err(io_fail("unlink"))),
            Op::Rename => {
                // Half within the directory, half across.
                let to = if rng.below(2) == 0 {
                    format!(
                        "{}/f{:02}",
                        rel.split('/').next().unwrap_or("d0"),
                        rng.below(NAMES as u64)
                    )
                } else {
                    shared_name(rng)
                };
                let r = fs::rename(&p, self.mnt.join(&to)).map_err(io_fail("rename"));
                (format!("{rel} {to}"), r)
            }
            Op::Mkdir => (rel, fs::create_dir(&p).map_err(io_fail("mkdir"))),
            Op::Rmdir => (rel, fs::remove_dir(&p).map_err(io_fail("rmdir"))),
            Op::Readdir => {
                // A shared directory most times, else one of the names (maybe a directory).
                let (rel, p) = if rng.below(3) > 0 {
                    let d = format!("d{}", rng.below(DIRS as u64));
                    let p = self.mnt.join(&d);
                    (d, p)
                } else {
                    (rel, p)
                };
                let r = fs::read_dir(&p)
                    .map_err(io_fail("opendir"))
                    .and_then(|rd| {
                        rd.map(|e| e.map(|_| ()))
                            .collect::<Result<Vec<()>, _>>()
                            .map_err(io_fail("readdir"))
                    })
                    .map(|_| ());
                (rel, r)
            }
        }
    }
}

/// The whole content through `f`, from offset 0.
fn content(f: &fs::File) -> Result<Vec<u8>, Fail> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read_at(&mut buf, out.len() as u64) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return Err(io_fail("read")(e)),
        }
    }
}

/// Opens `p`, maps it, and copies the mapping into `sink` with a syscall: a page beyond a
/// concurrent truncation then fails the copy with `EFAULT` instead of killing the worker
/// with `SIGBUS`. `EFAULT` counts as such only if the file changed meanwhile (a truncation
/// may have been followed by appends back to the same size: the content tells, since
/// ctime ticks too coarsely to); otherwise the mapping failed to read: `EIO`.
fn mmap_read(p: &Path, sink: &std::os::fd::OwnedFd) -> Result<(), Fail> {
    let f = fs::File::open(p).map_err(io_fail("open"))?;
    let before = f.metadata().map_err(io_fail("fstat"))?;
    if !before.is_file() || before.len() == 0 {
        return Ok(());
    }
    let data = content(&f)?;
    match sys::copy_mapping(&f, before.len() as usize, sink) {
        Err(Errno::EFAULT) => {
            let after = f.metadata().map_err(io_fail("fstat"))?;
            let changed = (after.len(), after.ctime(), after.ctime_nsec())
                != (before.len(), before.ctime(), before.ctime_nsec())
                || content(&f)? != data;
            Err(if changed {
                Fail {
                    step: "copy from mapping (the file changed)",
                    errno: Errno::EFAULT,
                }
            } else {
                Fail {
                    step: "copy from mapping (EFAULT, the file did not change)",
                    errno: Errno::EIO,
                }
            })
        }
        r => r.map_err(nix_fail("mmap")),
    }
}

/// The only unsafe code: calls with no safe wrapper in std or nix.
#[allow(unsafe_code)]
mod sys {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use nix::errno::Errno;

    fn cpath(p: &Path) -> Result<CString, Errno> {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
    }

    pub fn lsetxattr(p: &Path, name: &str, value: &[u8]) -> Result<(), Errno> {
        let (p, n) = (cpath(p)?, CString::new(name).map_err(|_| Errno::EINVAL)?);
        // SAFETY: both strings are NUL-terminated and live across the call; value points
        // to value.len() readable bytes.
        let r = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        Errno::result(r).map(|_| ())
    }

    /// The value of xattr `name` of `p` (not following a symlink), None if it has none.
    pub fn lgetxattr(p: &Path, name: &str) -> Result<Option<Vec<u8>>, Errno> {
        let (p, n) = (cpath(p)?, CString::new(name).map_err(|_| Errno::EINVAL)?);
        let mut buf = vec![0u8; 4096];
        // SAFETY: both strings are NUL-terminated and live across the call; buf is
        // buf.len() writable bytes.
        let r =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        match Errno::result(r) {
            Ok(len) => {
                buf.truncate(len as usize);
                Ok(Some(buf))
            }
            Err(Errno::ENODATA) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Maps `len` bytes of `f` shared and read-only, and writes them to `sink` with
    /// pwrite, so that the kernel, not this process, touches the mapped pages.
    pub fn copy_mapping(f: &std::fs::File, len: usize, sink: &OwnedFd) -> Result<(), Errno> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: a fresh mapping at an address the kernel picks, of an open file; nothing
        // else refers to it, and it is unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        // SAFETY: addr is len mapped bytes. Only the kernel reads them (a page past a
        // concurrent truncation gives EFAULT, not SIGBUS); no Rust reference is made.
        let r = unsafe { libc::pwrite(sink.as_raw_fd(), addr, len, 0) };
        let err = Errno::last();
        // SAFETY: the mapping made above, of len bytes, not used after this.
        let u = unsafe { libc::munmap(addr, len) };
        if r < 0 {
            return Err(err);
        }
        Errno::result(u).map(|_| ())
    }
}

// ---------------------------------------------------------------------------------------
// The worker processes.

/// Not a test: the entry point of the worker processes, which re-run this test binary with
/// `STRESS_WORKER=mnt|id|seed|seconds|out` and `--exact worker_child`. Without the variable
/// it does nothing.
#[test]
fn worker_child() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let f: Vec<&str> = spec.split('|').collect();
    let [mnt, id, seed, secs, out] = f[..] else {
        panic!("{WORKER_ENV}={spec:?}: want mnt|id|seed|seconds|out");
    };
    let id: usize = id.parse().unwrap_or_else(|e| panic!("id {id:?}: {e}"));
    let seed: u64 = seed
        .parse()
        .unwrap_or_else(|e| panic!("seed {seed:?}: {e}"));
    let secs: f64 = secs
        .parse()
        .unwrap_or_else(|e| panic!("seconds {secs:?}: {e}"));
    let sink = nix::sys::memfd::memfd_create("stress-sink", nix::sys::memfd::MFdFlags::empty())
        .unwrap_or_else(|e| panic!("memfd_create: {e}"));
    let mut w = Worker {
        mnt: PathBuf::from(mnt),
        id,
        seq: 0,
        sink,
    };
    let mut rng = Rng::new(seed.wrapping_add(id as u64 * 7919));
    let mix = mix();
    let total: u64 = mix.iter().map(|(_, w)| w).sum();
    let mut counts: BTreeMap<(Op, String), u64> = BTreeMap::new();
    let mut unexpected = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < end {
        let mut x = rng.below(total);
        let op = mix
            .iter()
            .find(|(_, w)| {
                if x < *w {
                    true
                } else {
                    x -= w;
                    false
                }
            })
            .map_or(Op::Stat, |(o, _)| *o);
        let (what, r) = w.run(op, &mut rng);
        let outcome = match r {
            Ok(()) => "ok".to_string(),
            Err(f) => {
                if !op.allowed().contains(&f.errno) && unexpected.len() < 50 {
                    unexpected.push(format!(
                        "unexpected {} {} {:?} {what} (step {})",
                        op.name(),
                        f.errno,
                        f.errno.desc(),
                        f.step
                    ));
                }
                format!("{:?}", f.errno)
            }
        };
        *counts.entry((op, outcome)).or_default() += 1;
    }
    let mut text = String::new();
    for ((op, outcome), n) in &counts {
        let _ = writeln!(text, "count {} {outcome} {n}", op.name());
    }
    for u in unexpected {
        let _ = writeln!(text, "{u}");
    }
    fs::write(out, text).unwrap_or_else(|e| panic!("write {out}: {e}"));
}

/// Kills (by PID) and reaps the workers still running when dropped. All are killed before
/// any is waited for, and for five seconds at most: a worker of a hung mount may sleep
/// uninterruptibly on a lock that another's request holds, until the daemon is gone (the
/// `Daemon` guard, dropped after this one, kills it); it is then reaped by init.
struct Workers(Vec<(usize, Child)>);

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, c) in &mut self.0 {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
        }
        wait_until(Duration::from_secs(5), || {
            self.0
                .iter_mut()
                .all(|(_, c)| !matches!(c.try_wait(), Ok(None)))
        });
    }
}

/// What the workers did: counts per operation and outcome, and the unexpected failures.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<(String, String), u64>,
    unexpected: Vec<String>,
    crashed: Vec<String>,
}

impl Tally {
    fn unexpected_by_op(&self) -> BTreeMap<(String, String), u64> {
        self.counts
            .iter()
            .filter(|((op, outcome), _)| {
                outcome != "ok"
                    && Op::from_name(op)
                        .is_some_and(|o| !o.allowed().iter().any(|e| format!("{e:?}") == *outcome))
            })
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    fn table(&self) -> String {
        let mut by_op: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for ((op, outcome), n) in &self.counts {
            by_op.entry(op).or_default().push(format!("{outcome} {n}"));
        }
        let total: u64 = self.counts.values().sum();
        let mut s = format!("{total} operations\n");
        for (op, outs) in by_op {
            let _ = writeln!(s, "  {op:<10} {}", outs.join(", "));
        }
        s
    }
}

/// Runs `n` workers on `mnt` for `secs` and gathers what they report.
fn run_workers(mnt: &Path, scratch: &Path, n: usize, seed: u64, secs: f64) -> Tally {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let mut ws = Workers(Vec::new());
    for id in 0..n {
        let out = scratch.join(format!("worker{id}.out"));
        let spec = format!("{}|{id}|{seed}|{secs}|{}", mnt.display(), out.display());
        let child = Command::new(&exe)
            .args(["--exact", "worker_child", "--nocapture", "--test-threads=1"])
            .env(WORKER_ENV, spec)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn worker {id}: {e}"));
        ws.0.push((id, child));
    }
    let mut tally = Tally::default();
    // A worker stuck in a request of a hung daemon is killed after this (a panic: the
    // guards then unmount, which ends the request).
    let deadline = Instant::now() + Duration::from_secs_f64(secs) + Duration::from_secs(60);
    for (id, c) in &mut ws.0 {
        let status = loop {
            if let Some(s) = c.try_wait().unwrap_or_else(|e| panic!("wait worker: {e}")) {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "worker {id} still runs 60 s after its end: the mount hangs"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = c.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let out = scratch.join(format!("worker{id}.out"));
        match fs::read_to_string(&out) {
            Ok(text) if status.success() => {
                for line in text.lines() {
                    let f: Vec<&str> = line.splitn(4, ' ').collect();
                    match f[..] {
                        ["count", op, outcome, n] => {
                            *tally
                                .counts
                                .entry((op.to_string(), outcome.to_string()))
                                .or_default() += n.parse::<u64>().unwrap_or(0);
                        }
                        _ => tally.unexpected.push(format!("worker {id}: {line}")),
                    }
                }
            }
            r => tally.crashed.push(format!(
                "worker {id}: {status}, output {:?}; stderr: {}",
                r.err(),
                err.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            )),
        }
    }
    tally
}

// ---------------------------------------------------------------------------------------
// Layers, the daemon, and the final comparison.

/// Builds the lower layers under `l1` (top) and `l2`: `d0..d2` with 50 names each, most
/// small files, `d0/f45..f49` directories holding a file; `l1` overrides half of `d1`.
fn build_lowers(l1: &Path, l2: &Path) {
    for d in 0..DIRS {
        let dir = l2.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        for n in 0..NAMES {
            let p = dir.join(format!("f{n:02}"));
            if d == 0 && LOWER_DIR_NAMES.contains(&n) {
                fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
                fs::write(p.join("x"), "x\n").unwrap_or_else(|e| panic!("write: {e}"));
            } else {
                fs::write(&p, format!("lower2 d{d} f{n:02}\n"))
                    .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
            }
        }
    }
    let d1 = l1.join("d1");
    fs::create_dir_all(&d1).unwrap_or_else(|e| panic!("mkdir {}: {e}", d1.display()));
    for n in 0..NAMES / 2 {
        fs::write(d1.join(format!("f{n:02}")), format!("lower1 d1 f{n:02}\n"))
            .unwrap_or_else(|e| panic!("write: {e}"));
    }
}

/// A tmpfs mounted by the test, unmounted (lazily if busy) on drop.
struct Tmpfs {
    _mounted: Mounted,
}

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        fs::create_dir_all(at).unwrap_or_else(|e| panic!("mkdir {}: {e}", at.display()));
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=512m,mode=0755"),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", at.display()));
        Tmpfs {
            _mounted: Mounted(at.to_path_buf()),
        }
    }
}

/// The paths of one union.
struct Union {
    lowers: String,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

/// A daemon run in the foreground by this test, its stderr going to `log`: unmounts on
/// drop, then waits for the daemon and kills it by its PID if it does not exit.
struct Daemon {
    child: Child,
    mnt: Mounted,
    log: PathBuf,
}

impl Daemon {
    fn start(u: &Union, extra: &str, log: &Path) -> Daemon {
        // `DIFFTEST_UNIONFS_OPTS` (as the differential tests read it) adds options to every
        // daemon of the load, e.g. `uring=on` for the io_uring pass of scripts/test.sh.
        let more = std::env::var("DIFFTEST_UNIONFS_OPTS").unwrap_or_default();
        let extra = match (extra.is_empty(), more.is_empty()) {
            (_, true) => extra.to_string(),
            (true, false) => more,
            (false, false) => format!("{extra},{more}"),
        };
        let o = union_opts(&u.lowers, &u.upper, &u.work, &extra);
        let logf = fs::File::create(log).unwrap_or_else(|e| panic!("create log: {e}"));
        let child = Command::new(bin())
            .args(["-f", "-o", &o])
            .arg(&u.mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn unionfs: {e}"));
        let mut d = Daemon {
            child,
            mnt: Mounted(u.mnt.clone()),
            log: log.to_path_buf(),
        };
        let mut exited = None;
        let ok = wait_until(Duration::from_secs(20), || {
            if mount_entry(&u.mnt).is_some_and(|e| e.fstype == "fuse.unionfs") {
                return true;
            }
            exited = d.child.try_wait().ok().flatten();
            exited.is_some()
        });
        if !ok || exited.is_some() {
            d.mnt.0 = PathBuf::new();
            panic!(
                "unionfs -f -o {o} did not mount (exited: {exited:?}): {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        d
    }

    /// Unmounts and waits for the daemon to exit; its exit status.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let p = self.mnt.0.clone();
        if !p.as_os_str().is_empty() {
            let mut done = false;
            for _ in 0..250 {
                match nix::mount::umount(&p) {
                    Ok(()) => {
                        done = true;
                        break;
                    }
                    Err(Errno::EBUSY) => std::thread::sleep(Duration::from_millis(20)),
                    Err(_) => break,
                }
            }
            if !done {
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            }
            self.mnt.0 = PathBuf::new();
        }
        let mut status = None;
        wait_until(Duration::from_secs(10), || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        status
    }

    /// The lines of the daemon's log that report errors or warnings.
    fn complaints(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("error") || l.contains("warn") || l.contains("panic")
            })
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every entry under `root`, sorted: path, type, mode, owner, size, content, user xattr.
fn snapshot(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let rd = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) => {
                out.insert(dir.display().to_string(), format!("readdir: {e}"));
                return;
            }
        };
        for e in rd {
            let p = match e {
                Ok(e) => e.path(),
                Err(e) => {
                    out.insert(dir.display().to_string(), format!("readdir entry: {e}"));
                    continue;
                }
            };
            let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            let md = match fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) => {
                    out.insert(rel, format!("lstat: {e}"));
                    continue;
                }
            };
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_file() {
                "file"
            } else {
                "other"
            };
            let content = if ft.is_file() {
                match fs::read(&p) {
                    Ok(b) => format!("{:?}", String::from_utf8_lossy(&b)),
                    Err(e) => format!("read: {e}"),
                }
            } else {
                String::new()
            };
            let xattr = match sys::lgetxattr(&p, XATTR) {
                Ok(Some(v)) => format!("{:?}", String::from_utf8_lossy(&v)),
                Ok(None) => "-".into(),
                Err(e) => format!("getxattr: {e}"),
            };
            let size = if ft.is_dir() { 0 } else { md.size() };
            out.insert(
                rel,
                format!(
                    "{kind} {:o} {}:{} size {size} xattr {xattr} {content}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid()
                ),
            );
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// `snapshot` in a thread, given up on after a minute (a hung mount).
fn snapshot_timed(root: &Path) -> BTreeMap<String, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let r = root.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(snapshot(&r));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("walking {} took over a minute: hung", root.display()))
}

/// The differences between two snapshots, at most `max` lines.
fn diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>, max: usize) -> Vec<String> {
    let mut out = Vec::new();
    for k in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
        let (x, y) = (a.get(k), b.get(k));
        if x != y {
            out.push(format!(
                "{k}: unionfs {} / kernel {}",
                x.map_or("(absent)", String::as_str),
                y.map_or("(absent)", String::as_str)
            ));
        }
        if out.len() >= max {
            break;
        }
    }
    out
}

/// Mounts the kernel's overlay over a union's layers, with the on-disk format the daemon
/// writes (no redirect_dir, index or metacopy).
fn mount_kernel_pinned(u: &Union, work: &Path) -> Mounted {
    mount_kernel(
        &u.lowers,
        &u.upper,
        work,
        &u.mnt,
        "redirect_dir=off,index=off,metacopy=off",
    )
}

/// Where a test's layers live: the scratch directory, or two tmpfs mounts in it.
#[derive(Clone, Copy)]
enum Disks {
    Scratch,
    TwoTmpfs,
}

/// The scratch directory and the union's paths (with the tmpfs mounts, if any).
fn layout(tag: &str, disks: Disks) -> (Scratch, Vec<Tmpfs>, Union) {
    let s = Scratch::new(tag);
    let mut tmpfs = Vec::new();
    let (lower_root, upper_root) = match disks {
        Disks::Scratch => (s.path("lower"), s.path("upper")),
        Disks::TwoTmpfs => {
            tmpfs.push(Tmpfs::mount(&s.path("lower")));
            tmpfs.push(Tmpfs::mount(&s.path("upper")));
            (s.path("lower"), s.path("upper"))
        }
    };
    let (l1, l2) = (lower_root.join("l1"), lower_root.join("l2"));
    for d in [&l1, &l2, &upper_root.join("u"), &upper_root.join("w")] {
        fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
    }
    build_lowers(&l1, &l2);
    s.mkdirs(&["m"]);
    let u = Union {
        lowers: format!("{}:{}", l1.display(), l2.display()),
        upper: upper_root.join("u"),
        work: upper_root.join("w"),
        mnt: s.path("m"),
    };
    (s, tmpfs, u)
}

/// The stress load on unionfs with `extra` options, then the checks (see the module doc).
fn stress_unionfs(tag: &str, extra: &str, disks: Disks) {
    let (secs, n, seed) = (seconds(), workers(), seed());
    let what = format!(
        "unionfs -o {} ({}), {n} workers, {secs} s, {}",
        if extra.is_empty() {
            "(defaults)"
        } else {
            extra
        },
        match disks {
            Disks::Scratch => "layers in /tmp",
            Disks::TwoTmpfs => "lower and upper on two tmpfs",
        },
        load_note(seed)
    );
    eprintln!("stress: {what}");
    let (s, _tmpfs, u) = layout(tag, disks);
    let mut daemon = Daemon::start(&u, extra, &s.path("unionfs.log"));
    let tally = run_workers(&u.mnt, &s.0, n, seed, secs as f64);
    let seen = snapshot_timed(&u.mnt);
    let status = daemon.stop();
    let complaints = daemon.complaints();
    let kwork = u.work.with_file_name("kw");
    fs::create_dir_all(&kwork).unwrap_or_else(|e| panic!("mkdir {}: {e}", kwork.display()));
    let mut k = mount_kernel_pinned(&u, &kwork);
    let kernel = snapshot_timed(&u.mnt);
    k.unmount();
    let differences = diff(&seen, &kernel, 20);

    let unexpected = tally.unexpected_by_op();
    let mut report = format!("{what}\n{}", tally.table());
    if !unexpected.is_empty() {
        let _ = writeln!(
            report,
            "unexpected errnos (op, errno: count): {unexpected:?}"
        );
        for l in tally.unexpected.iter().take(20) {
            let _ = writeln!(report, "  {l}");
        }
    }
    for c in &tally.crashed {
        let _ = writeln!(report, "crashed: {c}");
    }
    if !complaints.is_empty() {
        let _ = writeln!(report, "the daemon's log ({} lines):", complaints.len());
        for l in complaints.iter().take(20) {
            let _ = writeln!(report, "  {l}");
        }
    }
    if status.is_none_or(|s| !s.success()) {
        let _ = writeln!(report, "the daemon did not exit cleanly: {status:?}");
    }
    if !differences.is_empty() {
        let _ = writeln!(
            report,
            "the kernel's overlay over the same layers shows another tree ({} entries vs {}):",
            seen.len(),
            kernel.len()
        );
        for l in &differences {
            let _ = writeln!(report, "  {l}");
        }
    } else {
        let _ = writeln!(
            report,
            "end state: {} entries, the same on the kernel's overlay",
            seen.len()
        );
    }
    eprintln!("{report}");
    assert!(
        unexpected.is_empty()
            && tally.crashed.is_empty()
            && tally.unexpected.is_empty()
            && complaints.is_empty()
            && status.is_some_and(|s| s.success())
            && differences.is_empty(),
        "stress failed:\n{report}"
    );
}

#[test]
fn same_names_unionfs_defaults() {
    if !require_root(
        "same_names_unionfs_defaults",
        "needs root to mount FUSE and the kernel's overlay",
    ) {
        return;
    }
    let _g = serial();
    stress_unionfs("stress-def", "", Disks::Scratch);
}

#[test]
fn same_names_unionfs_nopassthrough_two_tmpfs() {
    if !require_root(
        "same_names_unionfs_nopassthrough_two_tmpfs",
        "needs root to mount FUSE, tmpfs and the kernel's overlay",
    ) {
        return;
    }
    let _g = serial();
    stress_unionfs("stress-nopt", "nopassthrough", Disks::TwoTmpfs);
}

/// `passthrough=all`: lower files pass through too, so an append opening a lower file
/// races read opens passing the same lower file through (the kernel answered such an
/// append's open with EIO, `races::append_open_of_a_lower_file_during_a_passthrough_read_open`
/// holds that window open). The full mix seldom meets it (no failure in five 8 s runs
/// before the fix): the windows are in the first second, until the load has copied each
/// lower name up. `STRESS_OPS=append,read STRESS_SECONDS=2` met it in 4 of seeds 1-8.
#[test]
fn same_names_unionfs_passthrough_all() {
    if !require_root(
        "same_names_unionfs_passthrough_all",
        "needs root to mount FUSE and the kernel's overlay",
    ) {
        return;
    }
    let _g = serial();
    stress_unionfs("stress-ptall", "passthrough=all", Disks::Scratch);
}

/// The same load on the kernel's overlay (a quarter of the time): the oracle must give
/// only the errnos `Op::allowed` lists, or the list is wrong.
#[test]
fn same_names_kernel_overlay_errnos() {
    if !require_root(
        "same_names_kernel_overlay_errnos",
        "needs root to mount the kernel's overlay",
    ) {
        return;
    }
    let _g = serial();
    let (secs, n, seed) = ((seconds() as f64 / 4.0).max(1.0), workers(), seed());
    let (s, _tmpfs, u) = layout("stress-kernel", Disks::Scratch);
    let _k = mount_kernel_pinned(&u, &u.work);
    let tally = run_workers(&u.mnt, &s.0, n, seed, secs);
    let report = format!(
        "kernel overlay, {n} workers, {secs} s, {}\n{}{}",
        load_note(seed),
        tally.table(),
        tally
            .unexpected
            .iter()
            .chain(&tally.crashed)
            .map(|l| format!("  {l}\n"))
            .collect::<String>()
    );
    eprintln!("{report}");
    assert!(
        tally.unexpected_by_op().is_empty() && tally.crashed.is_empty(),
        "the kernel's overlay gave errnos that Op::allowed does not list:\n{report}"
    );
}

// ---------------------------------------------------------------------------------------
// Head of line.

/// How many regular files process `pid` has open under `dir` (not counting directories:
/// the daemon keeps its work directory open).
fn files_open_under(pid: u32, dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    rd.filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|fd| fs::read_link(fd).is_ok_and(|t| t.starts_with(dir)))
        .filter(|fd| fs::metadata(fd).is_ok_and(|m| m.is_file()))
        .count()
}

/// 100 lstats of names never looked up before (each reaches the daemon: the kernel has
/// nothing cached for them); the time they took.
fn stat_fresh(dir: &Path, names: std::ops::Range<usize>) -> Duration {
    let t = Instant::now();
    for i in names {
        let p = dir.join(format!("s{i:03}"));
        fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    }
    t.elapsed()
}

/// What one head-of-line measurement saw.
struct HeadOfLine {
    idle: Duration,
    busy: Duration,
    /// Both copy-ups were seen under way before the busy stats began (None: not
    /// observable, a short pause instead).
    started: Option<bool>,
    /// Appenders still running when the busy stats ended, and how long they then took.
    still_copying: usize,
    rest: Duration,
}

impl HeadOfLine {
    fn ratio(&self) -> f64 {
        self.busy.as_secs_f64() / self.idle.as_secs_f64().max(1e-6)
    }
    fn describe(&self) -> String {
        format!(
            "idle {:?}, during the copy-ups {:?}: ratio {:.1}; copy-ups seen under way: {}; \
             appenders still running when the stats ended: {} (done {:?} later)",
            self.idle,
            self.busy,
            self.ratio(),
            self.started
                .map_or("not observable (30 ms pause)", |s| if s {
                    "yes"
                } else {
                    "no (waited 10 s)"
                }),
            self.still_copying,
            self.rest
        )
    }
}

/// On the mounted union at `mnt` (lower: `big0`, `big1`, `small/s000..s299`): 100 lstats
/// idle, then 100 more while two processes each append a byte to a big file, once
/// `copying()` says the copy-ups are under way (or after 10 s; without it, after 30 ms).
fn head_of_line(mnt: &Path, big: u64, copying: Option<&dyn Fn() -> bool>) -> HeadOfLine {
    let small = mnt.join("small");
    // Warm-up (the directory itself, the code paths), then the idle time.
    let _ = stat_fresh(&small, 0..100);
    let idle = stat_fresh(&small, 100..200);
    let mut appenders = Workers(Vec::new());
    for (i, b) in ["big0", "big1"].iter().enumerate() {
        let c = Command::new("/bin/sh")
            .args(["-c", "printf + >> \"$0\""])
            .arg(mnt.join(b))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn appender: {e}"));
        appenders.0.push((i, c));
    }
    let started = copying.map(|c| wait_until(Duration::from_secs(10), c));
    if started.is_none() {
        std::thread::sleep(Duration::from_millis(30));
    }
    let busy = stat_fresh(&small, 200..300);
    let still_copying = appenders
        .0
        .iter_mut()
        .filter_map(|(_, c)| matches!(c.try_wait(), Ok(None)).then_some(()))
        .count();
    let t = Instant::now();
    for (i, c) in &mut appenders.0 {
        let st = c
            .wait()
            .unwrap_or_else(|e| panic!("wait appender {i}: {e}"));
        assert!(st.success(), "appender {i}: {st}");
    }
    let rest = t.elapsed();
    for b in ["big0", "big1"] {
        let len = fs::metadata(mnt.join(b))
            .unwrap_or_else(|e| panic!("stat {b}: {e}"))
            .len();
        assert_eq!(len, big + 1, "{b} after the append");
    }
    HeadOfLine {
        idle,
        busy,
        started,
        still_copying,
        rest,
    }
}

/// While two 256 MiB lower files are being copied up (two processes each append a byte to
/// one), 100 lstats of other names must take less than 10 times what they take on the
/// idle mount: a copy-up must not hold the threads that serve everyone else. The same on
/// the kernel's overlay is measured first and reported, not asserted: what the copying
/// itself costs the stats on this machine.
#[test]
fn copyups_do_not_hold_up_stats_of_other_names() {
    if !require_root(
        "copyups_do_not_hold_up_stats_of_other_names",
        "needs root to mount FUSE and the kernel's overlay",
    ) {
        return;
    }
    let _g = serial();
    const BIG: usize = 256 << 20;
    let s = Scratch::new("stress-hol");
    s.mkdirs(&["l/small", "u", "w", "ku", "kw", "m"]);
    let block: Vec<u8> = (0..1 << 20).map(|i: usize| (i % 251) as u8 + 1).collect();
    for b in ["big0", "big1"] {
        let mut f = fs::File::create(s.path(&format!("l/{b}")))
            .unwrap_or_else(|e| panic!("create {b}: {e}"));
        for _ in 0..BIG / block.len() {
            f.write_all(&block)
                .unwrap_or_else(|e| panic!("write {b}: {e}"));
        }
    }
    for i in 0..300 {
        fs::write(s.path(&format!("l/small/s{i:03}")), "s").unwrap_or_else(|e| panic!("{e}"));
    }
    nix::unistd::sync();
    let lowers = s.path("l").display().to_string();

    // The kernel's overlay copies up in the appenders' own context, unseen from here.
    let k = Union {
        lowers: lowers.clone(),
        upper: s.path("ku"),
        work: s.path("kw"),
        mnt: s.path("m"),
    };
    let mut km = mount_kernel_pinned(&k, &k.work);
    let kernel = head_of_line(&k.mnt, BIG as u64, None);
    km.unmount();
    fs::remove_dir_all(s.path("ku")).unwrap_or_else(|e| panic!("rm ku: {e}"));
    nix::unistd::sync();

    let u = Union {
        lowers,
        upper: s.path("u"),
        work: s.path("w"),
        mnt: s.path("m"),
    };
    let mut daemon = Daemon::start(&u, "", &s.path("unionfs.log"));
    let pid = daemon.child.id();
    // The daemon holds the copies open in the work directory while it builds them
    // (unnamed O_TMPFILE files show there as deleted).
    let ours = head_of_line(
        &u.mnt,
        BIG as u64,
        Some(&|| files_open_under(pid, &u.work) >= 2),
    );
    let status = daemon.stop();
    let report = format!(
        "100 lstats of other names while two 256 MiB lower files are copied up:\n  \
         unionfs: {}\n  kernel overlay (for comparison): {}\n  daemon exit: {status:?}",
        ours.describe(),
        kernel.describe()
    );
    eprintln!("head of line: {report}");
    assert!(
        ours.ratio() < 10.0,
        "stats of other names wait behind copy-ups (limit: ratio 10): {report}"
    );
}
