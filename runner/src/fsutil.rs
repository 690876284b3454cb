//! Small file-tree helpers: removal that survives read-only directories, a directory that
//! removes itself unless kept, and a tree's size.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Removes a tree; directories an image made read-only are opened up first (a non-root
/// owner cannot unlink inside a 0555 directory otherwise).
pub fn remove_tree(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    if fs::remove_dir_all(p).is_ok() {
        return Ok(());
    }
    open_up(p);
    fs::remove_dir_all(p)
}

fn open_up(p: &Path) {
    if let Ok(md) = fs::symlink_metadata(p) {
        if md.is_dir() {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
            if let Ok(rd) = fs::read_dir(p) {
                for e in rd.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
}

/// A scratch directory removed on drop unless `keep` was called.
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    pub fn new_in(parent: &Path, tag: &str) -> io::Result<TempDir> {
        let mut n = 0u32;
        loop {
            let p = parent.join(format!("{tag}-{}-{n}", std::process::id()));
            match fs::create_dir(&p) {
                Ok(()) => {
                    return Ok(TempDir {
                        path: p,
                        keep: false,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(e),
            }
        }
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = remove_tree(&self.path);
        }
    }
}

/// Bytes used by the regular files of a tree (hard links counted once).
pub fn tree_size(p: &Path) -> u64 {
    fn walk(p: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
        let Ok(md) = fs::symlink_metadata(p) else {
            return 0;
        };
        if md.is_dir() {
            fs::read_dir(p)
                .map(|rd| rd.flatten().map(|e| walk(&e.path(), seen)).sum())
                .unwrap_or(0)
        } else if md.is_file() && seen.insert((md.dev(), md.ino())) {
            md.len()
        } else {
            0
        }
    }
    walk(p, &mut std::collections::HashSet::new())
}
