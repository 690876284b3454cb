//! A file registered with the kernel for FUSE passthrough: the kernel's backing id and the
//! `/dev/fuse` descriptor it belongs to. The registration ends when the last holder drops
//! it (the node's passthrough opens share one, see `ops/file.rs` `data_path`). Independent
//! of the front end: the `wire` server registers on its session descriptor, the `fuser`
//! adapter on a duplicate of fuser's.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

#[derive(Debug)]
pub struct Backing {
    id: u32,
    dev: Arc<OwnedFd>,
}

impl Backing {
    /// Registers `file` on the session of `dev` (FUSE_DEV_IOC_BACKING_OPEN).
    pub fn open(dev: &Arc<OwnedFd>, file: impl AsFd) -> std::io::Result<Backing> {
        let id = crate::sys::fuse_dev::backing_open(dev.as_fd(), file.as_fd())?;
        Ok(Backing {
            id,
            dev: Arc::clone(dev),
        })
    }

    /// The id an OPEN or CREATE reply names.
    pub fn id(&self) -> u32 {
        self.id
    }
}

impl Drop for Backing {
    fn drop(&mut self) {
        // After an unmount the session is gone and with it every id: nothing to close.
        if let Err(e) = crate::sys::fuse_dev::backing_close(self.dev.as_fd(), self.id) {
            log::debug!("closing backing id {}: {e}", self.id);
        }
    }
}
