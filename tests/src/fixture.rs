//! Per-side directories (l1/ l2/ .. u/ w/ m/ in a private tempdir under
//! /tmp) and mounting of the union with the kernel overlay or the unionfs
//! daemon, with an unmount-on-drop guard.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, umount, umount2, MntFlags, MsFlags};

use crate::tree::Tree;
use crate::Target;

/// Locates the daemon: `$UNIONFS_BIN`, else `<target>/debug/unionfs`
/// derived from the test executable (`<target>/debug/deps/<test>`).
/// Never searched in PATH: /usr/bin/unionfs is an unrelated program.
pub fn unionfs_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("UNIONFS_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("exe dir");
    deps.parent().unwrap_or(deps).join("unionfs")
}

/// Where the layers live (`DIFFTEST_LAYOUT`). Layers on one filesystem hide bugs that
/// layers on two show (inode numbers, st_dev, file handles): image stores and container
/// scratch space are often separate disks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Everything on the scratch filesystem under /tmp (ext4 here).
    OneFs,
    /// The lowers on one tmpfs, upper and work on another.
    TwoTmpfs,
    /// The lowers on the scratch filesystem, upper and work on a tmpfs.
    Ext4Tmpfs,
    /// The top lower on a tmpfs, the other lowers, upper and work on the scratch
    /// filesystem: lowers on different filesystems.
    SplitLowers,
}

impl Placement {
    /// The placement chosen by `DIFFTEST_LAYOUT` (`onefs`, `tmpfs2`, `ext4-tmpfs`,
    /// `split-lowers`); one filesystem by default.
    pub fn from_env() -> Placement {
        match std::env::var("DIFFTEST_LAYOUT").as_deref() {
            Err(_) | Ok("") | Ok("onefs") => Placement::OneFs,
            Ok("tmpfs2") => Placement::TwoTmpfs,
            Ok("ext4-tmpfs") => Placement::Ext4Tmpfs,
            Ok("split-lowers") => Placement::SplitLowers,
            Ok(other) => panic!(
                "DIFFTEST_LAYOUT must be onefs, tmpfs2, ext4-tmpfs or split-lowers, not {other:?}"
            ),
        }
    }
}

/// A tmpfs mounted for a layout, unmounted (lazily if busy) on drop. With 32-bit inode
/// numbers (`inode32`, as on ext4) the kernel's overlay can use `xino` across the
/// filesystems, and so gives st_ino and d_ino the same rules on every layout (overlayfs.rst,
/// "Inode properties"); the union always does, FUSE having one st_dev for all its files.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf) -> Tmpfs {
        std::fs::create_dir(&at).expect("mkdir tmpfs mount point");
        mount(
            Some("dt-tmpfs"),
            &at,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755,inode32"),
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {}: {e}", at.display()));
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if umount(&self.0).is_err() {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
}

/// The directories of one side.
pub struct Layout {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub mnt: PathBuf,
    pub root: PathBuf,
    extra_work: usize,
    /// Where workdirs are made (`fresh_workdir`): the upper's filesystem.
    work_parent: PathBuf,
    /// The tmpfs mounts the placement needs, unmounted before the tree is removed.
    _tmpfs: Vec<Tmpfs>,
    /// Clear append-only and immutable flags under `root` before removing it.
    pub unflag: bool,
    // Last field: dropped (recursively removed) after everything else.
    _tmp: tempfile::TempDir,
}

impl Layout {
    /// Creates `/tmp/dt-<tag>-XXXXXX/{l1..lN,u,w,m}` (u and w only if
    /// `with_upper`) and builds the trees into them.
    pub fn build(tag: &str, lowers: &[Tree], upper: Option<&Tree>, with_upper: bool) -> Layout {
        let tag: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(48)
            .collect();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("dt-{tag}-"))
            .tempdir_in("/tmp")
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        // 0755 so that scenarios running as another uid can reach m/.
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod tempdir");
        let placement = Placement::from_env();
        let mut tmpfs = Vec::new();
        let mut on_tmpfs = |n: &str| -> PathBuf {
            let t = Tmpfs::mount(root.join(n));
            let p = t.0.clone();
            tmpfs.push(t);
            p
        };
        let (lower_base, top_lower_base, upper_base) = match placement {
            Placement::OneFs => (root.clone(), root.clone(), root.clone()),
            Placement::TwoTmpfs => {
                let l = on_tmpfs("lfs");
                (l.clone(), l, on_tmpfs("ufs"))
            }
            Placement::Ext4Tmpfs => (root.clone(), root.clone(), on_tmpfs("ufs")),
            Placement::SplitLowers => (root.clone(), on_tmpfs("l1fs"), root.clone()),
        };
        // A layer away from the root is also named root/NAME (a symlink), where scenarios
        // read layers directly (`Ops::ino_as_layer`).
        let mk = |base: &Path, n: &str| {
            let p = base.join(n);
            if base != root.as_path() {
                std::os::unix::fs::symlink(&p, root.join(n)).expect("symlink to layer");
            }
            std::fs::create_dir(&p).expect("mkdir");
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod");
            p
        };
        let mut ls = Vec::new();
        for (i, t) in lowers.iter().enumerate() {
            let base = if i == 0 { &top_lower_base } else { &lower_base };
            let p = mk(base, &format!("l{}", i + 1));
            t.build(&p)
                .unwrap_or_else(|e| panic!("building lower {}: {e}", i + 1));
            ls.push(p);
        }
        let (u, w) = if with_upper {
            let u = mk(&upper_base, "u");
            if let Some(t) = upper {
                t.build(&u)
                    .unwrap_or_else(|e| panic!("building upper: {e}"));
            }
            (Some(u), Some(mk(&upper_base, "w")))
        } else {
            assert!(upper.is_none(), "upper tree given for a read-only union");
            (None, None)
        };
        let mnt = mk(&root, "m");
        Layout {
            lowers: ls,
            upper: u,
            work: w,
            mnt,
            root,
            extra_work: 0,
            work_parent: upper_base,
            _tmpfs: tmpfs,
            unflag: lowers.iter().chain(upper).any(Tree::has_flags),
            _tmp: tmp,
        }
    }

    /// Switches to a new, empty workdir (for remounting the same layers).
    pub fn fresh_workdir(&mut self) {
        self.extra_work += 1;
        let p = self.work_parent.join(format!("w{}", self.extra_work + 1));
        std::fs::create_dir(&p).expect("mkdir workdir");
        self.work = Some(p);
    }

    fn options(&self) -> String {
        let lowers: Vec<String> = self
            .lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let mut o = format!("lowerdir={}", lowers.join(":"));
        if let (Some(u), Some(w)) = (&self.upper, &self.work) {
            o += &format!(",upperdir={},workdir={}", u.display(), w.display());
        }
        o
    }

    /// Mounts the union of this layout on `mnt` with `target`.
    pub fn mount(&self, target: Target) -> Result<MountGuard, String> {
        self.mount_with(target, "")
    }

    /// Mounts with extra `-o` items, given to both the kernel and unionfs (e.g.
    /// `userxattr`).
    pub fn mount_with(&self, target: Target, extra: &str) -> Result<MountGuard, String> {
        let mut opts = self.options();
        if !extra.is_empty() {
            opts = format!("{opts},{extra}");
        }
        match target {
            Target::Kernel => {
                // redirect_dir/index/metacopy pinned off unless the scenario asks for them
                // (`Scenario::mount_opts`): the kernel's defaults depend on how it was
                // built. With userxattr the kernel takes only redirect_dir=nofollow (which
                // neither creates nor follows redirects).
                let mut kopts = opts.clone();
                // metacopy=on implies redirect_dir=on there (and refuses another).
                if !extra.contains("redirect_dir=") && !extra.contains("metacopy=on") {
                    let redirect = if opts.contains("userxattr") {
                        "nofollow"
                    } else {
                        "off"
                    };
                    kopts += &format!(",redirect_dir={redirect}");
                }
                kopts += ",index=off";
                if !extra.contains("metacopy=") {
                    kopts += ",metacopy=off";
                }
                // Across filesystems the kernel makes inode numbers unique only with xino,
                // which it does not pick by itself for tmpfs; unionfs always does (one FUSE
                // st_dev for every file).
                if Placement::from_env() != Placement::OneFs {
                    kopts += ",xino=on";
                }
                let flags = if self.upper.is_none() {
                    MsFlags::MS_RDONLY
                } else {
                    MsFlags::empty()
                };
                mount(
                    Some("overlay"),
                    &self.mnt,
                    Some("overlay"),
                    flags,
                    Some(kopts.as_str()),
                )
                .map_err(|e| format!("mount -t overlay -o {kopts}: {e}"))?;
            }
            Target::Unionfs => {
                // The same xino as the kernel's side gets.
                if Placement::from_env() != Placement::OneFs {
                    opts += ",xino=on";
                }
                // `DIFFTEST_UNIONFS_OPTS` adds options on the unionfs side only, to hold
                // another configuration (e.g. `nopassthrough`) to the same oracle.
                if let Ok(more) = std::env::var("DIFFTEST_UNIONFS_OPTS") {
                    if !more.is_empty() {
                        opts = format!("{opts},{more}");
                    }
                }
                let bin = unionfs_bin();
                if !bin.exists() {
                    return Err(format!("unionfs binary not found at {}", bin.display()));
                }
                let log = self.root.join("unionfs.log");
                let logf = std::fs::File::create(&log).map_err(|e| e.to_string())?;
                let mut child = Command::new(&bin)
                    .arg("-o")
                    .arg(&opts)
                    .arg(&self.mnt)
                    .stdin(Stdio::null())
                    .stdout(logf.try_clone().map_err(|e| e.to_string())?)
                    .stderr(logf)
                    .spawn()
                    .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
                let start = Instant::now();
                let status = loop {
                    if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
                        break s;
                    }
                    if start.elapsed() > Duration::from_secs(20) {
                        let _ = child.kill();
                        let _ = child.wait();
                        let _ = umount2(&self.mnt, MntFlags::MNT_DETACH);
                        return Err("unionfs did not return within 20s".into());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                };
                let logtext = std::fs::read_to_string(&log).unwrap_or_default();
                if !status.success() {
                    return Err(format!(
                        "unionfs -o {opts} failed: {status}; output:\n{logtext}"
                    ));
                }
            }
        }
        if !is_mountpoint(&self.mnt) {
            return Err(format!(
                "{target:?}: mount reported success but {} is not a mount point",
                self.mnt.display()
            ));
        }
        Ok(MountGuard {
            mnt: self.mnt.clone(),
            mounted: true,
            daemon_workdir: match target {
                Target::Unionfs => self.work.clone(),
                Target::Kernel => None,
            },
        })
    }
}

impl Drop for Layout {
    fn drop(&mut self) {
        // An immutable or append-only file cannot be removed, nor its directory emptied.
        if self.unflag {
            let _ = Command::new("chattr")
                .args(["-R", "-f", "-i", "-a"])
                .arg(&self.root)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// True if `p` is on a different device than its parent.
pub fn is_mountpoint(p: &Path) -> bool {
    match (std::fs::metadata(p), std::fs::metadata(p.join(".."))) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Unmounts on drop (also during a panic unwind).
pub struct MountGuard {
    mnt: PathBuf,
    mounted: bool,
    /// The workdir a unionfs daemon holds locked while it runs: once the lock is free
    /// after the unmount, the daemon has exited (and cleaned its workdir).
    daemon_workdir: Option<PathBuf>,
}

impl MountGuard {
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// `umount`, retrying while busy; `umount -l` as the last resort
    /// (reported as an error).
    /// Waits until the daemon that served the mount has let go of its workdir.
    fn wait_daemon_exit(&self) -> Result<(), String> {
        let Some(w) = &self.daemon_workdir else {
            return Ok(());
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            let f = std::fs::File::open(w).map_err(|e| format!("open {}: {e}", w.display()))?;
            match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(_locked) => return Ok(()),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        Err(format!(
            "the unionfs daemon for {} still runs 10 s after the unmount",
            self.mnt.display()
        ))
    }

    pub fn unmount(&mut self) -> Result<(), String> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        let mut last = Errno::UnknownErrno;
        for _ in 0..100 {
            match umount(&self.mnt) {
                Ok(()) => return self.wait_daemon_exit(),
                Err(Errno::EBUSY) => {
                    last = Errno::EBUSY;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    last = e;
                    break;
                }
            }
        }
        let lazy = umount2(&self.mnt, MntFlags::MNT_DETACH);
        Err(format!(
            "umount {} failed ({last}); lazy unmount: {lazy:?}",
            self.mnt.display()
        ))
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            eprintln!("warning: {e}");
        }
    }
}

/// Lists everything under a workdir except an empty `work/` directory
/// (and an empty `index/`): temp files the daemon left behind.
pub fn workdir_leftovers(w: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn rec(d: &Path, base: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                let top_allowed = (rel == "work" || rel == "index") && is_dir;
                if !top_allowed {
                    out.push(rel);
                }
                if is_dir {
                    rec(&p, base, out);
                }
            }
        }
    }
    rec(w, w, &mut out);
    out.sort();
    out
}
