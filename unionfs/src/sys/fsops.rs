//! Syscalls that neither std nor nix wrap: xattrs addressed through `/proc/self/fd`,
//! `name_to_handle_at`, and the clone/uuid ioctls.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The path through which an `O_PATH` descriptor's inode can be named by path-based calls.
/// The magic link leads to the inode itself, also when it is a symlink.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    // A decimal number never contains a NUL byte.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// How path-based calls (xattrs) name an object: through the magic link of a descriptor
/// (which leads to the object itself, also a symlink) or as a name inside a directory's
/// magic link (not followed when it is a symlink).
/// It keeps the descriptor it names open for as long as it lives.
pub struct XPath {
    path: CString,
    follow: bool,
    _fd: Arc<OwnedFd>,
}

impl XPath {
    pub fn fd(fd: Arc<OwnedFd>) -> XPath {
        XPath {
            path: proc_fd_path(fd.as_fd()),
            follow: true,
            _fd: fd,
        }
    }
    pub fn at(dir: Arc<OwnedFd>, name: &OsStr) -> XPath {
        let mut v = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
        v.extend_from_slice(name.as_bytes());
        XPath {
            // A name from the kernel or a directory never holds a NUL byte.
            path: CString::new(v).unwrap_or_default(),
            follow: false,
            _fd: dir,
        }
    }
}

fn ret_len(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// getxattr on the inode behind `fd`; `buf` empty asks for the size.
pub fn getxattr(x: &XPath, name: &OsStr, buf: &mut [u8]) -> io::Result<usize> {
    let name = cstr(name.as_bytes())?;
    let f = if x.follow {
        libc::getxattr
    } else {
        libc::lgetxattr
    };
    // SAFETY: both strings are NUL-terminated and live across the call; the buffer pointer
    // and length describe a valid writable slice (a zero length only asks for the size).
    let r = unsafe {
        f(
            x.path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    ret_len(r)
}

/// The whole value of an xattr, or None when the inode does not have it.
pub fn getxattr_vec(fd: &XPath, name: &OsStr) -> io::Result<Option<Vec<u8>>> {
    loop {
        let size = match getxattr(fd, name, &mut []) {
            Ok(s) => s,
            Err(e) if is_no_xattr(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; size];
        match getxattr(fd, name, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            // The value grew between the two calls: ask again.
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) if is_no_xattr(&e) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// ENODATA, or the "no xattrs here at all" answers of filesystems and special files.
pub fn is_no_xattr(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENODATA) | Some(libc::EOPNOTSUPP) | Some(libc::EPERM)
    )
}

pub fn setxattr(x: &XPath, name: &OsStr, value: &[u8], flags: i32) -> io::Result<()> {
    let name = cstr(name.as_bytes())?;
    let f = if x.follow {
        libc::setxattr
    } else {
        libc::lsetxattr
    };
    // SAFETY: NUL-terminated strings and a readable slice that outlive the call.
    let r = unsafe {
        f(
            x.path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn removexattr(x: &XPath, name: &OsStr) -> io::Result<()> {
    let name = cstr(name.as_bytes())?;
    let f = if x.follow {
        libc::removexattr
    } else {
        libc::lremovexattr
    };
    // SAFETY: NUL-terminated strings that outlive the call.
    let r = unsafe { f(x.path.as_ptr(), name.as_ptr()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// listxattr; `buf` empty asks for the size.
pub fn listxattr(x: &XPath, buf: &mut [u8]) -> io::Result<usize> {
    let f = if x.follow {
        libc::listxattr
    } else {
        libc::llistxattr
    };
    // SAFETY: NUL-terminated path; valid writable slice.
    let r = unsafe { f(x.path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    ret_len(r)
}

/// Every xattr name of the inode behind `fd`, NUL separators removed.
pub fn listxattr_names(fd: &XPath) -> io::Result<Vec<Vec<u8>>> {
    loop {
        let size = match listxattr(fd, &mut []) {
            Ok(s) => s,
            Err(e) if is_no_xattr(&e) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; size];
        match listxattr(fd, &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect());
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Room for the handles of the filesystems we meet (ext4's are 8 bytes, btrfs's 40).
const MAX_HANDLE: usize = 128;

/// `struct file_handle` with room for MAX_HANDLE bytes of handle.
#[repr(C)]
struct Handle {
    bytes: u32,
    kind: i32,
    f: [u8; MAX_HANDLE],
}

/// A file handle as `name_to_handle_at` returns it: (handle type, handle bytes).
/// With an empty `name`, the handle of `dir` itself (`AT_EMPTY_PATH`, which takes `O_PATH`
/// descriptors).
pub fn name_to_handle(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<(i32, Vec<u8>)> {
    let mut h = Handle {
        bytes: MAX_HANDLE as u32,
        kind: 0,
        f: [0; MAX_HANDLE],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `h` is laid out as `struct file_handle` with room for MAX_HANDLE bytes, which
    // `bytes` announces; the name is NUL-terminated; all pointers outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir.as_raw_fd(),
            name.as_ptr(),
            std::ptr::addr_of_mut!(h),
            std::ptr::addr_of_mut!(mount_id),
            if name.is_empty() {
                libc::AT_EMPTY_PATH
            } else {
                0
            },
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (h.bytes as usize).min(MAX_HANDLE);
    Ok((h.kind, h.f[..n].to_vec()))
}

/// The filesystem's UUID (`FS_IOC_GETFSUUID`), all zeros when it has none or the ioctl is
/// missing: the kernel's overlay then also records a null UUID in origin handles.
pub fn fs_uuid(fd: BorrowedFd<'_>) -> [u8; 16] {
    #[repr(C)]
    struct FsUuid2 {
        len: u8,
        uuid: [u8; 16],
    }
    let mut u = FsUuid2 {
        len: 16,
        uuid: [0; 16],
    };
    // _IOR(0x15, 0, struct fsuuid2), the struct being 17 bytes.
    const FS_IOC_GETFSUUID: libc::c_ulong = (2 << 30) | (17 << 16) | (0x15 << 8);
    // SAFETY: the argument points to a live struct of the size the request encodes.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFSUUID, std::ptr::addr_of_mut!(u)) };
    if r < 0 || u.len as usize != 16 {
        return [0; 16];
    }
    u.uuid
}

/// Shares the data extents of `src` with `dst` (reflink); fails on filesystems without it.
pub fn ficlone(dst: BorrowedFd<'_>, src: BorrowedFd<'_>) -> io::Result<()> {
    // _IOW(0x94, 9, int)
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source descriptor as its integer argument.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A read-only, detached clone of the mount `dir` is on, rooted at `dir`
/// (`open_tree(OPEN_TREE_CLONE)` then `mount_setattr(MOUNT_ATTR_RDONLY)`): in no
/// namespace, it lives as long as a descriptor or file of it does. Needs CAP_SYS_ADMIN.
/// Returns a readable descriptor of its root.
pub fn readonly_clone(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const MOUNT_ATTR_RDONLY: u64 = 1;
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let empty = c"";
    // SAFETY: open_tree takes a descriptor, a NUL-terminated path and flags.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dir.as_raw_fd(),
            empty.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let raw = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(raw) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `attr` is a live `struct mount_attr` of the size passed with it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // open_tree gives an O_PATH descriptor, which open_by_handle_at does not take.
    Ok(nix::fcntl::openat(
        tree.as_fd(),
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?)
}

/// Opens the object of a file handle (as `name_to_handle` gave it) on the mount that
/// `mount` is a descriptor of. Needs CAP_DAC_READ_SEARCH.
pub fn open_by_handle(
    mount: BorrowedFd<'_>,
    kind: i32,
    handle: &[u8],
    flags: i32,
) -> io::Result<OwnedFd> {
    if handle.len() > MAX_HANDLE {
        return Err(io::Error::from_raw_os_error(libc::EOVERFLOW));
    }
    let mut h = Handle {
        bytes: handle.len() as u32,
        kind,
        f: [0; MAX_HANDLE],
    };
    h.f[..handle.len()].copy_from_slice(handle);
    // SAFETY: `h` is laid out as `struct file_handle` holding `bytes` bytes of handle.
    let fd = unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            std::ptr::addr_of_mut!(h).cast(),
            flags | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

thread_local! {
    /// Whether this thread has an fs context (umask, cwd) of its own.
    static OWN_FS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the thread's umask set to `mask`, then puts the daemon's (0) back. The
/// umask belongs to the fs context that all threads share, so the first call in a thread
/// gives it a context of its own (`unshare(CLONE_FS)`): requests served at the same time
/// by other threads keep their own masks.
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> io::Result<T> {
    use nix::sys::stat::{umask, Mode};
    if !OWN_FS.get() {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).map_err(io::Error::from)?;
        OWN_FS.set(true);
    }
    let old = umask(Mode::from_bits_truncate(mask & 0o777));
    let r = f();
    umask(old);
    Ok(r)
}

/// `FS_IOC_GETFLAGS`/`FS_IOC_SETFLAGS` (declared with a `long`, but the kernel reads and
/// writes an `int`), and `FS_IOC_FSGETXATTR`/`FS_IOC_FSSETXATTR` with a 28-byte
/// `struct fsxattr`.
pub const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
pub const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
pub const FS_IOC32_GETFLAGS: u32 = 0x8004_6601;
pub const FS_IOC32_SETFLAGS: u32 = 0x4004_6602;
pub const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
pub const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;
pub const FSXATTR_SIZE: usize = 28;

pub fn get_flags(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int to the pointer, which points to `v`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut v) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v as u32)
}

pub fn set_flags(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    let v = flags as libc::c_int;
    // SAFETY: FS_IOC_SETFLAGS reads one int from the pointer, which points to `v`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_SETFLAGS as _, &v) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

pub fn fsgetxattr(fd: BorrowedFd<'_>) -> io::Result<[u8; FSXATTR_SIZE]> {
    let mut v = [0u8; FSXATTR_SIZE];
    // SAFETY: FS_IOC_FSGETXATTR writes a struct fsxattr (28 bytes) to the pointer, which
    // points to a buffer of that size.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR as _, v.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

pub fn fssetxattr(fd: BorrowedFd<'_>, v: &[u8; FSXATTR_SIZE]) -> io::Result<()> {
    // SAFETY: FS_IOC_FSSETXATTR reads a struct fsxattr (28 bytes) from the pointer, which
    // points to a buffer of that size.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSSETXATTR as _, v.as_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The append-only and immutable attributes `statx` reports (`STATX_ATTR_APPEND` and
/// `STATX_ATTR_IMMUTABLE`, the same bits as `FS_APPEND_FL` and `FS_IMMUTABLE_FL`): one call
/// without opening the object. `None` when the filesystem does not report them.
pub fn statx_prot_attrs(x: &XPath) -> io::Result<Option<u32>> {
    let want = (libc::STATX_ATTR_APPEND | libc::STATX_ATTR_IMMUTABLE) as u64;
    // SAFETY: all-zero bytes are a valid `struct statx` (integers only).
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let flags = if x.follow {
        0
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    // SAFETY: the path is NUL-terminated and `st` is a `struct statx` the call fills;
    // both outlive the call.
    let r = unsafe { libc::statx(libc::AT_FDCWD, x.path.as_ptr(), flags, 0, &mut st) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if st.stx_attributes_mask & want != want {
        return Ok(None);
    }
    Ok(Some((st.stx_attributes & want) as u32))
}
