//! Shared by the daemon's integration tests: scratch directories, mounting the daemon or
//! the kernel's overlay, and a guard that always unmounts.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
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

pub fn mount_unionfs(lower: &str, upper: &Path, work: &Path, mnt: &Path, extra: &str) -> Mounted {
    let mut o = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if !extra.is_empty() {
        o.push(',');
        o.push_str(extra);
    }
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
    let mut o = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    if !extra.is_empty() {
        o.push(',');
        o.push_str(extra);
    }
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
