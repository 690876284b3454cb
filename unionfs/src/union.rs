//! The union filesystem core: the layer stack, the inode table and the open handles, and the
//! helpers every family of operations shares. It knows nothing of FUSE.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode};

use crate::dirfd::{DirCache, DirRef};
use crate::errno::{Errno, Result};
use crate::handle::Handles;
use crate::inode::{Inode, InodeTable, LayerRef, Loc, Real, State, ROOT};
use crate::layer::{fstat_fd, Layers};
use crate::options::Passthrough;

/// The caller of a request, for ownership of what it creates.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// The caller's umask, for what it creates: with POSIX ACLs the kernel leaves it to
    /// the filesystem, which applies it only where the directory has no default ACL.
    pub umask: u32,
    /// Whether the caller has CAP_FSETID, when the request says (the kernel's set-id kill
    /// flags: SETATTR's `FATTR_KILL_SUIDGID` with a size, OPEN's `FUSE_OPEN_KILL_SUIDGID`
    /// with `O_TRUNC`, WRITE's `FUSE_WRITE_KILL_SUIDGID`); `None`: `killpriv` reads it
    /// from `/proc` (the `fuser` front end).
    pub fsetid: Option<bool>,
    /// Whether setting an access ACL clears set-group-id, when the request says
    /// (SETXATTR's `FUSE_SETXATTR_ACL_KILL_SGID`, in which the kernel judged both the
    /// caller's group and its CAP_FSETID); `None`: judged from `/proc`.
    pub acl_kill_sgid: Option<bool>,
}

/// Settings that change behaviour, parsed from the command line.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Skip the fsync of copied-up data, as the kernel's `volatile` does.
    pub volatile: bool,
    /// Which files' data to hand to the kernel (FUSE passthrough) when possible.
    pub passthrough: Passthrough,
    /// How many directory descriptors to keep open; 0: three quarters of the file limit.
    pub dir_fd_budget: usize,
    /// `xino=on` (see `Options::xino_on`).
    pub xino_on: bool,
    /// `noacl`: the kernel does not enforce POSIX ACLs, and their xattrs are not shown
    /// (copy-up still keeps them in the upper layer).
    pub noacl: bool,
    /// How owners on disk show through the union (`uidmapping=`, `squash_to_*`).
    pub idmap: crate::idmap::IdMap,
    /// `redirect_dir=on`: renaming a directory with lower content writes a redirect.
    pub redirect_create: bool,
    /// Lookups follow redirects (`redirect_dir=on|follow`).
    pub redirect_follow: bool,
    /// `metacopy=on`: changes of a lower regular file's metadata copy up no data.
    pub metacopy: bool,
}

/// Attributes as the union shows them.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

fn ts(sec: i64, nsec: i64) -> SystemTime {
    let nsec = u32::try_from(nsec).unwrap_or(0);
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::new(0, nsec)
    }
}

impl Attr {
    pub fn from_stat(ino: u64, st: &FileStat, merged_dir: bool) -> Attr {
        Attr {
            ino,
            size: st.st_size as u64,
            blocks: st.st_blocks as u64,
            atime: ts(st.st_atime, st.st_atime_nsec),
            mtime: ts(st.st_mtime, st.st_mtime_nsec),
            ctime: ts(st.st_ctime, st.st_ctime_nsec),
            mode: st.st_mode,
            // The kernel's overlay reports 1 for a merged directory: the real counts say
            // nothing about the union's subdirectories.
            nlink: if merged_dir { 1 } else { st.st_nlink as u32 },
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev as u32,
            blksize: st.st_blksize as u32,
        }
    }
}

thread_local! {
    /// Names the request being served on this thread made stale (see `flush_invalidations`).
    static PENDING: std::cell::RefCell<Vec<(u64, OsString)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Collects names to invalidate once the current request is done with its work.
pub fn defer_invalidations(names: Vec<(u64, OsString)>) {
    if !names.is_empty() {
        PENDING.with(|p| p.borrow_mut().extend(names));
    }
}

/// Tells the kernel to forget cached names. The core calls it when a name it handed out
/// stops meaning what the kernel thinks (a hard link broken by copy-up).
pub trait Invalidate: Send + Sync {
    fn entry(&self, parent: u64, name: &OsStr);
}

pub struct UnionFs {
    /// How lookups treat redirects.
    pub redirects: crate::lookup::Redirects,
    /// Set once the session exists.
    pub invalidator: Arc<std::sync::OnceLock<Box<dyn Invalidate>>>,
    pub layers: Layers,
    pub inodes: InodeTable,
    pub handles: Handles,
    pub config: Config,
    tmp_counter: AtomicU64,
    /// Read-only clones of the lower layers' mounts, made at first use.
    readonly_lowers: Vec<std::sync::OnceLock<Option<OwnedFd>>>,
    /// The upper filesystem makes `O_TMPFILE` files (not known to fail yet).
    pub tmpfile_ok: std::sync::atomic::AtomicBool,
    /// The work directory's whiteout that new whiteouts link to.
    pub shared_whiteout: parking_lot::Mutex<Option<OsString>>,
    /// Passthrough wanted and not (yet) refused by the kernel.
    passthrough: std::sync::atomic::AtomicBool,
    /// The inode number the root shows (the kernel shows the upper root's).
    root_ino: u64,
}

/// How many times a lookup is done when copy-ups keep taking its name meanwhile (see
/// `UnionFs::lookup`); the last answer stands.
const LOOKUP_ATTEMPTS: u32 = 8;

impl UnionFs {
    pub fn new(layers: Layers, config: Config) -> Result<UnionFs> {
        let inodes = InodeTable::new();
        let passthrough = config.passthrough != Passthrough::Off;
        let layers_count = layers.lowers.len();
        let dirs = DirCache::new(dir_budget(config.dir_fd_budget));
        inodes.set_dir_cache(Arc::clone(&dirs));
        let root_of = |fd: OwnedFd, layer: LayerRef| -> Result<Real> {
            let st = fstat_fd(fd.as_fd())?;
            Ok(Real {
                loc: Loc::Dir(DirRef::root(fd, &dirs)),
                layer,
                dev: st.st_dev,
                ino: st.st_ino,
            })
        };
        let upper = match &layers.upper {
            Some(u) => {
                let fd = nix::fcntl::openat(
                    u.fd(),
                    ".",
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )?;
                Some(root_of(fd, LayerRef::Upper)?)
            }
            None => None,
        };
        let opaque = upper.as_ref().is_some_and(|u| {
            u.xpath()
                .is_ok_and(|x| crate::whiteout::has_opaque_xattr(&x, layers.ns))
        });
        let mut roots = Vec::new();
        for (i, l) in layers.lowers.iter().enumerate() {
            let fd = nix::fcntl::openat(
                l.fd(),
                ".",
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            roots.push(root_of(fd, LayerRef::lower(i))?);
        }
        let mut lowers = Vec::new();
        if !opaque {
            for r in &roots {
                let stop = crate::whiteout::has_opaque_xattr(&r.xpath()?, layers.ns);
                lowers.push(r.clone());
                if stop {
                    break;
                }
            }
        }
        let impure = upper.as_ref().is_some_and(|u| {
            u.xpath()
                .ok()
                .and_then(|x| crate::sys::fsops::getxattr_vec(&x, layers.ns.impure()).ok())
                .flatten()
                .is_some()
        });
        let root_ino = upper.as_ref().or(lowers.first()).map_or(ROOT, |r| r.ino);
        let mut root = State::new(
            ROOT,
            crate::inode::name_of(OsStr::new("")),
            upper,
            lowers.into(),
        );
        root.impure = impure;
        inodes.insert_root(root);
        let redirects = crate::lookup::Redirects {
            follow: config.redirect_follow,
            roots,
            metacopy: config.metacopy,
        };
        Ok(UnionFs {
            redirects,
            invalidator: Arc::new(std::sync::OnceLock::new()),
            layers,
            inodes,
            handles: Handles::new(),
            config,
            tmp_counter: AtomicU64::new(1),
            tmpfile_ok: std::sync::atomic::AtomicBool::new(true),
            readonly_lowers: (0..layers_count)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            shared_whiteout: parking_lot::Mutex::new(None),
            passthrough: std::sync::atomic::AtomicBool::new(passthrough),
            root_ino,
        })
    }

    pub fn passthrough_on(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Whether an open of a file in the upper layer (`upper`) or a lower one may pass
    /// through, as far as the configuration and the kernel go (see `data_path`).
    pub fn may_pass_through(&self, upper: bool) -> bool {
        self.passthrough_on() && (upper || self.config.passthrough == Passthrough::All)
    }

    /// A read-only clone of lower layer `i`'s mount, made at first use (see
    /// `backing_file`); an error when it cannot be made (then lower files are not
    /// passed through).
    pub fn readonly_lower(&self, i: u32) -> std::io::Result<BorrowedFd<'_>> {
        let i = usize::try_from(i).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let slot = self
            .readonly_lowers
            .get(i)
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        let made = slot.get_or_init(|| {
            let layer = self.layers.lowers.get(i)?;
            crate::sys::fsops::readonly_clone(layer.fd())
                .map_err(|e| log::warn!("no read-only clone of {:?}: {e}", layer.path))
                .ok()
        });
        made.as_ref()
            .map(|fd| fd.as_fd())
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EPERM))
    }

    pub fn disable_passthrough(&self) {
        self.passthrough.store(false, Ordering::Relaxed);
    }

    pub fn inode(&self, ino: u64) -> Result<Arc<Inode>> {
        self.inodes.get(ino).ok_or(Errno::ESTALE)
    }

    /// Runs a request on a node again when it found that an upper name it used now names
    /// another object (`Errno::ESTALE` from `Real`): a rename or an unlink of the name ran
    /// meanwhile. Those update the node under its state lock, so the next attempt reads
    /// where the object is now. Still stale after that: the object is gone.
    pub fn retry<T>(&self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        for _ in 0..4 {
            match f() {
                Err(Errno(libc::ESTALE)) => std::thread::yield_now(),
                r => return r,
            }
        }
        f().map_err(|e| if e == Errno::ESTALE { Errno::ENOENT } else { e })
    }

    pub fn check_writable(&self) -> Result<()> {
        if self.layers.read_only() {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    pub fn upper_layer_fd(&self) -> Result<BorrowedFd<'_>> {
        self.layers
            .upper
            .as_ref()
            .map(|l| l.fd())
            .ok_or(Errno::EROFS)
    }

    pub fn work_arc(&self) -> Result<Arc<OwnedFd>> {
        self.layers.work.clone().ok_or(Errno::EROFS)
    }

    pub fn work_fd(&self) -> Result<BorrowedFd<'_>> {
        self.layers
            .work
            .as_ref()
            .map(|w| w.as_fd())
            .ok_or(Errno::EROFS)
    }

    /// A fresh name in the work directory, in the kernel's style (`#N`).
    pub fn tmp_name(&self) -> OsString {
        OsString::from(format!(
            "#u{:x}",
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// The attributes of a node, read from its real object.
    pub fn attr_of(&self, inode: &Inode) -> Result<Attr> {
        let st = inode.state.read();
        let real = st.real().ok_or(Errno::ESTALE)?;
        let mut fst = real.stat()?;
        if let (true, Some(data)) = (st.metacopy, st.lowers.last()) {
            // A metadata-only copy's blocks are its data's, as the kernel reports them.
            fst.st_blocks = data.stat()?.st_blocks;
        }
        let ino = if inode.ino == ROOT {
            self.root_ino
        } else {
            inode.ino
        };
        Ok(Attr::from_stat(
            ino,
            &fst,
            inode.is_dir() && st.is_merged_dir(),
        ))
    }

    /// Resolves `name` under `parent` and returns its node with one more lookup counted.
    ///
    /// The kernel serializes a lookup with the changes of names in the directory, but not
    /// with a copy-up (an open for writing, a chmod, a setxattr: no directory lock), which
    /// puts a new object under the name. A lookup that probed the upper directory just
    /// before the copy got its name found the name lower-only, and met the node only after
    /// the copy-up: it then made a second node for the lower object, while the name shows
    /// the first node's copy. An unlink with that node made a whiteout over the copy
    /// (EEXIST), a chmod copied it up again (EEXIST). So when a copy-up was placed
    /// meanwhile and the upper directory now shows the name, the lookup is done again:
    /// it finds the copy, and the node that made it.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<(Arc<Inode>, Attr)> {
        let p = self.inode(parent)?;
        if !p.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let mut attempt = 1;
        loop {
            let placed = self.inodes.copies_placed();
            let (inode, attr, lower_only) = self.lookup_once(&p, parent, name)?;
            if lower_only
                && attempt < LOOKUP_ATTEMPTS
                && self.inodes.copies_placed() != placed
                && self.upper_shows(&p, name)
            {
                log::debug!(
                    "lookup {name:?} in {parent}: a copy-up took the name meanwhile, again"
                );
                self.inodes.forget(inode.ino, 1);
                attempt += 1;
                continue;
            }
            return Ok((inode, attr));
        }
    }

    /// One lookup (see `lookup`); also whether the name was found in lower layers only.
    fn lookup_once(
        &self,
        p: &Inode,
        parent: u64,
        name: &OsStr,
    ) -> Result<(Arc<Inode>, Attr, bool)> {
        let found = {
            let pst = p.state.read();
            crate::lookup::resolve(&self.layers, &self.redirects, &pst, name)?
        };
        crate::testhook::pause("lookup-resolved");
        if crate::trace::lookups_on() {
            crate::trace::lookup(self, p, name, found.as_ref());
        }
        let found = found.ok_or(Errno::ENOENT)?;
        if found.fix_origin && !self.layers.read_only() {
            self.fix_origin(p, &found);
        }
        let merged = found.kind == libc::S_IFDIR
            && found.lowers.len() + usize::from(found.upper.is_some()) > 1;
        let lower_only = found.upper.is_none();
        let st = found.st;
        let kind = found.kind;
        let natural = found.natural_ino;
        let inode = self
            .inodes
            .get_or_insert(natural, kind, found.into_state(parent, name));
        let attr = Attr::from_stat(inode.ino, &st, merged);
        Ok((inode, attr, lower_only))
    }

    /// Whether the parent's upper directory holds an object (not a whiteout) as `name`.
    fn upper_shows(&self, p: &Inode, name: &OsStr) -> bool {
        let Some(pu) = p.state.read().upper.clone() else {
            return false;
        };
        pu.dir_ref()
            .and_then(|d| crate::lookup::probe(d, name, false))
            .is_ok_and(|r| matches!(r, crate::lookup::Probe::Found(..)))
    }

    /// Records the first lower directory as the origin of a merged directory and marks the
    /// parent impure, as the kernel's lookup does. Best effort: a failure only costs the
    /// upper its kernel-identical form, not the lookup.
    fn fix_origin(&self, parent: &Inode, found: &crate::lookup::Found) {
        let (Some(u), Some(l)) = (&found.upper, found.lowers.first()) else {
            return;
        };
        let Some(i) = l.layer.lower_index() else {
            return;
        };
        let Some(record) = self
            .layers
            .lowers
            .get(i)
            .and_then(|layer| layer.origin_record(|| l.file_handle()))
        else {
            return;
        };
        let set = u.xpath().and_then(|x| {
            Ok(crate::sys::fsops::setxattr(
                &x,
                self.layers.ns.origin(),
                &record,
                0,
            )?)
        });
        let pu = parent.state.read().upper.clone();
        let marked = match (&set, pu) {
            (Ok(()), Some(pu)) => crate::copyup::mark_impure(self, parent, &pu),
            _ => Ok(()),
        };
        if let Err(e) = set.and(marked) {
            log::warn!(
                "cannot record the origin of merged directory {:?}: {e}",
                found.st.st_ino
            );
        }
    }

    /// Sends the name invalidations the current request collected. `sync` when the
    /// request holds no directory lock the kernel needs to process them (open, setattr,
    /// xattrs), so they take effect before the reply; otherwise from another thread, as
    /// the kernel would wait for a lock that the request being served holds.
    pub fn flush_invalidations(&self, sync: bool) {
        let names = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
        if names.is_empty() {
            return;
        }
        let inv = Arc::clone(&self.invalidator);
        let send = move || {
            if let Some(i) = inv.get() {
                for (parent, name) in names {
                    i.entry(parent, &name);
                }
            }
        };
        if sync {
            send();
            return;
        }
        if let Err(e) = std::thread::Builder::new()
            .name("unionfs-inval".into())
            .spawn(send)
        {
            log::warn!("cannot invalidate cached names: {e}");
        }
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }
}

/// Directory descriptors to keep: three quarters of the file limit (the rest is for open
/// files and the descriptors held by the layers and the FUSE channels).
fn dir_budget(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let soft = usize::try_from(soft).unwrap_or(usize::MAX);
    (soft / 4 * 3).saturating_sub(64).max(64)
}
