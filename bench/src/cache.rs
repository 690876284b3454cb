//! The page cache: dropped before the cold workloads, filled before the warm ones. It keeps
//! track of which lower trees are cached since the last drop, so that after a cold workload
//! the first target of the next one does not pay alone for bringing its lower tree back.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

#[derive(Default)]
pub struct Cache {
    drops: u64,
    /// Lower tree -> the value of `drops` when it was last read in whole.
    warm: HashMap<PathBuf, u64>,
}

impl Cache {
    /// sync, then drop the page cache, dentries and inodes (`drop_caches=3`): the sync first,
    /// as dirty pages are not dropped.
    pub fn drop_all(&mut self) -> Result<(), String> {
        drop_caches()?;
        self.drops += 1;
        Ok(())
    }

    /// To call after deleting many files of the upper filesystem. ext4 without a journal (as
    /// on this machine) does not reuse an inode within a minute of its deletion (six when its
    /// inode table block is dirty) and, to know, reads the deletion time of every free inode
    /// it passes whose table block is cached: after 10,000 deletions, a create can take half
    /// a millisecond, for a minute, whatever is measured then. Dropping the caches after a
    /// sync ends it (blocks that are not cached are not checked). Hence the bench deletes
    /// nothing during a run but what a workload deletes, and calls this after it.
    pub fn forget_deleted(&mut self) -> Result<(), String> {
        self.drop_all()
    }

    /// Reads `dir` in whole (metadata and data) unless that was done since the last drop.
    pub fn warm(&mut self, dir: &Path) -> Result<(), String> {
        if self.warm.get(dir) == Some(&self.drops) {
            return Ok(());
        }
        let mut buf = vec![0u8; 1 << 20];
        read_all(dir, &mut buf).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        self.warm.insert(dir.to_path_buf(), self.drops);
        Ok(())
    }
}

/// sync, then `drop_caches=3`.
pub fn drop_caches() -> Result<(), String> {
    nix::unistd::sync();
    fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| format!("cannot drop the caches (/proc/sys/vm/drop_caches): {e}"))
}

fn read_all(path: &Path, buf: &mut [u8]) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            read_all(&entry?.path(), buf)?;
        }
    } else if meta.is_file() {
        let mut f = File::open(path)?;
        while f.read(buf)? > 0 {}
    }
    Ok(())
}
