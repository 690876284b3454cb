//! The only module allowed to use `unsafe`: thin, safe wrappers over libc
//! calls that neither std nor nix expose (xattrs, telldir/seekdir,
//! per-thread credentials, renameat2 with raw flags).
#![allow(unsafe_code)]

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

fn cpath(p: &Path) -> Result<CString, Errno> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

fn cbytes(b: &[u8]) -> Result<CString, Errno> {
    CString::new(b).map_err(|_| Errno::EINVAL)
}

/// `lgetxattr(2)`: value of xattr `name` on `path` (not following symlinks).
pub fn lgetxattr(path: &Path, name: &[u8]) -> Result<Vec<u8>, Errno> {
    let p = cpath(path)?;
    let n = cbytes(name)?;
    loop {
        // SAFETY: p and n are valid NUL-terminated strings; a NULL buffer with
        // size 0 asks only for the needed size.
        let need = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if need < 0 {
            return Err(Errno::last());
        }
        let mut buf = vec![0u8; need as usize + 1];
        // SAFETY: buf is a writable allocation of buf.len() bytes.
        let got =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = Errno::last();
            if e == Errno::ERANGE {
                continue; // value grew in between: retry
            }
            return Err(e);
        }
        buf.truncate(got as usize);
        return Ok(buf);
    }
}

/// `llistxattr(2)`: xattr names of `path` (not following symlinks), in the
/// order the filesystem returned them.
pub fn llistxattr(path: &Path) -> Result<Vec<Vec<u8>>, Errno> {
    let p = cpath(path)?;
    loop {
        // SAFETY: p is a valid C string; NULL/0 asks for the needed size.
        let need = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        if need < 0 {
            return Err(Errno::last());
        }
        let mut buf = vec![0u8; need as usize + 1];
        // SAFETY: buf is a writable allocation of buf.len() bytes.
        let got = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = Errno::last();
            if e == Errno::ERANGE {
                continue;
            }
            return Err(e);
        }
        buf.truncate(got as usize);
        return Ok(buf
            .split(|&c| c == 0)
            .filter(|s| !s.is_empty())
            .map(|s| s.to_vec())
            .collect());
    }
}

/// `lsetxattr(2)` with raw `flags` (0, XATTR_CREATE or XATTR_REPLACE).
pub fn lsetxattr(path: &Path, name: &[u8], value: &[u8], flags: i32) -> Result<(), Errno> {
    let p = cpath(path)?;
    let n = cbytes(name)?;
    // SAFETY: valid C strings; value points to value.len() readable bytes.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    Errno::result(r).map(drop)
}

/// `lremovexattr(2)`.
pub fn lremovexattr(path: &Path, name: &[u8]) -> Result<(), Errno> {
    let p = cpath(path)?;
    let n = cbytes(name)?;
    // SAFETY: valid C strings.
    let r = unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) };
    Errno::result(r).map(drop)
}

/// `renameat2(2)` relative to the cwd with raw flags (so that invalid flag
/// combinations can be passed on purpose).
pub fn renameat2(old: &Path, new: &Path, flags: u32) -> Result<(), Errno> {
    let o = cpath(old)?;
    let n = cpath(new)?;
    // SAFETY: valid C strings; AT_FDCWD is a valid dirfd.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            o.as_ptr(),
            libc::AT_FDCWD,
            n.as_ptr(),
            flags,
        )
    };
    Errno::result(r).map(drop)
}

/// Changes the credentials *of the calling thread only* (raw syscalls: the
/// glibc wrappers of setgroups/setresuid broadcast to all threads, which
/// would hit the other tests running in parallel in this process).
/// Switching fsuid from 0 to non-zero drops CAP_DAC_OVERRIDE & co. from
/// the thread's effective set, so permission checks apply.
pub fn set_thread_fs_creds(uid: u32, gid: u32, groups: &[u32]) -> Result<(), Errno> {
    let gids: Vec<libc::gid_t> = groups.to_vec();
    // SAFETY: gids points to gids.len() gid_t values; the syscall only reads them.
    let r = unsafe { libc::syscall(libc::SYS_setgroups, gids.len(), gids.as_ptr()) };
    Errno::result(r)?;
    // SAFETY: setfsgid/setfsuid take plain integers and cannot fail unsafely.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, gid as libc::c_long);
        libc::syscall(libc::SYS_setfsuid, uid as libc::c_long);
    }
    // Read back: calling with -1 (invalid id) returns the current value.
    // SAFETY: as above.
    let (cu, cg) = unsafe {
        (
            libc::syscall(libc::SYS_setfsuid, -1 as libc::c_long),
            libc::syscall(libc::SYS_setfsgid, -1 as libc::c_long),
        )
    };
    if cu as u32 != uid || cg as u32 != gid {
        return Err(Errno::EPERM);
    }
    Ok(())
}

/// One `readdir(3)` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawDirent {
    pub name: Vec<u8>,
    pub ino: u64,
    pub dtype: u8,
}

/// A `DIR*` stream exposing telldir/seekdir (nix's `Dir` does not).
pub struct DirStream {
    dir: std::ptr::NonNull<libc::DIR>,
}

impl DirStream {
    pub fn open(path: &Path) -> Result<DirStream, Errno> {
        let p = cpath(path)?;
        // SAFETY: p is a valid C string.
        let d = unsafe { libc::opendir(p.as_ptr()) };
        std::ptr::NonNull::new(d)
            .map(|dir| DirStream { dir })
            .ok_or_else(Errno::last)
    }

    /// Next entry, `Ok(None)` at end of directory.
    pub fn read(&mut self) -> Result<Option<RawDirent>, Errno> {
        Errno::clear();
        // SAFETY: self.dir is a live DIR* owned by self; the returned pointer
        // is valid until the next readdir/closedir on this stream, and we
        // copy out of it before returning.
        let ent = unsafe { libc::readdir64(self.dir.as_ptr()) };
        if ent.is_null() {
            let e = Errno::last();
            return if e as i32 == 0 { Ok(None) } else { Err(e) };
        }
        // SAFETY: ent is non-null and points to a valid dirent64 whose d_name
        // is NUL-terminated.
        let (name, ino, dtype) = unsafe {
            let e = &*ent;
            let name = std::ffi::CStr::from_ptr(e.d_name.as_ptr())
                .to_bytes()
                .to_vec();
            (name, e.d_ino, e.d_type)
        };
        Ok(Some(RawDirent { name, ino, dtype }))
    }

    pub fn tell(&mut self) -> i64 {
        // SAFETY: self.dir is a live DIR*.
        unsafe { libc::telldir(self.dir.as_ptr()) as i64 }
    }

    pub fn seek(&mut self, pos: i64) {
        // SAFETY: self.dir is a live DIR*; pos came from telldir on it.
        unsafe { libc::seekdir(self.dir.as_ptr(), pos as libc::c_long) }
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        // SAFETY: self.dir is a live DIR*, closed exactly once here.
        unsafe {
            libc::closedir(self.dir.as_ptr());
        }
    }
}

/// `FS_IOC_GETFLAGS` of a regular file or directory (`lsattr`'s flags).
pub fn get_flags(path: &Path) -> Result<u32, Errno> {
    use std::os::fd::AsRawFd;
    let fd = open_for_flags(path)?;
    let mut v: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int to the pointer, which points to `v`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FS_IOC_GETFLAGS as _, &mut v) };
    Errno::result(r)?;
    Ok(v as u32)
}

/// `FS_IOC_FSGETXATTR`: the 28-byte `struct fsxattr` (xflags first, project id at 12).
pub fn fsgetxattr(path: &Path) -> Result<[u8; 28], Errno> {
    use std::os::fd::AsRawFd;
    let fd = open_for_flags(path)?;
    let mut v = [0u8; 28];
    // SAFETY: FS_IOC_FSGETXATTR (_IOR('X', 31, struct fsxattr)) writes 28 bytes to the
    // pointer, which points to a buffer of that size.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), 0x801c_581f_u32 as _, v.as_mut_ptr()) };
    Errno::result(r)?;
    Ok(v)
}

/// `FS_IOC_FSSETXATTR` with a `struct fsxattr` as `fsgetxattr` returns it.
pub fn fssetxattr(path: &Path, v: &[u8; 28]) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let fd = open_for_flags(path)?;
    // SAFETY: FS_IOC_FSSETXATTR (_IOW('X', 32, struct fsxattr)) reads 28 bytes from the
    // pointer, which points to a buffer of that size.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), 0x401c_5820_u32 as _, v.as_ptr()) };
    Errno::result(r).map(drop)
}

fn open_for_flags(path: &Path) -> Result<std::os::fd::OwnedFd, Errno> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY
            | nix::fcntl::OFlag::O_NONBLOCK
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// The UUID of the filesystem holding `path` (`FS_IOC_GETFSUUID`, asked on a descriptor
/// opened for reading), or None where the filesystem has none to give.
pub fn fs_uuid(path: &Path) -> Option<[u8; 16]> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct FsUuid2 {
        len: u8,
        uuid: [u8; 16],
    }
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let mut u = FsUuid2 {
        len: 16,
        uuid: [0; 16],
    };
    // _IOR(0x15, 0, struct fsuuid2), the struct being 17 bytes.
    const FS_IOC_GETFSUUID: u32 = (2 << 30) | (17 << 16) | (0x15 << 8);
    // SAFETY: the argument points to a live struct of the size the request encodes.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            FS_IOC_GETFSUUID as _,
            std::ptr::addr_of_mut!(u),
        )
    };
    (r == 0 && u.len == 16).then_some(u.uuid)
}
