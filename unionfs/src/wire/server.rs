//! `Server`: the union core (`UnionFs`) behind the `Handler` seam. Each request is decoded
//! (`request`), served by the same core call the `fuser` adapter (`fs.rs`) makes, with the
//! same TTLs, negative entries, listing offsets, lookup counts, offloading and retries,
//! and answered (`reply`). Unlike fuser it passes the kernel's set-id kill flags on to the
//! core (`Ctx::fsetid`, `Ctx::acl_kill_sgid`).

use std::ffi::OsStr;
use std::io::IoSlice;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backing::Backing;
use crate::errno::{Errno, Result};
use crate::ops::attr::{SetAttr, SetTime};
use crate::ops::file::{DataPath, Opened};
use crate::ops::namei::NewObj;
use crate::union::{Attr, Ctx, UnionFs};
use crate::wire::abi::{self, fopen, init, opcode};
use crate::wire::reply::{self, DirBuf, FuseAttr};
use crate::wire::request::{self, Header, InitIn, Op, SetattrIn, Time};
use crate::wire::{Handler, RawRequest, Responder};

/// As in `fs.rs`: all changes go through us, so names, attributes and misses are cached
/// for long.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// Workers for requests that may copy up a large file (see `offload`).
const LONG_WORKERS: usize = 8;

/// The largest write we take, and the request pages to match (1 MiB, the kernel's
/// default page limit of 256 pages).
const MAX_WRITE: u32 = 1 << 20;
const MAX_PAGES: u16 = 256;
const PAGE_SIZE: usize = 4096;

/// Who may use the mount besides what the kernel checks (fuser's `SessionACL`): with
/// `allow_root` the kernel lets everyone in (`allow_other`) and the daemon refuses all but
/// root and the owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    All,
    RootAndOwner(u32),
    Owner(u32),
}

/// How a `Server` is set up.
pub struct ServerOptions {
    /// The session's `/dev/fuse` descriptor, on which passthrough backing files are
    /// registered; `None`: no passthrough.
    pub dev: Option<Arc<OwnedFd>>,
    /// Ask for FUSE_OVER_IO_URING when the kernel offers it.
    pub want_uring: bool,
    pub access: Access,
}

pub struct Server {
    fs: Arc<UnionFs>,
    long: crate::offload::Pool,
    dev: Option<Arc<OwnedFd>>,
    want_uring: bool,
    access: Access,
    /// What INIT granted (`init::*` bits), set before INIT is answered.
    granted: AtomicU64,
    max_payload: AtomicUsize,
    initialized: AtomicBool,
}

/// One request's way back. Dropped without an answer (a path that forgot to reply, or a
/// panic in the core) it answers EIO: a request never answered would hang its caller in
/// the kernel for good. FORGET and BATCH_FORGET are let go with `no_reply`.
pub struct Reply {
    unique: u64,
    out: Option<Box<dyn Responder>>,
}

impl Reply {
    pub fn new(unique: u64, out: Box<dyn Responder>) -> Reply {
        Reply {
            unique,
            out: Some(out),
        }
    }
    fn send(mut self, error: i32, body: &[IoSlice<'_>]) {
        if let Some(out) = self.out.take() {
            out.respond(self.unique, error, body);
        }
    }
    fn error(self, e: Errno) {
        // A reply with an errno out of range would be refused by the kernel and leave the
        // caller waiting: such a value is a bug of ours, and EIO says so.
        let e = if (1..4096).contains(&e.0) {
            e.0
        } else {
            libc::EIO
        };
        self.send(-e, &[]);
    }
    fn slices(self, body: &[IoSlice<'_>]) {
        self.send(0, body);
    }
    fn ok(self, body: &[u8]) {
        self.slices(&[IoSlice::new(body)]);
    }
    fn empty(self, r: Result<()>) {
        match r {
            Ok(()) => self.ok(&[]),
            Err(e) => self.error(e),
        }
    }
    /// For the requests the kernel expects no answer to.
    fn no_reply(mut self) {
        self.out.take();
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(out) = self.out.take() {
            log::error!("request {} left unanswered: EIO", self.unique);
            out.respond(self.unique, -libc::EIO, &[]);
        }
    }
}

fn ctx(h: &Header) -> Ctx {
    Ctx {
        uid: h.uid,
        gid: h.gid,
        pid: h.pid,
        ..Ctx::default()
    }
}

/// The attributes the kernel gets, owners as the union shows them (`idmap`).
fn fattr(fs: &UnionFs, a: &Attr) -> FuseAttr {
    let (uid, gid) = fs.config.idmap.shown(a.uid, a.gid);
    FuseAttr {
        ino: a.ino,
        size: a.size,
        blocks: a.blocks,
        atime: reply::time(a.atime),
        mtime: reply::time(a.mtime),
        ctime: reply::time(a.ctime),
        mode: a.mode & (libc::S_IFMT | 0o7777),
        nlink: a.nlink,
        uid,
        gid,
        rdev: a.rdev,
        blksize: a.blksize,
    }
}

/// Attributes where the kernel reads none (negative entries, `.` and `..`).
fn blank_attr(ino: u64) -> FuseAttr {
    FuseAttr {
        ino,
        mode: libc::S_IFDIR,
        ..FuseAttr::default()
    }
}

fn entry(fs: &UnionFs, reply: Reply, r: Result<Attr>) {
    match r {
        Ok(a) => reply.ok(&reply::entry_out(a.ino, &fattr(fs, &a), TTL, TTL).0),
        Err(e) => reply.error(e),
    }
}

fn attr_reply(fs: &UnionFs, reply: Reply, r: Result<Attr>) {
    match r {
        Ok(a) => reply.ok(&reply::attr_out(&fattr(fs, &a), TTL).0),
        Err(e) => reply.error(e),
    }
}

fn xattr_reply(reply: Reply, size: u32, r: Result<Vec<u8>>) {
    match r {
        Ok(v) if size == 0 => match u32::try_from(v.len()) {
            Ok(n) => reply.ok(&reply::xattr_size(n).0),
            Err(_) => reply.error(Errno(libc::E2BIG)),
        },
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.ok(&v),
        Err(e) => reply.error(e),
    }
}

fn settime(t: Option<Time>) -> Option<SetTime> {
    t.map(|t| match t {
        Time::Now => SetTime::Now,
        Time::At(sec, nsec) => SetTime::At(nix::sys::time::TimeSpec::new(sec, i64::from(nsec))),
    })
}

fn dtype_of(t: nix::dir::Type) -> u32 {
    use nix::dir::Type;
    let mode = match t {
        Type::Directory => libc::S_IFDIR,
        Type::Symlink => libc::S_IFLNK,
        Type::Fifo => libc::S_IFIFO,
        Type::Socket => libc::S_IFSOCK,
        Type::CharacterDevice => libc::S_IFCHR,
        Type::BlockDevice => libc::S_IFBLK,
        Type::File => libc::S_IFREG,
    };
    mode >> 12
}

/// The open flags and backing id an open reply carries for a data path.
fn reply_flags(path: &DataPath) -> (u32, u32) {
    match path {
        DataPath::Passthrough(b) => (fopen::PASSTHROUGH, b.id()),
        DataPath::Direct(b) => (fopen::PASSTHROUGH | fopen::DIRECT_IO, b.id()),
        // Every change goes through us, so cached pages stay valid across opens.
        DataPath::Cached => (fopen::KEEP_CACHE, 0),
    }
}

/// Requests the kernel may send on behalf of no particular user (fuser's list).
fn exempt_from_access(op: u32) -> bool {
    matches!(
        op,
        opcode::INIT
            | opcode::DESTROY
            | opcode::READ
            | opcode::READDIR
            | opcode::READDIRPLUS
            | opcode::FORGET
            | opcode::BATCH_FORGET
            | opcode::WRITE
            | opcode::FSYNC
            | opcode::FSYNCDIR
            | opcode::RELEASE
            | opcode::RELEASEDIR
            | opcode::INTERRUPT
    )
}

impl Server {
    pub fn new(fs: UnionFs, opts: ServerOptions) -> Server {
        Server {
            fs: Arc::new(fs),
            long: crate::offload::Pool::new(LONG_WORKERS),
            dev: opts.dev,
            want_uring: opts.want_uring,
            access: opts.access,
            granted: AtomicU64::new(0),
            max_payload: AtomicUsize::new(0),
            initialized: AtomicBool::new(false),
        }
    }

    pub fn fs(&self) -> &Arc<UnionFs> {
        &self.fs
    }

    fn granted(&self, flag: u64) -> bool {
        self.granted.load(Ordering::Acquire) & flag != 0
    }

    fn allowed(&self, h: &Header) -> bool {
        match self.access {
            Access::All => true,
            Access::RootAndOwner(owner) => h.uid == owner || h.uid == 0,
            Access::Owner(owner) => h.uid == owner,
        }
    }

    /// Runs a request on node `ino` that may copy it up: on a worker when that may take
    /// long, here otherwise (see `fs.rs`).
    fn maybe_long(&self, ino: u64, may_copy_up: bool, job: impl FnOnce(&UnionFs) + Send + 'static) {
        self.long.run_maybe_long(&self.fs, ino, may_copy_up, job);
    }

    fn init(&self, i: InitIn, reply: Reply) {
        if i.major > abi::KERNEL_VERSION {
            // The kernel then sends INIT again with our major version.
            let out = reply::InitOut {
                major: abi::KERNEL_VERSION,
                minor: abi::KERNEL_MINOR_VERSION,
                ..reply::InitOut::default()
            };
            return reply.ok(&reply::init_out(&out).0);
        }
        if i.major < abi::KERNEL_VERSION || i.minor < 6 {
            log::error!("unsupported FUSE protocol {}.{}", i.major, i.minor);
            return reply.error(Errno(libc::EPROTO));
        }
        let offered = i.flags;
        // A capability the kernel lacks only costs speed.
        let mut want = init::ASYNC_READ
            | init::BIG_WRITES
            | init::MAX_PAGES
            | init::DO_READDIRPLUS
            | init::READDIRPLUS_AUTO
            | init::PARALLEL_DIROPS
            | init::CACHE_SYMLINKS
            // Not ATOMIC_O_TRUNC: it races with appends (issue 14, `UnionFs::open_file`);
            // an O_TRUNC open's truncation then comes as a SETATTR, kill flag included.
            | init::HANDLE_KILLPRIV_V2
            | init::HAS_IOCTL_DIR
            | init::SETXATTR_EXT
            | init::INIT_EXT;
        // The kernel enforces POSIX ACLs from the `system.posix_acl_*` xattrs we return,
        // and leaves the umask to us (`DONT_MASK`), as in `fs.rs`.
        if !self.fs.config.noacl {
            if offered & init::POSIX_ACL != 0 {
                want |= init::POSIX_ACL | init::DONT_MASK;
            } else {
                log::warn!("the kernel does not offer FUSE_POSIX_ACL: POSIX ACLs are not enforced");
            }
        }
        let mut max_stack_depth = 0;
        if self.fs.passthrough_on() {
            if offered & init::PASSTHROUGH != 0 && self.dev.is_some() {
                want |= init::PASSTHROUGH;
                // Our backing files are on the layers, not on a stacked filesystem; the
                // union itself may be a layer of one more level (an overlay on top).
                max_stack_depth = 1;
            } else {
                log::warn!(
                    "the kernel does not offer FUSE passthrough; data goes through the daemon"
                );
                self.fs.disable_passthrough();
            }
        }
        if self.want_uring && offered & init::OVER_IO_URING != 0 {
            want |= init::OVER_IO_URING;
        }
        let granted = want & offered;
        let out = reply::InitOut {
            major: abi::KERNEL_VERSION,
            minor: abi::KERNEL_MINOR_VERSION,
            max_readahead: i.max_readahead,
            flags: granted,
            max_background: 16,
            congestion_threshold: 12,
            max_write: MAX_WRITE,
            time_gran: 1,
            max_pages: MAX_PAGES,
            max_stack_depth,
        };
        let payload = 8192
            .max(MAX_WRITE as usize)
            .max(usize::from(MAX_PAGES) * PAGE_SIZE);
        // Before the reply: requests that depend on it (SETXATTR's size) may follow at
        // once, on other threads.
        self.max_payload.store(payload, Ordering::Release);
        self.granted.store(granted, Ordering::Release);
        log::debug!(
            "INIT: kernel {}.{}, offered {offered:#x}, granted {granted:#x}",
            i.major,
            i.minor
        );
        let bytes = reply::init_out(&out);
        // Kernels before 7.23 read the short form.
        let len = if i.minor < 23 { 24 } else { bytes.0.len() };
        reply.ok(bytes.0.get(..len).unwrap_or(&bytes.0));
        self.initialized.store(true, Ordering::Release);
    }

    fn dispatch(&self, h: &Header, op: Op<'_>, reply: Reply) {
        let ino = h.nodeid;
        let fs = &*self.fs;
        match op {
            // Only once (as fuser): a second INIT would renegotiate under live requests.
            Op::Init(_) if self.initialized() => reply.error(Errno::EIO),
            Op::Init(i) => self.init(i, reply),
            Op::Destroy => reply.ok(&[]),
            // Interrupts are not acted upon (as fuser): ENOSYS tells the kernel to send
            // no more.
            Op::Interrupt => reply.error(Errno::ENOSYS),
            Op::Lookup { name } => match fs.lookup(ino, name) {
                Ok((_, a)) => reply.ok(&reply::entry_out(a.ino, &fattr(fs, &a), TTL, TTL).0),
                // A negative entry (node id 0) with a TTL: the kernel caches the miss.
                Err(Errno(libc::ENOENT)) => {
                    reply.ok(&reply::entry_out(0, &blank_attr(0), TTL, TTL).0)
                }
                Err(e) => reply.error(e),
            },
            Op::Forget { nlookup } => {
                reply.no_reply();
                fs.forget(ino, nlookup);
            }
            Op::BatchForget { nodes } => {
                reply.no_reply();
                for (node, n) in nodes {
                    fs.forget(node, n);
                }
            }
            Op::Getattr { fh } => attr_reply(fs, reply, fs.retry(|| fs.getattr(ino, fh))),
            Op::Setattr(s) => self.setattr(h, s, reply),
            Op::Readlink => match fs.retry(|| fs.readlink(ino)) {
                Ok(t) => reply.ok(&t),
                Err(e) => reply.error(e),
            },
            Op::Mknod {
                mode,
                rdev,
                umask,
                name,
            } => self.create_entry(h, name, NewObj::Node { mode, rdev }, umask, reply),
            Op::Mkdir { mode, umask, name } => {
                self.create_entry(h, name, NewObj::Dir { mode }, umask, reply)
            }
            Op::Symlink { name, target } => {
                self.create_entry(h, name, NewObj::Symlink { target }, 0, reply)
            }
            Op::Unlink { name } => reply.empty(fs.unlink(ino, name)),
            Op::Rmdir { name } => reply.empty(fs.rmdir(ino, name)),
            Op::Rename {
                newdir,
                flags,
                name,
                newname,
            } => {
                reply.empty(fs.rename(ino, name, newdir, newname, flags));
                fs.flush_invalidations(false);
            }
            Op::Link { oldnodeid, newname } => {
                entry(
                    fs,
                    reply,
                    fs.retry(|| fs.link(oldnodeid, ino, newname))
                        .map(|(_, a)| a),
                );
                fs.flush_invalidations(false);
            }
            Op::Open { flags, open_flags } => self.open(h, flags, open_flags, reply),
            Op::Read { fh, offset, size } => {
                let mut reply = Some(reply);
                let r = fs.read(fh, offset, size, |d| {
                    if let Some(r) = reply.take() {
                        r.ok(d);
                    }
                });
                if let (Err(e), Some(r)) = (r, reply.take()) {
                    r.error(e);
                }
            }
            Op::Write {
                fh,
                offset,
                write_flags,
                data,
            } => {
                if write_flags & abi::WRITE_KILL_SUIDGID != 0 {
                    // The kernel sets the flag for a caller without CAP_FSETID.
                    let caller = Ctx {
                        fsetid: Some(false),
                        ..ctx(h)
                    };
                    if let Err(e) = fs.retry(|| fs.kill_setid_of(ino, &caller)) {
                        return reply.error(e);
                    }
                }
                match fs.write(fh, offset, data) {
                    Ok(n) => reply.ok(&reply::write_out(n).0),
                    Err(e) => reply.error(e),
                }
            }
            // Nothing to do on close: ENOSYS tells the kernel never to send FLUSH again.
            Op::Flush => reply.error(Errno::ENOSYS),
            Op::Release { fh } => {
                fs.release(fh);
                reply.ok(&[]);
            }
            Op::Fsync { fh, datasync } => reply.empty(fs.fsync(fh, datasync)),
            Op::Opendir { .. } => match fs.opendir(ino) {
                // The kernel may keep the listing cached across opens (see `fs.rs`).
                Ok(fh) => reply.ok(&reply::open_out(fh, fopen::CACHE_DIR | fopen::KEEP_CACHE, 0).0),
                Err(e) => reply.error(e),
            },
            Op::Readdir {
                fh,
                offset,
                size,
                plus,
            } => self.readdir(ino, fh, offset, size as usize, plus, reply),
            Op::Releasedir { fh } => {
                fs.releasedir(fh);
                reply.ok(&[]);
            }
            Op::Fsyncdir => reply.ok(&[]),
            Op::Statfs => match fs.statfs() {
                Ok(s) => reply.ok(&reply::statfs_out(&reply::Statfs {
                    blocks: s.blocks(),
                    bfree: s.blocks_free(),
                    bavail: s.blocks_available(),
                    files: s.files(),
                    ffree: s.files_free(),
                    bsize: s.block_size() as u32,
                    namelen: s.name_max() as u32,
                    frsize: s.fragment_size() as u32,
                })
                .0),
                Err(e) => reply.error(e),
            },
            Op::Setxattr {
                flags,
                setxattr_flags,
                name,
                value,
            } => {
                let (name, value) = (name.to_os_string(), value.to_vec());
                let mut caller = ctx(h);
                // With FUSE_SETXATTR_EXT and POSIX ACLs the kernel judges an access ACL's
                // set-group-id kill itself and says so.
                if self.granted(init::SETXATTR_EXT) && self.granted(init::POSIX_ACL) {
                    caller.acl_kill_sgid = Some(setxattr_flags & abi::SETXATTR_ACL_KILL_SGID != 0);
                }
                self.maybe_long(ino, true, move |fs| {
                    let r = fs.retry(|| fs.setxattr(ino, &name, &value, flags, &caller));
                    fs.flush_invalidations(true);
                    reply.empty(r);
                });
            }
            Op::Getxattr { size, name } => {
                xattr_reply(reply, size, fs.retry(|| fs.getxattr(ino, name)))
            }
            Op::Listxattr { size } => xattr_reply(reply, size, fs.retry(|| fs.listxattr(ino))),
            Op::Removexattr { name } => {
                let name = name.to_os_string();
                self.maybe_long(ino, true, move |fs| {
                    let r = fs.retry(|| fs.removexattr(ino, &name));
                    fs.flush_invalidations(true);
                    reply.empty(r);
                });
            }
            Op::Create {
                flags,
                mode,
                umask,
                name,
                ..
            } => self.create(h, name, mode, umask, flags, reply),
            Op::Ioctl {
                in_data,
                cmd,
                out_size,
                ..
            } => {
                // File flags (chattr/lsattr); any other command gets ENOTTY.
                let r = fs.retry(|| fs.fileattr_ioctl(ino, cmd, in_data));
                fs.flush_invalidations(true);
                match r {
                    Ok(out) if out.len() > out_size as usize => reply.error(Errno::EINVAL),
                    Ok(out) => {
                        reply.slices(&[IoSlice::new(&reply::ioctl_out(0).0), IoSlice::new(&out)])
                    }
                    Err(e) => reply.error(e),
                }
            }
            // ENOSYS: the kernel then keeps POSIX locks itself, as for a local filesystem.
            Op::Getlk | Op::Setlk | Op::Bmap => reply.error(Errno::ENOSYS),
            Op::Fallocate {
                fh,
                offset,
                length,
                mode,
            } => reply.empty(fs.fallocate(fh, offset, length, mode)),
            Op::Lseek { fh, offset, whence } => match fs.lseek(fh, offset, whence) {
                Ok(o) => reply.ok(&reply::lseek_out(o).0),
                Err(e) => reply.error(e),
            },
            Op::CopyFileRange {
                fh_in,
                off_in,
                fh_out,
                off_out,
                len,
            } => match fs.copy_file_range(fh_in, off_in, fh_out, off_out, len) {
                Ok(n) => reply.ok(&reply::write_out(n).0),
                Err(e) => reply.error(e),
            },
            Op::Unknown(_) => reply.error(Errno::ENOSYS),
        }
    }

    fn create_entry(&self, h: &Header, name: &OsStr, obj: NewObj<'_>, umask: u32, reply: Reply) {
        let c = Ctx { umask, ..ctx(h) };
        let r = self
            .fs
            .create_obj(&c, h.nodeid, name, obj)
            .map(|(_, a, _)| a);
        entry(&self.fs, reply, r);
    }

    fn setattr(&self, h: &Header, s: SetattrIn, reply: Reply) {
        let mut caller = ctx(h);
        // A truncate's kill flag says whether the caller has CAP_FSETID; with a chown the
        // kernel sets it whoever calls, so then it says nothing.
        if s.size.is_some()
            && s.uid.is_none()
            && s.gid.is_none()
            && self.granted(init::HANDLE_KILLPRIV_V2)
        {
            caller.fsetid = Some(s.valid & abi::fattr::KILL_SUIDGID == 0);
        }
        let a = SetAttr {
            mode: s.mode,
            uid: s.uid,
            gid: s.gid,
            size: s.size,
            atime: settime(s.atime),
            mtime: settime(s.mtime),
            fh: s.fh,
            caller,
        };
        let ino = h.nodeid;
        self.maybe_long(ino, true, move |fs| {
            let r = fs.retry(|| fs.setattr(ino, a));
            fs.flush_invalidations(true);
            attr_reply(fs, reply, r);
        });
    }

    fn open(&self, h: &Header, flags: i32, open_flags: u32, reply: Reply) {
        let mut caller = ctx(h);
        if flags & libc::O_TRUNC != 0 && self.granted(init::HANDLE_KILLPRIV_V2) {
            caller.fsetid = Some(open_flags & abi::OPEN_KILL_SUIDGID == 0);
        }
        let ino = h.nodeid;
        let write = crate::ops::file::wants_write(flags);
        let dev = self.dev.clone();
        self.maybe_long(ino, write, move |fs| {
            let opened = fs.retry(|| fs.open_file(ino, flags, &caller));
            fs.flush_invalidations(true);
            let opened = match opened {
                Ok(o) => o,
                Err(e) => return reply.error(e),
            };
            let path = fs.data_path(ino, &opened, || {
                let dev = dev
                    .as_ref()
                    .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EPERM))?;
                match fs.backing_file(&opened)? {
                    Some(f) => Backing::open(dev, &f),
                    None => Backing::open(dev, &opened.file),
                }
            });
            let path = match path {
                Ok(p) => p,
                Err(e) => return reply.error(e),
            };
            let (fl, id) = reply_flags(&path);
            let fh = fs.add_handle(ino, opened, &path);
            reply.ok(&reply::open_out(fh, fl, id).0);
        });
    }

    fn create(&self, h: &Header, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: Reply) {
        let fs = &*self.fs;
        let c = Ctx { umask, ..ctx(h) };
        let (node, a, file) = match fs.create_obj(&c, h.nodeid, name, NewObj::File { mode, flags })
        {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let Some(file) = file else {
            return reply.error(Errno::EIO);
        };
        let real = match node.state.read().upper.as_ref() {
            Some(u) => (u.dev, u.ino),
            None => return reply.error(Errno::EIO),
        };
        let opened = Opened {
            file,
            real,
            upper: true,
            lower: None,
            write: true,
        };
        let path = fs.data_path(node.ino, &opened, || match &self.dev {
            Some(dev) => Backing::open(dev, &opened.file),
            None => Err(std::io::Error::from_raw_os_error(libc::EPERM)),
        });
        let path = match path {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let (fl, id) = reply_flags(&path);
        let fh = fs.add_handle(node.ino, opened, &path);
        let e = reply::entry_out(a.ino, &fattr(fs, &a), TTL, TTL);
        let o = reply::open_out(fh, fl, id);
        reply.slices(&[IoSlice::new(&e.0), IoSlice::new(&o.0)]);
    }

    /// READDIR and READDIRPLUS from `offset` on, `.` and `..` first (offsets 1 and 2 are
    /// after them, entry i continues at i + 3), as `fs.rs` lists.
    fn readdir(&self, ino: u64, fh: u64, offset: u64, size: usize, plus: bool, reply: Reply) {
        let fs = &*self.fs;
        let listing = fs
            .dir_entries(fh, offset)
            .and_then(|e| Ok((e, fs.dot_inos(ino)?)));
        let (entries, (dot, dotdot)) = match listing {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let mut buf = DirBuf::new(size);
        let dots = [(dot, "."), (dotdot, "..")]
            .into_iter()
            .enumerate()
            .map(|(i, (ino, name))| {
                (
                    ino,
                    i as u64 + 1,
                    libc::S_IFDIR >> 12,
                    OsStr::new(name),
                    true,
                )
            });
        let rest = entries.iter().enumerate().map(|(i, e)| {
            (
                e.ino,
                i as u64 + 3,
                dtype_of(e.dtype),
                e.name.as_os_str(),
                false,
            )
        });
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (eino, next, dtype, name, dot) in dots.chain(rest).skip(skip) {
            let added = if !plus {
                buf.push(eino, next, dtype, name)
            } else if dot {
                // The kernel takes no reference for `.` and `..`; their attributes are
                // unused.
                buf.push_plus(eino, &blank_attr(eino), Duration::ZERO, next, name)
            } else {
                // Each entry sent counts one lookup, as a LOOKUP would.
                let Ok((node, a)) = fs.lookup(ino, name) else {
                    continue;
                };
                let added = buf.push_plus(a.ino, &fattr(fs, &a), TTL, next, name);
                if !added {
                    fs.forget(node.ino, 1);
                }
                added
            };
            if !added {
                break;
            }
        }
        reply.ok(buf.bytes());
    }
}

impl Handler for Server {
    fn fixed_size(&self, opcode: u32) -> usize {
        request::fixed_size(opcode, self.granted(init::SETXATTR_EXT))
    }

    fn handle(&self, req: RawRequest<'_>, out: Box<dyn Responder>) {
        let h = match Header::parse(req.header) {
            Ok(h) => h,
            Err(_) => {
                // No unique to answer to; the kernel never sends this.
                log::error!(
                    "request with a short header ({} bytes) dropped",
                    req.header.len()
                );
                return;
            }
        };
        let no_reply = matches!(h.opcode, opcode::FORGET | opcode::BATCH_FORGET);
        let reply = Reply::new(h.unique, out);
        if !exempt_from_access(h.opcode) && !self.allowed(&h) {
            return reply.error(Errno(libc::EACCES));
        }
        match request::decode(&h, req.fixed, req.rest) {
            Ok(op) => {
                log::debug!("FUSE({}) ino {:#018x} {op}", h.unique, h.nodeid);
                self.dispatch(&h, op, reply)
            }
            Err(e) if !no_reply => {
                log::warn!(
                    "malformed request {} (opcode {}): {e:?}",
                    h.unique,
                    h.opcode
                );
                reply.error(e);
            }
            Err(_) => {
                reply.no_reply();
                log::warn!("malformed FORGET dropped");
            }
        }
    }

    fn uring_granted(&self) -> bool {
        self.granted(init::OVER_IO_URING)
    }

    fn max_payload(&self) -> usize {
        self.max_payload.load(Ordering::Acquire)
    }

    fn initialized(&self) -> bool {
        self.initialized.load(Ordering::Acquire)
    }
}
