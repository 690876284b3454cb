//! The inode table: FUSE node ids, what each node is made of in the layers, lookup counts.
//!
//! fuser sends `attr.ino` as the node id of an entry, so a node id is also the `st_ino`
//! that `stat` shows. We choose it as the kernel's overlay chooses `st_ino`: the origin's
//! inode number (so it survives copy-up), with the filesystem index in the high bits as
//! `xino` does. Two live nodes that would get the same number (a lower hard link whose
//! other name was copied up, an inode number reused while the kernel still holds the old
//! node) get a synthetic number from the top of the range instead.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

pub const ROOT: u64 = 1;
const FSID_SHIFT: u32 = 56;
const SYNTHETIC_BASE: u64 = 1 << 63;

/// Where a real object lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerRef {
    Upper,
    Lower(usize),
}

/// One real object in one layer, held open with `O_PATH`.
#[derive(Clone, Debug)]
pub struct Real {
    pub fd: Arc<OwnedFd>,
    pub layer: LayerRef,
    pub dev: u64,
    pub ino: u64,
}

impl Real {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[derive(Debug)]
pub struct State {
    pub parent: u64,
    pub name: OsString,
    pub upper: Option<Real>,
    /// A directory's merge stack below the upper (top-down, stopping at an opaque one);
    /// for any other type, the lower object it came from (at most one).
    pub lowers: Vec<Real>,
    /// The upper directory is known to carry the impure marker.
    pub impure: bool,
    /// The name was removed from the union; the node lives on while the kernel holds it.
    pub unlinked: bool,
}

impl State {
    /// The object whose attributes and data the union shows.
    pub fn real(&self) -> Option<&Real> {
        self.upper.as_ref().or(self.lowers.first())
    }
    /// A directory that merges several real directories; the kernel reports nlink 1 for it.
    pub fn is_merged_dir(&self) -> bool {
        self.lowers.len() + usize::from(self.upper.is_some()) > 1
    }
}

#[derive(Debug)]
pub struct Inode {
    pub ino: u64,
    /// `S_IFMT` bits; a name whose type changes gets a new node.
    pub kind: u32,
    pub lookups: AtomicU64,
    /// Held while this node is copied up, so that one copy-up runs at a time per node.
    pub copyup: Mutex<()>,
    pub state: RwLock<State>,
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }
}

/// The identity used to decide whether a found object is a node we already have.
fn same_object(a: &State, upper: Option<&Real>, lower: Option<&Real>) -> bool {
    match (a.upper.as_ref(), upper) {
        (Some(x), Some(y)) => x.dev == y.dev && x.ino == y.ino,
        (None, None) => match (a.lowers.first(), lower) {
            (Some(x), Some(y)) => x.dev == y.dev && x.ino == y.ino,
            _ => false,
        },
        _ => false,
    }
}

#[derive(Debug, Default)]
pub struct InodeTable {
    map: DashMap<u64, Arc<Inode>>,
    next_synthetic: AtomicU64,
}

impl InodeTable {
    pub fn new() -> Self {
        InodeTable {
            map: DashMap::new(),
            next_synthetic: AtomicU64::new(SYNTHETIC_BASE),
        }
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.map.get(&ino).map(|e| Arc::clone(e.value()))
    }

    pub fn insert_root(&self, state: State) -> Arc<Inode> {
        let inode = Arc::new(Inode {
            ino: ROOT,
            kind: libc::S_IFDIR,
            // The kernel never forgets the root.
            lookups: AtomicU64::new(1),
            copyup: Mutex::new(()),
            state: RwLock::new(state),
        });
        self.map.insert(ROOT, Arc::clone(&inode));
        inode
    }

    /// The node for a found object, counting one lookup: the existing node when it is the
    /// same object, else a new one under `natural` (or a synthetic number on a clash).
    pub fn get_or_insert(&self, natural: u64, kind: u32, state: State) -> Arc<Inode> {
        let mut candidate = natural;
        if candidate <= ROOT || candidate >= SYNTHETIC_BASE {
            candidate = self.synthetic();
        }
        loop {
            match self.map.entry(candidate) {
                dashmap::Entry::Occupied(e) => {
                    let existing = e.get();
                    let same = existing.kind == kind && {
                        let st = existing.state.read();
                        !st.unlinked && same_object(&st, state.upper.as_ref(), state.lowers.first())
                    };
                    if same {
                        existing.lookups.fetch_add(1, Ordering::Relaxed);
                        let inode = Arc::clone(existing);
                        drop(e);
                        // A hard link may be reached through another name: remember the
                        // latest one, the one a copy-up would use.
                        {
                            let mut st = inode.state.write();
                            if !inode.is_dir() {
                                st.parent = state.parent;
                                st.name = state.name;
                            }
                            if st.lowers.is_empty() && !state.lowers.is_empty() && inode.is_dir() {
                                st.lowers = state.lowers;
                            }
                        }
                        return inode;
                    }
                    drop(e);
                    candidate = self.synthetic();
                }
                dashmap::Entry::Vacant(v) => {
                    let inode = Arc::new(Inode {
                        ino: candidate,
                        kind,
                        lookups: AtomicU64::new(1),
                        copyup: Mutex::new(()),
                        state: RwLock::new(state),
                    });
                    v.insert(Arc::clone(&inode));
                    return inode;
                }
            }
        }
    }

    fn synthetic(&self) -> u64 {
        self.next_synthetic.fetch_add(1, Ordering::Relaxed)
    }

    /// Drops `n` lookups; the node goes when none are left.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        self.map.remove_if(&ino, |_, inode| {
            let prev = inode.lookups.fetch_sub(
                n.min(inode.lookups.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            prev <= n
        });
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// The number `stat` shows for an object whose inode number is `ino` on the layer
/// filesystem with index `fsid`.
pub fn natural_ino(ino: u64, fsid: u64) -> u64 {
    if fsid == 0 {
        ino
    } else {
        ino ^ (fsid << FSID_SHIFT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real(ino: u64, layer: LayerRef) -> Real {
        let fd = nix::fcntl::open(
            "/",
            nix::fcntl::OFlag::O_PATH,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap_or_else(|e| panic!("open /: {e}"));
        Real {
            fd: Arc::new(fd),
            layer,
            dev: 1,
            ino,
        }
    }

    fn state(upper: Option<Real>, lower: Option<Real>) -> State {
        State {
            parent: ROOT,
            name: "x".into(),
            upper,
            lowers: lower.into_iter().collect(),
            impure: false,
            unlinked: false,
        }
    }

    #[test]
    fn same_object_reuses_node_and_counts() {
        let t = InodeTable::new();
        let a = t.get_or_insert(
            100,
            libc::S_IFREG,
            state(None, Some(real(100, LayerRef::Lower(0)))),
        );
        let b = t.get_or_insert(
            100,
            libc::S_IFREG,
            state(None, Some(real(100, LayerRef::Lower(0)))),
        );
        assert_eq!(a.ino, 100);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.lookups.load(Ordering::Relaxed), 2);
        t.forget(100, 1);
        assert!(t.get(100).is_some());
        t.forget(100, 1);
        assert!(t.get(100).is_none());
    }

    #[test]
    fn clash_gets_synthetic_number() {
        let t = InodeTable::new();
        let a = t.get_or_insert(
            100,
            libc::S_IFREG,
            state(Some(real(7, LayerRef::Upper)), None),
        );
        let b = t.get_or_insert(
            100,
            libc::S_IFREG,
            state(None, Some(real(100, LayerRef::Lower(0)))),
        );
        assert_eq!(a.ino, 100);
        assert!(b.ino >= SYNTHETIC_BASE);
        let c = t.get_or_insert(
            1,
            libc::S_IFREG,
            state(None, Some(real(1, LayerRef::Lower(0)))),
        );
        assert_ne!(c.ino, ROOT);
    }

    #[test]
    fn type_change_is_a_new_node() {
        let t = InodeTable::new();
        let a = t.get_or_insert(
            5,
            libc::S_IFREG,
            state(Some(real(5, LayerRef::Upper)), None),
        );
        let b = t.get_or_insert(
            5,
            libc::S_IFDIR,
            state(Some(real(5, LayerRef::Upper)), None),
        );
        assert_ne!(a.ino, b.ino);
    }
}
