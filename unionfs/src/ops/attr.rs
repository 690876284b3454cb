//! getattr and setattr (chmod, chown, truncate, utimes), which copy up first.

use nix::fcntl::OFlag;
use nix::sys::time::TimeSpec;

use crate::copyup::{ensure_upper, Data};
use crate::errno::{Errno, Result};
use crate::inode::Real;
use crate::killpriv::{self, Cause};
use crate::ops::fileattr::Change;
use crate::union::{Attr, Ctx, UnionFs};

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
    /// Whose request it is (the set-id rules depend on it, see `killpriv`).
    pub caller: crate::union::Ctx,
}

impl SetAttr {
    /// Nothing to set: what the kernel sends when it wants the set-id bits cleared.
    fn is_empty(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.atime.is_none()
            && self.mtime.is_none()
    }
}

fn spec(t: Option<SetTime>) -> TimeSpec {
    match t {
        None => TimeSpec::UTIME_OMIT,
        Some(SetTime::Now) => TimeSpec::UTIME_NOW,
        Some(SetTime::At(ts)) => ts,
    }
}

impl UnionFs {
    /// Attributes of a node; through the open handle the kernel names when the node's own
    /// object cannot be reached.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> Result<Attr> {
        let inode = self.inode(ino)?;
        match self.attr_of(&inode) {
            Err(e) if fh.is_some() => {
                let h = fh.and_then(|fh| self.handles.file(fh)).ok_or(e)?;
                let st = nix::sys::stat::fstat(&*h.file.read())?;
                Ok(Attr::from_stat(inode.ino, &st, false))
            }
            r => r,
        }
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        use std::os::unix::ffi::OsStringExt;
        let inode = self.inode(ino)?;
        let real = inode.state.read().real().cloned().ok_or(Errno::ESTALE)?;
        Ok(real.readlink()?.into_vec())
    }

    pub fn setattr(&self, ino: u64, a: SetAttr) -> Result<Attr> {
        self.check_writable()?;
        crate::testhook::pause("setattr");
        let inode = self.inode(ino)?;
        // Append-only and immutable (see `fileattr`): setting the times to now is the only
        // change an append-only object takes.
        let at = |t: Option<SetTime>| matches!(t, Some(SetTime::At(_)));
        let attrs = a.mode.is_some() || a.uid.is_some() || a.gid.is_some() || a.size.is_some();
        if attrs || at(a.atime) || at(a.mtime) {
            self.check(&inode, Change::Attr)?;
        } else if a.atime.is_some() || a.mtime.is_some() {
            self.check(&inode, Change::Touch)?;
        }
        // Owners as the layers store them; an id no mapping covers cannot be stored (and
        // is refused before anything is copied up).
        let idmap = &self.config.idmap;
        let stored_uid = a.uid.map(|u| idmap.stored_uid(u)).transpose()?;
        let stored_gid = a.gid.map(|g| idmap.stored_gid(g)).transpose()?;
        let data = match a.size {
            Some(0) => Data::Skip,
            Some(_) => Data::Copy,
            None => Data::Meta,
        };
        let _c = crate::trace::because(if a.size.is_some() {
            crate::trace::Cause::Truncate
        } else if a.mode.is_some() {
            crate::trace::Cause::Chmod
        } else if a.uid.is_some() || a.gid.is_some() {
            crate::trace::Cause::Chown
        } else {
            crate::trace::Cause::Utimes
        });
        let upper = ensure_upper(self, &inode, data)?;
        if a.is_empty() {
            self.kill_setid(&upper, &a.caller, Cause::Signalled)?;
        } else if a.size.is_some() && a.mode.is_none() {
            self.kill_setid(&upper, &a.caller, Cause::Write)?;
        }
        if let Some(size) = a.size {
            let handle = a.fh.and_then(|fh| self.handles.file(fh));
            match handle {
                Some(h) => h.file.read().set_len(size)?,
                None => upper.open(OFlag::O_WRONLY)?.set_len(size)?,
            }
        }
        if a.uid.is_some() || a.gid.is_some() {
            upper.chown(stored_uid, stored_gid)?;
        }
        if let Some(mode) = a.mode {
            if inode.kind == libc::S_IFLNK {
                return Err(Errno::ENOTSUP);
            }
            upper.chmod(mode)?;
        }
        if a.atime.is_some() || a.mtime.is_some() {
            upper.utimens(&spec(a.atime), &spec(a.mtime))?;
        }
        self.attr_of(&inode)
    }

    /// Clears the set-id bits of an upper object as the kernel's rules say for this caller
    /// and cause (see `killpriv`).
    pub fn kill_setid(&self, upper: &Real, caller: &Ctx, cause: Cause) -> Result<()> {
        let st = upper.stat()?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(());
        }
        let gid = self.config.idmap.shown(st.st_uid, st.st_gid).1;
        let clear = killpriv::bits_to_clear(st.st_mode, gid, caller, cause);
        if clear != 0 {
            upper.chmod(st.st_mode & 0o7777 & !clear)?;
        }
        Ok(())
    }

    /// `kill_setid` for the node of an open file (a write the kernel flagged).
    pub fn kill_setid_of(&self, ino: u64, caller: &Ctx) -> Result<()> {
        let inode = self.inode(ino)?;
        let upper = inode.state.read().upper.clone();
        match upper {
            Some(u) => self.kill_setid(&u, caller, Cause::Write),
            None => Ok(()),
        }
    }
}
