//! The union under a container's root: unionfs over FUSE (spawned from the binary beside
//! runbox) or the kernel's overlay; `auto` picks one and can say why. Mounts are undone by
//! a guard, so an error or a signal in the middle of a run still unmounts.

use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{access, AccessFlags};

use crate::cli::BackendArg;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Fuse,
    Kernel,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Fuse => "fuse",
            Backend::Kernel => "kernel",
        }
    }
}

/// The unionfs daemon: `$RUNBOX_UNIONFS`, else `unionfs` in runbox's own directory. Never
/// looked up in PATH (another program called unionfs exists).
pub fn unionfs_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RUNBOX_UNIONFS").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("find runbox's own path", e))?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error::usage("runbox's own path has no directory"))?;
    Ok(dir.join("unionfs"))
}

const FUSERMOUNT: [&str; 2] = ["/usr/bin/fusermount3", "/bin/fusermount3"];

/// Facts `auto` decides on, gathered separately so the decision is a pure function.
#[derive(Debug, Clone)]
pub struct Probe {
    pub dev_fuse_rw: bool,
    pub fusermount: bool,
    pub unionfs: Option<PathBuf>,
    pub is_root: bool,
}

impl Probe {
    pub fn gather() -> Probe {
        let unionfs = unionfs_binary()
            .ok()
            .filter(|p| access(p.as_path(), AccessFlags::X_OK).is_ok());
        Probe {
            dev_fuse_rw: access("/dev/fuse", AccessFlags::R_OK | AccessFlags::W_OK).is_ok(),
            fusermount: FUSERMOUNT.iter().any(|p| Path::new(p).exists()),
            unionfs,
            is_root: nix::unistd::geteuid().is_root(),
        }
    }
}

/// Picks the backend and the one-line reason `--verbose` prints.
pub fn choose(arg: BackendArg, probe: &Probe) -> Result<(Backend, String)> {
    let fuse_problem = if probe.unionfs.is_none() {
        Some(format!(
            "the unionfs binary was not found ({})",
            unionfs_binary()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ))
    } else if !probe.dev_fuse_rw {
        Some("/dev/fuse is not accessible".to_string())
    } else if !probe.is_root && !probe.fusermount {
        Some("fusermount3 is missing".to_string())
    } else {
        None
    };
    match (arg, fuse_problem) {
        (BackendArg::Kernel, _) => Ok((Backend::Kernel, "kernel overlay, as asked".into())),
        (BackendArg::Fuse, None) => Ok((Backend::Fuse, "unionfs (FUSE), as asked".into())),
        (BackendArg::Fuse, Some(why)) => {
            Err(Error::usage(format!("cannot use --backend fuse: {why}")))
        }
        (BackendArg::Auto, None) => {
            Ok((Backend::Fuse, "unionfs (FUSE): /dev/fuse is usable".into()))
        }
        (BackendArg::Auto, Some(why)) => Ok((
            Backend::Kernel,
            format!("kernel overlay: {why}, so FUSE cannot be used"),
        )),
    }
}

/// A mounted union; unmounted on drop (lazily if it is still busy).
pub struct Mounted {
    path: Option<PathBuf>,
    /// The work directory of the FUSE daemon serving it, which the daemon holds
    /// `flock`ed while it runs: unmounting returns once the lock is free (the daemon has
    /// exited), so nothing of the run is left when runbox returns.
    daemon_work: Option<PathBuf>,
}

impl Mounted {
    /// Nothing mounted on the host side (rootless kernel: the mount lives and dies in the
    /// container's namespaces).
    pub fn none() -> Mounted {
        Mounted {
            path: None,
            daemon_work: None,
        }
    }

    /// Whatever is mounted at `p` with the work directory `work` (a FUSE daemon serving
    /// it holds that locked), to be unmounted.
    pub fn at(p: &Path, work: &Path) -> Mounted {
        Mounted {
            path: Some(p.to_path_buf()),
            daemon_work: Some(work.to_path_buf()),
        }
    }

    pub fn unmount(&mut self) -> Result<()> {
        let r = self.unmount_only();
        if let Some(work) = self.daemon_work.take() {
            if r.is_ok() {
                wait_unlocked(&work);
            }
        }
        r
    }

    fn unmount_only(&mut self) -> Result<()> {
        let Some(p) = self.path.take() else {
            return Ok(());
        };
        if umount2(&p, MntFlags::empty()).is_ok() {
            return Ok(());
        }
        if !nix::unistd::geteuid().is_root() {
            // A user's FUSE mount: only fusermount3 may undo it (lazily as a last resort).
            for args in [["-u"], ["-uz"]] {
                let st = FUSERMOUNT.iter().find(|f| Path::new(f).exists()).map(|f| {
                    Command::new(f)
                        .args(args)
                        .arg(&p)
                        .stderr(std::process::Stdio::null())
                        .status()
                });
                if matches!(st, Some(Ok(s)) if s.success()) {
                    return Ok(());
                }
            }
        }
        umount2(&p, MntFlags::MNT_DETACH).map_err(|e| Error::path("unmount", &p, e.into()))
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

fn check_opt_path(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| Error::usage(format!("path {} is not UTF-8", p.display())))?;
    if s.contains([',', ':', '\0']) {
        return Err(Error::usage(format!(
            "path {s} holds ',' or ':' and cannot be passed in mount options"
        )));
    }
    Ok(s.to_string())
}

/// `,trace=FILE` for unionfs: FILE made absolute; an empty FILE means runbox's own stderr
/// (the daemon closes its stderr once mounted, so it opens ours by name).
pub fn trace_option(file: &str) -> Result<String> {
    let path = if file.is_empty() {
        PathBuf::from(format!("/proc/{}/fd/2", std::process::id()))
    } else {
        std::path::absolute(file).map_err(|e| Error::path("resolve", Path::new(file), e))?
    };
    Ok(format!(",trace={}", check_opt_path(&path)?))
}

/// `lowerdir=..,upperdir=..,workdir=..`, the same string for both backends.
pub fn options(lowers: &[PathBuf], upper: &Path, work: &Path) -> Result<String> {
    let l = lowers
        .iter()
        .map(|p| check_opt_path(p))
        .collect::<Result<Vec<_>>>()?
        .join(":");
    Ok(format!(
        "lowerdir={l},upperdir={},workdir={}",
        check_opt_path(upper)?,
        check_opt_path(work)?
    ))
}

pub fn mount_fuse(unionfs: &Path, opts: &str, merged: &Path, work: &Path) -> Result<Mounted> {
    let out = Command::new(unionfs)
        .arg("-o")
        .arg(opts)
        .arg(merged)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::path("start", unionfs, e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().last().unwrap_or("").trim();
        return Err(Error::usage(format!(
            "unionfs failed to mount {} ({}): {line}",
            merged.display(),
            out.status
        )));
    }
    Ok(Mounted {
        path: Some(merged.to_path_buf()),
        daemon_work: Some(work.to_path_buf()),
    })
}

/// Waits (a few seconds at most) for the daemon that served a mount to exit: it holds its
/// work directory `flock`ed for as long as it runs (the same lock keeps a second daemon
/// off that work directory).
fn wait_unlocked(work: &Path) {
    for _ in 0..500 {
        let Ok(dir) = std::fs::File::open(work) else {
            return;
        };
        if nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

pub fn mount_kernel(opts: &str, merged: &Path) -> Result<Mounted> {
    mount(
        Some("overlay"),
        merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts),
    )
    .map_err(|e| Error::path("mount overlay on", merged, e.into()))?;
    Ok(Mounted {
        path: Some(merged.to_path_buf()),
        daemon_work: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(fuse: bool) -> Probe {
        Probe {
            dev_fuse_rw: fuse,
            fusermount: true,
            unionfs: Some(PathBuf::from("/x/unionfs")),
            is_root: false,
        }
    }

    #[test]
    fn trace_option_is_absolute() {
        assert_eq!(
            trace_option("/t/log").ok(),
            Some(",trace=/t/log".to_string())
        );
        let own = trace_option("").unwrap_or_default();
        assert_eq!(own, format!(",trace=/proc/{}/fd/2", std::process::id()));
        let rel = trace_option("t.log").unwrap_or_default();
        assert!(
            rel.starts_with(",trace=/") && rel.ends_with("/t.log"),
            "{rel}"
        );
        assert!(trace_option("/a:b").is_err());
    }

    #[test]
    fn auto_prefers_fuse() {
        let (b, _) = choose(BackendArg::Auto, &probe(true)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b, Backend::Fuse);
        let (b, why) = choose(BackendArg::Auto, &probe(false)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b, Backend::Kernel);
        assert!(why.contains("/dev/fuse"), "{why}");
        assert!(choose(BackendArg::Fuse, &probe(false)).is_err());
        let mut p = probe(true);
        p.fusermount = false;
        assert_eq!(
            choose(BackendArg::Auto, &p).map(|r| r.0).ok(),
            Some(Backend::Kernel)
        );
    }

    #[test]
    fn option_string() {
        let o = options(
            &[PathBuf::from("/a"), PathBuf::from("/b")],
            Path::new("/u"),
            Path::new("/w"),
        );
        assert_eq!(
            o.ok().as_deref(),
            Some("lowerdir=/a:/b,upperdir=/u,workdir=/w")
        );
        assert!(options(&[PathBuf::from("/a:b")], Path::new("/u"), Path::new("/w")).is_err());
    }
}
