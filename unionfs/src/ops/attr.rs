//! getattr and setattr (chmod, chown, truncate, utimes), which copy up first.

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::copyup::{ensure_upper, reopen, Data};
use crate::errno::{Errno, Result};
use crate::union::{Attr, UnionFs};

/// A time to set: a given one or the current time.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    Now,
    At(TimeSpec),
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    pub fh: Option<u64>,
}

fn spec(t: Option<SetTime>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(SetTime::Now) => TimeSpec::UTIME_NOW,
        Some(SetTime::At(ts)) => ts,
    }
}

impl UnionFs {
    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let inode = self.inode(ino)?;
        self.attr_of(&inode)
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        use std::os::unix::ffi::OsStringExt;
        let inode = self.inode(ino)?;
        let real = inode.state.read().real().cloned().ok_or(Errno::ESTALE)?;
        Ok(nix::fcntl::readlinkat(real.fd(), "")?.into_vec())
    }

    pub fn setattr(&self, ino: u64, a: SetAttr) -> Result<Attr> {
        self.check_writable()?;
        let inode = self.inode(ino)?;
        let data = if a.size == Some(0) {
            Data::Skip
        } else {
            Data::Copy
        };
        let upper = ensure_upper(self, &inode, data)?;
        let fd = upper.fd();
        if let Some(size) = a.size {
            let handle = a.fh.and_then(|fh| self.handles.file(fh));
            match handle {
                Some(h) => h.file.set_len(size)?,
                None => reopen(fd, OFlag::O_WRONLY)?.set_len(size)?,
            }
        }
        if a.uid.is_some() || a.gid.is_some() {
            nix::unistd::fchownat(
                fd,
                "",
                a.uid.map(Uid::from_raw),
                a.gid.map(Gid::from_raw),
                AtFlags::AT_EMPTY_PATH,
            )?;
        }
        if let Some(mode) = a.mode {
            if inode.kind == libc::S_IFLNK {
                return Err(Errno::ENOTSUP);
            }
            let path = crate::sys::fsops::proc_fd_path(fd);
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                path.as_c_str(),
                Mode::from_bits_truncate(mode & 0o7777),
                FchmodatFlags::FollowSymlink,
            )?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            let (at, mt) = (spec(a.atime), spec(a.mtime));
            if inode.kind == libc::S_IFLNK {
                // A symlink is reached through its parent: a path through the magic link
                // would not stop at the link.
                let (parent, name) = {
                    let st = inode.state.read();
                    (st.parent, st.name.clone())
                };
                let p = self.inode(parent)?;
                let pu = p.state.read().upper.clone().ok_or(Errno::EIO)?;
                nix::sys::stat::utimensat(
                    pu.fd(),
                    name.as_os_str(),
                    &at,
                    &mt,
                    UtimensatFlags::NoFollowSymlink,
                )?;
            } else {
                let path = crate::sys::fsops::proc_fd_path(fd);
                nix::sys::stat::utimensat(
                    nix::fcntl::AT_FDCWD,
                    path.as_c_str(),
                    &at,
                    &mt,
                    UtimensatFlags::FollowSymlink,
                )?;
            }
        }
        self.attr_of(&inode)
    }
}
