//! Extended attributes. The overlay's own names (`trusted.overlay.*`, or `user.overlay.*`
//! with `userxattr`) are hidden; a name in that namespace set through the union is stored
//! escaped as `trusted.overlay.overlay.*`, as the kernel does since Linux 6.7.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::acl;
use crate::copyup::{ensure_upper, Data};
use crate::errno::{Errno, Result};
use crate::killpriv;
use crate::ops::fileattr::Change;
use crate::union::{Ctx, UnionFs};

impl UnionFs {
    /// The real name for a name seen through the union.
    fn real_xattr_name(&self, name: &OsStr) -> OsString {
        let prefix = self.layers.ns.prefix().as_bytes();
        let b = name.as_bytes();
        if let Some(rest) = b.strip_prefix(prefix) {
            let mut v = prefix.to_vec();
            v.extend_from_slice(b"overlay.");
            v.extend_from_slice(rest);
            OsString::from_vec(v)
        } else {
            name.to_os_string()
        }
    }

    /// The name the union shows for a real name, or None for the overlay's own.
    fn shown_xattr_name(&self, real: &[u8]) -> Option<Vec<u8>> {
        let prefix = self.layers.ns.prefix().as_bytes();
        match real.strip_prefix(prefix) {
            None => Some(real.to_vec()),
            Some(rest) => rest.strip_prefix(b"overlay.".as_slice()).map(|r| {
                let mut v = prefix.to_vec();
                v.extend_from_slice(r);
                v
            }),
        }
    }

    /// With `noacl` the ACL xattrs are not the union's to show or set.
    fn acl_hidden(&self, name: &[u8]) -> bool {
        self.config.noacl && name.starts_with(b"system.posix_acl_")
    }

    pub fn getxattr(&self, ino: u64, name: &OsStr) -> Result<Vec<u8>> {
        if self.acl_hidden(name.as_bytes()) {
            return Err(Errno::ENOTSUP);
        }
        let inode = self.inode(ino)?;
        let real = inode.state.read().real().cloned().ok_or(Errno::ESTALE)?;
        let rname = self.real_xattr_name(name);
        crate::sys::fsops::getxattr_vec(&real.xpath()?, &rname)?.ok_or(Errno::ENODATA)
    }

    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let inode = self.inode(ino)?;
        let real = inode.state.read().real().cloned().ok_or(Errno::ESTALE)?;
        let mut out = Vec::new();
        for n in crate::sys::fsops::listxattr_names(&real.xpath()?)? {
            if self.acl_hidden(&n) {
                continue;
            }
            if let Some(shown) = self.shown_xattr_name(&n) {
                out.extend_from_slice(&shown);
                out.push(0);
            }
        }
        Ok(out)
    }

    pub fn setxattr(
        &self,
        ino: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: &Ctx,
    ) -> Result<()> {
        if self.acl_hidden(name.as_bytes()) {
            return Err(Errno::ENOTSUP);
        }
        self.check_writable()?;
        let inode = self.inode(ino)?;
        self.check(&inode, Change::Attr)?;
        let _c = crate::trace::because(crate::trace::Cause::Setxattr);
        let upper = ensure_upper(self, &inode, Data::Meta)?;
        let rname = self.real_xattr_name(name);
        crate::sys::fsops::setxattr(&upper.xpath()?, &rname, value, flags)?;
        if name == acl::ACCESS {
            // The upper filesystem updated the mode from the ACL, judging the daemon; the
            // set-group-id bit goes as the kernel's `posix_acl_update_mode` says for the
            // caller: when it is neither in the group nor has CAP_FSETID.
            let st = upper.stat()?;
            if st.st_mode & libc::S_ISGID != 0
                && killpriv::acl_kills_sgid(self.config.idmap.shown(st.st_uid, st.st_gid).1, caller)
            {
                upper.chmod(st.st_mode & 0o7777 & !libc::S_ISGID)?;
            }
        }
        Ok(())
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> Result<()> {
        if self.acl_hidden(name.as_bytes()) {
            return Err(Errno::ENOTSUP);
        }
        self.check_writable()?;
        let inode = self.inode(ino)?;
        self.check(&inode, Change::Attr)?;
        let rname = self.real_xattr_name(name);
        // Removing what is not there must not copy up.
        {
            let real = inode.state.read().real().cloned().ok_or(Errno::ESTALE)?;
            if crate::sys::fsops::getxattr_vec(&real.xpath()?, &rname)?.is_none() {
                return Err(Errno::ENODATA);
            }
        }
        let _c = crate::trace::because(crate::trace::Cause::Removexattr);
        let upper = ensure_upper(self, &inode, Data::Meta)?;
        crate::sys::fsops::removexattr(&upper.xpath()?, &rname)?;
        Ok(())
    }
}
