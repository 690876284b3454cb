//! Copy-up: making a lower object an upper one, parents first.
//!
//! The copy is built in the work directory (data, xattrs, origin, file flags, owner, mode,
//! times) and made durable with fsync unless `volatile`; only then does it get its name in
//! the upper directory. A regular file is built as an unnamed `O_TMPFILE` and linked into
//! place, as the kernel does when the upper filesystem offers it: a crash loses the unnamed
//! file with nothing to clean, and an fsync of a file with no directory entry is about half the cost
//! of one with a new entry (ext4 without a journal syncs the parent's new entry too).
//! Everything else (and regular files where `O_TMPFILE` is missing) is built under a fresh
//! name in work and renamed into place; the work directory is emptied at mount. Either
//! way the final step (link or rename) is atomic, so a crash at any moment leaves the old
//! view or the complete copy: never a partial file in upper.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nix::errno::Errno as NixErrno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};

use crate::dirfd::DirRef;
use crate::errno::{Errno, Result};
use crate::inode::{Inode, LayerRef, Loc, Real};
use crate::layer::fstat_fd;
use crate::lookup;
use crate::sys::fsops::XPath;
use crate::union::UnionFs;

/// How much of the object to copy.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Data {
    Copy,
    /// The caller is about to truncate to zero (open with `O_TRUNC`): skip the data.
    Skip,
    /// The caller changes metadata only: with `metacopy=on` a regular file's copy gets
    /// no data (`*.overlay.metacopy`), which stays the lower file's until a `Copy` or
    /// `Skip` copy-up; otherwise as `Copy`.
    Meta,
}

/// Whether a copy-up for `data` leaves a regular file's data in the lower layer.
fn metadata_only(fs: &UnionFs, data: Data) -> bool {
    data == Data::Meta && fs.config.metacopy
}

/// Below this size a copy-up is served on the request's own thread: handing it to a
/// worker would cost more than it saves.
const LONG_COPY: i64 = 1 << 20;

/// Whether getting the node's upper object may take long: a copy-up of a large regular
/// file, or (`passthrough=all`) the wait for a reader that passes through to the lower
/// file. Such requests go to the workers of `offload`.
pub fn may_take_long(inode: &Inode) -> bool {
    if inode.opens.lock().backing.as_ref().is_some_and(|b| b.lower) {
        return true;
    }
    let st = inode.state.read();
    (st.upper.is_none() || st.metacopy)
        && inode.kind == libc::S_IFREG
        && st
            .lowers
            .first()
            .and_then(|l| l.stat().ok())
            .is_some_and(|s| s.st_size >= LONG_COPY)
}

/// The node's upper object, copying it (and its parents) up first when it has none.
pub fn ensure_upper(fs: &UnionFs, inode: &Arc<Inode>, data: Data) -> Result<Real> {
    let (upper, metacopy) = {
        let st = inode.state.read();
        (st.upper.clone(), st.metacopy)
    };
    if let Some(u) = upper {
        if metacopy && !metadata_only(fs, data) {
            let timer = crate::trace::Timer::start();
            copy_up_data(fs, inode, data)?;
            if crate::trace::on() {
                trace_data_copy_up(fs, inode, &u, data, &timer);
            }
        }
        return Ok(*u);
    }
    fs.check_writable()?;
    let parent_ino = inode.state.read().parent;
    let parent = fs.inode(parent_ino)?;
    // Parents first. Lock order: a node's copy-up lock is never held while waiting for a
    // child's, so the recursion cannot deadlock.
    let pupper = {
        let _c = crate::trace::because(crate::trace::Cause::Parent);
        ensure_upper(fs, &parent, Data::Copy)?
    };
    let _guard = inode.copyup.lock();
    let (name, src, data_src) = {
        let st = inode.state.read();
        if let Some(u) = &st.upper {
            return Ok(Real::clone(u));
        }
        if st.unlinked {
            // Its name was removed (by a request that resolved it before the unlink):
            // the kernel's overlay marks the parent, then finds the whiteout or the new
            // object under the name, and fails so.
            drop(st);
            mark_impure(fs, &parent, &pupper)?;
            return Err(Errno::EEXIST);
        }
        // The data of a lower metadata-only copy is the last lower file.
        let data_src = if st.metacopy {
            st.lowers.last()
        } else {
            st.lowers.first()
        };
        (
            st.name.clone(),
            st.lowers.first().cloned().ok_or(Errno::EIO)?,
            data_src.cloned().ok_or(Errno::EIO)?,
        )
    };
    // Before the copy has its name: a lookup that finds it reads its origin (and so its
    // inode number) only in an impure directory.
    mark_impure(fs, &parent, &pupper)?;
    let timer = crate::trace::Timer::start();
    let (upper, aliases) = copy_up_one(fs, inode, &src, &data_src, &pupper, &name, data)?;
    if crate::trace::on() {
        trace_copy_up(fs, inode, &src, data, &timer);
    }
    // The other names of a lower hard link still show the lower file: the kernel must
    // look them up again and get a node of their own.
    crate::union::defer_invalidations(aliases);
    Ok(upper)
}

/// `event=copy-up path=/etc/motd type=file from=lower0 bytes=24 us=812 cause=open-write`.
fn trace_copy_up(fs: &UnionFs, inode: &Inode, src: &Real, data: Data, timer: &crate::trace::Timer) {
    let meta_only = inode.kind == libc::S_IFREG && metadata_only(fs, data);
    let bytes = match (inode.kind, data) {
        (libc::S_IFREG, Data::Copy) => src.stat().map_or(0, |s| s.st_size),
        (libc::S_IFREG, Data::Meta) if !meta_only => src.stat().map_or(0, |s| s.st_size),
        _ => 0,
    };
    crate::trace::emit(&format!(
        "event=copy-up path={} type={} from={} bytes={bytes} us={} cause={}{}",
        crate::trace::path_of(fs, inode),
        crate::trace::kind_name(inode.kind),
        crate::trace::layer_name(src.layer),
        timer.micros(),
        crate::trace::cause().as_str(),
        if meta_only { " metacopy=yes" } else { "" }
    ));
}

/// `event=copy-up-data path=/f bytes=24 us=80 cause=open-write`: a metadata-only copy
/// (`metacopy=on`) gets its data.
fn trace_data_copy_up(
    fs: &UnionFs,
    inode: &Inode,
    upper: &Real,
    data: Data,
    timer: &crate::trace::Timer,
) {
    let bytes = match data {
        Data::Skip => 0,
        _ => upper.stat().map_or(0, |s| s.st_size),
    };
    crate::trace::emit(&format!(
        "event=copy-up-data path={} bytes={bytes} us={} cause={}",
        crate::trace::path_of(fs, inode),
        timer.micros(),
        crate::trace::cause().as_str()
    ));
}

/// Gives a metadata-only copy its data (none for `Data::Skip`: the caller truncates it),
/// then drops its metacopy marker, as the kernel's `ovl_copy_up_meta_inode_data`. The
/// copy is written in place; writing drops a file capability, so it is put back.
fn copy_up_data(fs: &UnionFs, inode: &Inode, data: Data) -> Result<()> {
    let _guard = inode.copyup.lock();
    let (upper, lower) = {
        let st = inode.state.read();
        if !st.metacopy {
            return Ok(());
        }
        (
            st.upper.clone().ok_or(Errno::EIO)?,
            st.lowers.last().cloned().ok_or(Errno::EIO)?,
        )
    };
    let x = upper.xpath()?;
    let dst = upper.open(OFlag::O_WRONLY)?;
    if data == Data::Copy {
        let cap = crate::sys::fsops::getxattr_vec(&x, OsStr::new("security.capability"))?;
        let size = fstat_fd(dst.as_fd())?.st_size;
        if size > 0 {
            copy_data(&lower.open(OFlag::O_RDONLY)?, &dst, size as u64)?;
        }
        if let Some(cap) = cap {
            crate::sys::fsops::setxattr(&x, OsStr::new("security.capability"), &cap, 0)?;
        }
        sync_copy(fs, &dst)?;
    }
    match crate::sys::fsops::removexattr(&x, fs.layers.ns.metacopy()) {
        Ok(()) => {}
        Err(e) if crate::sys::fsops::is_no_xattr(&e) => {}
        Err(e) => return Err(e.into()),
    }
    inode.state.write().metacopy = false;
    Ok(())
}

/// Marks an upper directory as holding entries with an origin, as the kernel does.
pub fn mark_impure(fs: &UnionFs, dir: &Inode, dir_upper: &Real) -> Result<()> {
    if dir.state.read().impure {
        return Ok(());
    }
    crate::sys::fsops::setxattr(&dir_upper.xpath()?, fs.layers.ns.impure(), b"y", 0)?;
    dir.state.write().impure = true;
    Ok(())
}

/// Copies the node's lower object `src` up as `parent_upper/name` and makes the node show
/// the copy. Returns it, with the other names of a lower hard link (see `ensure_upper`).
///
/// No lookup may find the copy under its name before the node knows it has it: a lookup
/// would make a second node for the same file, and the kernel, moving the name to that
/// one, would keep two page caches of one file. So the copy is entered in the inode
/// table's object index first, and the node's state stays write-locked from the link
/// until it names the copy: a lookup that finds the copy finds this node, and waits.
fn copy_up_one(
    fs: &UnionFs,
    inode: &Inode,
    src: &Real,
    data_src: &Real,
    parent_upper: &Real,
    name: &OsStr,
    data: Data,
) -> Result<(Real, Vec<(u64, OsString)>)> {
    let work = fs.work_fd()?;
    let pref = parent_upper.dir_ref()?;
    let pdir = pref.fd()?;
    let st = src.stat()?;
    // Naming the copy changes the parent's times; the kernel puts them back.
    let pst = fstat_fd(pdir.as_fd())?;
    let (temp, fd) = build(fs, src, data_src, &st, data).inspect_err(|e| {
        log::error!("copy-up of {name:?} failed: {e}");
    })?;
    let copy = fstat_fd(fd.as_fd())?;
    let key = (copy.st_dev, copy.st_ino);
    fs.inodes.shows_upper(inode, None, key);
    let mut state = inode.state.write();
    let linked = match &temp {
        Temp::Unnamed(f) => {
            // Unlike linkat(AT_EMPTY_PATH), which needs CAP_DAC_READ_SEARCH, linking
            // through /proc works for the file's owner too (without privileges).
            let from = crate::sys::fsops::proc_fd_path(f.as_fd());
            nix::unistd::linkat(
                nix::fcntl::AT_FDCWD,
                from.as_c_str(),
                pdir.as_fd(),
                name,
                AtFlags::AT_SYMLINK_FOLLOW,
            )
        }
        Temp::Named(tmp) => nix::fcntl::renameat2(
            work,
            tmp.as_os_str(),
            pdir.as_fd(),
            name,
            RenameFlags::RENAME_NOREPLACE,
        ),
    };
    if linked.is_ok() {
        fs.inodes.copy_placed();
    }
    crate::testhook::pause("copy-up-placed");
    // The descriptor still names the object after the link or rename.
    let placed = linked
        .map_err(Errno::from)
        .and_then(|()| upper_real(pref, name, lookup::is_dir(&st), Some(fd)));
    let upper = match placed {
        Ok(u) => u,
        Err(e) => {
            drop(state);
            fs.inodes.forget_object(key, inode.ino);
            if let Temp::Named(tmp) = &temp {
                remove_tmp(work, tmp);
            }
            if e == Errno::EEXIST {
                // Another request put something under the name first (a rename onto it):
                // the kernel's overlay fails the same way; not a fault of ours.
                log::debug!("copy-up of {name:?}: the name was taken meanwhile");
            } else {
                log::error!("copy-up of {name:?} failed: {e}");
            }
            return Err(e);
        }
    };
    state.metacopy = inode.kind == libc::S_IFREG && metadata_only(fs, data);
    state.upper = Some(Box::new(upper.clone()));
    let aliases = state.take_aliases();
    drop(state);
    fs.inodes.shows_upper(inode, Some((src.dev, src.ino)), key);
    let (at, mt) = (
        TimeSpec::new(pst.st_atime, pst.st_atime_nsec),
        TimeSpec::new(pst.st_mtime, pst.st_mtime_nsec),
    );
    let path = crate::sys::fsops::proc_fd_path(pdir.as_fd());
    if let Err(e) = nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        path.as_c_str(),
        &at,
        &mt,
        UtimensatFlags::FollowSymlink,
    ) {
        log::warn!("copy-up of {name:?}: cannot restore the parent's times: {e}");
    }
    Ok((upper, aliases))
}

/// The `Real` of an object just made as `dir/name` in the upper layer; `fd`, when the
/// caller holds one (`O_PATH`), is the object's.
pub fn upper_real(
    dir: &Arc<DirRef>,
    name: &OsStr,
    is_dir: bool,
    fd: Option<OwnedFd>,
) -> Result<Real> {
    let st = match &fd {
        Some(fd) => fstat_fd(fd.as_fd())?,
        None => nix::sys::stat::fstatat(dir.fd()?.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)?,
    };
    let loc = if is_dir {
        let fd = match fd {
            Some(fd) => fd,
            None => open_path(dir.fd()?.as_fd(), name)?,
        };
        Loc::Dir(DirRef::child(dir, name, Some(fd)))
    } else {
        Loc::At(Arc::clone(dir), crate::inode::name_of(name))
    };
    Ok(Real {
        loc,
        layer: LayerRef::Upper,
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// Best-effort removal of a temp object after a failure; the mount-time clean-up of the
/// work directory catches whatever this misses.
pub fn remove_tmp(work: BorrowedFd<'_>, tmp: &OsStr) {
    if nix::unistd::unlinkat(work, tmp, nix::unistd::UnlinkatFlags::NoRemoveDir).is_err() {
        let _ = nix::unistd::unlinkat(work, tmp, nix::unistd::UnlinkatFlags::RemoveDir);
    }
}

pub fn open_path(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd> {
    Ok(nix::fcntl::openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Where a copy is being built in the work directory.
enum Temp {
    /// An `O_TMPFILE` regular file, linked into place at the end.
    Unnamed(File),
    /// A named object, renamed into place at the end.
    Named(OsString),
}

/// An unnamed regular file in the work directory, or `None` when the upper filesystem
/// has no `O_TMPFILE` (then it is not asked again).
fn open_unnamed(fs: &UnionFs, work: BorrowedFd<'_>) -> Result<Option<File>> {
    if !fs.tmpfile_ok.load(Ordering::Relaxed) {
        return Ok(None);
    }
    match nix::fcntl::openat(
        work,
        ".",
        OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    ) {
        Ok(fd) => Ok(Some(File::from(fd))),
        // Old kernels answer EISDIR, filesystems without it EOPNOTSUPP.
        Err(NixErrno::EOPNOTSUPP | NixErrno::EISDIR | NixErrno::EINVAL) => {
            log::info!("the upper filesystem has no O_TMPFILE: copy-ups use named temp files");
            fs.tmpfile_ok.store(false, Ordering::Relaxed);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Builds the copy of `src` in the work directory; returns where it is and a descriptor
/// of it (`O_PATH` for a named one).
fn build(
    fs: &UnionFs,
    src: &Real,
    data_src: &Real,
    st: &FileStat,
    data: Data,
) -> Result<(Temp, OwnedFd)> {
    let work = fs.work_fd()?;
    let kind = st.st_mode & libc::S_IFMT;
    if kind == libc::S_IFREG {
        if let Some(f) = open_unnamed(fs, work)? {
            let fd = Arc::new(OwnedFd::from(f));
            let f = File::from(fd.try_clone()?);
            let x = XPath::fd(Arc::clone(&fd));
            fill_file(fs, src, data_src, st, &f, &x, data)?;
            if metadata_only(fs, data) {
                mark_metacopy(fs, st, &f, &x)?;
            }
            crate::ops::fileattr::copy_up(fs.layers.ns, src, f.as_fd(), &x)?;
            set_owner_mode_times(f.as_fd(), None, st)?;
            sync_copy(fs, &f)?;
            return Ok((Temp::Unnamed(f), fd.try_clone()?));
        }
    }
    let tmp = fs.tmp_name();
    let named = build_named(fs, src, data_src, st, work, &tmp, data);
    match named {
        Ok(fd) => Ok((Temp::Named(tmp), fd)),
        Err(e) => {
            remove_tmp(work, &tmp);
            Err(e)
        }
    }
}

fn build_named(
    fs: &UnionFs,
    src: &Real,
    data_src: &Real,
    st: &FileStat,
    work: BorrowedFd<'_>,
    tmp: &OsStr,
    data: Data,
) -> Result<OwnedFd> {
    let kind = st.st_mode & libc::S_IFMT;
    let mut written: Option<File> = None;
    match kind {
        libc::S_IFDIR => nix::sys::stat::mkdirat(work, tmp, Mode::from_bits_truncate(0o700))?,
        libc::S_IFREG => {
            written = Some(File::from(nix::fcntl::openat(
                work,
                tmp,
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )?));
        }
        libc::S_IFLNK => {
            let target = src.readlink()?;
            nix::unistd::symlinkat(target.as_os_str(), work, tmp)?;
        }
        _ => nix::sys::stat::mknodat(
            work,
            tmp,
            SFlag::from_bits_truncate(kind),
            Mode::from_bits_truncate(0o600),
            st.st_rdev,
        )?,
    }
    let fd = open_path(work, tmp)?;
    let dst = XPath::at(fs.work_arc()?, tmp);
    match &written {
        Some(f) => {
            fill_file(fs, src, data_src, st, f, &dst, data)?;
            if metadata_only(fs, data) {
                mark_metacopy(fs, st, f, &dst)?;
            }
        }
        None => copy_meta_xattrs(fs, src, st, &dst)?,
    }
    crate::ops::fileattr::copy_up(fs.layers.ns, src, fd.as_fd(), &dst)?;
    set_owner_mode_times(fd.as_fd(), Some((work, tmp)), st)?;
    if let Some(f) = written {
        sync_copy(fs, &f)?;
    }
    Ok(fd)
}

/// A metadata-only copy: the lower file's size, no data, and the marker (empty, as this
/// kernel writes it: no fs-verity digest).
fn mark_metacopy(fs: &UnionFs, st: &FileStat, f: &File, x: &XPath) -> Result<()> {
    f.set_len(st.st_size as u64)?;
    crate::sys::fsops::setxattr(x, fs.layers.ns.metacopy(), b"", 0)?;
    Ok(())
}

/// A regular file's data (from `data_src`, below `src` for a lower metadata-only copy),
/// then its xattrs and origin.
fn fill_file(
    fs: &UnionFs,
    src: &Real,
    data_src: &Real,
    st: &FileStat,
    dst: &File,
    dst_x: &XPath,
    data: Data,
) -> Result<()> {
    if data != Data::Skip && !metadata_only(fs, data) && st.st_size > 0 {
        let s = data_src.open(OFlag::O_RDONLY)?;
        copy_data(&s, dst, st.st_size as u64)?;
    }
    copy_meta_xattrs(fs, src, st, dst_x)
}

/// The copy's data made durable before it gets its name, unless `volatile`.
fn sync_copy(fs: &UnionFs, f: &File) -> Result<()> {
    if !fs.config.volatile {
        f.sync_all()?;
    }
    Ok(())
}

/// The user-visible xattrs and the origin xattr.
fn copy_meta_xattrs(fs: &UnionFs, src: &Real, st: &FileStat, dst: &XPath) -> Result<()> {
    let kind = st.st_mode & libc::S_IFMT;
    copy_xattrs(fs, &src.xpath()?, dst)?;
    // Without an index the kernel records no origin for a lower hard link: the copy of one
    // name is a file of its own, with the upper inode number.
    if let (Some(i), true) = (
        src.layer.lower_index(),
        kind == libc::S_IFDIR || st.st_nlink == 1,
    ) {
        let origin = fs
            .layers
            .lowers
            .get(i)
            .and_then(|l| l.origin_record(|| src.file_handle()));
        if let Some(origin) = origin {
            match crate::sys::fsops::setxattr(dst, fs.layers.ns.origin(), &origin, 0) {
                Ok(()) => {}
                // user.* xattrs are refused on special files (userxattr): the copy then
                // goes without an origin, its inode number the upper one.
                Err(e) if crate::sys::fsops::is_no_xattr(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Owner, then mode (chown clears set-id bits), then times (both change ctime only).
/// `at` names the object when it has a name (a symlink's times must be set through it).
fn set_owner_mode_times(
    fd: BorrowedFd<'_>,
    at: Option<(BorrowedFd<'_>, &OsStr)>,
    st: &FileStat,
) -> Result<()> {
    let kind = st.st_mode & libc::S_IFMT;
    match nix::unistd::fchownat(
        fd,
        "",
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
        AtFlags::AT_EMPTY_PATH,
    ) {
        Ok(()) => {}
        // Without privileges every file is ours anyway.
        Err(NixErrno::EPERM) if !nix::unistd::geteuid().is_root() => {}
        Err(e) => return Err(e.into()),
    }
    if kind != libc::S_IFLNK {
        let path = crate::sys::fsops::proc_fd_path(fd);
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            path.as_c_str(),
            Mode::from_bits_truncate(st.st_mode & 0o7777),
            FchmodatFlags::FollowSymlink,
        )?;
    }
    let atime = TimeSpec::new(st.st_atime, st.st_atime_nsec);
    let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    match at {
        Some((dir, name)) => {
            nix::sys::stat::utimensat(dir, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)?
        }
        None => nix::sys::stat::futimens(fd, &atime, &mtime)?,
    }
    Ok(())
}

/// Copies the user-visible xattrs; the overlay's own are not the copy's.
pub fn copy_xattrs(fs: &UnionFs, src: &XPath, dst: &XPath) -> Result<()> {
    let prefix = fs.layers.ns.prefix().as_bytes();
    for name in crate::sys::fsops::listxattr_names(src)? {
        if name.starts_with(prefix) {
            continue;
        }
        let name = std::ffi::OsStr::from_bytes_ext(&name);
        let Some(value) = crate::sys::fsops::getxattr_vec(src, name)? else {
            continue;
        };
        match crate::sys::fsops::setxattr(dst, name, &value, 0) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                log::warn!("copy-up: xattr {name:?} not supported by the upper filesystem");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

trait FromBytesExt {
    fn from_bytes_ext(b: &[u8]) -> &OsStr;
}
impl FromBytesExt for OsStr {
    fn from_bytes_ext(b: &[u8]) -> &OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

/// Copies `size` bytes: a reflink when the filesystem shares extents, else the data
/// segments one by one (holes stay holes) with `copy_file_range`, else read/write.
pub fn copy_data(src: &File, dst: &File, size: u64) -> Result<()> {
    if crate::sys::fsops::ficlone(dst.as_fd(), src.as_fd()).is_ok() {
        return Ok(());
    }
    let mut off: i64 = 0;
    let end = size as i64;
    while off < end {
        let data = match nix::unistd::lseek64(src.as_fd(), off, nix::unistd::Whence::SeekData) {
            Ok(d) => d,
            Err(NixErrno::ENXIO) => break,
            Err(_) => off,
        };
        let hole = nix::unistd::lseek64(src.as_fd(), data, nix::unistd::Whence::SeekHole)
            .unwrap_or(end)
            .min(end);
        copy_range(src, dst, data, hole)?;
        off = hole;
    }
    // A trailing hole still needs the size; otherwise truncating is needless work.
    if crate::layer::fstat_fd(dst.as_fd())?.st_size != end {
        dst.set_len(size)?;
    }
    Ok(())
}

fn copy_range(src: &File, dst: &File, mut from: i64, to: i64) -> Result<()> {
    while from < to {
        let len = (to - from) as usize;
        let mut off_in = from;
        let mut off_out = from;
        match nix::fcntl::copy_file_range(
            src.as_fd(),
            Some(&mut off_in),
            dst.as_fd(),
            Some(&mut off_out),
            len,
        ) {
            Ok(0) => return Ok(()),
            Ok(n) => from += n as i64,
            Err(NixErrno::EXDEV | NixErrno::EINVAL | NixErrno::ENOSYS | NixErrno::EOPNOTSUPP) => {
                return copy_range_rw(src, dst, from, to);
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn copy_range_rw(src: &File, dst: &File, mut from: i64, to: i64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    while from < to {
        let want = ((to - from) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], from as u64)?;
        if n == 0 {
            break;
        }
        dst.write_all_at(&buf[..n], from as u64)?;
        from += n as i64;
    }
    Ok(())
}
