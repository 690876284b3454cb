//! The container's processes. runbox forks a helper that unshares the namespaces and forks
//! the command, which is thus PID 1 of a new PID namespace; when it exits the kernel kills
//! whatever it left behind, so no separate init is needed. The helper waits for it and
//! exits with its status (128+N for a death by signal N); runbox waits for the helper and
//! forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to the command.
//!
//! As PID 1, the command only receives the signals it handles (the kernel drops the others
//! from an ancestor namespace, as for `docker run` without `--init`). So that runbox always
//! gets to clean up, a SIGINT or SIGTERM not obeyed within a grace period is followed by
//! SIGKILL.
//!
//! Failures before exec travel back through a close-on-exec pipe as one line.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Gid, Pid, Uid};

use crate::env::resolve;
use crate::error::{Error, Result};
use crate::rootfs::{self, Step};
use crate::sys;
use crate::user;
use crate::userns::{self, IdMap};

pub const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

const GRACE: Duration = Duration::from_secs(3);

/// Everything the command's side needs, computed before the fork.
pub struct ChildSpec {
    pub root: PathBuf,
    pub steps: Vec<Step>,
    pub hostname: String,
    pub host_net: bool,
    /// `USER[:GROUP]`, resolved inside the container's root.
    pub user: Option<String>,
    pub workdir: String,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cgroup_procs: Vec<PathBuf>,
    /// Rootless: a new user namespace mapping the caller (these host ids) to root.
    pub userns: Option<IdMap>,
}

/// Exit status in the shell's convention.
pub fn exit_code(ws: WaitStatus) -> Option<i32> {
    match ws {
        WaitStatus::Exited(_, c) => Some(c),
        WaitStatus::Signaled(_, s, _) => Some(128 + s as i32),
        _ => None,
    }
}

pub fn namespace_flags(host_net: bool, userns: bool) -> CloneFlags {
    let mut f = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if !host_net {
        f |= CloneFlags::CLONE_NEWNET;
    }
    // Created first by the kernel, so it owns the others.
    if userns {
        f |= CloneFlags::CLONE_NEWUSER;
    }
    f
}

/// The id maps a rootless helper writes for itself: only its own ids, mapped to 0 (what a
/// process may map without newuidmap). setgroups must be denied before the gid map.
pub fn id_maps(uid: u32, gid: u32) -> [(&'static str, String); 3] {
    [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("0 {uid} 1")),
        ("/proc/self/gid_map", format!("0 {gid} 1")),
    ]
}

fn signal_set() -> SigSet {
    let mut s = SigSet::empty();
    for sig in FORWARDED {
        s.add(sig);
    }
    s.add(Signal::SIGCHLD);
    s
}

/// How the command ended: its exit code, and the one-line reason when it never started
/// (the code is then 125 for a setup failure, 126 not executable, 127 not found).
pub struct Outcome {
    pub code: i32,
    pub error: Option<String>,
}

/// Blocks the forwarded signals (and SIGCHLD) in runbox itself: called before anything is
/// mounted, so a SIGINT or SIGTERM arriving during set-up waits for the loop (which
/// forwards it) instead of killing runbox with its mounts in place. The command unblocks
/// them before exec.
pub fn block_signals() -> Result<()> {
    signal_set()
        .thread_block()
        .map_err(|e| Error::sys("block signals", e))
}

/// Runs the container's command and waits for it.
pub fn run(spec: &ChildSpec) -> Result<Outcome> {
    let set = signal_set();
    block_signals()?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::sys("signalfd", e))?;
    let (pid_r, pid_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    // With subordinate ranges, the maps are written from outside by the setuid tools
    // while the helper waits: it says "unshared" on one pipe and waits for "go".
    let (sync_r, sync_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let helper = match sys::fork().map_err(|e| Error::sys("fork", e))? {
        ForkResult::Child => {
            drop(pid_r);
            drop(err_r);
            drop(sync_r);
            drop(go_w);
            helper_main(spec, pid_w, err_w, (sync_w, go_r))
        }
        ForkResult::Parent { child } => child,
    };
    drop(pid_w);
    drop(err_w);
    drop(sync_w);
    drop(go_r);
    let mut map_error = None;
    if let Some(map @ IdMap::Ranges { .. }) = &spec.userns {
        let mut b = [0u8; 1];
        if File::from(sync_r).read_exact(&mut b).is_ok() {
            let r = userns::write_with_tools(helper.as_raw(), map);
            let _ = File::from(go_w).write_all(if r.is_ok() { b"g" } else { b"x" });
            map_error = r.err();
        }
    } else {
        drop(sync_r);
        drop(go_w);
    }
    let mut buf = [0u8; 4];
    let mut pid_file = File::from(pid_r);
    let cmd_pid = pid_file
        .read_exact(&mut buf)
        .ok()
        .map(|_| Pid::from_raw(i32::from_ne_bytes(buf)));
    let code = supervise(&sfd, helper, cmd_pid)?;
    if let Some(e) = map_error {
        return Ok(Outcome {
            code,
            error: Some(e.to_string()),
        });
    }
    let mut msg = String::new();
    let _ = File::from(err_r).read_to_string(&mut msg);
    let error = msg
        .lines()
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_string);
    Ok(Outcome { code, error })
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))
}

/// Waits for the helper, forwarding signals to the command; escalates to SIGKILL when a
/// SIGINT/SIGTERM is not obeyed within the grace period.
fn supervise(sfd: &SignalFd, helper: Pid, cmd: Option<Pid>) -> Result<i32> {
    let mut deadline: Option<Instant> = None;
    loop {
        match waitpid(helper, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(ws) => {
                if let Some(c) = exit_code(ws) {
                    return Ok(c);
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(Error::sys("wait for the container", e)),
        }
        let timeout = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    if let Some(p) = cmd {
                        let _ = kill(p, Signal::SIGKILL);
                    }
                    deadline = None;
                    continue;
                }
                PollTimeout::try_from(left.as_millis().min(60_000) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Error::sys("poll", e)),
        }
        while let Ok(Some(info)) = sfd.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            if sig == Signal::SIGCHLD {
                continue;
            }
            if let Some(p) = cmd {
                let _ = kill(p, sig);
            }
            if matches!(sig, Signal::SIGINT | Signal::SIGTERM) && deadline.is_none() {
                deadline = Some(Instant::now() + GRACE);
            }
        }
    }
}

/// The helper: new namespaces, then the command as their PID 1. Never returns.
fn helper_main(spec: &ChildSpec, pid_w: OwnedFd, err_w: OwnedFd, sync: (OwnedFd, OwnedFd)) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let fail = |e: Error, err_w: &OwnedFd| -> ! {
        report(err_w, &e.to_string());
        std::process::exit(125)
    };
    if let Err(e) = unshare(namespace_flags(spec.host_net, spec.userns.is_some())) {
        fail(Error::sys("unshare namespaces", e), &err_w);
    }
    match &spec.userns {
        Some(IdMap::SelfOnly { uid, gid }) => {
            for (file, line) in id_maps(*uid, *gid) {
                if let Err(e) = std::fs::write(file, &line) {
                    fail(
                        Error::path(&format!("write {line:?} to"), Path::new(file), e),
                        &err_w,
                    );
                }
            }
        }
        Some(IdMap::Ranges { .. }) => {
            let (sync_w, go_r) = sync;
            let _ = File::from(sync_w).write_all(b"u");
            let mut b = [0u8; 1];
            let go = File::from(go_r).read_exact(&mut b).is_ok() && b == *b"g";
            if !go {
                // runbox reports why.
                std::process::exit(125)
            }
        }
        None => drop(sync),
    }
    let cmd = match sys::fork() {
        Err(e) => fail(Error::sys("fork", e), &err_w),
        Ok(ForkResult::Child) => {
            drop(pid_w);
            command_main(spec, err_w)
        }
        Ok(ForkResult::Parent { child }) => child,
    };
    let mut w = File::from(pid_w);
    let _ = w.write_all(&cmd.as_raw().to_ne_bytes());
    drop(w);
    drop(err_w);
    loop {
        match waitpid(cmd, None) {
            Ok(ws) => {
                if let Some(c) = exit_code(ws) {
                    std::process::exit(c)
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => std::process::exit(125),
        }
    }
}

fn report(err_w: &OwnedFd, msg: &str) {
    let line = format!("{}\n", msg.replace('\n', " "));
    let _ = nix::unistd::write(err_w, line.as_bytes());
}

/// PID 1 of the container: cgroup, root, hostname, loopback, user, cwd, exec.
fn command_main(spec: &ChildSpec, err_w: OwnedFd) -> ! {
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let (code, e) = match setup_and_exec(spec) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    report(&err_w, &e.to_string());
    std::process::exit(code)
}

fn setup_and_exec(spec: &ChildSpec) -> std::result::Result<std::convert::Infallible, (i32, Error)> {
    let setup = |e: Error| (125, e);
    for p in &spec.cgroup_procs {
        std::fs::write(p, "0").map_err(|e| setup(Error::path("join cgroup", p, e)))?;
    }
    let mut real = rootfs::RealSys::default();
    rootfs::execute(&spec.root, &spec.steps, &mut real).map_err(setup)?;
    drop(real);
    nix::unistd::sethostname(&spec.hostname)
        .map_err(|e| setup(Error::sys("set the hostname", e)))?;
    if !spec.host_net {
        sys::interface_up(c"lo").map_err(|e| setup(Error::io("bring loopback up", e)))?;
    }
    let mut env = spec.env.clone();
    let who = match &spec.user {
        Some(u) => {
            // Inside the new root: the image's own account files.
            let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
            let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
            Some(user::resolve(u, &passwd, &group).map_err(setup)?)
        }
        None => None,
    };
    let home = who
        .as_ref()
        .map(|w| w.home.clone())
        .unwrap_or_else(|| "/root".into());
    if !env.iter().any(|kv| kv.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    if let Some(w) = &who {
        if matches!(spec.userns, Some(IdMap::SelfOnly { .. })) && (w.uid, w.gid) != (0, 0) {
            return Err(setup(Error::usage(format!(
                "user {u}: this rootless container maps only your own ids, to 0:0 (newuidmap and a /etc/subuid range allow more)",
                u = spec.user.as_deref().unwrap_or_default()
            ))));
        }
        // Denied (and pointless) in a user namespace mapping one id.
        if !matches!(spec.userns, Some(IdMap::SelfOnly { .. })) {
            let groups: Vec<Gid> = w.groups.iter().map(|g| Gid::from_raw(*g)).collect();
            nix::unistd::setgroups(&groups).map_err(|e| setup(Error::sys("setgroups", e)))?;
        }
        nix::unistd::setgid(Gid::from_raw(w.gid))
            .map_err(|e| setup(Error::sys(format!("setgid {}", w.gid), e)))?;
        nix::unistd::setuid(Uid::from_raw(w.uid))
            .map_err(|e| setup(Error::sys(format!("setuid {}", w.uid), e)))?;
    }
    nix::unistd::chdir(Path::new(&spec.workdir))
        .map_err(|e| setup(Error::sys(format!("working directory {}", spec.workdir), e)))?;
    let path = env
        .iter()
        .find_map(|kv| kv.strip_prefix("PATH="))
        .unwrap_or(crate::env::DEFAULT_PATH);
    let argv0 = spec
        .argv
        .first()
        .ok_or_else(|| setup(Error::usage("empty command")))?;
    let exe = resolve(argv0, path, |p| {
        nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok()
    })
    .ok_or_else(|| {
        (
            127,
            Error::usage(format!("{argv0}: command not found in the container")),
        )
    })?;
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| setup(Error::usage(format!("{s:?} holds a NUL byte"))))
    };
    let exe_c = cstr(&exe)?;
    let argv = spec
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let envp = env
        .iter()
        .map(|a| cstr(a))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    // Reset what runbox changed for itself: the blocked signals.
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let e = nix::unistd::execve(&exe_c, &argv, &envp)
        .err()
        .unwrap_or(nix::errno::Errno::EINVAL);
    let code = if e == nix::errno::Errno::ENOENT {
        127
    } else {
        126
    };
    Err((code, Error::sys(format!("exec {exe}"), e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let p = Pid::from_raw(5);
        assert_eq!(exit_code(WaitStatus::Exited(p, 7)), Some(7));
        assert_eq!(
            exit_code(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }

    #[test]
    fn net_flag() {
        assert!(namespace_flags(false, false).contains(CloneFlags::CLONE_NEWNET));
        assert!(!namespace_flags(true, false).contains(CloneFlags::CLONE_NEWNET));
        assert!(namespace_flags(true, false).contains(CloneFlags::CLONE_NEWPID));
        assert!(!namespace_flags(true, false).contains(CloneFlags::CLONE_NEWUSER));
        assert!(namespace_flags(false, true).contains(CloneFlags::CLONE_NEWUSER));
    }

    #[test]
    fn maps() {
        let m = id_maps(1000, 100);
        assert_eq!(m[0].1, "deny");
        assert_eq!(m[1], ("/proc/self/uid_map", "0 1000 1".to_string()));
        assert_eq!(m[2], ("/proc/self/gid_map", "0 100 1".to_string()));
    }
}
