//! Typed replies to bytes: the reply structs at the kernel's offsets (`abi`), native byte
//! order, and directory listings packed as the kernel reads them (each record padded to
//! 8 bytes, never beyond the size the request allows).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::wire::abi::{off, rec_align, size};

/// A reply struct being written: fixed size, zeroed, fields put at their offsets.
pub struct Out<const N: usize>(pub [u8; N]);

impl<const N: usize> Out<N> {
    pub fn new() -> Self {
        Out([0; N])
    }
    fn put<const M: usize>(&mut self, at: usize, v: [u8; M]) {
        // Offsets are constants of `abi` held to the struct sizes by the unit tests; a
        // wrong one would drop the field rather than panic.
        if let Some(dst) = self.0.get_mut(at..at + M) {
            dst.copy_from_slice(&v);
        }
    }
    pub fn u16(&mut self, at: usize, v: u16) -> &mut Self {
        self.put(at, v.to_ne_bytes());
        self
    }
    pub fn u32(&mut self, at: usize, v: u32) -> &mut Self {
        self.put(at, v.to_ne_bytes());
        self
    }
    pub fn i32(&mut self, at: usize, v: i32) -> &mut Self {
        self.put(at, v.to_ne_bytes());
        self
    }
    pub fn u64(&mut self, at: usize, v: u64) -> &mut Self {
        self.put(at, v.to_ne_bytes());
        self
    }
    pub fn i64(&mut self, at: usize, v: i64) -> &mut Self {
        self.put(at, v.to_ne_bytes());
        self
    }
    /// Another struct's bytes at `at`.
    pub fn bytes(&mut self, at: usize, v: &[u8]) -> &mut Self {
        if let Some(dst) = self.0.get_mut(at..at + v.len()) {
            dst.copy_from_slice(v);
        }
        self
    }
}

impl<const N: usize> Default for Out<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds (negative before 1970) and nanoseconds as `struct fuse_attr` carries them.
pub fn time(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 {
                (-secs, 0)
            } else {
                (-secs - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

/// `struct fuse_attr`'s values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuseAttr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    /// Type and permission bits.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

impl FuseAttr {
    pub fn encode(&self) -> Out<{ size::ATTR }> {
        let mut o = Out::new();
        o.u64(off::ATTR_INO, self.ino)
            .u64(off::ATTR_SIZE, self.size)
            .u64(off::ATTR_BLOCKS, self.blocks)
            .i64(off::ATTR_ATIME, self.atime.0)
            .i64(off::ATTR_MTIME, self.mtime.0)
            .i64(off::ATTR_CTIME, self.ctime.0)
            .u32(off::ATTR_ATIMENSEC, self.atime.1)
            .u32(off::ATTR_MTIMENSEC, self.mtime.1)
            .u32(off::ATTR_CTIMENSEC, self.ctime.1)
            .u32(off::ATTR_MODE, self.mode)
            .u32(off::ATTR_NLINK, self.nlink)
            .u32(off::ATTR_UID, self.uid)
            .u32(off::ATTR_GID, self.gid)
            .u32(off::ATTR_RDEV, self.rdev)
            .u32(off::ATTR_BLKSIZE, self.blksize);
        o
    }
}

/// `struct fuse_entry_out`: `nodeid` 0 is a negative entry the kernel caches for `ttl`.
pub fn entry_out(
    nodeid: u64,
    attr: &FuseAttr,
    entry_ttl: Duration,
    attr_ttl: Duration,
) -> Out<{ size::ENTRY_OUT }> {
    let mut o = Out::new();
    o.u64(off::ENTRY_NODEID, nodeid)
        .u64(off::ENTRY_GENERATION, 0)
        .u64(off::ENTRY_VALID, entry_ttl.as_secs())
        .u64(off::ENTRY_ATTR_VALID, attr_ttl.as_secs())
        .u32(off::ENTRY_VALID_NSEC, entry_ttl.subsec_nanos())
        .u32(off::ENTRY_ATTR_VALID_NSEC, attr_ttl.subsec_nanos())
        .bytes(off::ENTRY_ATTR, &attr.encode().0);
    o
}

/// `struct fuse_attr_out`.
pub fn attr_out(attr: &FuseAttr, ttl: Duration) -> Out<{ size::ATTR_OUT }> {
    let mut o = Out::new();
    o.u64(0, ttl.as_secs())
        .u32(8, ttl.subsec_nanos())
        .bytes(16, &attr.encode().0);
    o
}

/// `struct fuse_open_out`; `backing_id` 0 unless `FOPEN_PASSTHROUGH`.
pub fn open_out(fh: u64, flags: u32, backing_id: u32) -> Out<{ size::OPEN_OUT }> {
    let mut o = Out::new();
    o.u64(off::OPEN_OUT_FH, fh)
        .u32(off::OPEN_OUT_FLAGS, flags)
        .u32(off::OPEN_OUT_BACKING_ID, backing_id);
    o
}

/// `struct fuse_write_out` (also COPY_FILE_RANGE's reply).
pub fn write_out(written: u32) -> Out<{ size::WRITE_OUT }> {
    let mut o = Out::new();
    o.u32(0, written);
    o
}

/// `struct fuse_getxattr_out`: the size a GETXATTR or LISTXATTR with size 0 asks for.
pub fn xattr_size(n: u32) -> Out<{ size::GETXATTR_OUT }> {
    let mut o = Out::new();
    o.u32(0, n);
    o
}

/// `struct fuse_lseek_out`.
pub fn lseek_out(offset: i64) -> Out<{ size::LSEEK_OUT }> {
    let mut o = Out::new();
    o.i64(0, offset);
    o
}

/// `struct fuse_lk_out` (a `fuse_file_lock`).
pub fn lk_out(start: u64, end: u64, typ: u32, pid: u32) -> Out<24> {
    let mut o = Out::new();
    o.u64(0, start).u64(8, end).u32(16, typ).u32(20, pid);
    o
}

/// `struct fuse_ioctl_out` of a restricted ioctl: its result; the data follows.
pub fn ioctl_out(result: i32) -> Out<{ size::IOCTL_OUT }> {
    let mut o = Out::new();
    o.i32(0, result);
    o
}

/// `struct fuse_statfs_out`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

pub fn statfs_out(s: &Statfs) -> Out<{ size::STATFS_OUT }> {
    let mut o = Out::new();
    o.u64(off::STATFS_BLOCKS, s.blocks)
        .u64(off::STATFS_BFREE, s.bfree)
        .u64(off::STATFS_BAVAIL, s.bavail)
        .u64(off::STATFS_FILES, s.files)
        .u64(off::STATFS_FFREE, s.ffree)
        .u32(off::STATFS_BSIZE, s.bsize)
        .u32(off::STATFS_NAMELEN, s.namelen)
        .u32(off::STATFS_FRSIZE, s.frsize);
    o
}

/// `struct fuse_init_out`'s values.
#[derive(Clone, Copy, Debug, Default)]
pub struct InitOut {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    /// All 64 flag bits; the high half goes to `flags2`.
    pub flags: u64,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub time_gran: u32,
    pub max_pages: u16,
    pub max_stack_depth: u32,
}

pub fn init_out(i: &InitOut) -> Out<{ size::INIT_OUT }> {
    let mut o = Out::new();
    o.u32(off::INIT_OUT_MAJOR, i.major)
        .u32(off::INIT_OUT_MINOR, i.minor)
        .u32(off::INIT_OUT_MAX_READAHEAD, i.max_readahead)
        .u32(off::INIT_OUT_FLAGS, i.flags as u32)
        .u16(off::INIT_OUT_MAX_BACKGROUND, i.max_background)
        .u16(off::INIT_OUT_CONGESTION_THRESHOLD, i.congestion_threshold)
        .u32(off::INIT_OUT_MAX_WRITE, i.max_write)
        .u32(off::INIT_OUT_TIME_GRAN, i.time_gran)
        .u16(off::INIT_OUT_MAX_PAGES, i.max_pages)
        .u32(off::INIT_OUT_FLAGS2, (i.flags >> 32) as u32)
        .u32(off::INIT_OUT_MAX_STACK_DEPTH, i.max_stack_depth);
    o
}

/// A READDIR or READDIRPLUS reply being filled, never beyond the size the kernel asked
/// for (it refuses a longer reply).
pub struct DirBuf {
    buf: Vec<u8>,
    max: usize,
}

impl DirBuf {
    pub fn new(max: usize) -> DirBuf {
        DirBuf {
            buf: Vec::with_capacity(max.min(128 * 1024)),
            max,
        }
    }

    fn room(&self, len: usize) -> bool {
        self.buf.len() + rec_align(len) <= self.max
    }

    fn pad(&mut self) {
        self.buf.resize(rec_align(self.buf.len()), 0);
    }

    fn dirent(&mut self, ino: u64, next: u64, dtype: u32, name: &[u8]) {
        let mut d = Out::<{ size::DIRENT }>::new();
        d.u64(off::DIRENT_INO, ino)
            .u64(off::DIRENT_OFF, next)
            .u32(off::DIRENT_NAMELEN, name.len() as u32)
            .u32(off::DIRENT_TYPE, dtype);
        self.buf.extend_from_slice(&d.0);
        self.buf.extend_from_slice(name);
        self.pad();
    }

    /// Adds a `fuse_dirent`; false (and nothing added) when it does not fit. `dtype`:
    /// the `DT_*` type (mode >> 12); `next`: the offset to continue after it.
    pub fn push(&mut self, ino: u64, next: u64, dtype: u32, name: &OsStr) -> bool {
        let name = name.as_bytes();
        if !self.room(size::DIRENT + name.len()) {
            return false;
        }
        self.dirent(ino, next, dtype, name);
        true
    }

    /// Adds a `fuse_direntplus` (an entry_out, then the dirent); false when it does not
    /// fit.
    pub fn push_plus(
        &mut self,
        nodeid: u64,
        attr: &FuseAttr,
        ttl: Duration,
        next: u64,
        name: &OsStr,
    ) -> bool {
        let name = name.as_bytes();
        if !self.room(size::DIRENTPLUS + name.len()) {
            return false;
        }
        self.buf
            .extend_from_slice(&entry_out(nodeid, attr, ttl, ttl).0);
        self.dirent(attr.ino, next, attr.mode >> 12 & 0o17, name);
        true
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// `struct fuse_notify_inval_entry_out` followed by the name and its NUL.
pub fn inval_entry(parent: u64, name: &OsStr) -> Vec<u8> {
    let name = name.as_bytes();
    let mut o = Out::<{ size::NOTIFY_INVAL_ENTRY_OUT }>::new();
    o.u64(0, parent).u32(8, name.len() as u32);
    let mut v = o.0.to_vec();
    v.extend_from_slice(name);
    v.push(0);
    v
}
