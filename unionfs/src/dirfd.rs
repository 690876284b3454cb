//! Directory descriptors, opened on demand and kept in a bounded cache.
//!
//! Every lookup and every change is an `*at` call on a real directory's descriptor, so the
//! directories the kernel keeps cached want theirs at hand. But a descriptor per cached
//! directory runs into the file limit on large trees (20,000 here, and each merged
//! directory has one per layer). So a directory is a `DirRef`: its parent and its name,
//! like a dentry, plus a descriptor that is opened when needed (through the parent's) and
//! may be closed again when too many are open (a CLOCK sweep: recently used ones stay).
//! A rename changes a `DirRef`'s parent and name; its children follow, since they name
//! it rather than a path.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use parking_lot::Mutex;

use crate::errno::{Errno, Result};

/// The cache's bookkeeping: which directories hold a descriptor, and how many.
#[derive(Debug)]
pub struct DirCache {
    budget: usize,
    open: AtomicUsize,
    entries: Mutex<Clock>,
}

#[derive(Debug, Default)]
struct Clock {
    ring: Vec<Weak<DirRef>>,
    hand: usize,
}

impl DirCache {
    pub fn new(budget: usize) -> Arc<DirCache> {
        Arc::new(DirCache {
            budget: budget.max(16),
            open: AtomicUsize::new(0),
            entries: Mutex::new(Clock::default()),
        })
    }

    pub fn open_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn register(&self, d: &Arc<DirRef>) {
        let n = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let mut clock = self.entries.lock();
        clock.ring.push(Arc::downgrade(d));
        if n > self.budget {
            self.sweep(&mut clock);
        } else if clock.ring.len() > 2 * n + 1024 {
            // Directories the kernel forgot leave dead entries behind; below the budget no
            // sweep removes them, so drop them here before the ring grows without bound.
            clock.ring.retain(|w| w.strong_count() > 0);
            clock.hand = 0;
        }
    }

    /// Drops the entries of directories that are gone. A `Weak` keeps its directory's
    /// allocation (not its contents) alive: after the kernel forgot a large tree, the dead
    /// entries would pin one scattered heap page each, which `malloc_trim` cannot return.
    pub fn purge(&self) {
        let mut clock = self.entries.lock();
        clock.ring.retain(|w| w.strong_count() > 0);
        clock.ring.shrink_to_fit();
        clock.hand = 0;
    }

    /// Closes descriptors not used since the hand last passed, until a tenth of the
    /// budget is free again. Descriptors in use elsewhere stay open until their users
    /// let go (they hold an `Arc`).
    fn sweep(&self, clock: &mut Clock) {
        let target = self.budget - self.budget / 10;
        let mut steps = clock.ring.len() * 2;
        while self.open.load(Ordering::Relaxed) > target && steps > 0 && !clock.ring.is_empty() {
            steps -= 1;
            if clock.hand >= clock.ring.len() {
                clock.hand = 0;
            }
            let Some(d) = clock.ring[clock.hand].upgrade() else {
                clock.ring.swap_remove(clock.hand);
                continue;
            };
            if d.used.swap(false, Ordering::Relaxed) {
                clock.hand += 1;
                continue;
            }
            // A directory busy opening its descriptor is skipped, not waited for.
            if let Some(mut fd) = d.fd.try_lock() {
                if fd.take().is_some() {
                    self.open.fetch_sub(1, Ordering::Relaxed);
                }
            }
            clock.ring.swap_remove(clock.hand);
        }
    }
}

/// One real directory in one layer.
#[derive(Debug)]
pub struct DirRef {
    /// None for a layer's root, whose descriptor is never closed.
    parent: Mutex<Option<Arc<DirRef>>>,
    name: Mutex<OsString>,
    fd: Mutex<Option<Arc<OwnedFd>>>,
    used: AtomicBool,
    cache: Arc<DirCache>,
}

impl Drop for DirRef {
    fn drop(&mut self) {
        if self.parent.get_mut().is_some() && self.fd.get_mut().is_some() {
            self.cache.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl DirRef {
    /// A layer's root (or any directory whose descriptor must stay open).
    pub fn root(fd: OwnedFd, cache: &Arc<DirCache>) -> Arc<DirRef> {
        Arc::new(DirRef {
            parent: Mutex::new(None),
            name: Mutex::new(OsString::new()),
            fd: Mutex::new(Some(Arc::new(fd))),
            used: AtomicBool::new(true),
            cache: Arc::clone(cache),
        })
    }

    /// The directory `name` inside `parent`, with its descriptor when the caller has
    /// just opened it.
    pub fn child(parent: &Arc<DirRef>, name: &OsStr, fd: Option<OwnedFd>) -> Arc<DirRef> {
        let has_fd = fd.is_some();
        let d = Arc::new(DirRef {
            parent: Mutex::new(Some(Arc::clone(parent))),
            name: Mutex::new(name.to_os_string()),
            fd: Mutex::new(fd.map(Arc::new)),
            used: AtomicBool::new(true),
            cache: Arc::clone(&parent.cache),
        });
        if has_fd {
            d.cache.register(&d);
        }
        d
    }

    /// The directory's descriptor, opened through its parent's when it was closed.
    pub fn fd(self: &Arc<Self>) -> Result<Arc<OwnedFd>> {
        if let Some(fd) = self.fd.lock().as_ref() {
            self.used.store(true, Ordering::Relaxed);
            return Ok(Arc::clone(fd));
        }
        let (parent, name) = {
            let p = self.parent.lock().clone();
            (p.ok_or(Errno::EBADF)?, self.name.lock().clone())
        };
        let pfd = parent.fd()?;
        let fd = Arc::new(nix::fcntl::openat(
            pfd.as_fd(),
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?);
        let mut slot = self.fd.lock();
        if let Some(other) = slot.as_ref() {
            // Another thread opened it meanwhile.
            return Ok(Arc::clone(other));
        }
        *slot = Some(Arc::clone(&fd));
        drop(slot);
        self.used.store(true, Ordering::Relaxed);
        self.cache.register(self);
        Ok(fd)
    }

    /// The directory was renamed (or exchanged): it now is `name` in `parent`.
    pub fn moved(&self, parent: &Arc<DirRef>, name: &OsStr) {
        *self.parent.lock() = Some(Arc::clone(parent));
        *self.name.lock() = name.to_os_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("unionfs-dirfd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        for i in 0..50 {
            std::fs::create_dir_all(p.join(format!("a/d{i}/e")))
                .unwrap_or_else(|e| panic!("mkdir: {e}"));
        }
        p
    }

    fn open_root(p: &std::path::Path) -> OwnedFd {
        nix::fcntl::open(p, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())
            .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
    }

    #[test]
    fn reopens_through_parents_and_keeps_within_budget() {
        let p = scratch("budget");
        let cache = DirCache::new(16);
        let root = DirRef::root(open_root(&p), &cache);
        let a = DirRef::child(&root, OsStr::new("a"), None);
        let mut leaves = Vec::new();
        for i in 0..50 {
            let d = DirRef::child(&a, OsStr::new(&format!("d{i}")), None);
            let e = DirRef::child(&d, OsStr::new("e"), None);
            e.fd().unwrap_or_else(|err| panic!("open d{i}/e: {err}"));
            leaves.push(e);
        }
        assert!(cache.open_count() <= 16, "{} open", cache.open_count());
        // Every leaf can still be reached, reopening closed ancestors on the way.
        for e in &leaves {
            let fd = e.fd().unwrap_or_else(|err| panic!("reopen: {err}"));
            let st = nix::sys::stat::fstat(fd.as_fd()).unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFDIR);
        }
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn forgotten_directories_do_not_pile_up() {
        let p = scratch("forget");
        let cache = DirCache::new(10_000);
        let root = DirRef::root(open_root(&p), &cache);
        for _ in 0..5_000 {
            let fd = open_root(&p.join("a"));
            drop(DirRef::child(&root, OsStr::new("a"), Some(fd)));
        }
        assert_eq!(cache.open_count(), 0);
        assert!(
            cache.entries.lock().ring.len() <= 1024 + 2,
            "ring kept dead entries"
        );
        let _ = std::fs::remove_dir_all(&p);
    }

    #[test]
    fn follows_a_rename() {
        let p = scratch("mv").join("mv");
        std::fs::create_dir_all(p.join("x/sub")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(p.join("y")).unwrap_or_else(|e| panic!("{e}"));
        let cache = DirCache::new(16);
        let root = DirRef::root(open_root(&p), &cache);
        let x = DirRef::child(&root, OsStr::new("x"), None);
        let y = DirRef::child(&root, OsStr::new("y"), None);
        let sub = DirRef::child(&x, OsStr::new("sub"), None);
        std::fs::rename(p.join("x"), p.join("y/x2")).unwrap_or_else(|e| panic!("{e}"));
        x.moved(&y, OsStr::new("x2"));
        assert!(sub.fd().is_ok(), "the child follows its renamed parent");
        let _ = std::fs::remove_dir_all(p.parent().unwrap_or(&p));
    }
}
