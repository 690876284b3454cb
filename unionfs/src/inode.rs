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

use dashmap::{DashMap, DashSet};
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
    /// The index in `Layers::lowers`. A `u32`, not a `usize`: every cached node holds up
    /// to two of these inline, and a 4-byte index makes a `Real` 56 bytes instead of 64
    /// (the kernel allows 500 lower layers).
    Lower(u32),
}

impl LayerRef {
    /// Lower layer `i` of `Layers::lowers`; `Layers` never holds more than a `u32` counts.
    pub fn lower(i: usize) -> LayerRef {
        LayerRef::Lower(u32::try_from(i).unwrap_or(u32::MAX))
    }

    /// The index of a lower layer in `Layers::lowers`.
    pub fn lower_index(self) -> Option<usize> {
        match self {
            LayerRef::Upper => None,
            LayerRef::Lower(i) => usize::try_from(i).ok(),
        }
    }
}

/// A name as nodes keep it: one allocation shared by the node's `State::name` and its
/// real object's `Loc::At` (they are the same name unless a redirect or a rename made
/// them differ), since a name per copy was a fifth of a cached node's memory.
pub type Name = Arc<OsStr>;

/// A `Name` for `name`.
pub fn name_of(name: &OsStr) -> Name {
    Arc::from(name)
}

/// Where a real object is reached. A directory is a `DirRef` (its descriptor opened on
/// demand, see `dirfd`); any other object is named inside its parent's `DirRef`, so that
/// cached files cost no descriptor; an upper object with several names, or an open file
/// whose name is gone, is held by its own descriptor.
#[derive(Clone, Debug)]
pub enum Loc {
    Dir(Arc<DirRef>),
    At(Arc<DirRef>, Name),
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
    In(Arc<OwnedFd>, Name),
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
                    &**name,
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
            Loc::At(d, name) => Handle::In(d.fd()?, Arc::clone(name)),
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
            let st = match fstatat(d.fd()?.as_fd(), &**name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(nix::errno::Errno::ENOENT) => return Err(Errno::ESTALE),
                Err(e) => return Err(e.into()),
            };
            self.check_same(&st)?;
            return Ok(st);
        }
        Ok(match self.handle()? {
            Handle::Own(fd) => fstatat(fd.as_fd(), "", AtFlags::AT_EMPTY_PATH)?,
            Handle::In(dir, name) => fstatat(dir.as_fd(), &*name, AtFlags::AT_SYMLINK_NOFOLLOW)?,
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
            Handle::In(dir, name) => nix::fcntl::openat(dir.as_fd(), &*name, flags, Mode::empty())?,
        };
        Ok(File::from(fd))
    }

    pub fn readlink(&self) -> Result<OsString> {
        Ok(match self.handle()? {
            Handle::Own(fd) => nix::fcntl::readlinkat(fd.as_fd(), "")?,
            Handle::In(dir, name) => nix::fcntl::readlinkat(dir.as_fd(), &*name)?,
        })
    }

    pub fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
        let (uid, gid) = (uid.map(Uid::from_raw), gid.map(Gid::from_raw));
        match self.handle()? {
            Handle::Own(fd) => {
                nix::unistd::fchownat(fd.as_fd(), "", uid, gid, AtFlags::AT_EMPTY_PATH)?
            }
            Handle::In(dir, name) => {
                nix::unistd::fchownat(dir.as_fd(), &*name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)?
            }
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
            Handle::In(dir, name) => {
                nix::sys::stat::fchmodat(dir.as_fd(), &*name, mode, FchmodatFlags::FollowSymlink)?
            }
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
                &*name,
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
            Handle::In(d, n) => nix::unistd::linkat(d.as_fd(), &*n, dir, name, AtFlags::empty())?,
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
                &**name,
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            self.loc = Loc::Fd(Arc::new(fd));
        }
        Ok(())
    }
}

/// A node's lower objects: a directory's merge stack below the upper (top-down, stopping
/// at an opaque one); for any other type, the lower object it came from and, for a
/// metadata-only copy, its data. Almost always one or none, so one is kept inline and
/// only a merge of several lower directories takes an allocation of its own.
#[derive(Clone, Debug, Default)]
pub enum Lowers {
    #[default]
    None,
    One(Real),
    Many(Box<[Real]>),
}

impl std::ops::Deref for Lowers {
    type Target = [Real];
    fn deref(&self) -> &[Real] {
        match self {
            Lowers::None => &[],
            Lowers::One(r) => std::slice::from_ref(r),
            Lowers::Many(v) => v,
        }
    }
}

impl<'a> IntoIterator for &'a Lowers {
    type Item = &'a Real;
    type IntoIter = std::slice::Iter<'a, Real>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl From<Vec<Real>> for Lowers {
    fn from(mut v: Vec<Real>) -> Lowers {
        match v.len() {
            0 => Lowers::None,
            1 => v.pop().map_or(Lowers::None, Lowers::One),
            // `into_boxed_slice` drops any spare capacity: a Vec grown by pushes keeps up
            // to twice what it holds, for the node's whole life.
            _ => Lowers::Many(v.into_boxed_slice()),
        }
    }
}

impl FromIterator<Real> for Lowers {
    fn from_iter<I: IntoIterator<Item = Real>>(iter: I) -> Lowers {
        Lowers::from(iter.into_iter().collect::<Vec<_>>())
    }
}

/// What few nodes have, kept out of line so that the others pay one word for it.
#[derive(Debug, Default)]
struct Rare {
    redirect: Option<OsString>,
    aliases: Vec<(u64, OsString)>,
}

#[derive(Debug)]
pub struct State {
    pub parent: u64,
    pub name: Name,
    /// Boxed: most cached nodes are lower objects a walk found, and a `Real` inline
    /// would cost them 64 bytes for nothing.
    pub upper: Option<Box<Real>>,
    /// See `Lowers`.
    pub lowers: Lowers,
    /// The upper directory is known to carry the impure marker.
    pub impure: bool,
    /// A regular file whose upper copy (or top lower file) holds its metadata only
    /// (`*.overlay.metacopy`): its data is the last lower file's.
    pub metacopy: bool,
    /// The name was removed from the union; the node lives on while the kernel holds it.
    pub unlinked: bool,
    /// The redirect and the aliases (see `redirect` and `aliases`).
    rare: Option<Box<Rare>>,
}

impl State {
    /// A node's state as a lookup or a create finds it: nothing unlinked, no redirect,
    /// no alias.
    pub fn new(parent: u64, name: Name, upper: Option<Real>, lowers: Lowers) -> State {
        State {
            parent,
            name,
            upper: upper.map(Box::new),
            lowers,
            impure: false,
            metacopy: false,
            unlinked: false,
            rare: None,
        }
    }

    /// A directory's redirect (`*.overlay.redirect`, as the kernel keeps it in its inode):
    /// read by lookup from the upper directory, set when a rename writes one. A rename
    /// that needs an absolute redirect builds it from these and the ancestors' names.
    pub fn redirect(&self) -> Option<&OsString> {
        self.rare.as_ref().and_then(|r| r.redirect.as_ref())
    }

    pub fn set_redirect(&mut self, redirect: Option<OsString>) {
        if redirect.is_none() && self.rare.is_none() {
            return;
        }
        self.rare.get_or_insert_with(Box::default).redirect = redirect;
        self.drop_empty_rare();
    }

    /// Other names that reached the same lower hard link (and so the same node, the kernel
    /// showing one inode number for them, as the kernel's overlay does). A copy-up breaks
    /// the link, as there: those names must then be looked up again.
    pub fn aliases(&self) -> &[(u64, OsString)] {
        self.rare.as_ref().map_or(&[], |r| &r.aliases)
    }

    /// Takes the aliases (a copy-up broke the link).
    pub fn take_aliases(&mut self) -> Vec<(u64, OsString)> {
        let taken = self
            .rare
            .as_mut()
            .map(|r| std::mem::take(&mut r.aliases))
            .unwrap_or_default();
        self.drop_empty_rare();
        taken
    }

    fn drop_empty_rare(&mut self) {
        if self
            .rare
            .as_ref()
            .is_some_and(|r| r.redirect.is_none() && r.aliases.is_empty())
        {
            self.rare = None;
        }
    }

    /// The object whose attributes and data the union shows.
    pub fn real(&self) -> Option<&Real> {
        self.upper.as_deref().or(self.lowers.first())
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
    /// Signalled when an open of the node has been released (see `Released`).
    pub released: Released,
    /// Held while this node is copied up, so that one copy-up runs at a time per node.
    pub copyup: Mutex<()>,
    pub lookups: AtomicU64,
    pub state: RwLock<State>,
    /// The node's open files, which decide how a new open may serve its data.
    pub opens: OpensCell,
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

impl Opens {
    fn is_idle(&self) -> bool {
        self.handles == 0 && self.cached == 0 && self.backing.is_none()
    }
}

#[derive(Debug)]
pub struct Backing {
    pub real: (u64, u64),
    /// The backing file is in a lower layer (`passthrough=all`).
    pub lower: bool,
    pub id: std::sync::Weak<crate::backing::Backing>,
}

/// A node's `Opens`, allocated only while it has some: most cached nodes are never opened,
/// and the 48 bytes inline were a sixth of a node.
#[derive(Debug, Default)]
pub struct OpensCell(Mutex<Option<Box<Opens>>>);

/// What a node with no open files has.
static NO_OPENS: Opens = Opens {
    handles: 0,
    cached: 0,
    backing: None,
};

impl OpensCell {
    pub fn lock(&self) -> OpensGuard<'_> {
        OpensGuard(self.0.lock())
    }
}

/// The locked `Opens` of a node; frees them when they are back to none.
pub struct OpensGuard<'a>(parking_lot::MutexGuard<'a, Option<Box<Opens>>>);

impl std::ops::Deref for OpensGuard<'_> {
    type Target = Opens;
    fn deref(&self) -> &Opens {
        self.0.as_deref().unwrap_or(&NO_OPENS)
    }
}

impl std::ops::DerefMut for OpensGuard<'_> {
    fn deref_mut(&mut self) -> &mut Opens {
        self.0.get_or_insert_with(Box::default)
    }
}

impl Drop for OpensGuard<'_> {
    fn drop(&mut self) {
        if self.0.as_ref().is_some_and(|o| o.is_idle()) {
            *self.0 = None;
        }
    }
}

/// The end of a `Released::wait_until`.
#[derive(Clone, Copy, Debug)]
pub struct Waited {
    timed_out: bool,
}

impl Waited {
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }
}

/// A node's "an open was released" signal, without a condition variable per node (a
/// word each, for a wait that only `passthrough=all` write opens ever do): a count that
/// the releaser bumps under the node's `opens` lock, and one condition variable shared by
/// all nodes that waiters sleep on until the count moves. The count is read under the
/// `opens` lock and checked again under the shared mutex before sleeping, and the
/// releaser takes the shared mutex to notify after bumping it: a release between a
/// waiter's check of `Opens` and its sleep is never missed. Other nodes' releases wake a
/// waiter for nothing; it sleeps again. The count is 16 bits (it fits beside `kind`): a
/// waiter would miss a release only if exactly 65,536 releases of its node came between
/// its check and its sleep, and its deadline would still end the wait.
#[derive(Debug, Default)]
pub struct Released(std::sync::atomic::AtomicU16);

static RELEASED: (Mutex<()>, parking_lot::Condvar) = (Mutex::new(()), parking_lot::Condvar::new());

impl Released {
    /// Sleeps until a release of this node is signalled or `deadline` passes, with the
    /// node's `opens` unlocked meanwhile (as `Condvar::wait_until`). The caller holds
    /// `opens`, checks its condition again on return, as with any condition variable.
    pub fn wait_until(&self, opens: &mut OpensGuard<'_>, deadline: std::time::Instant) -> Waited {
        let seen = self.0.load(Ordering::Acquire);
        let mut timed_out = false;
        parking_lot::MutexGuard::unlocked(&mut opens.0, || {
            let mut shared = RELEASED.0.lock();
            while self.0.load(Ordering::Acquire) == seen {
                if RELEASED.1.wait_until(&mut shared, deadline).timed_out() {
                    timed_out = true;
                    break;
                }
            }
        });
        Waited { timed_out }
    }

    /// Wakes the waiters of this node; called with the node's `opens` locked.
    pub fn notify_all(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
        let _shared = RELEASED.0.lock();
        RELEASED.1.notify_all();
    }
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
        let old = (st.parent, st.name.to_os_string());
        let rare = st.rare.get_or_insert_with(Box::default);
        if !rare.aliases.contains(&old) {
            rare.aliases.push(old);
        }
        rare.aliases
            .retain(|a| a.0 != found.parent || *a.1 != *found.name);
        st.parent = found.parent;
        st.name = found.name;
    }
    if st.lowers.is_empty() && !found.lowers.is_empty() && inode.is_dir() {
        st.lowers = found.lowers;
    }
}

/// Below this many nodes the table is not worth shrinking (see `InodeTable::forget`).
const SHRINK_MIN: usize = 4096;
/// How long a shrink waits after the forget that asked for it: the kernel forgets a large
/// tree in a burst of BATCH_FORGETs, and one shrink after the burst is enough.
const SHRINK_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// A node in `InodeTable::map`, hashed and compared by its number (which never changes):
/// a set of nodes found by their own `ino` spares the copy of the key that a map from
/// numbers to nodes keeps in every slot.
#[derive(Debug)]
struct Node(Arc<Inode>);

impl PartialEq for Node {
    fn eq(&self, other: &Node) -> bool {
        self.0.ino == other.0.ino
    }
}

impl Eq for Node {}

impl std::hash::Hash for Node {
    // As `u64`'s own, so that a `&u64` finds the node (`Borrow`).
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.ino.hash(state);
    }
}

impl std::borrow::Borrow<u64> for Node {
    fn borrow(&self) -> &u64 {
        &self.0.ino
    }
}

#[derive(Debug, Default)]
pub struct InodeTable {
    map: Arc<DashSet<Node>>,
    /// The node showing each real object, by the object's (st_dev, st_ino): the upper
    /// one, else the first lower one (see `get_or_insert`).
    by_object: Arc<DashMap<(u64, u64), u64>>,
    next_synthetic: AtomicU64,
    /// The most nodes held since the last shrink; a table that fell well below it has
    /// spare capacity (and free heap) to give back.
    peak: Arc<std::sync::atomic::AtomicUsize>,
    /// How many nodes the map holds, without `DashMap::len`'s walk over every shard.
    count: std::sync::atomic::AtomicUsize,
    /// A shrink is scheduled (at most one at a time).
    shrinking: Arc<std::sync::atomic::AtomicBool>,
    /// The directory descriptor cache, purged with the table (see `DirCache::purge`).
    dirs: Arc<std::sync::OnceLock<Arc<crate::dirfd::DirCache>>>,
    /// How many copy-ups have put their copy under its name (see `copies_placed`).
    placed: AtomicU64,
}

impl InodeTable {
    pub fn new() -> Self {
        InodeTable {
            next_synthetic: AtomicU64::new(SYNTHETIC_BASE),
            ..InodeTable::default()
        }
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.map.get(&ino).map(|n| Arc::clone(&n.key().0))
    }

    pub fn insert_root(&self, state: State) -> Arc<Inode> {
        let inode = Arc::new(Inode {
            ino: ROOT,
            kind: libc::S_IFDIR,
            // The kernel never forgets the root.
            lookups: AtomicU64::new(1),
            copyup: Mutex::new(()),
            state: RwLock::new(state),
            opens: OpensCell::default(),
            released: Released::default(),
        });
        self.map.insert(Node(Arc::clone(&inode)));
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
                        !st.unlinked
                            && same_object(&st, state.upper.as_deref(), state.lowers.first())
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
        let mut state = state;
        loop {
            let inode = Arc::new(Inode {
                ino: candidate,
                kind,
                lookups: AtomicU64::new(1),
                copyup: Mutex::new(()),
                state: RwLock::new(state),
                opens: OpensCell::default(),
                released: Released::default(),
            });
            // Inserted only if the number is free (a set keeps the node it has).
            if self.map.insert(Node(Arc::clone(&inode))) {
                let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
                self.peak.fetch_max(n, Ordering::Relaxed);
                return inode;
            }
            // A live node has the number: the state goes into a node with a synthetic one.
            // Nobody else has seen this node; it is dropped with the placeholder.
            let mut st = inode.state.write();
            let placeholder = State::new(ROOT, Arc::clone(&st.name), None, Lowers::None);
            state = std::mem::replace(&mut *st, placeholder);
            candidate = self.synthetic();
        }
    }

    /// Counts a copy-up that has just put its copy under its name. Called with the
    /// node's state still write-locked, before the index forgets its lower object: a
    /// lookup that saw the node in either state afterwards sees the count changed.
    pub fn copy_placed(&self) {
        self.placed.fetch_add(1, Ordering::SeqCst);
    }

    /// How many copy-ups have put their copy under its name so far. A lookup that found
    /// a name lower-only while the count changed may have probed the upper directory
    /// just before a copy-up linked the copy there, and then met the node after the copy
    /// (or, the index already past it, made a second node for the lower object): see
    /// `UnionFs::lookup`.
    pub fn copies_placed(&self) -> u64 {
        self.placed.load(Ordering::SeqCst)
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
        let gone = self.map.remove_if(&ino, |Node(inode)| {
            let prev = inode.lookups.fetch_sub(
                n.min(inode.lookups.load(Ordering::Relaxed)),
                Ordering::Relaxed,
            );
            prev <= n
        });
        if let Some(Node(inode)) = gone {
            if let Some(key) = object_key(&inode.state.read()) {
                self.by_object.remove_if(&key, |_, v| *v == ino);
            }
            drop(inode);
            self.count.fetch_sub(1, Ordering::Relaxed);
            self.maybe_shrink();
        }
    }

    /// Schedules a shrink when the table holds less than a quarter of its peak: the
    /// kernel forgot most of what a walk cached (memory pressure, `drop_caches`), and the
    /// maps' capacity and the freed nodes' heap would otherwise stay the daemon's for
    /// good. The shrink runs on a thread of its own, after the burst of forgets, not on
    /// the request that noticed (it rehashes both maps and walks the allocator's arenas).
    fn maybe_shrink(&self) {
        let (len, peak) = (
            self.count.load(Ordering::Relaxed),
            self.peak.load(Ordering::Relaxed),
        );
        if peak < SHRINK_MIN || len > peak / 4 || self.shrinking.swap(true, Ordering::AcqRel) {
            return;
        }
        let (map, by_object) = (Arc::downgrade(&self.map), Arc::downgrade(&self.by_object));
        let (peak, shrinking) = (Arc::clone(&self.peak), Arc::clone(&self.shrinking));
        let dirs = Arc::clone(&self.dirs);
        let spawned = std::thread::Builder::new()
            .name("unionfs-shrink".into())
            .spawn(move || {
                // Forgets come in bursts (the kernel's shrinker, `drop_caches` walking its
                // lists): shrink once the table has stopped shrinking, and again if it
                // went on shrinking meanwhile, or what the later forgets free would stay.
                let mut last = usize::MAX;
                loop {
                    std::thread::sleep(SHRINK_DELAY);
                    // The table is gone (unmounted): nothing to give back.
                    let (Some(map), Some(by_object)) = (map.upgrade(), by_object.upgrade()) else {
                        break;
                    };
                    let len = map.len();
                    if len >= last {
                        break;
                    }
                    shrink(&map, &by_object, &peak, dirs.get());
                    last = len;
                }
                shrinking.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the inode table's shrink: {e}");
            self.shrinking.store(false, Ordering::Release);
        }
    }

    /// Shrinks the maps to what they hold and returns free heap to the system, now (see
    /// `maybe_shrink`, which schedules it).
    pub fn shrink(&self) {
        shrink(&self.map, &self.by_object, &self.peak, self.dirs.get());
    }

    /// The directory descriptor cache to purge when the table shrinks.
    pub fn set_dir_cache(&self, dirs: Arc<crate::dirfd::DirCache>) {
        let _ = self.dirs.set(dirs);
    }

    /// The capacity of the node map (for tests of `shrink`).
    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn shrink(
    map: &DashSet<Node>,
    by_object: &DashMap<(u64, u64), u64>,
    peak: &std::sync::atomic::AtomicUsize,
    dirs: Option<&Arc<crate::dirfd::DirCache>>,
) {
    // One shard at a time under its write lock: requests on other shards go on.
    map.shrink_to_fit();
    by_object.shrink_to_fit();
    if let Some(d) = dirs {
        d.purge();
    }
    log::debug!(
        "inode table shrunk: {} nodes, {} objects",
        map.len(),
        by_object.len()
    );
    peak.store(map.len(), Ordering::Relaxed);
    crate::sys::heap::trim();
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
        State::new(
            ROOT,
            name_of(OsStr::new("x")),
            upper,
            lower.into_iter().collect(),
        )
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

    /// The layout the memory budget rests on (issue 13: about 300 bytes per cached node
    /// all included, fuse-overlayfs 1.10's figure): a node of a lower file is one
    /// allocation of the `Arc<Inode>` plus its name.
    #[test]
    fn node_layout_stays_small() {
        use std::mem::size_of;
        let sizes = (
            size_of::<Inode>(),
            size_of::<State>(),
            size_of::<Real>(),
            size_of::<Lowers>(),
        );
        eprintln!("Inode, State, Real, Lowers: {sizes:?}");
        // 152 + the Arc's two counts + malloc's header: a 176-byte chunk; 8 more and it
        // would be 192.
        assert!(sizes.0 <= 152, "Inode is {} bytes", sizes.0);
        assert!(sizes.1 <= 104, "State is {} bytes", sizes.1);
        assert!(sizes.2 <= 56, "Real is {} bytes", sizes.2);
        assert!(sizes.3 <= sizes.2, "Lowers is {} bytes", sizes.3);
        assert_eq!(size_of::<Option<Box<Real>>>(), 8);
        assert_eq!(size_of::<OpensCell>(), 16);
    }

    #[test]
    fn lowers_keep_one_inline_and_exact_slices() {
        assert!(matches!(Lowers::from(Vec::new()), Lowers::None));
        let one = Lowers::from(vec![real(1, LayerRef::Lower(0))]);
        assert!(matches!(one, Lowers::One(_)));
        assert_eq!(one.len(), 1);
        let mut v = Vec::with_capacity(8);
        v.push(real(1, LayerRef::Lower(0)));
        v.push(real(2, LayerRef::Lower(1)));
        let two = Lowers::from(v);
        assert_eq!(two.iter().map(|r| r.ino).collect::<Vec<_>>(), vec![1, 2]);
        assert!(matches!(two, Lowers::Many(ref b) if b.len() == 2));
    }

    #[test]
    fn rare_fields_come_and_go() {
        let mut st = state(None, Some(real(3, LayerRef::Lower(0))));
        assert!(st.rare.is_none());
        st.set_redirect(Some("/a/b".into()));
        assert_eq!(
            st.redirect().map(|r| r.as_os_str()),
            Some(OsStr::new("/a/b"))
        );
        st.set_redirect(None);
        assert!(st.rare.is_none(), "an empty rare part is freed");
        assert!(st.take_aliases().is_empty());
    }

    #[test]
    fn hard_link_names_are_aliases_until_taken() {
        let t = InodeTable::new();
        let a = t.get_or_insert(
            9,
            libc::S_IFREG,
            state(None, Some(real(9, LayerRef::Lower(0)))),
        );
        let mut other = state(None, Some(real(9, LayerRef::Lower(0))));
        other.parent = 42;
        other.name = name_of(OsStr::new("y"));
        let b = t.get_or_insert(9, libc::S_IFREG, other);
        assert!(Arc::ptr_eq(&a, &b));
        let mut st = a.state.write();
        assert_eq!((st.parent, &*st.name), (42, OsStr::new("y")));
        assert_eq!(st.aliases(), &[(ROOT, OsString::from("x"))]);
        assert_eq!(st.take_aliases().len(), 1);
        assert!(st.rare.is_none());
    }

    #[test]
    fn opens_are_allocated_only_while_open() {
        let t = InodeTable::new();
        let a = t.get_or_insert(
            11,
            libc::S_IFREG,
            state(None, Some(real(11, LayerRef::Lower(0)))),
        );
        assert!(a.opens.0.lock().is_none());
        a.opens.lock().handles += 1;
        assert_eq!(a.opens.lock().handles, 1);
        assert!(a.opens.0.lock().is_some());
        a.opens.lock().handles -= 1;
        assert!(a.opens.0.lock().is_none(), "idle opens are freed");
    }

    #[test]
    fn release_wakes_a_waiter_and_a_wait_times_out() {
        let t = InodeTable::new();
        let a = t.get_or_insert(
            12,
            libc::S_IFREG,
            state(None, Some(real(12, LayerRef::Lower(0)))),
        );
        let start = std::time::Instant::now();
        {
            let mut opens = a.opens.lock();
            let w = a
                .released
                .wait_until(&mut opens, start + std::time::Duration::from_millis(50));
            assert!(w.timed_out());
        }
        a.opens.lock().handles = 1;
        let b = Arc::clone(&a);
        let waiter = std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let mut opens = b.opens.lock();
            while opens.handles > 0 {
                if b.released.wait_until(&mut opens, deadline).timed_out() {
                    return false;
                }
            }
            true
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        {
            let mut opens = a.opens.lock();
            opens.handles = 0;
            a.released.notify_all();
        }
        assert_eq!(
            waiter.join().ok(),
            Some(true),
            "the waiter missed the release"
        );
    }

    #[test]
    fn forgetting_most_nodes_shrinks_the_table() {
        let t = InodeTable::new();
        let n = 20_000u64;
        // One descriptor for all: a node per object would run out of them.
        let Loc::Fd(fd) = real(0, LayerRef::Lower(0)).loc else {
            panic!("the fixture holds a descriptor");
        };
        for i in 0..n {
            let r = Real {
                loc: Loc::Fd(Arc::clone(&fd)),
                layer: LayerRef::Lower(0),
                dev: 1,
                ino: 1000 + i,
            };
            t.get_or_insert(1000 + i, libc::S_IFREG, state(None, Some(r)));
        }
        let full = t.capacity();
        assert!(full >= n as usize);
        for i in 0..n - 100 {
            t.forget(1000 + i, 1);
        }
        assert_eq!(t.len(), 100);
        assert!(
            t.by_object.len() == 100,
            "{} objects left",
            t.by_object.len()
        );
        // The shrink runs on its own thread after SHRINK_DELAY.
        let deadline = std::time::Instant::now() + SHRINK_DELAY * 10;
        while t.capacity() * 8 > full && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(
            t.capacity() * 8 <= full,
            "capacity {} of {full}",
            t.capacity()
        );
        // Still a working table after the shrink.
        assert!(t.get(1000 + n - 1).is_some());
        t.forget(1000 + n - 1, 1);
        assert!(t.get(1000 + n - 1).is_none());
    }
}
