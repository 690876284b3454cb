//! Detaching into the background: fork before any thread exists, keep the parent waiting until
//! the child reports the mount ready (exit 0) or failed (message, exit 1).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;

use nix::fcntl::OFlag;
use nix::unistd::ForkResult;

/// First byte on the pipe when the mount is up.
const READY: u8 = b'R';
/// First byte on the pipe before a one-line error message.
const FAIL: u8 = b'F';

/// The daemon's end of the pipe its parent is waiting on. Dropping it without calling
/// [`Readiness::ready`] or [`Readiness::fail`] makes the parent report that the daemon exited
/// before the mount was ready.
#[derive(Debug)]
pub struct Readiness {
    pipe: File,
}

impl Readiness {
    /// Reports success: detaches stdin/stdout/stderr (so whoever waits for EOF on our output,
    /// e.g. `$(unionfs ...)` or a test harness, is not held up by the daemon) and lets the
    /// parent exit 0.
    pub fn ready(mut self) {
        // Redirect first, so that by the time the parent exits we no longer hold the caller's
        // streams. A failure only means the streams stay open; the mount is up regardless.
        if let Err(e) = close_std_streams() {
            log::warn!("cannot redirect standard streams to /dev/null: {e}");
        }
        // If the parent is gone there is nobody to tell; the daemon serves on anyway.
        let _ = self.pipe.write_all(&[READY]);
    }

    /// Reports failure: the parent prints `unionfs: {msg}` on stderr and exits 1.
    pub fn fail(mut self, msg: &str) {
        // The parent reads one line.
        let line: String = msg
            .chars()
            .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
            .collect();
        let mut buf = Vec::with_capacity(line.len() + 2);
        buf.push(FAIL);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let _ = self.pipe.write_all(&buf);
    }
}

/// Points fds 0, 1 and 2 at /dev/null.
pub fn close_std_streams() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)?;
    nix::unistd::dup2_stderr(&null)?;
    Ok(())
}

/// Forks. Returns only in the child, which is in a new session and must call
/// [`Readiness::ready`] or [`Readiness::fail`]; the parent waits for that and exits the
/// process. Must be called while the process has a single thread: only the calling thread
/// survives fork, so locks held by others would stay locked forever in the child.
pub fn daemonize() -> io::Result<Readiness> {
    // Unflushed output would otherwise be written twice, once by each process.
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // Close-on-exec so that programs the daemon runs (fusermount3) do not keep the parent
    // waiting.
    let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: the caller guarantees the process is single-threaded (see above), so the child
    // is a complete copy and may run arbitrary code, not only async-signal-safe calls.
    match unsafe { nix::unistd::fork() }? {
        ForkResult::Parent { .. } => {
            drop(write_end);
            wait_for_child(read_end)
        }
        ForkResult::Child => {
            drop(read_end);
            // Leave the caller's session, so that its terminal hanging up does not kill us.
            nix::unistd::setsid()?;
            Ok(Readiness {
                pipe: File::from(write_end),
            })
        }
    }
}

/// Parent side: blocks until the child speaks or dies, then exits.
fn wait_for_child(read_end: OwnedFd) -> ! {
    let mut r = BufReader::new(File::from(read_end));
    let mut first = [0u8; 1];
    let code = match r.read_exact(&mut first) {
        Ok(()) if first[0] == READY => 0,
        Ok(()) if first[0] == FAIL => {
            let mut msg = Vec::new();
            let _ = r.read_until(b'\n', &mut msg);
            let msg = String::from_utf8_lossy(&msg);
            eprintln!("unionfs: {}", msg.trim_end());
            1
        }
        _ => {
            eprintln!("unionfs: daemon exited before the mount was ready");
            1
        }
    };
    std::process::exit(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    const MODE_ENV: &str = "UNIONFS_DAEMONIZE_HELPER";
    const OUT_ENV: &str = "UNIONFS_DAEMONIZE_OUT";

    /// Not a test by itself: when re-run by `run_helper` with MODE_ENV set, this is the
    /// program being daemonized. A fresh process, so forking here does not fork the test
    /// harness's other tests.
    #[test]
    fn daemonize_helper_process() {
        let Ok(mode) = std::env::var(MODE_ENV) else {
            return;
        };
        let r = daemonize().expect("daemonize");
        match mode.as_str() {
            "ready" => {
                let out = std::env::var(OUT_ENV).expect("out path");
                let me = nix::unistd::getpid();
                let sid = nix::unistd::getsid(None).expect("getsid");
                std::fs::write(out, format!("{me} {sid}")).expect("write");
                r.ready();
                // Still running, with the caller's stderr no longer held.
                std::thread::sleep(Duration::from_secs(5));
            }
            "fail" => r.fail("cannot frobnicate\nsecond line"),
            _ => drop(r),
        }
        std::process::exit(0);
    }

    fn run_helper(mode: &str, out: &std::path::Path) -> (std::process::Output, Duration) {
        let exe = std::env::current_exe().expect("current_exe");
        // libtest names tests by module path without the crate name.
        let module = module_path!();
        let module = module.split_once("::").map_or(module, |(_, m)| m);
        let start = Instant::now();
        let out = Command::new(exe)
            .args([
                &format!("{module}::daemonize_helper_process"),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(MODE_ENV, mode)
            .env(OUT_ENV, out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run helper");
        (out, start.elapsed())
    }

    #[test]
    fn parent_reports_ready_failure_and_death() {
        let out = std::env::temp_dir().join(format!("unionfs-daemon-test-{}", std::process::id()));

        let (o, took) = run_helper("ready", &out);
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        // The daemon sleeps 5 s; our pipes reached EOF well before, so it let go of them.
        assert!(took < Duration::from_secs(4), "took {took:?}");
        let text = std::fs::read_to_string(&out).expect("daemon wrote its ids");
        let _ = std::fs::remove_file(&out);
        let ids: Vec<&str> = text.split(' ').collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[0], ids[1], "daemon is not a session leader");

        let (o, _) = run_helper("fail", &out);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("unionfs: cannot frobnicate second line\n"),
            "{err}"
        );

        let (o, _) = run_helper("die", &out);
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("unionfs: daemon exited before the mount was ready"),
            "{err}"
        );
    }
}
