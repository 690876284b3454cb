//! Request bytes to a typed `Op`: one variant per opcode we serve, fields read at the
//! kernel's offsets (`abi`) with bounds checks. A request too short for what its opcode
//! carries, or a name without its terminating NUL, is `EINVAL`; nothing here panics.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::errno::{Errno, Result};
use crate::wire::abi::{self, fattr, off, opcode, size};

/// Reads native-endian integers at offsets of a byte slice; out of bounds is `EINVAL`.
#[derive(Clone, Copy)]
pub struct Bytes<'a>(pub &'a [u8]);

impl<'a> Bytes<'a> {
    fn array<const N: usize>(self, at: usize) -> Result<[u8; N]> {
        let end = at.checked_add(N).ok_or(Errno::EINVAL)?;
        self.0
            .get(at..end)
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or(Errno::EINVAL)
    }
    pub fn u16(self, at: usize) -> Result<u16> {
        self.array(at).map(u16::from_ne_bytes)
    }
    pub fn u32(self, at: usize) -> Result<u32> {
        self.array(at).map(u32::from_ne_bytes)
    }
    pub fn i32(self, at: usize) -> Result<i32> {
        self.array(at).map(i32::from_ne_bytes)
    }
    pub fn u64(self, at: usize) -> Result<u64> {
        self.array(at).map(u64::from_ne_bytes)
    }
    pub fn i64(self, at: usize) -> Result<i64> {
        self.array(at).map(i64::from_ne_bytes)
    }
    /// `len` bytes from `at`.
    pub fn slice(self, at: usize, len: usize) -> Result<&'a [u8]> {
        let end = at.checked_add(len).ok_or(Errno::EINVAL)?;
        self.0.get(at..end).ok_or(Errno::EINVAL)
    }
    /// A NUL-terminated name at the start, and what follows its NUL.
    pub fn name(self) -> Result<(&'a OsStr, Bytes<'a>)> {
        let nul = self.0.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
        let name = self.0.get(..nul).ok_or(Errno::EINVAL)?;
        let after = self.0.get(nul + 1..).ok_or(Errno::EINVAL)?;
        Ok((OsStr::from_bytes(name), Bytes(after)))
    }
}

/// `struct fuse_in_header`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub total_extlen: u16,
}

impl Header {
    pub fn parse(b: &[u8]) -> Result<Header> {
        if b.len() < size::IN_HEADER {
            return Err(Errno::EINVAL);
        }
        let b = Bytes(b);
        Ok(Header {
            len: b.u32(off::IN_LEN)?,
            opcode: b.u32(off::IN_OPCODE)?,
            unique: b.u64(off::IN_UNIQUE)?,
            nodeid: b.u64(off::IN_NODEID)?,
            uid: b.u32(off::IN_UID)?,
            gid: b.u32(off::IN_GID)?,
            pid: b.u32(off::IN_PID)?,
            total_extlen: b.u16(off::IN_TOTAL_EXTLEN)?,
        })
    }
}

/// A time in a SETATTR: `None` when not set, `Now` for `FATTR_*TIME_NOW`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Time {
    Now,
    At(i64, u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetattrIn {
    pub valid: u32,
    pub fh: Option<u64>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    /// `flags`, with `flags2` in the high half when FUSE_INIT_EXT is set.
    pub flags: u64,
}

/// One decoded request.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    Lookup {
        name: &'a OsStr,
    },
    Forget {
        nlookup: u64,
    },
    BatchForget {
        nodes: Vec<(u64, u64)>,
    },
    Getattr {
        fh: Option<u64>,
    },
    Setattr(SetattrIn),
    Readlink,
    Symlink {
        name: &'a OsStr,
        target: &'a OsStr,
    },
    Mknod {
        mode: u32,
        rdev: u32,
        umask: u32,
        name: &'a OsStr,
    },
    Mkdir {
        mode: u32,
        umask: u32,
        name: &'a OsStr,
    },
    Unlink {
        name: &'a OsStr,
    },
    Rmdir {
        name: &'a OsStr,
    },
    Rename {
        newdir: u64,
        flags: u32,
        name: &'a OsStr,
        newname: &'a OsStr,
    },
    Link {
        oldnodeid: u64,
        newname: &'a OsStr,
    },
    Open {
        flags: i32,
        open_flags: u32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Write {
        fh: u64,
        offset: u64,
        write_flags: u32,
        data: &'a [u8],
    },
    Statfs,
    Release {
        fh: u64,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    Setxattr {
        flags: i32,
        setxattr_flags: u32,
        name: &'a OsStr,
        value: &'a [u8],
    },
    Getxattr {
        size: u32,
        name: &'a OsStr,
    },
    Listxattr {
        size: u32,
    },
    Removexattr {
        name: &'a OsStr,
    },
    Flush,
    Init(InitIn),
    Opendir {
        flags: i32,
    },
    Readdir {
        fh: u64,
        offset: u64,
        size: u32,
        plus: bool,
    },
    Releasedir {
        fh: u64,
    },
    Fsyncdir,
    Getlk,
    Setlk,
    Create {
        flags: i32,
        mode: u32,
        umask: u32,
        open_flags: u32,
        name: &'a OsStr,
    },
    Interrupt,
    Bmap,
    Destroy,
    Ioctl {
        fh: u64,
        flags: u32,
        cmd: u32,
        in_data: &'a [u8],
        out_size: u32,
    },
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    },
    Lseek {
        fh: u64,
        offset: i64,
        whence: i32,
    },
    CopyFileRange {
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    },
    /// An opcode we do not serve (ENOSYS).
    Unknown(u32),
}

/// Bytes of the fixed argument struct of `op` (0 if none); `setxattr_ext`: whether
/// FUSE_SETXATTR_EXT was granted (the larger `fuse_setxattr_in`).
pub fn fixed_size(op: u32, setxattr_ext: bool) -> usize {
    match op {
        opcode::FORGET => size::FORGET_IN,
        opcode::BATCH_FORGET => size::BATCH_FORGET_IN,
        opcode::GETATTR => size::GETATTR_IN,
        opcode::SETATTR => size::SETATTR_IN,
        opcode::MKNOD => size::MKNOD_IN,
        opcode::MKDIR => size::MKDIR_IN,
        opcode::RENAME => size::RENAME_IN,
        opcode::RENAME2 => size::RENAME2_IN,
        opcode::LINK => size::LINK_IN,
        opcode::OPEN | opcode::OPENDIR => size::OPEN_IN,
        opcode::CREATE | opcode::TMPFILE => size::CREATE_IN,
        opcode::READ | opcode::READDIR | opcode::READDIRPLUS => size::READ_IN,
        opcode::WRITE => size::WRITE_IN,
        opcode::RELEASE | opcode::RELEASEDIR => size::RELEASE_IN,
        opcode::FLUSH => size::FLUSH_IN,
        opcode::FSYNC | opcode::FSYNCDIR => size::FSYNC_IN,
        opcode::SETXATTR if setxattr_ext => size::SETXATTR_IN,
        opcode::SETXATTR => size::SETXATTR_IN_COMPAT,
        opcode::GETXATTR | opcode::LISTXATTR => size::GETXATTR_IN,
        opcode::GETLK | opcode::SETLK | opcode::SETLKW => size::LK_IN,
        opcode::ACCESS => size::ACCESS_IN,
        opcode::INIT => size::INIT_IN,
        opcode::INTERRUPT => size::INTERRUPT_IN,
        opcode::BMAP => size::BMAP_IN,
        opcode::IOCTL => size::IOCTL_IN,
        opcode::POLL => size::POLL_IN,
        opcode::FALLOCATE => size::FALLOCATE_IN,
        opcode::LSEEK => size::LSEEK_IN,
        opcode::COPY_FILE_RANGE => size::COPY_FILE_RANGE_IN,
        opcode::SYNCFS => size::SYNCFS_IN,
        opcode::NOTIFY_REPLY => size::NOTIFY_RETRIEVE_IN,
        _ => 0,
    }
}

fn time(valid: u32, set: u32, now: u32, sec: u64, nsec: u32) -> Option<Time> {
    if valid & set == 0 {
        None
    } else if valid & now != 0 {
        Some(Time::Now)
    } else {
        // The kernel sends a `time64_t` in the u64 field.
        Some(Time::At(sec as i64, nsec))
    }
}

/// Decodes the request with header `h`, fixed argument struct `fixed` and the rest.
pub fn decode<'a>(h: &Header, fixed: &'a [u8], rest: &'a [u8]) -> Result<Op<'a>> {
    // The whole struct, as the kernel sends it for the protocol we speak; only INIT and
    // SETXATTR come in a short form too (older kernels, no FUSE_SETXATTR_EXT).
    let need = match h.opcode {
        opcode::INIT => size::INIT_IN_COMPAT,
        other => fixed_size(other, false),
    };
    if fixed.len() < need {
        return Err(Errno::EINVAL);
    }
    let f = Bytes(fixed);
    let r = Bytes(rest);
    let name = || r.name().map(|(n, _)| n);
    Ok(match h.opcode {
        opcode::LOOKUP => Op::Lookup { name: name()? },
        opcode::FORGET => Op::Forget { nlookup: f.u64(0)? },
        opcode::BATCH_FORGET => {
            let count = f.u32(0)? as usize;
            // Never trust the count for an allocation: the entries must be there.
            let list = r.slice(0, count.checked_mul(size::FORGET_ONE).ok_or(Errno::EINVAL)?)?;
            let nodes = list
                .chunks_exact(size::FORGET_ONE)
                .map(|c| Ok((Bytes(c).u64(0)?, Bytes(c).u64(8)?)))
                .collect::<Result<Vec<_>>>()?;
            Op::BatchForget { nodes }
        }
        opcode::GETATTR => {
            let flags = f.u32(0)?;
            let fh = f.u64(8)?;
            Op::Getattr {
                fh: (flags & abi::GETATTR_FH != 0).then_some(fh),
            }
        }
        opcode::SETATTR => {
            let valid = f.u32(off::SETATTR_VALID)?;
            let when = |bit: u32, v: u32| (valid & bit != 0).then_some(v);
            Op::Setattr(SetattrIn {
                valid,
                fh: (valid & fattr::FH != 0)
                    .then(|| f.u64(off::SETATTR_FH))
                    .transpose()?,
                size: (valid & fattr::SIZE != 0)
                    .then(|| f.u64(off::SETATTR_SIZE))
                    .transpose()?,
                atime: time(
                    valid,
                    fattr::ATIME,
                    fattr::ATIME_NOW,
                    f.u64(off::SETATTR_ATIME)?,
                    f.u32(off::SETATTR_ATIMENSEC)?,
                ),
                mtime: time(
                    valid,
                    fattr::MTIME,
                    fattr::MTIME_NOW,
                    f.u64(off::SETATTR_MTIME)?,
                    f.u32(off::SETATTR_MTIMENSEC)?,
                ),
                mode: when(fattr::MODE, f.u32(off::SETATTR_MODE)?),
                uid: when(fattr::UID, f.u32(off::SETATTR_UID)?),
                gid: when(fattr::GID, f.u32(off::SETATTR_GID)?),
            })
        }
        opcode::READLINK => Op::Readlink,
        opcode::SYMLINK => {
            let (name, after) = r.name()?;
            let (target, _) = after.name()?;
            Op::Symlink { name, target }
        }
        opcode::MKNOD => Op::Mknod {
            mode: f.u32(0)?,
            rdev: f.u32(4)?,
            umask: f.u32(8)?,
            name: name()?,
        },
        opcode::MKDIR => Op::Mkdir {
            mode: f.u32(0)?,
            umask: f.u32(4)?,
            name: name()?,
        },
        opcode::UNLINK => Op::Unlink { name: name()? },
        opcode::RMDIR => Op::Rmdir { name: name()? },
        opcode::RENAME | opcode::RENAME2 => {
            let (name, after) = r.name()?;
            let (newname, _) = after.name()?;
            Op::Rename {
                newdir: f.u64(0)?,
                flags: if h.opcode == opcode::RENAME2 {
                    f.u32(8)?
                } else {
                    0
                },
                name,
                newname,
            }
        }
        opcode::LINK => Op::Link {
            oldnodeid: f.u64(0)?,
            newname: name()?,
        },
        opcode::OPEN => Op::Open {
            flags: f.i32(0)?,
            open_flags: f.u32(4)?,
        },
        opcode::READ => Op::Read {
            fh: f.u64(off::RW_FH)?,
            offset: f.u64(off::RW_OFFSET)?,
            size: f.u32(off::RW_SIZE)?,
        },
        opcode::WRITE => {
            let size = f.u32(off::RW_SIZE)?;
            Op::Write {
                fh: f.u64(off::RW_FH)?,
                offset: f.u64(off::RW_OFFSET)?,
                write_flags: f.u32(off::RW_FLAGS)?,
                data: r.slice(0, size as usize)?,
            }
        }
        opcode::STATFS => Op::Statfs,
        opcode::RELEASE => Op::Release { fh: f.u64(0)? },
        opcode::FSYNC => Op::Fsync {
            fh: f.u64(0)?,
            datasync: f.u32(8)? & abi::FSYNC_FDATASYNC != 0,
        },
        opcode::SETXATTR => {
            let size = f.u32(0)? as usize;
            let flags = f.i32(4)?;
            // Only the extended struct (FUSE_SETXATTR_EXT) carries these flags.
            let setxattr_flags = if fixed.len() >= size::SETXATTR_IN {
                f.u32(8)?
            } else {
                0
            };
            let (name, after) = r.name()?;
            Op::Setxattr {
                flags,
                setxattr_flags,
                name,
                value: after.slice(0, size)?,
            }
        }
        opcode::GETXATTR => Op::Getxattr {
            size: f.u32(0)?,
            name: name()?,
        },
        opcode::LISTXATTR => Op::Listxattr { size: f.u32(0)? },
        opcode::REMOVEXATTR => Op::Removexattr { name: name()? },
        opcode::FLUSH => Op::Flush,
        opcode::INIT => {
            let flags = u64::from(f.u32(off::INIT_IN_FLAGS)?);
            let high = if flags & abi::init::INIT_EXT != 0 {
                u64::from(f.u32(off::INIT_IN_FLAGS2)?) << 32
            } else {
                0
            };
            Op::Init(InitIn {
                major: f.u32(off::INIT_IN_MAJOR)?,
                minor: f.u32(off::INIT_IN_MINOR)?,
                max_readahead: f.u32(off::INIT_IN_MAX_READAHEAD)?,
                flags: flags | high,
            })
        }
        opcode::OPENDIR => Op::Opendir { flags: f.i32(0)? },
        opcode::READDIR | opcode::READDIRPLUS => Op::Readdir {
            fh: f.u64(off::RW_FH)?,
            offset: f.u64(off::RW_OFFSET)?,
            size: f.u32(off::RW_SIZE)?,
            plus: h.opcode == opcode::READDIRPLUS,
        },
        opcode::RELEASEDIR => Op::Releasedir { fh: f.u64(0)? },
        opcode::FSYNCDIR => Op::Fsyncdir,
        opcode::GETLK => Op::Getlk,
        opcode::SETLK | opcode::SETLKW => Op::Setlk,
        opcode::CREATE => Op::Create {
            flags: f.i32(0)?,
            mode: f.u32(4)?,
            umask: f.u32(8)?,
            open_flags: f.u32(12)?,
            name: name()?,
        },
        opcode::INTERRUPT => Op::Interrupt,
        opcode::BMAP => Op::Bmap,
        opcode::DESTROY => Op::Destroy,
        opcode::IOCTL => {
            let in_size = f.u32(24)? as usize;
            Op::Ioctl {
                fh: f.u64(0)?,
                flags: f.u32(8)?,
                cmd: f.u32(12)?,
                in_data: r.slice(0, in_size)?,
                out_size: f.u32(28)?,
            }
        }
        opcode::FALLOCATE => Op::Fallocate {
            fh: f.u64(0)?,
            offset: f.u64(8)?,
            length: f.u64(16)?,
            mode: f.i32(24)?,
        },
        opcode::LSEEK => Op::Lseek {
            fh: f.u64(0)?,
            offset: f.i64(8)?,
            whence: f.i32(16)?,
        },
        opcode::COPY_FILE_RANGE => Op::CopyFileRange {
            fh_in: f.u64(off::CFR_FH_IN)?,
            off_in: f.u64(off::CFR_OFF_IN)?,
            fh_out: f.u64(off::CFR_FH_OUT)?,
            off_out: f.u64(off::CFR_OFF_OUT)?,
            len: f.u64(off::CFR_LEN)?,
        },
        other => Op::Unknown(other),
    })
}

impl std::fmt::Display for Op<'_> {
    /// One line for `-d` logs, in fuser's words (`LOOKUP name "x"`, `READ fh 3, offset 0,
    /// size 4096`); data is shown by its length only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Op::Lookup { name } => write!(f, "LOOKUP name {name:?}"),
            Op::Forget { nlookup } => write!(f, "FORGET nlookup {nlookup}"),
            Op::BatchForget { nodes } => write!(f, "BATCH_FORGET {} nodes", nodes.len()),
            Op::Getattr { fh } => write!(f, "GETATTR fh {fh:?}"),
            Op::Setattr(s) => write!(f, "SETATTR {s:?}"),
            Op::Readlink => write!(f, "READLINK"),
            Op::Symlink { name, target } => write!(f, "SYMLINK name {name:?}, target {target:?}"),
            Op::Mknod { mode, rdev, umask, name } => {
                write!(f, "MKNOD name {name:?}, mode {mode:#o}, rdev {rdev}, umask {umask:#o}")
            }
            Op::Mkdir { mode, umask, name } => {
                write!(f, "MKDIR name {name:?}, mode {mode:#o}, umask {umask:#o}")
            }
            Op::Unlink { name } => write!(f, "UNLINK name {name:?}"),
            Op::Rmdir { name } => write!(f, "RMDIR name {name:?}"),
            Op::Rename { newdir, flags, name, newname } => write!(
                f,
                "RENAME name {name:?}, newdir {newdir:#x}, newname {newname:?}, flags {flags:#x}"
            ),
            Op::Link { oldnodeid, newname } => {
                write!(f, "LINK ino {oldnodeid:#x}, newname {newname:?}")
            }
            Op::Open { flags, open_flags } => {
                write!(f, "OPEN flags {flags:#x}, open_flags {open_flags:#x}")
            }
            Op::Read { fh, offset, size } => {
                write!(f, "READ fh {fh}, offset {offset}, size {size}")
            }
            Op::Write { fh, offset, write_flags, data } => write!(
                f,
                "WRITE fh {fh}, offset {offset}, size {}, write_flags {write_flags:#x}",
                data.len()
            ),
            Op::Statfs => write!(f, "STATFS"),
            Op::Release { fh } => write!(f, "RELEASE fh {fh}"),
            Op::Fsync { fh, datasync } => write!(f, "FSYNC fh {fh}, datasync {datasync}"),
            Op::Setxattr { flags, setxattr_flags, name, value } => write!(
                f,
                "SETXATTR name {name:?}, size {}, flags {flags:#x}, setxattr_flags {setxattr_flags:#x}",
                value.len()
            ),
            Op::Getxattr { size, name } => write!(f, "GETXATTR name {name:?}, size {size}"),
            Op::Listxattr { size } => write!(f, "LISTXATTR size {size}"),
            Op::Removexattr { name } => write!(f, "REMOVEXATTR name {name:?}"),
            Op::Flush => write!(f, "FLUSH"),
            Op::Init(i) => write!(f, "INIT {}.{}, flags {:#x}", i.major, i.minor, i.flags),
            Op::Opendir { flags } => write!(f, "OPENDIR flags {flags:#x}"),
            Op::Readdir { fh, offset, size, plus } => write!(
                f,
                "{} fh {fh}, offset {offset}, size {size}",
                if *plus { "READDIRPLUS" } else { "READDIR" }
            ),
            Op::Releasedir { fh } => write!(f, "RELEASEDIR fh {fh}"),
            Op::Fsyncdir => write!(f, "FSYNCDIR"),
            Op::Getlk => write!(f, "GETLK"),
            Op::Setlk => write!(f, "SETLK"),
            Op::Create { flags, mode, umask, name, .. } => write!(
                f,
                "CREATE name {name:?}, mode {mode:#o}, flags {flags:#x}, umask {umask:#o}"
            ),
            Op::Interrupt => write!(f, "INTERRUPT"),
            Op::Bmap => write!(f, "BMAP"),
            Op::Destroy => write!(f, "DESTROY"),
            Op::Ioctl { fh, cmd, in_data, out_size, .. } => write!(
                f,
                "IOCTL fh {fh}, cmd {cmd:#x}, in {}, out {out_size}",
                in_data.len()
            ),
            Op::Fallocate { fh, offset, length, mode } => write!(
                f,
                "FALLOCATE fh {fh}, offset {offset}, length {length}, mode {mode:#x}"
            ),
            Op::Lseek { fh, offset, whence } => {
                write!(f, "LSEEK fh {fh}, offset {offset}, whence {whence}")
            }
            Op::CopyFileRange { fh_in, off_in, fh_out, off_out, len } => write!(
                f,
                "COPY_FILE_RANGE fh_in {fh_in}, off_in {off_in}, fh_out {fh_out}, off_out {off_out}, len {len}"
            ),
            Op::Unknown(op) => write!(f, "opcode {op} (not served)"),
        }
    }
}
