//! The scratch directory of one run: the generated lowers, and a fresh directory for every
//! measurement (upper, work and mount point, or the plain target's copy), removed after it.
//! Nothing is ever removed while a mount is left under it.

use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::mount;

pub struct Scratch {
    pub root: PathBuf,
    keep: bool,
    next: usize,
}

impl Scratch {
    /// Makes `<parent>/unionfs-bench.<pid>`. The path goes into mount options, whose syntax
    /// has no escape the bench could rely on for every target (unionfs-fuse splits on ':' and
    /// '='), so such characters are refused up front.
    pub fn create(parent: &Path, keep: bool) -> Result<Scratch, String> {
        let parent = parent
            .canonicalize()
            .map_err(|e| format!("scratch directory {}: {e}", parent.display()))?;
        let text = parent.to_string_lossy();
        if let Some(c) = text
            .chars()
            .find(|c| matches!(c, ',' | ':' | '=' | '\\') || c.is_whitespace())
        {
            return Err(format!(
                "scratch directory {text}: the character {c:?} cannot go into mount options; choose another --scratch"
            ));
        }
        let root = parent.join(format!("unionfs-bench.{}", std::process::id()));
        fs::create_dir(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
        Ok(Scratch {
            root,
            keep,
            next: 0,
        })
    }

    /// A new empty directory for one measurement.
    pub fn fresh_dir(&mut self) -> io::Result<PathBuf> {
        self.next += 1;
        let dir = self.root.join("run").join(format!("{:05}", self.next));
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Removes a measurement's directory, unless something is still mounted inside it (then
    /// removing would reach into the mount: the lower trees).
    pub fn remove(&self, dir: &Path) -> Result<(), String> {
        remove_unless_mounted(dir)
    }

    /// Keeps a measurement's directory until the end (see `cache::forget_deleted` for why),
    /// after checking that nothing is left mounted in it.
    pub fn keep(&self, dir: &Path) -> Result<(), String> {
        match mount::mounts_under(dir) {
            Ok(left) if left.is_empty() => Ok(()),
            Ok(left) => Err(format!("{} is still mounted", left[0].display())),
            Err(e) => Err(format!("cannot read the mount table: {e}")),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("bench: scratch kept in {}", self.root.display());
            return;
        }
        eprintln!("bench: removing {}", self.root.display());
        if let Err(e) = remove_unless_mounted(&self.root) {
            eprintln!("bench: warning: {e}");
        }
        // Whatever runs next on this filesystem should not pay for the deletions: see
        // `cache::forget_deleted`.
        if let Err(e) = crate::cache::drop_caches() {
            eprintln!("bench: warning: {e}");
        }
    }
}

fn remove_unless_mounted(dir: &Path) -> Result<(), String> {
    let left = mount::mounts_under(dir).map_err(|e| format!("cannot read the mount table: {e}"))?;
    if let Some(m) = left.first() {
        return Err(format!(
            "{} is still mounted; {} not removed",
            m.display(),
            dir.display()
        ));
    }
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", dir.display())),
    }
}

/// `cp -a` for the trees the bench makes (directories, regular files, symlinks): the plain
/// target's private copy of a lower tree that a workload changes.
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if meta.is_dir() {
        fs::create_dir_all(dst)?;
        for entry in fs::read_dir(src)? {
            let entry = entry?;
            copy_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
        fs::set_permissions(dst, meta.permissions())
    } else if meta.file_type().is_symlink() {
        symlink(fs::read_link(src)?, dst)
    } else {
        // std's copy keeps the mode and uses copy_file_range.
        fs::copy(src, dst).map(|_| ())
    }
}
