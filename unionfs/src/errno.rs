//! Our error type: an errno, carried through the core and turned into a FUSE reply once.

use std::fmt;
use std::io;

/// An errno value. The core returns `Result<T>` and never sees a reply object.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

pub type Result<T> = std::result::Result<T, Errno>;

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const EXDEV: Errno = Errno(libc::EXDEV);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENOTSUP: Errno = Errno(libc::EOPNOTSUPP);
    pub const ENOSYS: Errno = Errno(libc::ENOSYS);
    pub const ESTALE: Errno = Errno(libc::ESTALE);
    pub const EOVERFLOW: Errno = Errno(libc::EOVERFLOW);
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", nix::errno::Errno::from_raw(self.0))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", nix::errno::Errno::from_raw(self.0).desc())
    }
}

impl std::error::Error for Errno {}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<nix::errno::Errno> for Errno {
    fn from(e: nix::errno::Errno) -> Self {
        Errno(e as i32)
    }
}

impl From<Errno> for fuser::Errno {
    fn from(e: Errno) -> Self {
        fuser::Errno::from_i32(e.0)
    }
}

impl From<Errno> for io::Error {
    fn from(e: Errno) -> Self {
        io::Error::from_raw_os_error(e.0)
    }
}
