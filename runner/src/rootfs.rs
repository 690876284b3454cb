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

/// A mount target inside the new root, reached without following symlinks.
pub struct Target {
    /// The path to hand to mount(2): `/proc/self/fd/N` for the real system.
    pub path: PathBuf,
    pub is_dir: bool,
}

/// The system calls the plan needs, so that the order and flags of the steps can be
/// checked by a recording fake without root (as youki's `Syscall` trait does).
pub trait Sys {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;
    /// Opens `rel` below `root` without following a symlink in any component.
    fn open_below(&mut self, root: &Path, rel: &str) -> Result<Target>;
    fn create_file(&mut self, p: &Path) -> std::io::Result<()>;
    fn mkdir(&mut self, p: &Path) -> std::io::Result<()>;
    fn symlink(&mut self, target: &str, link: &Path) -> std::io::Result<()>;
    /// `chdir(root)`, `pivot_root(".", ".")`, detach the old root, `chdir("/")`.
    fn pivot(&mut self, root: &Path) -> Result<()>;
}

/// The real system; keeps the descriptors of opened targets alive until it is dropped.
#[derive(Default)]
pub struct RealSys {
    fds: Vec<OwnedFd>,
}

impl Sys for RealSys {
    fn mount(
        &mut self,
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        mount(src, target, fstype, flags, data)
    }

    fn open_below(&mut self, root: &Path, rel: &str) -> Result<Target> {
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
        // A symlink opened with O_PATH|O_NOFOLLOW is the link itself: refuse it.
        let st = nix::sys::stat::fstat(&cur).map_err(|e| Error::sys(format!("stat /{rel}"), e))?;
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt == libc::S_IFLNK {
            return Err(Error::usage(format!(
                "container path /{rel} is a symlink, refused as a mount target"
            )));
        }
        let path = PathBuf::from(format!("/proc/self/fd/{}", cur.as_raw_fd()));
        self.fds.push(cur);
        Ok(Target {
            path,
            is_dir: fmt == libc::S_IFDIR,
        })
    }

    fn create_file(&mut self, p: &Path) -> std::io::Result<()> {
        std::fs::File::create(p).map(drop)
    }

    fn mkdir(&mut self, p: &Path) -> std::io::Result<()> {
        std::fs::create_dir(p)
    }

    fn symlink(&mut self, target: &str, link: &Path) -> std::io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn pivot(&mut self, root: &Path) -> Result<()> {
        nix::unistd::chdir(root).map_err(|e| Error::path("chdir", root, e.into()))?;
        nix::unistd::pivot_root(".", ".").map_err(|e| Error::sys("pivot_root", e))?;
        // The old root is now stacked under the new one at "."; detach it.
        umount2(".", MntFlags::MNT_DETACH).map_err(|e| Error::sys("detach the old root", e))?;
        nix::unistd::chdir("/").map_err(|e| Error::sys("chdir /", e))
    }
}

fn m(
    sys: &mut dyn Sys,
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
) -> Result<()> {
    sys.mount(src, target, fstype, flags, data)
        .map_err(|e| Error::sys(what.to_string(), e))
}

/// Runs the plan with `root` (the merged union) as the new root; cwd is `/` afterwards.
pub fn execute(root: &Path, steps: &[Step], sys: &mut dyn Sys) -> Result<()> {
    for step in steps {
        match step {
            Step::MakePrivate => m(
                sys,
                None,
                Path::new("/"),
                None,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None,
                "make mounts private",
            )?,
            Step::Overlay(opts) => m(
                sys,
                Some(Path::new("overlay")),
                root,
                Some("overlay"),
                MsFlags::empty(),
                Some(opts),
                "mount overlay on the root",
            )?,
            Step::BindRoot => m(
                sys,
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
                let t = sys.open_below(root, target)?;
                let data = (!data.is_empty()).then_some(*data);
                match sys.mount(Some(Path::new(fstype)), &t.path, Some(fstype), *flags, data) {
                    Ok(()) => {}
                    // A user namespace that does not own the network namespace (rootless
                    // with --net host) may not mount sysfs: bind the host's instead.
                    Err(Errno::EPERM) if *fstype == "sysfs" => m(
                        sys,
                        Some(Path::new("/sys")),
                        &t.path,
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
                sys.create_file(&p)
                    .map_err(|e| Error::path("create", &p, e))?;
            }
            Step::Mkdir(rel) => {
                let p = root.join(rel);
                sys.mkdir(&p).map_err(|e| Error::path("create", &p, e))?;
            }
            Step::Symlink { target, link } => {
                let p = root.join(link);
                sys.symlink(target, &p)
                    .map_err(|e| Error::path("create", &p, e))?;
            }
            Step::Bind { src, target } => {
                let t = sys.open_below(root, target)?;
                m(
                    sys,
                    Some(src),
                    &t.path,
                    None,
                    MsFlags::MS_BIND,
                    None,
                    &format!("bind {} on /{target}", src.display()),
                )?;
            }
            Step::Mask(rel) => {
                // Not on this kernel: nothing to hide.
                let Ok(t) = sys.open_below(root, rel) else {
                    continue;
                };
                if t.is_dir {
                    m(
                        sys,
                        Some(Path::new("tmpfs")),
                        &t.path,
                        Some("tmpfs"),
                        MsFlags::MS_RDONLY,
                        Some("size=0"),
                        &format!("mask /{rel}"),
                    )?;
                } else {
                    m(
                        sys,
                        Some(Path::new("/dev/null")),
                        &t.path,
                        None,
                        MsFlags::MS_BIND,
                        None,
                        &format!("mask /{rel}"),
                    )?;
                }
            }
            Step::ReadOnly(rel) => {
                let Ok(t) = sys.open_below(root, rel) else {
                    continue;
                };
                m(
                    sys,
                    Some(&t.path),
                    &t.path,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                    &format!("bind /{rel}"),
                )?;
                // The bind is a new mount over the same place: reopen to reach it.
                let t2 = sys.open_below(root, rel)?;
                m(
                    sys,
                    None,
                    &t2.path,
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
            Step::Pivot => sys.pivot(root)?,
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

    /// Records every call; targets are `ROOT/rel` and directories are the names given.
    struct Recorder {
        log: Vec<String>,
        dirs: Vec<&'static str>,
    }

    impl Sys for Recorder {
        fn mount(
            &mut self,
            src: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> nix::Result<()> {
            self.log.push(format!(
                "mount {} {} {} {} {}",
                src.map(|p| p.display().to_string()).unwrap_or("-".into()),
                target.display(),
                fstype.unwrap_or("-"),
                format!("{flags:?}")
                    .trim_start_matches("MsFlags(")
                    .trim_end_matches(')'),
                data.unwrap_or("-")
            ));
            Ok(())
        }
        fn open_below(&mut self, root: &Path, rel: &str) -> Result<Target> {
            Ok(Target {
                path: root.join(rel),
                is_dir: self.dirs.contains(&rel),
            })
        }
        fn create_file(&mut self, p: &Path) -> std::io::Result<()> {
            self.log.push(format!("touch {}", p.display()));
            Ok(())
        }
        fn mkdir(&mut self, p: &Path) -> std::io::Result<()> {
            self.log.push(format!("mkdir {}", p.display()));
            Ok(())
        }
        fn symlink(&mut self, target: &str, link: &Path) -> std::io::Result<()> {
            self.log
                .push(format!("symlink {} {target}", link.display()));
            Ok(())
        }
        fn pivot(&mut self, root: &Path) -> Result<()> {
            self.log.push(format!("pivot {}", root.display()));
            Ok(())
        }
    }

    #[test]
    fn execution_order_and_flags() {
        let mut rec = Recorder {
            log: Vec::new(),
            dirs: vec!["proc/acpi", "proc/sys"],
        };
        let r = Path::new("/m");
        execute(r, &plan(&spec()), &mut rec).unwrap_or_else(|e| panic!("{e}"));
        let log = rec.log;
        assert_eq!(log[0], "mount - / - MS_REC | MS_PRIVATE -");
        assert_eq!(log[1], "mount /m /m - MS_BIND | MS_REC -");
        assert_eq!(
            log[2],
            "mount proc /m/proc proc MS_NOSUID | MS_NODEV | MS_NOEXEC -"
        );
        assert_eq!(log.last().map(String::as_str), Some("pivot /m"));
        let has = |l: &str| {
            log.iter()
                .position(|x| x == l)
                .unwrap_or_else(|| panic!("{l} not in {log:#?}"))
        };
        let null = has("mount /dev/null /m/dev/null - MS_BIND -");
        let kcore = has("mount /dev/null /m/proc/kcore - MS_BIND -");
        has("mount tmpfs /m/proc/acpi tmpfs MS_RDONLY size=0");
        let bind = has("mount /m/proc/sys /m/proc/sys - MS_BIND | MS_REC -");
        let ro = has(
            "mount - /m/proc/sys - MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_REMOUNT | MS_BIND | MS_REC -",
        );
        has("mount /c/hosts /m/etc/hosts - MS_BIND -");
        has("symlink /m/dev/ptmx pts/ptmx");
        assert!(null < kcore && bind < ro);
    }
}
