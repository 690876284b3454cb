//! Open files and directories, by FUSE file handle.

use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::readdir::Entry;

#[derive(Debug)]
pub struct FileHandle {
    pub ino: u64,
    /// The real file; a read-only open of a lower file that we serve moves to the upper copy
    /// once there is one, as the kernel's overlay does.
    pub file: RwLock<File>,
    /// Still reading a lower file, and to move to the copy at the next read. False for a
    /// lower file passed through (`passthrough=all`), whose reads never reach us.
    pub on_lower: AtomicBool,
    /// Served through the page cache (counted in the node's `Opens::cached`).
    pub cached: bool,
    /// The kernel's passthrough registration, shared by the node's passthrough opens and
    /// closed when the last of them is released.
    pub backing: Option<Arc<crate::backing::Backing>>,
}

#[derive(Debug)]
pub struct DirHandle {
    pub ino: u64,
    /// The listing taken at the first read (and again on rewind), offsets index into it.
    pub entries: Mutex<Option<Arc<Vec<Entry>>>>,
}

#[derive(Debug, Default)]
pub struct Handles {
    files: DashMap<u64, Arc<FileHandle>>,
    dirs: DashMap<u64, Arc<DirHandle>>,
    next: AtomicU64,
}

impl Handles {
    pub fn new() -> Self {
        Handles {
            next: AtomicU64::new(1),
            ..Default::default()
        }
    }

    fn id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub fn add_file(&self, h: FileHandle) -> u64 {
        let id = self.id();
        self.files.insert(id, Arc::new(h));
        id
    }

    pub fn file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.get(&fh).map(|h| Arc::clone(h.value()))
    }

    pub fn remove_file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.remove(&fh).map(|(_, h)| h)
    }

    pub fn add_dir(&self, ino: u64) -> u64 {
        let id = self.id();
        self.dirs.insert(
            id,
            Arc::new(DirHandle {
                ino,
                entries: Mutex::new(None),
            }),
        );
        id
    }

    pub fn dir(&self, fh: u64) -> Option<Arc<DirHandle>> {
        self.dirs.get(&fh).map(|h| Arc::clone(h.value()))
    }

    pub fn remove_dir(&self, fh: u64) {
        self.dirs.remove(&fh);
    }
}
