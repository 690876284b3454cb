//! The `fuser::Filesystem` adapter (`-o frontend=fuser`; the default front end is our own,
//! `wire`): each handler converts its arguments, calls one core operation and replies. No
//! filesystem logic lives here. fuser does not pass the kernel's set-id kill flags on, so
//! requests get `Ctx::fsetid: None` and `killpriv` reads the caller from `/proc`.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use nix::sys::time::TimeSpec;

use crate::backing::Backing;
use crate::errno::Errno;
use crate::ops::attr::{SetAttr, SetTime};
use crate::ops::file::{DataPath, Opened};
use crate::ops::namei::NewObj;
use crate::union::{Attr, Ctx, UnionFs};

/// All changes go through us, so the kernel may cache names and attributes for long; a
/// name that is missing is cached too, which makes `$PATH`-style searches cheap.
const TTL: Duration = Duration::from_secs(24 * 3600);

pub struct FuseAdapter {
    pub fs: Arc<UnionFs>,
    /// A duplicate of the session's `/dev/fuse` descriptor, to register backing files on
    /// (`crate::backing`; fuser's own `BackingId` is not what the core keeps).
    dev: Arc<OwnedFd>,
    /// Where requests that may copy up a large file are served (see `offload`).
    long: crate::offload::Pool,
}

/// Workers for long requests: copy-ups of large files running at once beyond this wait
/// for one another, never other requests.
const LONG_WORKERS: usize = 8;

impl FuseAdapter {
    pub fn new(fs: UnionFs, dev: Arc<OwnedFd>) -> Self {
        FuseAdapter {
            fs: Arc::new(fs),
            dev,
            long: crate::offload::Pool::new(LONG_WORKERS),
        }
    }

    /// Runs a request on node `ino` that may copy it up: on a worker when that may take
    /// long, here otherwise. `job` replies itself.
    fn maybe_long(&self, ino: u64, may_copy_up: bool, job: impl FnOnce(&UnionFs) + Send + 'static) {
        self.long.run_maybe_long(&self.fs, ino, may_copy_up, job);
    }
}

/// Keeps the open file and tells the kernel how to get its data.
fn open_reply(
    fs: &UnionFs,
    ino: u64,
    opened: Opened,
    path: DataPath,
) -> (FileHandle, FopenFlags, Option<Arc<Backing>>) {
    let fh = FileHandle(fs.add_handle(ino, opened, &path));
    match path {
        DataPath::Passthrough(id) => (fh, FopenFlags::empty(), Some(id)),
        DataPath::Direct(id) => (fh, FopenFlags::FOPEN_DIRECT_IO, Some(id)),
        // Every change goes through us, so cached pages stay valid across opens.
        DataPath::Cached => (fh, FopenFlags::FOPEN_KEEP_CACHE, None),
    }
}

/// The kernel side of `Invalidate`.
pub struct KernelInvalidator(pub fuser::Notifier);

impl crate::union::Invalidate for KernelInvalidator {
    fn entry(&self, parent: u64, name: &OsStr) {
        if let Err(e) = self.0.inval_entry(INodeNo(parent), name) {
            log::debug!("invalidating {name:?} in {parent}: {e}");
        }
    }
}

/// fuser does not pass the kernel's set-id kill flags on: `killpriv` judges the caller
/// from `/proc` (`fsetid: None`).
fn ctx(req: &Request) -> Ctx {
    Ctx {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
        ..Ctx::default()
    }
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn dtype(t: nix::dir::Type) -> FileType {
    use nix::dir::Type;
    match t {
        Type::Directory => FileType::Directory,
        Type::Symlink => FileType::Symlink,
        Type::Fifo => FileType::NamedPipe,
        Type::Socket => FileType::Socket,
        Type::CharacterDevice => FileType::CharDevice,
        Type::BlockDevice => FileType::BlockDevice,
        Type::File => FileType::RegularFile,
    }
}

/// The attributes the kernel gets, owners as the union shows them (`idmap`).
fn fattr(fs: &UnionFs, a: &Attr) -> FileAttr {
    let (uid, gid) = fs.config.idmap.shown(a.uid, a.gid);
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: UNIX_EPOCH,
        kind: kind(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid,
        gid,
        rdev: a.rdev,
        blksize: a.blksize,
        flags: 0,
    }
}

fn settime(t: Option<TimeOrNow>) -> Option<SetTime> {
    t.map(|t| match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(st) => {
            let (sec, nsec) = match st.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, i64::from(d.subsec_nanos())),
                Err(e) => {
                    let d = e.duration();
                    let mut sec = -(d.as_secs() as i64);
                    let mut nsec = -i64::from(d.subsec_nanos());
                    if nsec < 0 {
                        sec -= 1;
                        nsec += 1_000_000_000;
                    }
                    (sec, nsec)
                }
            };
            SetTime::At(TimeSpec::new(sec, nsec))
        }
    })
}

fn entry(fs: &UnionFs, reply: ReplyEntry, r: Result<Attr, Errno>) {
    match r {
        Ok(a) => reply.entry(&TTL, &fattr(fs, &a), Generation(0)),
        Err(e) => reply.error(e.into()),
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e.into()),
    }
}

fn xattr_reply(reply: ReplyXattr, size: u32, r: Result<Vec<u8>, Errno>) {
    match r {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE.into()),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e.into()),
    }
}

impl FuseAdapter {
    fn create_entry(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        obj: NewObj<'_>,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let c = Ctx { umask, ..ctx(req) };
        let r = self
            .fs
            .create_obj(&c, parent.0, name, obj)
            .map(|(_, a, _)| a);
        entry(&self.fs, reply, r);
    }
}

/// A directory listing from some offset on, `.` and `..` first.
struct Listing {
    entries: Arc<Vec<crate::readdir::Entry>>,
    dots: [u64; 2],
    offset: u64,
}

/// One entry to send: `next` is the offset the kernel asks for to continue after it.
struct Item<'a> {
    ino: u64,
    next: u64,
    kind: FileType,
    name: &'a OsStr,
    dot: bool,
}

impl Listing {
    fn iter(&self) -> impl Iterator<Item = Item<'_>> {
        let dots = (0..2u64).map(|i| Item {
            ino: self.dots[i as usize & 1],
            next: i + 1,
            kind: FileType::Directory,
            name: OsStr::new(if i == 0 { "." } else { ".." }),
            dot: true,
        });
        let entries = self.entries.iter().enumerate().map(|(i, e)| Item {
            ino: e.ino,
            next: i as u64 + 3,
            kind: dtype(e.dtype),
            name: &e.name,
            dot: false,
        });
        dots.chain(entries)
            .skip(usize::try_from(self.offset).unwrap_or(usize::MAX))
    }
}

impl FuseAdapter {
    fn listing(&self, ino: INodeNo, fh: FileHandle, offset: u64) -> Result<Listing, Errno> {
        let entries = self.fs.dir_entries(fh.0, offset)?;
        let (dot, dotdot) = self.fs.dot_inos(ino.0)?;
        Ok(Listing {
            entries,
            dots: [dot, dotdot],
            offset,
        })
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            // Not FUSE_ATOMIC_O_TRUNC: see `UnionFs::open_file` (issue 14).
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            // File flags (chattr) on directories too.
            InitFlags::FUSE_HAS_IOCTL_DIR,
        ] {
            // A capability the kernel lacks only costs speed.
            let _ = config.add_capabilities(cap);
        }
        // The kernel enforces POSIX ACLs from the `system.posix_acl_*` xattrs we return;
        // without this it would ignore them, and an ACL that denies would not (issue 15).
        // It then leaves the umask to us (`DONT_MASK`): the upper filesystem applies it
        // only where the directory has no default ACL.
        if !self.fs.config.noacl
            && config
                .add_capabilities(InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK)
                .is_err()
        {
            log::warn!("the kernel does not offer FUSE_POSIX_ACL: POSIX ACLs are not enforced");
        }
        if self.fs.passthrough_on()
            && (config
                .add_capabilities(InitFlags::FUSE_PASSTHROUGH)
                .is_err()
                || config.set_max_stack_depth(1).is_err())
        {
            log::warn!("the kernel does not offer FUSE passthrough; data goes through the daemon");
            self.fs.disable_passthrough();
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name) {
            Ok((_, a)) => reply.entry(&TTL, &fattr(&self.fs, &a), Generation(0)),
            // A negative entry (node id 0) with a TTL: the kernel caches the miss.
            Err(Errno(libc::ENOENT)) => {
                reply.entry(&TTL, &blank_attr(0), Generation(0));
            }
            Err(e) => reply.error(e.into()),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.retry(|| self.fs.getattr(ino.0, fh.map(|f| f.0))) {
            Ok(a) => reply.attr(&TTL, &fattr(&self.fs, &a)),
            Err(e) => reply.error(e.into()),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: settime(atime),
            mtime: settime(mtime),
            fh: fh.map(|f| f.0),
            caller: ctx(req),
        };
        self.maybe_long(ino.0, true, move |fs| {
            let r = fs.retry(|| fs.setattr(ino.0, a));
            fs.flush_invalidations(true);
            match r {
                Ok(a) => reply.attr(&TTL, &fattr(fs, &a)),
                Err(e) => reply.error(e.into()),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.retry(|| self.fs.readlink(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e.into()),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let obj = NewObj::Node { mode, rdev };
        self.create_entry(req, parent, name, obj, umask, reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.create_entry(req, parent, name, NewObj::Dir { mode }, umask, reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.create_entry(
            req,
            parent,
            link_name,
            NewObj::Symlink {
                target: target.as_os_str(),
            },
            0,
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.fs.unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.fs.rmdir(parent.0, name));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.fs
                .rename(parent.0, name, newparent.0, newname, flags.bits()),
        );
        self.fs.flush_invalidations(false);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        entry(
            &self.fs,
            reply,
            self.fs
                .retry(|| self.fs.link(ino.0, newparent.0, newname))
                .map(|(_, a)| a),
        );
        self.fs.flush_invalidations(false);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let caller = ctx(req);
        let write = crate::ops::file::wants_write(flags.0);
        let dev = Arc::clone(&self.dev);
        self.maybe_long(ino.0, write, move |fs| {
            let opened = fs.retry(|| fs.open_file(ino.0, flags.0, &caller));
            fs.flush_invalidations(true);
            let opened = match opened {
                Ok(o) => o,
                Err(e) => return reply.error(e.into()),
            };
            let path = match fs.data_path(ino.0, &opened, || match fs.backing_file(&opened)? {
                Some(f) => Backing::open(&dev, &f),
                None => Backing::open(&dev, &opened.file),
            }) {
                Ok(p) => p,
                Err(e) => return reply.error(e.into()),
            };
            match open_reply(fs, ino.0, opened, path) {
                (fh, fl, Some(b)) => crate::sys::fuser_backing::opened(reply, fh, fl, &b),
                (fh, fl, None) => reply.opened(fh, fl),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut reply = Some(reply);
        let r = self.fs.read(fh.0, offset, size, |d| {
            if let Some(r) = reply.take() {
                r.data(d);
            }
        });
        if let (Err(e), Some(r)) = (r, reply.take()) {
            r.error(e.into());
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        wf: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if wf.contains(fuser::WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            if let Err(e) = self.fs.retry(|| self.fs.kill_setid_of(ino.0, &ctx(req))) {
                return reply.error(e.into());
            }
        }
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e.into()),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do on close (writes are not buffered here, locks are the kernel's):
        // ENOSYS tells the kernel never to send FLUSH again, one round trip less per close.
        reply.error(Errno::ENOSYS.into());
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.fsync(fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            // The kernel may keep the listing in its cache across opens: every change to a
            // directory goes through us, and the kernel drops the cache when it sees one.
            Ok(fh) => reply.opened(
                FileHandle(fh),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(e.into()),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let items = match self.listing(ino, fh, offset) {
            Ok(x) => x,
            Err(e) => return reply.error(e.into()),
        };
        for it in items.iter() {
            if reply.add(INodeNo(it.ino), it.next, it.kind, it.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let items = match self.listing(ino, fh, offset) {
            Ok(x) => x,
            Err(e) => return reply.error(e.into()),
        };
        for it in items.iter() {
            let full = if it.dot {
                // The kernel takes no reference for `.` and `..`; their attributes are unused.
                reply.add(
                    INodeNo(it.ino),
                    it.next,
                    it.name,
                    &Duration::ZERO,
                    &blank_attr(it.ino),
                    Generation(0),
                )
            } else {
                // Each entry sent counts one lookup, as a LOOKUP would.
                let Ok((node, a)) = self.fs.lookup(ino.0, it.name) else {
                    continue;
                };
                let full = reply.add(
                    INodeNo(a.ino),
                    it.next,
                    it.name,
                    &TTL,
                    &fattr(&self.fs, &a),
                    Generation(0),
                );
                if full {
                    self.fs.forget(node.ino, 1);
                }
                full
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(e.into()),
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (name, value) = (name.to_os_string(), value.to_vec());
        let caller = ctx(req);
        self.maybe_long(ino.0, true, move |fs| {
            let r = fs.retry(|| fs.setxattr(ino.0, &name, &value, flags, &caller));
            fs.flush_invalidations(true);
            empty(reply, r);
        });
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, size, self.fs.retry(|| self.fs.getxattr(ino.0, name)));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        xattr_reply(reply, size, self.fs.retry(|| self.fs.listxattr(ino.0)));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_os_string();
        self.maybe_long(ino.0, true, move |fs| {
            let r = fs.retry(|| fs.removexattr(ino.0, &name));
            fs.flush_invalidations(true);
            empty(reply, r);
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let c = Ctx { umask, ..ctx(req) };
        let (node, a, file) =
            match self
                .fs
                .create_obj(&c, parent.0, name, NewObj::File { mode, flags })
            {
                Ok(x) => x,
                Err(e) => return reply.error(e.into()),
            };
        let Some(file) = file else {
            return reply.error(Errno::EIO.into());
        };
        let real = match node.state.read().upper.as_ref() {
            Some(u) => (u.dev, u.ino),
            None => return reply.error(Errno::EIO.into()),
        };
        let opened = Opened {
            file,
            real,
            upper: true,
            lower: None,
            write: true,
        };
        let path = match self
            .fs
            .data_path(node.ino, &opened, || Backing::open(&self.dev, &opened.file))
        {
            Ok(p) => p,
            Err(e) => return reply.error(e.into()),
        };
        let attr = fattr(&self.fs, &a);
        match open_reply(&self.fs, node.ino, opened, path) {
            (fh, fl, Some(b)) => crate::sys::fuser_backing::created(reply, &TTL, &attr, fh, fl, &b),
            (fh, fl, None) => reply.created(&TTL, &attr, Generation(0), fh, fl),
        }
    }

    // What follows answers, without the warning fuser logs for each call it does not
    // implement, the requests the kernel sends on ordinary use: `isatty()` sends an ioctl
    // on every open of a file from stdio, and that warning cost a tenth of the daemon's
    // time in a create-heavy profile.

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // File flags (chattr/lsattr); any other command gets ENOTTY.
        let r = self
            .fs
            .retry(|| self.fs.fileattr_ioctl(ino.0, cmd, in_data));
        self.fs.flush_invalidations(true);
        match r {
            Ok(out) if out.len() > out_size as usize => reply.error(Errno::EINVAL.into()),
            Ok(out) => reply.ioctl(0, &out),
            Err(e) => reply.error(e.into()),
        }
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: fuser::ReplyLock,
    ) {
        // ENOSYS: the kernel then keeps POSIX locks itself, as for a local filesystem.
        reply.error(Errno::ENOSYS.into());
    }

    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS.into());
    }

    fn bmap(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _blocksize: u32,
        _idx: u64,
        reply: fuser::ReplyBmap,
    ) {
        reply.error(Errno::ENOSYS.into());
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(reply, self.fs.fallocate(fh.0, offset, length, mode));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(e.into()),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        match self
            .fs
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e.into()),
        }
    }
}

/// Attributes for replies where the kernel reads none (negative entries, `.` and `..`).
fn blank_attr(ino: u64) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::Directory,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}
