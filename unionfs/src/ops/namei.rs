//! Operations on names: create, mknod, mkdir, symlink, link, unlink, rmdir, rename.
//! Creating over a whiteout and removing a name that a lower layer shows go through the
//! work directory and an atomic rename, so a crash never exposes a half-made entry.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use nix::errno::Errno as NixErrno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag};
use nix::unistd::{Gid, Uid, UnlinkatFlags};

use crate::copyup::{ensure_upper, mark_impure, Data};
use crate::errno::{Errno, Result};
use crate::inode::{Inode, LayerRef, Real, State};
use crate::layer::{clean_dir, fstat_fd};
use crate::ops::{lower_positive, Held};
use crate::union::{real_of, Attr, Ctx, UnionFs};
use crate::whiteout;

/// What to create.
pub enum NewObj<'a> {
    File { mode: u32, flags: i32 },
    Dir { mode: u32 },
    Symlink { target: &'a OsStr },
    Node { mode: u32, rdev: u32 },
}

impl NewObj<'_> {
    fn is_dir(&self) -> bool {
        matches!(self, NewObj::Dir { .. })
    }
    fn mode(&self) -> u32 {
        match self {
            NewObj::File { mode, .. } | NewObj::Dir { mode } | NewObj::Node { mode, .. } => *mode,
            NewObj::Symlink { .. } => 0o777,
        }
    }
}

fn open_path(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd> {
    Ok(nix::fcntl::openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Makes the object itself as `dir/name`; fails with EEXIST when anything is there.
fn make(dir: BorrowedFd<'_>, name: &OsStr, obj: &NewObj<'_>) -> Result<Option<File>> {
    let perm = Mode::from_bits_truncate(obj.mode() & 0o7777);
    match obj {
        NewObj::File { flags, .. } => {
            let acc = OFlag::from_bits_truncate(*flags & libc::O_ACCMODE);
            let f = nix::fcntl::openat(
                dir,
                name,
                acc | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                perm,
            )?;
            Ok(Some(File::from(f)))
        }
        NewObj::Dir { .. } => {
            nix::sys::stat::mkdirat(dir, name, perm)?;
            Ok(None)
        }
        NewObj::Symlink { target } => {
            nix::unistd::symlinkat(*target, dir, name)?;
            Ok(None)
        }
        NewObj::Node { mode, rdev } => {
            let kind = SFlag::from_bits_truncate(mode & libc::S_IFMT);
            nix::sys::stat::mknodat(dir, name, kind, perm, u64::from(*rdev))?;
            Ok(None)
        }
    }
}

/// Gives a new object to the caller: its uid, and its gid unless the directory is setgid
/// (the filesystem already gave it the directory's group). Chown clears set-id bits, so
/// those are put back after.
fn own(fd: BorrowedFd<'_>, ctx: &Ctx, parent_setgid: bool, obj: &NewObj<'_>) -> Result<()> {
    let gid = if parent_setgid {
        None
    } else {
        Some(Gid::from_raw(ctx.gid))
    };
    match nix::unistd::fchownat(
        fd,
        "",
        Some(Uid::from_raw(ctx.uid)),
        gid,
        AtFlags::AT_EMPTY_PATH,
    ) {
        Ok(()) => {}
        Err(NixErrno::EPERM) if !nix::unistd::geteuid().is_root() => {}
        Err(e) => return Err(e.into()),
    }
    let special = obj.mode() & 0o7000;
    if special != 0 && !matches!(obj, NewObj::Symlink { .. }) {
        let cur = fstat_fd(fd)?.st_mode;
        let path = crate::sys::fsops::proc_fd_path(fd);
        nix::sys::stat::fchmodat(
            nix::fcntl::AT_FDCWD,
            path.as_c_str(),
            Mode::from_bits_truncate((cur & 0o7777) | special),
            FchmodatFlags::FollowSymlink,
        )?;
    }
    Ok(())
}

fn whiteout_at(dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
    nix::sys::stat::mknodat(dir, name, SFlag::S_IFCHR, Mode::empty(), 0)?;
    Ok(())
}

fn is_upper_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .map(|st| whiteout::is_whiteout(&st))
        .unwrap_or(false)
}

/// Removes a real object and, for a directory, the whiteouts it still holds.
fn remove_real(dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> Result<()> {
    if is_dir {
        let fd = nix::fcntl::openat(
            dir,
            name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        clean_dir(fd.as_fd())?;
        nix::unistd::unlinkat(dir, name, UnlinkatFlags::RemoveDir)?;
    } else {
        nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?;
    }
    Ok(())
}

impl UnionFs {
    fn parent_dir(&self, parent: u64) -> Result<Arc<Inode>> {
        let p = self.inode(parent)?;
        if !p.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(p)
    }

    /// Creates `name` in `parent` and returns its node (one lookup counted), its attributes
    /// and, for a regular file, the open file.
    pub fn create_obj(
        &self,
        ctx: &Ctx,
        parent: u64,
        name: &OsStr,
        obj: NewObj<'_>,
    ) -> Result<(Arc<Inode>, Attr, Option<File>)> {
        self.check_writable()?;
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let p = self.parent_dir(parent)?;
        let pu = ensure_upper(self, &p, Data::Copy)?;
        let pmode = fstat_fd(pu.fd())?.st_mode;
        let setgid = pmode & libc::S_ISGID != 0;
        let (fd, file) = match make(pu.fd(), name, &obj) {
            Ok(file) => {
                let fd = open_path(pu.fd(), name)?;
                own(fd.as_fd(), ctx, setgid, &obj)?;
                (fd, file)
            }
            Err(Errno(libc::EEXIST)) if is_upper_whiteout(pu.fd(), name) => {
                self.create_over_whiteout(ctx, &pu, name, &obj, setgid)?
            }
            Err(e) => return Err(e),
        };
        let real = real_of(fd, LayerRef::Upper)?;
        let st = fstat_fd(real.fd())?;
        let kind = st.st_mode & libc::S_IFMT;
        let state = State {
            parent,
            name: name.to_os_string(),
            upper: Some(real),
            lowers: Vec::new(),
            impure: false,
            unlinked: false,
        };
        let inode = self.inodes.get_or_insert(st.st_ino, kind, state);
        let attr = Attr::from_stat(inode.ino, &st, false);
        Ok((inode, attr, file))
    }

    /// The kernel's way: build the object in the work directory, then swap it in for the
    /// whiteout in one rename. A directory made there is opaque, or the lower directory
    /// the whiteout hid would show through it again.
    fn create_over_whiteout(
        &self,
        ctx: &Ctx,
        pu: &Real,
        name: &OsStr,
        obj: &NewObj<'_>,
        setgid: bool,
    ) -> Result<(OwnedFd, Option<File>)> {
        let work = self.work_fd()?;
        let tmp = self.tmp_name();
        let built = (|| -> Result<(OwnedFd, Option<File>)> {
            let file = make(work, &tmp, obj)?;
            let fd = open_path(work, &tmp)?;
            own(fd.as_fd(), ctx, false, obj)?;
            if setgid {
                // Built outside the setgid directory: give it what the directory would have.
                let pst = fstat_fd(pu.fd())?;
                nix::unistd::fchownat(
                    fd.as_fd(),
                    "",
                    None,
                    Some(Gid::from_raw(pst.st_gid)),
                    AtFlags::AT_EMPTY_PATH,
                )?;
                if obj.is_dir() {
                    let cur = fstat_fd(fd.as_fd())?.st_mode;
                    let path = crate::sys::fsops::proc_fd_path(fd.as_fd());
                    nix::sys::stat::fchmodat(
                        nix::fcntl::AT_FDCWD,
                        path.as_c_str(),
                        Mode::from_bits_truncate((cur & 0o7777) | libc::S_ISGID),
                        FchmodatFlags::FollowSymlink,
                    )?;
                }
            }
            if obj.is_dir() {
                crate::sys::fsops::setxattr(fd.as_fd(), self.layers.ns.opaque(), b"y", 0)?;
                nix::fcntl::renameat2(
                    work,
                    tmp.as_os_str(),
                    pu.fd(),
                    name,
                    RenameFlags::RENAME_EXCHANGE,
                )?;
            } else {
                nix::fcntl::renameat2(work, tmp.as_os_str(), pu.fd(), name, RenameFlags::empty())?;
            }
            Ok((fd, file))
        })();
        // After an exchange the whiteout is what sits at the temp name.
        crate::copyup::remove_tmp(work, &tmp);
        built
    }

    /// A hard link to `ino` as `newparent/newname`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> Result<(Arc<Inode>, Attr)> {
        self.check_writable()?;
        let src = self.inode(ino)?;
        if src.is_dir() {
            return Err(Errno::EPERM);
        }
        let su = ensure_upper(self, &src, Data::Copy)?;
        let p = self.parent_dir(newparent)?;
        let pu = ensure_upper(self, &p, Data::Copy)?;
        let path = crate::sys::fsops::proc_fd_path(su.fd());
        let linked = |dir: BorrowedFd<'_>, name: &OsStr| {
            nix::unistd::linkat(
                nix::fcntl::AT_FDCWD,
                path.as_c_str(),
                dir,
                name,
                AtFlags::AT_SYMLINK_FOLLOW,
            )
        };
        match linked(pu.fd(), newname) {
            Ok(()) => {}
            Err(NixErrno::EEXIST) if is_upper_whiteout(pu.fd(), newname) => {
                let work = self.work_fd()?;
                let tmp = self.tmp_name();
                let r = linked(work, &tmp).and_then(|()| {
                    nix::fcntl::renameat2(
                        work,
                        tmp.as_os_str(),
                        pu.fd(),
                        newname,
                        RenameFlags::empty(),
                    )
                });
                if r.is_err() {
                    crate::copyup::remove_tmp(work, &tmp);
                }
                r?;
            }
            Err(e) => return Err(e.into()),
        }
        // The new name must show the same inode number, which comes from the origin.
        if !src.state.read().lowers.is_empty() {
            mark_impure(self, &p, &pu)?;
        }
        src.lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let attr = self.attr_of(&src)?;
        Ok((src, attr))
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> Result<()> {
        self.check_writable()?;
        let p = self.parent_dir(parent)?;
        let held = Held::lookup(self, parent, name)?;
        let node = &held.node;
        match (dir, node.is_dir()) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            _ => {}
        }
        if dir && !crate::readdir::is_empty(&self.layers, &node.state.read())? {
            return Err(Errno::ENOTEMPTY);
        }
        let (has_upper, has_lower) = {
            let st = node.state.read();
            (st.upper.is_some(), !st.lowers.is_empty())
        };
        let needs_whiteout = has_lower || lower_positive(&self.layers, &p.state.read(), name)?;
        let pu = ensure_upper(self, &p, Data::Copy)?;
        match (has_upper, needs_whiteout) {
            (true, false) => remove_real(pu.fd(), name, dir)?,
            (false, _) => whiteout_at(pu.fd(), name)?,
            (true, true) => {
                let work = self.work_fd()?;
                let tmp = self.tmp_name();
                whiteout_at(work, &tmp)?;
                if let Err(e) = nix::fcntl::renameat2(
                    work,
                    tmp.as_os_str(),
                    pu.fd(),
                    name,
                    RenameFlags::RENAME_EXCHANGE,
                ) {
                    crate::copyup::remove_tmp(work, &tmp);
                    return Err(e.into());
                }
                remove_real(work, &tmp, dir)?;
            }
        }
        let mut st = node.state.write();
        let still_linked = !dir
            && !needs_whiteout
            && st
                .upper
                .as_ref()
                .is_some_and(|u| fstat_fd(u.fd()).is_ok_and(|s| s.st_nlink > 0));
        if !still_linked {
            st.unlinked = true;
        }
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> Result<()> {
        const NOREPLACE: u32 = libc::RENAME_NOREPLACE;
        const EXCHANGE: u32 = libc::RENAME_EXCHANGE;
        if flags & !(NOREPLACE | EXCHANGE) != 0 || flags == NOREPLACE | EXCHANGE {
            return Err(Errno::EINVAL);
        }
        self.check_writable()?;
        if newname.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let exchange = flags & EXCHANGE != 0;
        let p = self.parent_dir(parent)?;
        let np = self.parent_dir(newparent)?;
        let src = Held::lookup(self, parent, name)?;
        let dst = match Held::lookup(self, newparent, newname) {
            Ok(h) => Some(h),
            Err(Errno(libc::ENOENT)) => None,
            Err(e) => return Err(e),
        };
        if let Some(d) = &dst {
            if Arc::ptr_eq(&d.node, &src.node) {
                return Ok(());
            }
            if flags & NOREPLACE != 0 {
                return Err(Errno::EEXIST);
            }
            if !exchange {
                match (src.node.is_dir(), d.node.is_dir()) {
                    (true, false) => return Err(Errno::ENOTDIR),
                    (false, true) => return Err(Errno::EISDIR),
                    (true, true)
                        if !crate::readdir::is_empty(&self.layers, &d.node.state.read())? =>
                    {
                        return Err(Errno::ENOTEMPTY);
                    }
                    _ => {}
                }
            }
        } else if exchange {
            return Err(Errno::ENOENT);
        }
        // Without redirect_dir a directory with lower content cannot move: EXDEV makes
        // `mv` copy it instead, as on the kernel's overlay.
        let has_lower = |n: &Inode| !n.state.read().lowers.is_empty();
        if src.node.is_dir() && has_lower(&src.node) {
            return Err(Errno::EXDEV);
        }
        if exchange {
            if let Some(d) = &dst {
                if d.node.is_dir() && has_lower(&d.node) {
                    return Err(Errno::EXDEV);
                }
            }
        }
        let src_had_lower = has_lower(&src.node);
        let su = ensure_upper(self, &src.node, Data::Copy)?;
        let pu = ensure_upper(self, &p, Data::Copy)?;
        let npu = ensure_upper(self, &np, Data::Copy)?;
        if let Some(d) = &dst {
            if exchange {
                ensure_upper(self, &d.node, Data::Copy)?;
            }
        }
        let src_whiteout =
            !exchange && (src_had_lower || lower_positive(&self.layers, &p.state.read(), name)?);
        if !exchange {
            let dst_lower = match &dst {
                Some(d) => has_lower(&d.node),
                None => false,
            } || lower_positive(&self.layers, &np.state.read(), newname)?;
            if src.node.is_dir() && dst_lower {
                crate::sys::fsops::setxattr(su.fd(), self.layers.ns.opaque(), b"y", 0)?;
            }
            // An upper directory being replaced may still hold whiteouts; the rename
            // needs it really empty.
            if let Some(d) = &dst {
                if d.node.is_dir() {
                    if let Some(du) = d.node.state.read().upper.clone() {
                        clean_dir(du.fd())?;
                    }
                }
            }
        }
        let rflags = if exchange {
            RenameFlags::RENAME_EXCHANGE
        } else {
            RenameFlags::empty()
        };
        nix::fcntl::renameat2(pu.fd(), name, npu.fd(), newname, rflags)?;
        if src_whiteout {
            whiteout_at(pu.fd(), name)?;
        }
        if src_had_lower || has_origin(self, &su) {
            mark_impure(self, &np, &npu)?;
        }
        if exchange {
            if let Some(d) = &dst {
                if has_lower(&d.node)
                    || d.node
                        .state
                        .read()
                        .upper
                        .as_ref()
                        .is_some_and(|u| has_origin(self, u))
                {
                    mark_impure(self, &p, &pu)?;
                }
            }
        }
        move_node(&src.node, newparent, newname);
        if let Some(d) = dst {
            if exchange {
                move_node(&d.node, parent, name);
            } else {
                d.node.state.write().unlinked = true;
            }
        }
        Ok(())
    }
}

fn has_origin(fs: &UnionFs, r: &Real) -> bool {
    crate::sys::fsops::getxattr_vec(r.fd(), fs.layers.ns.origin())
        .ok()
        .flatten()
        .is_some()
}

fn move_node(node: &Inode, parent: u64, name: &OsStr) {
    let mut st = node.state.write();
    st.parent = parent;
    st.name = OsString::from(name);
    // A moved node is pure upper now (directories with lower parts never move).
    if node.is_dir() {
        st.lowers.clear();
    }
}
