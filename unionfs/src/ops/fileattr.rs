//! File flags (`chattr`/`lsattr`: `FS_IOC_GETFLAGS`/`SETFLAGS`, `FS_IOC_FSGETXATTR`/
//! `FSSETXATTR`) on regular files and directories, as the kernel's overlay keeps them
//! (fs/overlayfs/inode.c, copy_up.c): read from the object that shows, set on the upper
//! copy after a copy-up.
//!
//! Append-only and immutable are never set on an upper inode: they would stop the union
//! itself from naming a copy, setting its xattrs or copying children into a directory. The
//! kernel keeps them in `*.overlay.protattr` (`a`, `i`) and enforces them in its own inode;
//! here `check` enforces them, with the VFS's rules, before each change. A lower object's
//! own flags count until it is copied up, and copy-up takes them along: append-only and
//! immutable into `protattr`, sync and noatime (`OVL_COPY_FS_FLAGS_MASK`) onto the copy.

use std::os::fd::{AsFd, BorrowedFd};

use nix::fcntl::OFlag;

use crate::copyup::{ensure_upper, Data};
use crate::errno::{Errno, Result};
use crate::inode::{Inode, Real};
use crate::layer::XattrNs;
use crate::sys::fsops::{self, XPath, FSXATTR_SIZE};
use crate::union::UnionFs;

const FS_SYNC_FL: u32 = 0x08;
const FS_IMMUTABLE_FL: u32 = 0x10;
const FS_APPEND_FL: u32 = 0x20;
const FS_NOATIME_FL: u32 = 0x80;
const FS_XFLAG_IMMUTABLE: u32 = 0x08;
const FS_XFLAG_APPEND: u32 = 0x10;

/// What copy-up sets on the copy itself (`OVL_COPY_FS_FLAGS_MASK`).
const COPY_FLAGS: u32 = FS_SYNC_FL | FS_NOATIME_FL;
/// What is kept in `protattr` instead of on the upper inode.
const PROT_FLAGS: u32 = FS_APPEND_FL | FS_IMMUTABLE_FL;
const PROT_XFLAGS: u32 = FS_XFLAG_APPEND | FS_XFLAG_IMMUTABLE;

/// Append-only and immutable, as the union enforces them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prot {
    pub append: bool,
    pub immutable: bool,
}

impl Prot {
    fn from_flags(f: u32) -> Prot {
        Prot {
            append: f & FS_APPEND_FL != 0,
            immutable: f & FS_IMMUTABLE_FL != 0,
        }
    }
    fn from_xattr(v: &[u8]) -> Prot {
        Prot {
            append: v.contains(&b'a'),
            immutable: v.contains(&b'i'),
        }
    }
    fn flags(self) -> u32 {
        (if self.append { FS_APPEND_FL } else { 0 })
            | (if self.immutable { FS_IMMUTABLE_FL } else { 0 })
    }
    fn xflags(self) -> u32 {
        (if self.append { FS_XFLAG_APPEND } else { 0 })
            | (if self.immutable {
                FS_XFLAG_IMMUTABLE
            } else {
                0
            })
    }
    fn xattr(self) -> Vec<u8> {
        let mut v = Vec::new();
        if self.append {
            v.push(b'a');
        }
        if self.immutable {
            v.push(b'i');
        }
        v
    }
}

/// A change the protection flags may forbid (the VFS's `may_open`, `notify_change`,
/// `xattr_permission`, `may_delete`, `may_create`, `vfs_link`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Open for writing; `append`: with `O_APPEND` and without `O_TRUNC`.
    Write { append: bool },
    /// chmod, chown, truncate, setting given times, xattrs.
    Attr,
    /// Setting the times to now (allowed on an append-only object).
    Touch,
    /// Removing, renaming or linking the object.
    Unlink,
    /// Adding a name to a directory.
    AddEntry,
    /// Removing a name from a directory.
    RemoveEntry,
}

impl Change {
    fn allowed(self, p: Prot) -> bool {
        if p.immutable {
            return false;
        }
        if !p.append {
            return true;
        }
        matches!(
            self,
            Change::Write { append: true } | Change::Touch | Change::AddEntry
        )
    }
}

/// Flags are only served for regular files and directories, as the kernel's overlay does.
fn has_flags(inode: &Inode) -> bool {
    inode.kind == libc::S_IFREG || inode.kind == libc::S_IFDIR
}

/// An open of the real object that takes the flag ioctls.
fn open_real(real: &Real) -> Result<std::fs::File> {
    real.open(OFlag::O_RDONLY | OFlag::O_NONBLOCK)
}

/// The ioctl's answer when a filesystem keeps no flags: none.
fn no_flags(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTTY) | Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
    )
}

/// A lower object's flags; none where the filesystem keeps none, or where the daemon may
/// not open the object (without privileges, a lower file of another user's that it may
/// not read): a flag it cannot see is one the kernel's overlay, opening as the mounter,
/// would not see either.
fn lower_flags(real: &Real) -> Result<u32> {
    let f = match open_real(real) {
        Ok(f) => f,
        Err(Errno(libc::EACCES) | Errno(libc::EPERM)) => return Ok(0),
        Err(e) => return Err(e),
    };
    match fsops::get_flags(f.as_fd()) {
        Ok(flags) => Ok(flags),
        Err(e) if no_flags(&e) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

fn read_prot_xattr(ns: XattrNs, x: &XPath) -> Result<Prot> {
    match fsops::getxattr_vec(x, ns.protattr()) {
        Ok(Some(v)) => Ok(Prot::from_xattr(&v)),
        Ok(None) => Ok(Prot::default()),
        Err(e) if fsops::is_no_xattr(&e) => Ok(Prot::default()),
        Err(e) => Err(e.into()),
    }
}

/// Stores `p` in `protattr` (or removes it when empty).
fn write_prot_xattr(ns: XattrNs, x: &XPath, p: Prot) -> Result<()> {
    let v = p.xattr();
    let r = if v.is_empty() {
        match fsops::removexattr(x, ns.protattr()) {
            Err(e) if fsops::is_no_xattr(&e) => Ok(()),
            r => r,
        }
    } else {
        fsops::setxattr(x, ns.protattr(), &v, 0)
    };
    Ok(r?)
}

impl UnionFs {
    /// The protection flags in effect for a node: its upper copy's `protattr`, or the
    /// lower object's own flags while it has no copy.
    pub fn prot(&self, inode: &Inode) -> Result<Prot> {
        if !has_flags(inode) {
            return Ok(Prot::default());
        }
        let (upper, real) = {
            let st = inode.state.read();
            (st.upper.clone(), st.real().cloned())
        };
        if let Some(u) = upper {
            return read_prot_xattr(self.layers.ns, &u.xpath()?);
        }
        let Some(real) = real else {
            return Ok(Prot::default());
        };
        // statx reports both flags without an open where the filesystem can.
        if let Some(f) = fsops::statx_prot_attrs(&real.xpath()?)? {
            return Ok(Prot::from_flags(f));
        }
        Ok(Prot::from_flags(lower_flags(&real)?))
    }

    /// EPERM when the node's append-only or immutable flag forbids `change`.
    pub fn check(&self, inode: &Inode, change: Change) -> Result<()> {
        if change.allowed(self.prot(inode)?) {
            Ok(())
        } else {
            Err(Errno::EPERM)
        }
    }

    /// `vfs_rename`'s checks: the source leaves its directory, the target is replaced in
    /// its directory or a name is added there.
    pub fn check_rename(
        &self,
        parent: &Inode,
        src: &Inode,
        newparent: &Inode,
        dst: Option<&Inode>,
    ) -> Result<()> {
        self.check(parent, Change::RemoveEntry)?;
        self.check(src, Change::Unlink)?;
        match dst {
            Some(d) => {
                self.check(newparent, Change::RemoveEntry)?;
                self.check(d, Change::Unlink)
            }
            None => self.check(newparent, Change::AddEntry),
        }
    }

    /// `check` for the node of `ino`.
    pub fn check_ino(&self, ino: u64, change: Change) -> Result<()> {
        self.check(&*self.inode(ino)?, change)
    }

    /// Serves a file-flag ioctl: its output bytes, or ENOTTY for any other command.
    pub fn fileattr_ioctl(&self, ino: u64, cmd: u32, input: &[u8]) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        if !has_flags(&inode) {
            return Err(Errno(libc::ENOTTY));
        }
        match cmd {
            fsops::FS_IOC_GETFLAGS | fsops::FS_IOC32_GETFLAGS => {
                Ok(self.get_flags(&inode)?.to_le_bytes().to_vec())
            }
            fsops::FS_IOC_SETFLAGS | fsops::FS_IOC32_SETFLAGS => {
                let b = input.first_chunk::<4>().ok_or(Errno::EINVAL)?;
                self.set_flags(&inode, u32::from_le_bytes(*b))?;
                Ok(Vec::new())
            }
            fsops::FS_IOC_FSGETXATTR => Ok(self.get_fsxattr(&inode)?.to_vec()),
            fsops::FS_IOC_FSSETXATTR => {
                let b = input.first_chunk::<FSXATTR_SIZE>().ok_or(Errno::EINVAL)?;
                self.set_fsxattr(&inode, b)?;
                Ok(Vec::new())
            }
            _ => Err(Errno(libc::ENOTTY)),
        }
    }

    fn shown_real(&self, inode: &Inode) -> Result<Real> {
        inode.state.read().real().cloned().ok_or(Errno::ESTALE)
    }

    fn get_flags(&self, inode: &Inode) -> Result<u32> {
        let real = self.shown_real(inode)?;
        let f = fsops::get_flags(open_real(&real)?.as_fd())?;
        let prot = match inode.state.read().upper.is_some() {
            true => self.prot(inode)?.flags(),
            false => 0,
        };
        Ok(f | prot)
    }

    fn set_flags(&self, inode: &std::sync::Arc<Inode>, flags: u32) -> Result<()> {
        self.check_writable()?;
        let _c = crate::trace::because(crate::trace::Cause::Fileattr);
        let upper = ensure_upper(self, inode, Data::Meta)?;
        write_prot_xattr(self.layers.ns, &upper.xpath()?, Prot::from_flags(flags))?;
        fsops::set_flags(open_real(&upper)?.as_fd(), flags & !PROT_FLAGS)?;
        Ok(())
    }

    fn get_fsxattr(&self, inode: &Inode) -> Result<[u8; FSXATTR_SIZE]> {
        let real = self.shown_real(inode)?;
        let mut v = fsops::fsgetxattr(open_real(&real)?.as_fd())?;
        if inode.state.read().upper.is_some() {
            let x = xflags(&v) | self.prot(inode)?.xflags();
            v[..4].copy_from_slice(&x.to_le_bytes());
        }
        Ok(v)
    }

    fn set_fsxattr(&self, inode: &std::sync::Arc<Inode>, v: &[u8; FSXATTR_SIZE]) -> Result<()> {
        self.check_writable()?;
        let _c = crate::trace::because(crate::trace::Cause::Fileattr);
        let upper = ensure_upper(self, inode, Data::Meta)?;
        let x = xflags(v);
        let prot = Prot {
            append: x & FS_XFLAG_APPEND != 0,
            immutable: x & FS_XFLAG_IMMUTABLE != 0,
        };
        write_prot_xattr(self.layers.ns, &upper.xpath()?, prot)?;
        let mut v = *v;
        v[..4].copy_from_slice(&(x & !PROT_XFLAGS).to_le_bytes());
        fsops::fssetxattr(open_real(&upper)?.as_fd(), &v)?;
        Ok(())
    }
}

fn xflags(v: &[u8; FSXATTR_SIZE]) -> u32 {
    u32::from_le_bytes([v[0], v[1], v[2], v[3]])
}

/// Copy-up's part (`ovl_copy_fileattr`): the source's append-only and immutable flags go
/// into the copy's `protattr`, its sync and noatime flags onto the copy. `dst` is any
/// descriptor of the copy (`O_PATH` too), `dst_x` names it for xattrs.
pub fn copy_up(ns: XattrNs, src: &Real, dst: BorrowedFd<'_>, dst_x: &XPath) -> Result<()> {
    let kind = src.stat()?.st_mode & libc::S_IFMT;
    if kind != libc::S_IFREG && kind != libc::S_IFDIR {
        return Ok(());
    }
    let flags = lower_flags(src)?;
    if flags & PROT_FLAGS != 0 {
        write_prot_xattr(ns, dst_x, Prot::from_flags(flags))?;
    }
    if flags & COPY_FLAGS == 0 {
        return Ok(());
    }
    let path = fsops::proc_fd_path(dst);
    let f = std::fs::File::from(nix::fcntl::open(
        path.as_c_str(),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?);
    let cur = fsops::get_flags(f.as_fd())?;
    fsops::set_flags(f.as_fd(), (cur & !COPY_FLAGS) | (flags & COPY_FLAGS))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_only_allows_appending_touching_and_adding() {
        let a = Prot {
            append: true,
            immutable: false,
        };
        assert!(Change::Write { append: true }.allowed(a));
        assert!(!Change::Write { append: false }.allowed(a));
        assert!(Change::Touch.allowed(a));
        assert!(Change::AddEntry.allowed(a));
        assert!(!Change::RemoveEntry.allowed(a));
        assert!(!Change::Unlink.allowed(a));
        assert!(!Change::Attr.allowed(a));
    }

    #[test]
    fn immutable_allows_nothing_and_no_flags_everything() {
        let i = Prot {
            append: false,
            immutable: true,
        };
        for c in [
            Change::Write { append: true },
            Change::Attr,
            Change::Touch,
            Change::Unlink,
            Change::AddEntry,
            Change::RemoveEntry,
        ] {
            assert!(!c.allowed(i), "{c:?}");
            assert!(c.allowed(Prot::default()), "{c:?}");
        }
    }

    #[test]
    fn protattr_round_trips() {
        for (a, i) in [(false, false), (true, false), (false, true), (true, true)] {
            let p = Prot {
                append: a,
                immutable: i,
            };
            assert_eq!(Prot::from_xattr(&p.xattr()), p);
            assert_eq!(Prot::from_flags(p.flags()), p);
        }
    }
}
