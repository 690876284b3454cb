//! The inode table: FUSE node ids, what each node is made of in the layers, lookup counts.
//!
//! fuser sends `attr.ino` as the node id of an entry, so a node id is also the `st_ino`
//! that `stat` shows. We choose it as the kernel's overlay chooses `st_ino`: the origin's
//! inode number (so it survives copy-up), with the filesystem index in the high bits as
//! `xino` does. Two live nodes that would get the same number (a lower hard link whose
//! other name was copied up, an inode number reused while the kernel still holds the old
//! node) get a synthetic number from the top of the range instead.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, FchmodatFlags, FileStat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use parking_lot::{Mutex, RwLock};

use crate::dirfd::DirRef;
use crate::errno::{Errno, Result};
use crate::sys::fsops::XPath;

pub const ROOT: u64 = 1;
const FSID_SHIFT: u32 = 56;
const SYNTHETIC_BASE: u64 = 1 << 63;

/// Where a real object lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerRef {
    Upper,
    Lower(usize),
}

/// Where a real object is reached. A directory is a `DirRef` (its descriptor opened on
/// demand, see `dirfd`); any other object is named inside its parent's `DirRef`, so that
/// cached files cost no descriptor; an upper object with several names, or an open file
/// whose name is gone, is held by its own descriptor.
#[derive(Clone, Debug)]
pub enum Loc {
    Dir(Arc<DirRef>),
    At(Arc<DirRef>, OsString),
    Fd(Arc<OwnedFd>),
}

/// One real object in one layer.
#[derive(Clone, Debug)]
pub struct Real {
    pub loc: Loc,
    pub layer: LayerRef,
    pub dev: u64,
    pub ino: u64,
}

/// A descriptor for one use: the object's own, or its parent's with its name.
enum Handle {
    Own(Arc<OwnedFd>),
    In(Arc<OwnedFd>, OsString),
}

impl Real {
    /// The `DirRef` of a directory, for naming its children.
    pub fn dir_ref(&self) -> Result<&Arc<DirRef>> {
        match &self.loc {
            Loc::Dir(d) => Ok(d),
            _ => Err(Errno::ENOTDIR),
        }
    }

    /// The descriptor of a directory, for `*at` calls inside it.
    pub fn dir(&self) -> Result<Arc<OwnedFd>> {
        self.dir_ref()?.fd()
    }

    /// Whether the object is reached by a name that another request can take from it: an
    /// upper name can be renamed over or removed while a request on this node runs (lower
    /// layers never change).
    fn by_upper_name(&self) -> bool {
        matches!(self.loc, Loc::At(..)) && self.layer == LayerRef::Upper
    }

    /// Fails with `Errno::ESTALE` when `st` is not this object: its name now names another
    /// one (or nothing). Callers look the node's object up again (`UnionFs::retry`).
    fn check_same(&self, st: &FileStat) -> Result<()> {
        if (st.st_dev, st.st_ino) == (self.dev, self.ino) {
            Ok(())
        } else {
            Err(Errno::ESTALE)
        }
    }

    fn handle(&self) -> Result<Handle> {
        Ok(match &self.loc {
            Loc::Dir(d) => Handle::Own(d.fd()?),
            Loc::Fd(fd) => Handle::Own(Arc::clone(fd)),
            Loc::At(d, name) if self.by_upper_name() => {
                // Hold the object itself, checked to be ours, so that a request never acts
                // on another object that took the name (a whiteout, a file renamed over it).
                let fd = match nix::fcntl::openat(
                    d.fd()?.as_fd(),
                    name.as_os_str(),
                    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => fd,
                    Err(nix::errno::Errno::ENOENT) => return Err(Errno::ESTALE),
                    Err(e) => return Err(e.into()),
                };
                self.check_same(&fstatat(fd.as_fd(), "", AtFlags::AT_EMPTY_PATH)?)?;
                Handle::Own(Arc::new(fd))
            }
            Loc::At(d, name) => Handle::In(d.fd()?, name.clone()),
        })
    }

    /// The path through which path-based calls (xattrs) reach the object itself.
    pub fn xpath(&self) -> Result<XPath> {
        Ok(match self.handle()? {
            Handle::Own(fd) => XPath::fd(fd),
            Handle::In(dir, name) => XPath::at(dir, &name),
        })
    }

    pub fn stat(&self) -> Result<FileStat> {
        if let (true, Loc::At(d, name)) = (self.by_upper_name(), &self.loc) {
            // One call, checked after the fact: a stat has no effect to undo.
            let st = match fstatat(
                d.fd()?.as_fd(),
                name.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => st,
                Err(nix::errno::Errno::ENOENT) => return Err(Errno::ESTALE),
                Err(e) => return Err(e.into()),
            };
            self.check_same(&st)?;
            return Ok(st);
        }
        Ok(match self.handle()? {
            Handle::Own(fd) => fstatat(fd.as_fd(), "", AtFlags::AT_EMPTY_PATH)?,
            Handle::In(dir, name) => {
                fstatat(dir.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?
            }
        })
    }

    /// Opens the object for I/O.
    pub fn open(&self, flags: OFlag) -> Result<File> {
        let flags = flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
        let fd = match self.handle()? {
            Handle::Own(fd) => {
                let path = crate::sys::fsops::proc_fd_path(fd.as_fd());
                nix::fcntl::open(path.as_c_str(), flags - OFlag::O_NOFOLLOW, Mode::empty())?
            }
            Handle::In(dir, name) => {
                nix::fcntl::openat(dir.as_fd(), name.as_os_str(), flags, Mode::empty())?
            }
        };
        Ok(File::from(fd))
    }

    pub fn readlink(&self) -> Result<OsString> {
        Ok(match self.handle()? {
            Handle::Own(fd) => nix::fcntl::readlinkat(fd.as_fd(), "")?,
            Handle::In(dir, name) => nix::fcntl::readlinkat(dir.as_fd(), name.as_os_str())?,
        })
    }

    pub fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
        let (uid, gid) = (uid.map(Uid::from_raw), gid.map(Gid::from_raw));
        match self.handle()? {
            Handle::Own(fd) => {
                nix::unistd::fchownat(fd.as_fd(), "", uid, gid, AtFlags::AT_EMPTY_PATH)?
            }
            Handle::In(dir, name) => nix::unistd::fchownat(
                dir.as_fd(),
                name.as_os_str(),
                uid,
                gid,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )?,
        }
        Ok(())
    }

    /// chmod; never called on symlinks (which have no mode of their own).
    pub fn chmod(&self, mode: u32) -> Result<()> {
        let mode = Mode::from_bits_truncate(mode & 0o7777);
        match self.handle()? {
            Handle::Own(fd) => {
                let path = crate::sys::fsops::proc_fd_path(fd.as_fd());
                nix::sys::stat::fchmodat(
                    nix::fcntl::AT_FDCWD,
                    path.as_c_str(),
                    mode,
                    FchmodatFlags::FollowSymlink,
                )?
            }
            Handle::In(dir, name) => nix::sys::stat::fchmodat(
                dir.as_fd(),
                name.as_os_str(),
                mode,
                FchmodatFlags::FollowSymlink,
            )?,
        }
        Ok(())
    }

    /// utimensat without following a symlink.
    pub fn utimens(&self, atime: &TimeSpec, mtime: &TimeSpec) -> Result<()> {
        match self.handle()? {
            Handle::Own(fd) => {
                let path = crate::sys::fsops::proc_fd_path(fd.as_fd());
                nix::sys::stat::utimensat(
                    nix::fcntl::AT_FDCWD,
                    path.as_c_str(),
                    atime,
                    mtime,
                    UtimensatFlags::FollowSymlink,
                )?
            }
            Handle::In(dir, name) => nix::sys::stat::utimensat(
                dir.as_fd(),
                name.as_os_str(),
                atime,
                mtime,
                UtimensatFlags::NoFollowSymlink,
            )?,
        }
        Ok(())
    }

    /// A new hard link `dir/name` to this object.
    pub fn link_to(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        match self.handle()? {
            Handle::Own(fd) => {
                let path = crate::sys::fsops::proc_fd_path(fd.as_fd());
                nix::unistd::linkat(
                    nix::fcntl::AT_FDCWD,
                    path.as_c_str(),
                    dir,
                    name,
                    AtFlags::AT_SYMLINK_FOLLOW,
                )?
            }
            Handle::In(d, n) => {
                nix::unistd::linkat(d.as_fd(), n.as_os_str(), dir, name, AtFlags::empty())?
            }
        }
        Ok(())
    }

    /// The file handle `name_to_handle_at` gives for the object.
    pub fn file_handle(&self) -> Option<(i32, Vec<u8>)> {
        let r = match self.handle().ok()? {
            Handle::Own(fd) => crate::sys::fsops::name_to_handle(fd.as_fd(), &CString::default()),
            Handle::In(dir, name) => {
                let n = CString::new(name.as_bytes()).ok()?;
                crate::sys::fsops::name_to_handle(dir.as_fd(), &n)
            }
        };
        r.ok()
    }

    /// Holds the object by its own descriptor from now on (see `Loc::Fd`).
    pub fn pin(&mut self) -> Result<()> {
        if let Loc::At(dir, name) = &self.loc {
            let fd = nix::fcntl::openat(
                dir.fd()?.as_fd(),
                name.as_os_str(),
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            self.loc = Loc::Fd(Arc::new(fd));
        }
        Ok(())
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
    /// A directory's redirect (`*.overlay.redirect`, as the kernel keeps it in its inode):
    /// read by lookup from the upper directory, set when a rename writes one. A rename
    /// that needs an absolute redirect builds it from these and the ancestors' names.
    pub redirect: Option<OsString>,
    /// A regular file whose upper copy (or top lower file) holds its metadata only
    /// (`*.overlay.metacopy`): its data is the last lower file's.
    pub metacopy: bool,
    /// The name was removed from the union; the node lives on while the kernel holds it.
    pub unlinked: bool,
    /// Other names that reached the same lower hard link (and so the same node, the kernel
    /// showing one inode number for them, as the kernel's overlay does). A copy-up breaks
    /// the link, as there: those names must then be looked up again.
    pub aliases: Vec<(u64, OsString)>,
}

impl State {
    /// The object whose attributes and data the union shows.
    pub fn real(&self) -> Option<&Real> {
        self.upper.as_ref().or(self.lowers.first())
    }
    /// The object whose data the union shows: the lower file of a metadata-only copy.
    pub fn data_real(&self) -> Option<&Real> {
        if self.metacopy {
            self.lowers.last()
        } else {
            self.real()
        }
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
    /// The node's open files, which decide how a new open may serve its data.
    pub opens: Mutex<Opens>,
    /// Signalled when an open of the node has been released.
    pub released: parking_lot::Condvar,
}

/// The kernel's rules for the opens of one inode: either all pass through to one backing
/// file, or none does (cached or direct I/O through the daemon).
#[derive(Debug, Default)]
pub struct Opens {
    /// Open handles of any kind.
    pub handles: u32,
    /// Open handles served through the page cache.
    pub cached: u32,
    /// The backing file registered while any passthrough open lives.
    pub backing: Option<Backing>,
}

#[derive(Debug)]
pub struct Backing {
    pub real: (u64, u64),
    /// The backing file is in a lower layer (`passthrough=all`).
    pub lower: bool,
    pub id: std::sync::Weak<crate::backing::Backing>,
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

/// The key of the object a node shows, for `InodeTable::by_object`.
fn object_key(st: &State) -> Option<(u64, u64)> {
    st.real().map(|r| (r.dev, r.ino))
}

/// Counts one more lookup of an existing node reached through `found`.
fn reuse(inode: &Inode, found: State) {
    inode.lookups.fetch_add(1, Ordering::Relaxed);
    let mut st = inode.state.write();
    // A hard link may be reached through another name: remember the latest one, the one a
    // copy-up would use.
    if !inode.is_dir() && (st.parent != found.parent || st.name != found.name) {
        let old = (st.parent, std::mem::take(&mut st.name));
        if !st.aliases.contains(&old) {
            st.aliases.push(old);
        }
        st.aliases
            .retain(|a| a.0 != found.parent || a.1 != found.name);
        st.parent = found.parent;
        st.name = found.name;
    }
    if st.lowers.is_empty() && !found.lowers.is_empty() && inode.is_dir() {
        st.lowers = found.lowers;
    }
}

#[derive(Debug, Default)]
pub struct InodeTable {
    map: DashMap<u64, Arc<Inode>>,
    /// The node showing each real object, by the object's (st_dev, st_ino): the upper
    /// one, else the first lower one (see `get_or_insert`).
    by_object: DashMap<(u64, u64), u64>,
    next_synthetic: AtomicU64,
}

impl InodeTable {
    pub fn new() -> Self {
        InodeTable {
            map: DashMap::new(),
            by_object: DashMap::new(),
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
            opens: Mutex::new(Opens::default()),
            released: parking_lot::Condvar::new(),
        });
        self.map.insert(ROOT, Arc::clone(&inode));
        inode
    }

    /// The node for a found object, counting one lookup: the node that already shows the
    /// same object, else a new one under `natural` (or a synthetic number on a clash).
    ///
    /// Nodes are found by the object they show, as the kernel's overlay finds its inodes
    /// by their real inode, not by the number computed for them: a number can come out
    /// differently for one object (an origin record read through another parent), and
    /// two nodes for one object would let a rename move one while the other keeps the
    /// stale name. Lock order: `by_object`'s entry, then `map`'s.
    pub fn get_or_insert(&self, natural: u64, kind: u32, state: State) -> Arc<Inode> {
        let Some(key) = object_key(&state) else {
            return self.insert_numbered(natural, kind, state);
        };
        match self.by_object.entry(key) {
            dashmap::Entry::Occupied(mut e) => {
                if let Some(existing) = self.get(*e.get()) {
                    let same = existing.kind == kind && {
                        let st = existing.state.read();
                        !st.unlinked && same_object(&st, state.upper.as_ref(), state.lowers.first())
                    };
                    if same {
                        drop(e);
                        reuse(&existing, state);
                        return existing;
                    }
                }
                let inode = self.insert_numbered(natural, kind, state);
                e.insert(inode.ino);
                inode
            }
            dashmap::Entry::Vacant(v) => {
                let inode = self.insert_numbered(natural, kind, state);
                v.insert(inode.ino);
                inode
            }
        }
    }

    /// A new node under `natural`, or under a synthetic number when a live node has it.
    fn insert_numbered(&self, natural: u64, kind: u32, state: State) -> Arc<Inode> {
        let mut candidate = natural;
        if candidate <= ROOT || candidate >= SYNTHETIC_BASE {
            candidate = self.synthetic();
        }
        let mut state = Some(state);
        loop {
            match self.map.entry(candidate) {
                dashmap::Entry::Occupied(_) => candidate = self.synthetic(),
                dashmap::Entry::Vacant(v) => {
                    let Some(state) = state.take() else {
                        continue;
                    };
                    let inode = Arc::new(Inode {
                        ino: candidate,
                        kind,
                        lookups: AtomicU64::new(1),
                        copyup: Mutex::new(()),
                        state: RwLock::new(state),
                        opens: Mutex::new(Opens::default()),
                        released: parking_lot::Condvar::new(),
                    });
                    v.insert(Arc::clone(&inode));
                    return inode;
                }
            }
        }
    }

    /// Drops `key` from the object index if it names `ino` (a copy-up that failed).
    pub fn forget_object(&self, key: (u64, u64), ino: u64) {
        self.by_object.remove_if(&key, |_, v| *v == ino);
    }

    /// Records that `inode` shows its upper object (a copy-up), no longer `lower`.
    pub fn shows_upper(&self, inode: &Inode, lower: Option<(u64, u64)>, upper: (u64, u64)) {
        if let Some(old) = lower {
            self.by_object.remove_if(&old, |_, v| *v == inode.ino);
        }
        self.by_object.insert(upper, inode.ino);
    }

    fn synthetic(&self) -> u64 {
        self.next_synthetic.fetch_add(1, Ordering::Relaxed)
    }

    /// Drops `n` lookups; the node goes when none are left.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let gone = self.map.remove_if(&ino, |_, inode| {
            let prev = inode.lookups.fetch_sub(
                n.min(inode.lookups.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            prev <= n
        });
        if let Some((_, inode)) = gone {
            if let Some(key) = object_key(&inode.state.read()) {
                self.by_object.remove_if(&key, |_, v| *v == ino);
            }
        }
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
            loc: Loc::Fd(Arc::new(fd)),
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
            redirect: None,
            metacopy: false,
            unlinked: false,
            aliases: Vec::new(),
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
