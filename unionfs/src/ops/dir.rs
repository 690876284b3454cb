//! Open directories: the merged listing, taken once per open and on rewind.

use std::sync::Arc;

use crate::errno::{Errno, Result};
use crate::inode::Inode;
use crate::readdir::Entry;
use crate::union::UnionFs;

impl UnionFs {
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let inode = self.inode(ino)?;
        if !inode.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(self.handles.add_dir(ino))
    }

    /// The listing of an open directory; offset 0 (a first read or a rewind) takes it anew.
    pub fn dir_entries(&self, fh: u64, offset: u64) -> Result<Arc<Vec<Entry>>> {
        let h = self.handles.dir(fh).ok_or(Errno::EBADF)?;
        let mut cached = h.entries.lock();
        if offset == 0 || cached.is_none() {
            let inode = self.inode(h.ino)?;
            let (list, origins) = crate::readdir::merged(&self.layers, &inode.state.read())?;
            self.drop_needless_impure(&inode, origins);
            *cached = Some(Arc::new(list));
        }
        cached.clone().ok_or(Errno::EIO)
    }

    /// A directory of the upper layer only, marked impure, none of whose entries has an
    /// origin: the kernel's readdir takes the chance to drop the marker (best effort), so
    /// both leave the same upper.
    fn drop_needless_impure(&self, inode: &Inode, origins: bool) {
        if origins || self.layers.read_only() {
            return;
        }
        let mut st = inode.state.write();
        if !st.impure || !st.lowers.is_empty() {
            return;
        }
        if let Some(u) = &st.upper {
            let removed = u
                .xpath()
                .is_ok_and(|x| crate::sys::fsops::removexattr(&x, self.layers.ns.impure()).is_ok());
            if removed {
                st.impure = false;
            }
        }
    }

    /// The inode numbers of `.` and `..` in a listing.
    pub fn dot_inos(&self, ino: u64) -> Result<(u64, u64)> {
        let inode = self.inode(ino)?;
        let this = self.attr_of(&inode)?.ino;
        let parent = inode.state.read().parent;
        let up = if parent == ino {
            this
        } else {
            self.attr_of(&*self.inode(parent)?)?.ino
        };
        Ok((this, up))
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.remove_dir(fh);
    }

    pub fn statfs(&self) -> Result<nix::sys::statvfs::Statvfs> {
        let fd = match &self.layers.upper {
            Some(u) => u.fd(),
            None => self.layers.lowers.first().ok_or(Errno::EIO)?.fd(),
        };
        // fstatvfs does not take O_PATH descriptors; the magic link path does.
        let path = crate::sys::fsops::proc_fd_path(fd);
        Ok(nix::sys::statvfs::statvfs(path.as_c_str())?)
    }
}
