//! The `/dev/fuse` ioctls: cloning a session's descriptor (one per request thread) and
//! registering backing files for FUSE passthrough (include/uapi/linux/fuse.h).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

const FUSE_DEV_IOC_MAGIC: u8 = 229;

/// `struct fuse_backing_map`: the file to register (`fd`), no flags.
#[repr(C)]
struct BackingMap {
    fd: i32,
    flags: u32,
    padding: u64,
}

nix::ioctl_read!(ioc_clone, FUSE_DEV_IOC_MAGIC, 0, u32);
nix::ioctl_write_ptr!(ioc_backing_open, FUSE_DEV_IOC_MAGIC, 1, BackingMap);
nix::ioctl_write_ptr!(ioc_backing_close, FUSE_DEV_IOC_MAGIC, 2, u32);

/// A new `/dev/fuse` descriptor attached to the session of `dev`: requests are then read
/// from it by its own thread, and its replies go back through it.
pub fn clone_fd(dev: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let new: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?
        .into();
    let mut src =
        u32::try_from(dev.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: FUSE_DEV_IOC_CLONE reads one u32 (the source descriptor) from the pointer,
    // which points to `src`; `new` is an open /dev/fuse descriptor.
    unsafe { ioc_clone(new.as_raw_fd(), &mut src) }?;
    Ok(new)
}

/// Registers `file` as a backing file of the session of `dev`; the kernel's id for it.
pub fn backing_open(dev: BorrowedFd<'_>, file: BorrowedFd<'_>) -> io::Result<u32> {
    let map = BackingMap {
        fd: file.as_raw_fd(),
        flags: 0,
        padding: 0,
    };
    // SAFETY: FUSE_DEV_IOC_BACKING_OPEN reads a `struct fuse_backing_map` (16 bytes, the
    // layout of `BackingMap`) from the pointer, which points to `map`.
    let id = unsafe { ioc_backing_open(dev.as_raw_fd(), &map) }?;
    u32::try_from(id).map_err(|_| io::Error::from_raw_os_error(libc::EIO))
}

/// Unregisters a backing id of the session of `dev`.
pub fn backing_close(dev: BorrowedFd<'_>, id: u32) -> io::Result<()> {
    // SAFETY: FUSE_DEV_IOC_BACKING_CLOSE reads one u32 (the id) from the pointer, which
    // points to `id`.
    unsafe { ioc_backing_close(dev.as_raw_fd(), &id) }?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn backing_map_is_the_kernels_size() {
        assert_eq!(std::mem::size_of::<super::BackingMap>(), 16);
    }
}
