//! The container's root: a plan of mount steps (pure, unit-tested for order) and its
//! execution inside the new mount namespace, ending in `pivot_root(".", ".")` and a
//! detached unmount of the old root, as youki and runc do.
//!
//! Targets inside the new root are opened component by component without following
//! symlinks and mounted through `/proc/self/fd/N`, so an image (or an earlier run's upper)
//! cannot redirect a mount onto the host with a symlink such as `etc/hosts -> /etc/passwd`.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

use crate::error::{Error, Result};

/// Files in /proc and /sys that could leak host information or be used against it:
/// hidden under /dev/null (files) or an empty read-only tmpfs (directories). From runc's
/// default masked paths.
pub const MASKED: &[&str] = &[
    "proc/acpi",
    "proc/asound",
    "proc/interrupts",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
    "sys/devices/virtual/powercap",
];

/// Read-only in the container (runc's default read-only paths).
pub const READ_ONLY: &[&str] = &[
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// Host device nodes bind-mounted into the container's /dev.
pub const DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Stop mount events crossing between the host and this namespace.
    MakePrivate,
    /// Mount the kernel's overlay on the root from inside the namespaces (rootless: the
    /// mount must belong to the new user namespace).
    Overlay(String),
    /// Bind the new root onto itself: pivot_root needs a mount point.
    BindRoot,
    /// Mount a filesystem at a path below the root.
    Mount {
        fstype: &'static str,
        target: &'static str,
        flags: MsFlags,
        data: &'static str,
    },
    /// An empty file as a mount target, in a tmpfs this plan mounted.
    Touch(String),
    Mkdir(&'static str),
    Symlink {
        target: &'static str,
        link: &'static str,
    },
    /// Bind a host path onto a path below the root.
    Bind {
        src: PathBuf,
        target: String,
    },
    /// Hide a path: /dev/null over a file, an empty read-only tmpfs over a directory.
    Mask(&'static str),
    /// Bind a path onto itself and make it read-only.
    ReadOnly(&'static str),
    /// `pivot_root(".", ".")` then detach the old root.
    Pivot,
}

/// What the plan needs from the run: the host files for /etc.
pub struct Spec {
    /// Overlay options when the union is mounted inside the namespaces (rootless kernel).
    pub overlay: Option<String>,
    pub hosts: PathBuf,
    pub hostname: PathBuf,
    pub resolv: PathBuf,
}

pub fn plan(spec: &Spec) -> Vec<Step> {
    let nsx = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut s = vec![Step::MakePrivate];
    if let Some(o) = &spec.overlay {
        s.push(Step::Overlay(o.clone()));
    }
    s.extend([
        Step::BindRoot,
        Step::Mount {
            fstype: "proc",
            target: "proc",
            flags: nsx,
            data: "",
        },
        Step::Mount {
            fstype: "sysfs",
            target: "sys",
            flags: nsx | MsFlags::MS_RDONLY,
            data: "",
        },
        Step::Mount {
            fstype: "tmpfs",
            target: "dev",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            data: "mode=755,size=65536k",
        },
    ]);
    for d in DEVICES {
        s.push(Step::Touch(format!("dev/{d}")));
        s.push(Step::Bind {
            src: PathBuf::from(format!("/dev/{d}")),
            target: format!("dev/{d}"),
        });
    }
    s.extend([
        Step::Mkdir("dev/pts"),
        Step::Mount {
            fstype: "devpts",
            target: "dev/pts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: "newinstance,ptmxmode=0666,mode=0620",
        },
        Step::Symlink {
            target: "pts/ptmx",
            link: "dev/ptmx",
        },
        Step::Mkdir("dev/shm"),
        Step::Mount {
            fstype: "tmpfs",
            target: "dev/shm",
            flags: nsx,
            data: "mode=1777,size=65536k",
        },
        Step::Symlink {
            target: "/proc/self/fd",
            link: "dev/fd",
        },
        Step::Symlink {
            target: "/proc/self/fd/0",
            link: "dev/stdin",
        },
        Step::Symlink {
            target: "/proc/self/fd/1",
            link: "dev/stdout",
        },
        Step::Symlink {
            target: "/proc/self/fd/2",
            link: "dev/stderr",
        },
        Step::Bind {
            src: spec.hosts.clone(),
            target: "etc/hosts".into(),
        },
        Step::Bind {
            src: spec.hostname.clone(),
            target: "etc/hostname".into(),
        },
        Step::Bind {
            src: spec.resolv.clone(),
            target: "etc/resolv.conf".into(),
        },
    ]);
    s.extend(MASKED.iter().map(|p| Step::Mask(p)));
    s.extend(READ_ONLY.iter().map(|p| Step::ReadOnly(p)));
    s.push(Step::Pivot);
    s
}

/// Opens `rel` below `root` without following a symlink anywhere (`O_PATH`).
fn open_below(root: &Path, rel: &str) -> Result<OwnedFd> {
    let fl = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut cur = openat(
        nix::fcntl::AT_FDCWD,
        root,
        fl | OFlag::O_DIRECTORY,
        Mode::empty(),
    )
    .map_err(|e| Error::path("open", root, e.into()))?;
    let comps: Vec<OsString> = Path::new(rel)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect();
    for c in &comps {
        cur = openat(&cur, c.as_os_str(), fl, Mode::empty()).map_err(|e| {
            let why = if e == Errno::ELOOP {
                "is a symlink, refused as a mount target".to_string()
            } else {
                e.desc().to_string()
            };
            Error::usage(format!("container path /{rel}: {why}"))
        })?;
    }
    // A symlink opened with O_PATH|O_NOFOLLOW is the link itself: refuse it as a target.
    let st = nix::sys::stat::fstat(&cur).map_err(|e| Error::sys(format!("stat /{rel}"), e))?;
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(Error::usage(format!(
            "container path /{rel} is a symlink, refused as a mount target"
        )));
    }
    Ok(cur)
}

fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn m(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
) -> Result<()> {
    mount(src, target, fstype, flags, data).map_err(|e| Error::sys(what.to_string(), e))
}

/// Runs the plan with `root` (the merged union) as the new root; cwd is `/` afterwards.
pub fn execute(root: &Path, steps: &[Step]) -> Result<()> {
    for step in steps {
        match step {
            Step::MakePrivate => m(
                None,
                Path::new("/"),
                None,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None,
                "make mounts private",
            )?,
            Step::Overlay(opts) => m(
                Some(Path::new("overlay")),
                root,
                Some("overlay"),
                MsFlags::empty(),
                Some(opts),
                "mount overlay on the root",
            )?,
            Step::BindRoot => m(
                Some(root),
                root,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
                "bind the root onto itself",
            )?,
            Step::Mount {
                fstype,
                target,
                flags,
                data,
            } => {
                let fd = open_below(root, target)?;
                let data = (!data.is_empty()).then_some(*data);
                let r = mount(
                    Some(Path::new(fstype)),
                    &fd_path(&fd),
                    Some(*fstype),
                    *flags,
                    data,
                );
                match r {
                    Ok(()) => {}
                    // A user namespace that does not own the network namespace (rootless
                    // with --net host) may not mount sysfs: bind the host's instead.
                    Err(Errno::EPERM) if *fstype == "sysfs" => m(
                        Some(Path::new("/sys")),
                        &fd_path(&fd),
                        None,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None,
                        "bind /sys",
                    )?,
                    Err(e) => return Err(Error::sys(format!("mount {fstype} on /{target}"), e)),
                }
            }
            Step::Touch(rel) => {
                // In the tmpfs mounted by this plan: nothing of the image is below it.
                let p = root.join(rel);
                std::fs::File::create(&p).map_err(|e| Error::path("create", &p, e))?;
            }
            Step::Mkdir(rel) => {
                let p = root.join(rel);
                std::fs::create_dir(&p).map_err(|e| Error::path("create", &p, e))?;
            }
            Step::Symlink { target, link } => {
                let p = root.join(link);
                std::os::unix::fs::symlink(target, &p).map_err(|e| Error::path("create", &p, e))?;
            }
            Step::Bind { src, target } => {
                let fd = open_below(root, target)?;
                m(
                    Some(src),
                    &fd_path(&fd),
                    None,
                    MsFlags::MS_BIND,
                    None,
                    &format!("bind {} on /{target}", src.display()),
                )?;
            }
            Step::Mask(rel) => {
                let fd = match open_below(root, rel) {
                    Ok(fd) => fd,
                    // Not on this kernel: nothing to hide.
                    Err(_) => continue,
                };
                let st = nix::sys::stat::fstat(&fd)
                    .map_err(|e| Error::sys(format!("stat /{rel}"), e))?;
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    m(
                        Some(Path::new("tmpfs")),
                        &fd_path(&fd),
                        Some("tmpfs"),
                        MsFlags::MS_RDONLY,
                        Some("size=0"),
                        &format!("mask /{rel}"),
                    )?;
                } else {
                    m(
                        Some(Path::new("/dev/null")),
                        &fd_path(&fd),
                        None,
                        MsFlags::MS_BIND,
                        None,
                        &format!("mask /{rel}"),
                    )?;
                }
            }
            Step::ReadOnly(rel) => {
                let Ok(fd) = open_below(root, rel) else {
                    continue;
                };
                let p = fd_path(&fd);
                m(
                    Some(&p),
                    &p,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                    &format!("bind /{rel}"),
                )?;
                // The bind is a new mount over the same place: reopen to reach it.
                let fd2 = open_below(root, rel)?;
                let p2 = fd_path(&fd2);
                m(
                    None,
                    &p2,
                    None,
                    MsFlags::MS_BIND
                        | MsFlags::MS_REMOUNT
                        | MsFlags::MS_RDONLY
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOEXEC
                        | MsFlags::MS_REC,
                    None,
                    &format!("make /{rel} read-only"),
                )?;
            }
            Step::Pivot => {
                nix::unistd::chdir(root).map_err(|e| Error::path("chdir", root, e.into()))?;
                nix::unistd::pivot_root(".", ".").map_err(|e| Error::sys("pivot_root", e))?;
                // The old root is now stacked under the new one at "."; detach it.
                umount2(".", MntFlags::MNT_DETACH)
                    .map_err(|e| Error::sys("detach the old root", e))?;
                nix::unistd::chdir("/").map_err(|e| Error::sys("chdir /", e))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            overlay: None,
            hosts: "/c/hosts".into(),
            hostname: "/c/hostname".into(),
            resolv: "/c/resolv.conf".into(),
        }
    }

    fn pos(steps: &[Step], f: impl Fn(&Step) -> bool) -> usize {
        steps.iter().position(f).unwrap_or(usize::MAX)
    }

    #[test]
    fn order() {
        let s = plan(&spec());
        assert_eq!(s.first(), Some(&Step::MakePrivate));
        assert_eq!(s.get(1), Some(&Step::BindRoot));
        assert_eq!(s.last(), Some(&Step::Pivot));
        let proc_at = pos(&s, |x| matches!(x, Step::Mount { target: "proc", .. }));
        let dev_at = pos(&s, |x| matches!(x, Step::Mount { target: "dev", .. }));
        let kcore = pos(&s, |x| *x == Step::Mask("proc/kcore"));
        let sysro = pos(&s, |x| *x == Step::ReadOnly("proc/sys"));
        let null = pos(
            &s,
            |x| matches!(x, Step::Bind { target, .. } if target == "dev/null"),
        );
        assert!(
            proc_at < kcore && proc_at < sysro,
            "masks need /proc mounted first"
        );
        assert!(dev_at < null, "devices go in the new /dev tmpfs");
        assert!(null < kcore, "a mask binds /dev/null");
        assert!(
            s.contains(&Step::Mask("proc/sysrq-trigger"))
                || s.contains(&Step::ReadOnly("proc/sysrq-trigger"))
        );
    }

    #[test]
    fn rootless_overlay_comes_before_the_root_bind() {
        let mut sp = spec();
        sp.overlay = Some("lowerdir=/l,upperdir=/u,workdir=/w,userxattr".into());
        let s = plan(&sp);
        assert_eq!(s.first(), Some(&Step::MakePrivate));
        assert!(matches!(s.get(1), Some(Step::Overlay(o)) if o.ends_with("userxattr")));
        assert_eq!(s.get(2), Some(&Step::BindRoot));
    }
}
