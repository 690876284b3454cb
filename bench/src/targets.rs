//! The targets: what is measured, where its program is, whether this machine has it, and how
//! to mount it over a lower tree. A target that is missing is skipped with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::mount::Mount;

/// The target every ratio is relative to.
pub const BASELINE: &str = "overlay";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// No mount: the workload runs on a directory of the upper filesystem.
    Plain,
    /// Kernel overlay, with these extra mount options.
    Overlay(&'static [&'static str]),
    /// Our daemon, with these extra -o options (`@DIR` in one is the target's scratch
    /// directory of the round).
    Unionfs(&'static [&'static str]),
    /// Our daemon served through FUSE over io_uring (`-o uring=on` and these options): not
    /// required, as the kernel may lack it or forbid it; needs `enable_uring` set (main).
    UnionfsUring(&'static [&'static str]),
    /// fuse-overlayfs, C (Debian) or Rust (bench/.peers): the same command line as ours.
    FuseOverlayfs,
    /// unionfs-fuse: branches as `UPPER=RW:LOWER=RO`, copy-on-write by `-o cow`.
    UnionfsFuse,
}

struct Spec {
    name: &'static str,
    what: &'static str,
    kind: Kind,
}

const CATALOG: [Spec; 14] = [
    Spec {
        name: "plain",
        what: "no union: a plain directory of the upper filesystem holding a copy of the lower tree (the physical limit)",
        kind: Kind::Plain,
    },
    Spec {
        name: "overlay",
        what: "kernel overlay, default options (the baseline of every ratio)",
        kind: Kind::Overlay(&[]),
    },
    Spec {
        name: "overlay-volatile",
        what: "kernel overlay -o volatile (no fsync of copied-up data)",
        kind: Kind::Overlay(&["volatile"]),
    },
    Spec {
        name: "unionfs",
        what: "unionfs, defaults (passthrough as root, one thread per core, /dev/fuse: the bench passes uring=off to every unionfs target but unionfs-uring)",
        kind: Kind::Unionfs(&[]),
    },
    Spec {
        name: "unionfs-uring",
        what: "unionfs -o uring=on (FUSE over io_uring, one ring per CPU; the bench sets the fuse module's enable_uring to Y for the run and restores it)",
        kind: Kind::UnionfsUring(&["uring=on"]),
    },
    Spec {
        name: "unionfs-nopt",
        what: "unionfs -o nopassthrough (file data through the daemon)",
        kind: Kind::Unionfs(&["nopassthrough"]),
    },
    Spec {
        name: "unionfs-ptall",
        what: "unionfs -o passthrough=all (opt-in: lower files pass through too; an fd opened before a copy-up keeps reading the lower file)",
        kind: Kind::Unionfs(&["passthrough=all"]),
    },
    Spec {
        name: "unionfs-1t",
        what: "unionfs -o threads=1",
        kind: Kind::Unionfs(&["threads=1"]),
    },
    Spec {
        name: "unionfs-volatile",
        what: "unionfs -o volatile (no fsync of copied-up data, as overlay-volatile)",
        kind: Kind::Unionfs(&["volatile"]),
    },
    Spec {
        name: "unionfs-metacopy",
        what: "unionfs -o metacopy=on (chmod, chown, utimes copy up metadata only, as the kernel's metacopy=on)",
        kind: Kind::Unionfs(&["metacopy=on"]),
    },
    Spec {
        name: "unionfs-trace",
        what: "unionfs -o trace=FILE (the event trace written to a file in the scratch directory: the cost of watching)",
        kind: Kind::Unionfs(&["trace=@DIR/trace.log"]),
    },
    Spec {
        name: "fuse-overlayfs",
        what: "fuse-overlayfs 1.x in C, Debian's /usr/bin/fuse-overlayfs",
        kind: Kind::FuseOverlayfs,
    },
    Spec {
        name: "fuse-overlayfs2",
        what: "fuse-overlayfs 2.0 in Rust, from crates.io into bench/.peers (bench/install-peers.sh)",
        kind: Kind::FuseOverlayfs,
    },
    Spec {
        name: "unionfs-fuse",
        what: "unionfs-fuse, Debian's /usr/bin/unionfs, -o cow",
        kind: Kind::UnionfsFuse,
    },
];

/// Names and descriptions, for --help.
pub fn catalog() -> impl Iterator<Item = (&'static str, &'static str)> {
    CATALOG.iter().map(|s| (s.name, s.what))
}

/// Where to look for the FUSE programs.
pub struct Locations {
    /// Our daemon: `--unionfs`, else `unionfs` beside the bench binary (never PATH, where
    /// Debian's unionfs-fuse is also called unionfs).
    pub unionfs: PathBuf,
    /// `--peers`, else bench/.peers of the workspace: bin/fuse-overlayfs is the Rust 2.0.
    pub peers: PathBuf,
}

pub struct Target {
    pub name: &'static str,
    pub what: &'static str,
    kind: Kind,
    pub program: Option<PathBuf>,
    pub version: Option<String>,
    /// Why it is not measured, if it is not.
    pub skipped: Option<String>,
}

impl Target {
    pub fn is_plain(&self) -> bool {
        self.kind == Kind::Plain
    }

    /// The machine's own or this workspace's: the kernel's overlay, a plain directory, our
    /// daemon. Unlike a peer, one of these that cannot run is an error, not a skip.
    pub fn is_required(&self) -> bool {
        matches!(self.kind, Kind::Plain | Kind::Overlay(_) | Kind::Unionfs(_))
    }

    pub fn is_fuse(&self) -> bool {
        matches!(
            self.kind,
            Kind::Unionfs(_) | Kind::UnionfsUring(_) | Kind::FuseOverlayfs | Kind::UnionfsFuse
        )
    }

    /// Whether it needs the fuse module's `enable_uring` set while it runs.
    pub fn needs_uring(&self) -> bool {
        matches!(self.kind, Kind::UnionfsUring(_))
    }

    /// Mounts the target with `lower` as its only lower layer. `dir` is a fresh directory
    /// that receives upper/, work/, mnt/ and the daemon's log. Not for `plain`.
    pub fn mount(&self, lower: &Path, dir: &Path) -> Result<(Mount, PathBuf), String> {
        let (upper, work, mnt) = (dir.join("upper"), dir.join("work"), dir.join("mnt"));
        for d in [&upper, &work, &mnt] {
            std::fs::create_dir(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let layers = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        let program = || {
            self.program
                .clone()
                .ok_or_else(|| format!("{}: no program", self.name))
        };
        let mount = match self.kind {
            Kind::Plain => return Err("plain is not mounted".into()),
            Kind::Overlay(extra) => Mount::overlay(lower, &upper, &work, &mnt, extra)?,
            Kind::Unionfs(extra) | Kind::UnionfsUring(extra) => {
                let mut opts = layers;
                // The bench turns enable_uring on for unionfs-uring, and `uring=auto` (the
                // default) would then put every other unionfs target on the ring too: they
                // are measured as on a machine with the ring off, the kernel's default.
                if matches!(self.kind, Kind::Unionfs(_)) {
                    opts.push_str(",uring=off");
                }
                for e in extra {
                    opts.push(',');
                    opts.push_str(&e.replace("@DIR", &dir.display().to_string()));
                }
                let mut cmd = Command::new(program()?);
                cmd.arg("-f").arg("-o").arg(opts).arg(&mnt);
                Mount::fuse(cmd, &mnt, &dir.join("daemon.log"))?
            }
            Kind::FuseOverlayfs => {
                let mut cmd = Command::new(program()?);
                cmd.arg("-f").arg("-o").arg(layers).arg(&mnt);
                Mount::fuse(cmd, &mnt, &dir.join("daemon.log"))?
            }
            Kind::UnionfsFuse => {
                // No workdir: unionfs-fuse copies up in place and keeps its whiteouts in a
                // hidden .unionfs-fuse directory of the upper branch (hide_meta_files keeps it
                // out of readdir, so that the trees compare).
                let mut cmd = Command::new(program()?);
                cmd.arg("-f")
                    .arg("-o")
                    .arg("cow,allow_other,hide_meta_files")
                    .arg(format!("{}=RW:{}=RO", upper.display(), lower.display()))
                    .arg(&mnt);
                Mount::fuse(cmd, &mnt, &dir.join("daemon.log"))?
            }
        };
        Ok((mount, mnt))
    }
}

/// Every target of the catalog, each with its program and version or the reason it is skipped.
pub fn discover(loc: &Locations) -> Vec<Target> {
    let overlay = std::fs::read_to_string("/proc/filesystems")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some("overlay"))
        })
        .unwrap_or(false);
    let fuse = Path::new("/dev/fuse").exists();
    CATALOG
        .iter()
        .map(|spec| {
            let mut t = Target {
                name: spec.name,
                what: spec.what,
                kind: spec.kind,
                program: None,
                version: None,
                skipped: None,
            };
            let (program, keyword) = match spec.kind {
                Kind::Plain => return t,
                Kind::Overlay(_) => {
                    if !overlay {
                        t.skipped = Some("the kernel has no overlay filesystem".into());
                    }
                    return t;
                }
                Kind::Unionfs(_) | Kind::UnionfsUring(_) => (loc.unionfs.clone(), "unionfs"),
                Kind::FuseOverlayfs if spec.name == "fuse-overlayfs" => {
                    (PathBuf::from("/usr/bin/fuse-overlayfs"), "fuse-overlayfs")
                }
                Kind::FuseOverlayfs => (loc.peers.join("bin/fuse-overlayfs"), "fuse-overlayfs"),
                Kind::UnionfsFuse => (PathBuf::from("/usr/bin/unionfs"), "unionfs-fuse"),
            };
            if !fuse {
                t.skipped = Some("no /dev/fuse".into());
            } else if !program.is_file() {
                t.skipped = Some(format!("{} is not installed", program.display()));
            } else {
                match version(&program, keyword) {
                    // `--unionfs /usr/bin/unionfs` by mistake: never run it as ours.
                    Some(v)
                        if matches!(spec.kind, Kind::Unionfs(_) | Kind::UnionfsUring(_))
                            && v.contains("unionfs-fuse") =>
                    {
                        t.skipped = Some(format!(
                            "{} is unionfs-fuse, not our daemon",
                            program.display()
                        ))
                    }
                    Some(v) => t.version = Some(v),
                    // /usr/bin/unionfs that is not unionfs-fuse, say: never run it.
                    None => {
                        t.skipped = Some(format!(
                            "{} --version does not name {keyword}",
                            program.display()
                        ))
                    }
                }
                t.program = Some(program);
            }
            t
        })
        .collect()
}

/// The line of `program --version` (stdout or stderr) that names the program.
fn version(program: &Path, keyword: &str) -> Option<String> {
    let out = Command::new(program).arg("--version").output().ok()?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find(|l| l.contains(keyword) && l.chars().any(|c| c.is_ascii_digit()))
        .map(|l| l.trim().to_string())
}

impl Target {
    /// Mounts over `lower` in `dir`, lists the root and unmounts: a target that cannot do this
    /// much is skipped with the reason, rather than failing every workload.
    pub fn probe(&mut self, lower: &Path, dir: &Path) {
        if self.skipped.is_some() || self.is_plain() {
            return;
        }
        let result = self.mount(lower, dir).and_then(|(m, mnt)| {
            std::fs::read_dir(&mnt).map_err(|e| format!("readdir of the mount: {e}"))?;
            m.unmount()
        });
        if let Err(e) = result {
            self.skipped = Some(format!("cannot mount: {e}"));
        }
    }
}
