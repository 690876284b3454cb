//! Mounts and their guards. Every mount the bench makes is a [`Mount`] whose Drop unmounts it
//! (lazily as a last resort) and reaps the daemon it started, whatever error or signal ended
//! the run; a registry of live mounts serves the forced exit on a second Ctrl-C.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a FUSE daemon may take to mount, and to exit once unmounted.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a busy mount point is retried before the lazy unmount.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Live mount points, with the daemon (if ours) behind each.
static LIVE: Mutex<Vec<(PathBuf, Option<u32>)>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<(PathBuf, Option<u32>)>> {
    // A panic while holding the lock leaves a list that is still right.
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Mount {
    mnt: PathBuf,
    /// The FUSE daemon, started in the foreground: its PID is the one to account CPU to.
    child: Option<Child>,
    done: bool,
}

impl Mount {
    /// `mount -t overlay overlay -o lowerdir=..,upperdir=..,workdir=..[,extra] mnt`.
    pub fn overlay(
        lower: &Path,
        upper: &Path,
        work: &Path,
        mnt: &Path,
        extra: &[&str],
    ) -> Result<Mount, String> {
        let mut data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        for e in extra {
            data.push(',');
            data.push_str(e);
        }
        nix::mount::mount(
            Some("overlay"),
            mnt,
            Some("overlay"),
            MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| format!("mount -t overlay -o {data}: {e}"))?;
        live().push((mnt.to_path_buf(), None));
        Ok(Mount {
            mnt: mnt.to_path_buf(),
            child: None,
            done: false,
        })
    }

    /// Starts a FUSE daemon in the foreground (`cmd` must say `-f`) and waits until `mnt`
    /// is in the mount table. Its output goes to `log`, whose last line explains a failure.
    pub fn fuse(mut cmd: Command, mnt: &Path, log: &Path) -> Result<Mount, String> {
        let prog = cmd.get_program().to_string_lossy().into_owned();
        let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        // A process group of its own: Ctrl-C in the terminal reaches only the bench, which
        // unmounts; a daemon killed under its mount would leave it dead.
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {prog}: {e}"))?;
        live().push((mnt.to_path_buf(), Some(child.id())));
        let mut m = Mount {
            mnt: mnt.to_path_buf(),
            child: Some(child),
            done: false,
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if is_mounted(mnt).map_err(|e| format!("cannot read the mount table: {e}"))? {
                return Ok(m);
            }
            if let Some(c) = m.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    m.child = None;
                    return Err(format!(
                        "{prog} exited ({status}) before mounting: {}",
                        last_line(log)
                    ));
                }
            }
            if Instant::now() > deadline {
                // Drop stops the daemon.
                return Err(format!(
                    "{prog} did not mount within {MOUNT_TIMEOUT:?}: {}",
                    last_line(log)
                ));
            }
            sleep(Duration::from_millis(2));
        }
    }

    pub fn daemon_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Unmounts now and says what went wrong, if anything; Drop does the same silently.
    pub fn unmount(mut self) -> Result<(), String> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), String> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let mut problems = Vec::new();
        let was_mounted = is_mounted(&self.mnt).unwrap_or(true);
        if was_mounted {
            match unmount_path(&self.mnt) {
                Ok(false) => {}
                Ok(true) => problems.push("busy: unmounted lazily".to_string()),
                Err(e) => problems.push(e),
            }
        }
        if let Some(child) = self.child.take() {
            // Unmounted, a FUSE daemon exits by itself; one that never mounted has to be told.
            let grace = if was_mounted {
                EXIT_TIMEOUT
            } else {
                Duration::ZERO
            };
            if let Err(e) = reap(child, grace) {
                problems.push(e);
            }
            // A daemon killed just as it mounted leaves a dead mount behind.
            if is_mounted(&self.mnt).unwrap_or(false) {
                let _ = umount2(&self.mnt, MntFlags::MNT_DETACH);
            }
        }
        live().retain(|(p, _)| p != &self.mnt);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            eprintln!("bench: warning: {}: {e}", self.mnt.display());
        }
    }
}

/// umount, retried while busy; `Ok(true)` when only the lazy unmount worked.
fn unmount_path(mnt: &Path) -> Result<bool, String> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    let first = loop {
        match umount2(mnt, MntFlags::empty()) {
            Ok(()) => return Ok(false),
            Err(Errno::EBUSY) if Instant::now() < deadline => sleep(Duration::from_millis(20)),
            Err(e) => break e,
        }
    };
    if !is_mounted(mnt).unwrap_or(true) {
        return Ok(false);
    }
    umount2(mnt, MntFlags::MNT_DETACH)
        .map(|()| true)
        .map_err(|e| format!("umount: {first}; umount -l: {e}"))
}

/// Waits up to `grace` for the daemon to exit, then SIGTERM, then SIGKILL: only this child,
/// by its PID.
fn reap(mut child: Child, grace: Duration) -> Result<(), String> {
    if wait_for(&mut child, grace) {
        return Ok(());
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if wait_for(&mut child, Duration::from_secs(2)) {
        return if grace.is_zero() {
            Ok(())
        } else {
            Err("daemon still running after unmount; terminated".into())
        };
    }
    let _ = child.kill();
    let _ = child.wait();
    Err("daemon did not exit; killed".into())
}

fn wait_for(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => sleep(Duration::from_millis(5)),
        }
    }
}

/// On a second Ctrl-C: detach every live mount and kill the daemons the bench started.
pub fn force_cleanup() {
    let list = live().clone();
    for (mnt, pid) in list {
        let _ = umount2(&mnt, MntFlags::MNT_DETACH);
        if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// A line of /proc/self/mountinfo.
pub struct MountEntry {
    pub point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// /proc/self/mountinfo, mount points unescaped (`\040` is a space, and so on).
pub fn table() -> io::Result<Vec<MountEntry>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let point = l.split(' ').nth(4)?;
            // After the optional fields, " - " then the type and the source.
            let (_, tail) = l.split_once(" - ")?;
            let mut tail = tail.split(' ');
            Some(MountEntry {
                point: unescape(point),
                fstype: tail.next()?.to_string(),
                source: tail.next().unwrap_or("").to_string(),
            })
        })
        .collect())
}

fn mount_points() -> io::Result<Vec<PathBuf>> {
    Ok(table()?.into_iter().map(|e| e.point).collect())
}

fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

pub fn is_mounted(mnt: &Path) -> io::Result<bool> {
    Ok(mount_points()?.iter().any(|p| p == mnt))
}

/// Mount points at or below `dir`.
pub fn mounts_under(dir: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(mount_points()?
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect())
}

fn last_line(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no output)")
        .trim()
        .to_string()
}

/// A reading of a daemon's CPU time, to subtract from a later one.
pub struct CpuMark {
    /// Nanoseconds on CPU of each thread (/proc/PID/task/TID/schedstat): precise.
    threads: HashMap<u32, u64>,
    /// User + system of the whole process (/proc/PID/stat): counts exited threads too, but in
    /// clock ticks (10 ms).
    ticks: Duration,
}

impl CpuMark {
    pub fn read(pid: u32) -> Result<CpuMark, String> {
        let mut threads = HashMap::new();
        let tasks = fs::read_dir(format!("/proc/{pid}/task"))
            .map_err(|e| format!("/proc/{pid}/task: {e}"))?;
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            // A thread that ended meanwhile is simply not counted: `since` then falls back.
            if let Ok(text) = fs::read_to_string(task.path().join("schedstat")) {
                if let Some(ns) = text.split_whitespace().next().and_then(|v| v.parse().ok()) {
                    threads.insert(tid, ns);
                }
            }
        }
        Ok(CpuMark {
            threads,
            ticks: stat_ticks(pid)?,
        })
    }

    /// CPU time from `before` to `self`: the threads' exact times when every thread of
    /// `before` is still there (new threads count whole), else the coarse process total.
    pub fn since(&self, before: &CpuMark) -> Duration {
        if before.threads.keys().all(|t| self.threads.contains_key(t)) {
            let ns: u64 = self
                .threads
                .iter()
                .map(|(t, &ns)| ns.saturating_sub(before.threads.get(t).copied().unwrap_or(0)))
                .sum();
            Duration::from_nanos(ns)
        } else {
            self.ticks.saturating_sub(before.ticks)
        }
    }
}

/// User + system time of a whole process (all threads, live and exited) from /proc/PID/stat.
fn stat_ticks(pid: u32) -> Result<Duration, String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The command name may hold spaces and parentheses: count fields after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) (utime, stime); `rest` starts at field 3.
    let ticks = |i: usize| -> Result<u64, String> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| format!("/proc/{pid}/stat: no field {}", i + 3))
    };
    let total = ticks(11)? + ticks(12)?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
        .filter(|&v| v > 0)
        .unwrap_or(100);
    Ok(Duration::from_micros(total * 1_000_000 / hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/tmp/a\040b\011c"), PathBuf::from("/tmp/a b\tc"));
        assert_eq!(unescape(r"/plain\x"), PathBuf::from(r"/plain\x"));
    }
}
