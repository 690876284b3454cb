//! Operations on names: create, mknod, mkdir, symlink, link, unlink, rmdir, rename.
//! Creating over a whiteout and removing a name that a lower layer shows go through the
//! work directory and an atomic rename, so a crash never exposes a half-made entry.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;

use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{Mode, SFlag};
use nix::unistd::UnlinkatFlags;

use crate::acl;
use crate::copyup::{ensure_upper, mark_impure, open_path, upper_real, Data};
use crate::dirfd::DirRef;
use crate::errno::{Errno, Result};
use crate::inode::{Inode, LayerRef, Loc, Lowers, Real, State};
use crate::layer::{clean_dir, fstat_fd};
use crate::ops::fileattr::Change;
use crate::ops::{lower_positive, Held};
use crate::union::{Attr, Ctx, UnionFs};
use crate::{trace, whiteout};

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
    /// The same object with other permission bits (a symlink has none to change).
    fn with_mode(&self, perm: u32) -> NewObj<'_> {
        let mode = (self.mode() & !0o777) | (perm & 0o777);
        match *self {
            NewObj::File { flags, .. } => NewObj::File { mode, flags },
            NewObj::Dir { .. } => NewObj::Dir { mode },
            NewObj::Node { rdev, .. } => NewObj::Node { mode, rdev },
            NewObj::Symlink { target } => NewObj::Symlink { target },
        }
    }
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
fn own(real: &Real, ctx: &Ctx, parent_setgid: bool, obj: &NewObj<'_>) -> Result<()> {
    let gid = if parent_setgid { None } else { Some(ctx.gid) };
    match real.chown(Some(ctx.uid), gid) {
        Ok(()) => {}
        Err(Errno(libc::EPERM)) if !nix::unistd::geteuid().is_root() => {}
        Err(e) => return Err(e),
    }
    let special = obj.mode() & 0o7000;
    if special != 0 && !matches!(obj, NewObj::Symlink { .. }) {
        let cur = real.stat()?.st_mode;
        real.chmod((cur & 0o7777) | special)?;
    }
    Ok(())
}

fn mknod_whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
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
    /// Makes a whiteout as `dir/name`: a new hard link to one shared whiteout in the work
    /// directory, as the kernel's overlay does, since allocating an inode per deleted
    /// name is what makes deleting a large lower tree slow. A fresh shared one is made
    /// when the link count runs out.
    fn whiteout_at(&self, dir: BorrowedFd<'_>, name: &OsStr) -> Result<()> {
        let work = self.work_fd()?;
        let mut shared = self.shared_whiteout.lock();
        for _ in 0..2 {
            let wh = match shared.as_ref() {
                Some(w) => w.clone(),
                None => {
                    let w = self.tmp_name();
                    mknod_whiteout(work, &w)?;
                    *shared = Some(w.clone());
                    w
                }
            };
            match nix::unistd::linkat(work, wh.as_os_str(), dir, name, AtFlags::empty()) {
                Ok(()) => return Ok(()),
                Err(nix::errno::Errno::EMLINK | nix::errno::Errno::ENOENT) => *shared = None,
                Err(nix::errno::Errno::EEXIST) => return Err(Errno::EEXIST),
                Err(_) => break,
            }
        }
        drop(shared);
        mknod_whiteout(dir, name)
    }

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
        // The new object is stored owned by the creator's ids as the layers hold them; a
        // creator no id mapping covers cannot own anything here (EOVERFLOW, as on an
        // idmapped mount).
        let idmap = &self.config.idmap;
        let ctx = &Ctx {
            uid: idmap.stored_uid(ctx.uid).map_err(|_| Errno::EOVERFLOW)?,
            gid: idmap.stored_gid(ctx.gid).map_err(|_| Errno::EOVERFLOW)?,
            ..*ctx
        };
        let p = self.parent_dir(parent)?;
        self.check(&p, Change::AddEntry)?;
        let pu = {
            let _c = trace::because(trace::Cause::CreateInLowerDir);
            ensure_upper(self, &p, Data::Copy)?
        };
        let pdir_fd = pu.dir()?;
        let pmode = fstat_fd(pdir_fd.as_fd())?.st_mode;
        let setgid = pmode & libc::S_ISGID != 0;
        let pdir = pu.dir_ref()?;
        // Made in its directory with the caller's umask, the upper filesystem gives the
        // object the directory's default ACL, or applies the umask where there is none.
        let made = crate::sys::fsops::with_umask(ctx.umask, || make(pdir_fd.as_fd(), name, &obj))?;
        let (real, file) = match made {
            Ok(file) => {
                let real = upper_real(pdir, name, obj.is_dir(), None)?;
                own(&real, ctx, setgid, &obj)?;
                // The kernel with xino=on or redirect_dir=on allows no offline change of
                // the lowers, and so makes a new directory in a merged one opaque (an
                // optimisation there, allowed to fail: so here too).
                let no_offline = self.config.xino_on || self.config.redirect_create;
                if obj.is_dir() && no_offline && !p.state.read().lowers.is_empty() {
                    if let Ok(x) = real.xpath() {
                        if crate::sys::fsops::setxattr(&x, self.layers.ns.opaque(), b"y", 0).is_ok()
                        {
                            trace::opaque(self, &p, name, "mkdir-xino-on");
                        }
                    }
                }
                (real, file)
            }
            Err(Errno(libc::EEXIST)) if is_upper_whiteout(pdir_fd.as_fd(), name) => {
                let made = self.create_over_whiteout(ctx, &pu, name, &obj, setgid)?;
                trace::whiteout_removed(self, &p, name, "create");
                if obj.is_dir() {
                    trace::opaque(self, &p, name, "mkdir-over-whiteout");
                }
                made
            }
            Err(e) => return Err(e),
        };
        let st = real.stat()?;
        let kind = st.st_mode & libc::S_IFMT;
        let state = State::new(
            parent,
            crate::inode::name_of(name),
            Some(real),
            Lowers::None,
        );
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
    ) -> Result<(Real, Option<File>)> {
        let work = self.work_fd()?;
        let pref = pu.dir_ref()?;
        let pdir = pref.fd()?;
        let tmp = self.tmp_name();
        let built = (|| -> Result<(Real, Option<File>)> {
            // Built outside its directory: give it what the directory's default ACL (or
            // the umask) would have given it there.
            let dflt = match obj {
                NewObj::Symlink { .. } => None,
                _ => crate::sys::fsops::getxattr_vec(&pu.xpath()?, OsStr::new(acl::DEFAULT))?,
            };
            let inh = acl::inherit(dflt.as_deref(), obj.mode(), ctx.umask, obj.is_dir())?;
            let file = make(work, &tmp, &obj.with_mode(inh.mode))?;
            let tfd = Arc::new(open_path(work, &tmp)?);
            let st = fstat_fd(tfd.as_fd())?;
            let t = Real {
                loc: Loc::Fd(Arc::clone(&tfd)),
                layer: LayerRef::Upper,
                dev: st.st_dev,
                ino: st.st_ino,
            };
            for (n, v) in [(acl::ACCESS, &inh.access), (acl::DEFAULT, &inh.default)] {
                if let Some(v) = v {
                    crate::sys::fsops::setxattr(&t.xpath()?, OsStr::new(n), v, 0)?;
                }
            }
            own(&t, ctx, false, obj)?;
            if setgid {
                // Built outside the setgid directory: give it what the directory would have.
                let pst = fstat_fd(pdir.as_fd())?;
                t.chown(None, Some(pst.st_gid))?;
                if obj.is_dir() {
                    let cur = t.stat()?.st_mode;
                    t.chmod((cur & 0o7777) | libc::S_ISGID)?;
                }
            }
            let flags = if obj.is_dir() {
                crate::sys::fsops::setxattr(&t.xpath()?, self.layers.ns.opaque(), b"y", 0)?;
                RenameFlags::RENAME_EXCHANGE
            } else {
                RenameFlags::empty()
            };
            nix::fcntl::renameat2(work, tmp.as_os_str(), pdir.as_fd(), name, flags)?;
            Ok((upper_real(pref, name, obj.is_dir(), None)?, file))
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
        let p = self.parent_dir(newparent)?;
        self.check(&src, Change::Unlink)?;
        self.check(&p, Change::AddEntry)?;
        let su = {
            let _c = trace::because(trace::Cause::Link);
            ensure_upper(self, &src, Data::Meta)?
        };
        let pu = {
            let _c = trace::because(trace::Cause::CreateInLowerDir);
            ensure_upper(self, &p, Data::Copy)?
        };
        if src.state.read().metacopy {
            // Every name of a metadata-only copy must find its data: an absolute redirect.
            self.set_redirect(&src, &su, false)?;
        }
        let pdir_fd = pu.dir()?;
        let pdir = pdir_fd.as_fd();
        match su.link_to(pdir, newname) {
            Ok(()) => {}
            Err(Errno(libc::EEXIST)) if is_upper_whiteout(pdir, newname) => {
                let work = self.work_fd()?;
                let tmp = self.tmp_name();
                let r = su.link_to(work, &tmp).and_then(|()| {
                    Ok(nix::fcntl::renameat2(
                        work,
                        tmp.as_os_str(),
                        pdir,
                        newname,
                        RenameFlags::empty(),
                    )?)
                });
                if r.is_err() {
                    crate::copyup::remove_tmp(work, &tmp);
                }
                r?;
                trace::whiteout_removed(self, &p, newname, "link");
            }
            Err(e) => return Err(e),
        }
        // With two names the node is held by descriptor: removing the name it was found
        // under must not lose it.
        if let Loc::At(..) = su.loc {
            let fd = open_path(pdir, newname)?;
            if let Some(u) = src.state.write().upper.as_mut() {
                u.loc = Loc::Fd(Arc::new(fd));
            }
        }
        // The new name must show the same inode number, which comes from the origin.
        if !src.state.read().lowers.is_empty() || has_origin(self, &su) {
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
        self.check(&p, Change::RemoveEntry)?;
        self.check(node, Change::Unlink)?;
        match (dir, node.is_dir()) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            _ => {}
        }
        if dir && !crate::readdir::is_empty(&self.layers, &node.state.read())? {
            return Err(Errno::ENOTEMPTY);
        }
        let pu = {
            let _c = trace::because(trace::Cause::RemoveInLowerDir);
            ensure_upper(self, &p, Data::Copy)?
        };
        // No copy-up of the node while its name goes (one that ran first is seen below;
        // one that comes after sees `unlinked`), and no request on it reads a location
        // that is being removed: both wait for the locks.
        let _copyup = node.copyup.lock();
        let mut st = node.state.write();
        let (has_upper, has_lower) = (st.upper.is_some(), !st.lowers.is_empty());
        // Whether a lower layer shows this *name*. A node without an upper object was just
        // found in a lower layer under it. With an upper object the node's lower part says
        // nothing about the name (an upper hard link has other names): ask the layers.
        // A directory moved here (a redirect) has lower content under another name.
        let needs_whiteout = (has_lower && !has_upper) || lower_positive(&p.state.read(), name)?;
        // The kernel may still send requests for the node (an open file, a request that
        // resolved the name before it went): they must reach this object, not whatever
        // takes the name next.
        pin_victim(node, &mut st)?;
        match (has_upper, needs_whiteout) {
            (true, false) => remove_real(pu.dir()?.as_fd(), name, dir)?,
            (false, _) => self.whiteout_at(pu.dir()?.as_fd(), name).inspect_err(|e| {
                // The node was found lower-only under the name (see `UnionFs::lookup`):
                // EEXIST here would mean that the name shows another object.
                log::warn!("remove {name:?}: whiteout over a lower-only node: {e}")
            })?,
            (true, true) => {
                let work = self.work_fd()?;
                let tmp = self.tmp_name();
                self.whiteout_at(work, &tmp)?;
                if let Err(e) = nix::fcntl::renameat2(
                    work,
                    tmp.as_os_str(),
                    pu.dir()?.as_fd(),
                    name,
                    RenameFlags::RENAME_EXCHANGE,
                ) {
                    crate::copyup::remove_tmp(work, &tmp);
                    return Err(e.into());
                }
                remove_real(work, &tmp, dir)?;
            }
        }
        if needs_whiteout {
            trace::whiteout(self, &p, name, if dir { "rmdir" } else { "unlink" });
        }
        crate::testhook::pause("unlink");
        let still_linked = !dir
            && !needs_whiteout
            && st
                .upper
                .as_ref()
                .is_some_and(|u| u.stat().is_ok_and(|s| s.st_nlink > 0));
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
                    _ => {}
                }
            }
        } else if exchange {
            return Err(Errno::ENOENT);
        }
        self.check_rename(&p, &src.node, &np, dst.as_ref().map(|d| &*d.node))?;
        // Without redirect_dir=on a directory with lower content cannot move: EXDEV makes
        // `mv` copy it instead. The kernel's overlay says so before it looks at the target.
        let has_lower = |n: &Inode| !n.state.read().lowers.is_empty();
        let movable = |n: &Inode| self.config.redirect_create || !n.is_dir() || !has_lower(n);
        if !movable(&src.node) {
            trace::exdev(self, &src.node, (&np, newname), "dir-with-lower-content");
            return Err(Errno::EXDEV);
        }
        if let Some(d) = &dst {
            if exchange && !movable(&d.node) {
                trace::exdev(self, &d.node, (&p, name), "dir-with-lower-content");
                return Err(Errno::EXDEV);
            }
            // A pure upper directory (no lower part, never copied up: no whiteouts in it)
            // is left for the real rename to refuse, as the kernel leaves it, after the
            // copy-ups and the redirect.
            if !exchange
                && d.node.is_dir()
                && !self.pure_upper_dir(&d.node)
                && !crate::readdir::is_empty(&self.layers, &d.node.state.read())?
            {
                return Err(Errno::ENOTEMPTY);
            }
        }
        let src_had_lower = has_lower(&src.node);
        let src_had_upper = src.node.state.read().upper.is_some();
        let _c = trace::because(trace::Cause::Rename);
        let su = ensure_upper(self, &src.node, Data::Meta)?;
        let pu = ensure_upper(self, &p, Data::Copy)?;
        let npu = ensure_upper(self, &np, Data::Copy)?;
        if let Some(d) = &dst {
            if exchange {
                ensure_upper(self, &d.node, Data::Meta)?;
            }
        }
        // Leave a whiteout where a lower layer shows the old name (see `remove`).
        let src_whiteout = !exchange
            && ((src_had_lower && !src_had_upper) || lower_positive(&p.state.read(), name)?);
        // A directory with lower content records where that content is (a redirect); a
        // pure upper directory moved into a merged one becomes opaque, as the kernel makes
        // it: names below the new place must not show through it.
        let ns = self.layers.ns;
        let samedir = parent == newparent;
        let metacopy = |n: &Inode| n.state.read().metacopy;
        if (src.node.is_dir() && has_lower(&src.node)) || metacopy(&src.node) {
            self.set_redirect(&src.node, &su, samedir)?;
        } else if src.node.is_dir()
            && has_lower(&np)
            && !crate::whiteout::has_opaque_xattr(&su.xpath()?, ns)
        {
            crate::sys::fsops::setxattr(&su.xpath()?, ns.opaque(), b"y", 0)?;
            trace::opaque(self, &np, newname, "rename-into-merged-dir");
        }
        if let (true, Some(d)) = (exchange, &dst) {
            let du = d.node.state.read().upper.clone();
            if let (Some(du), true) = (&du, metacopy(&d.node)) {
                self.set_redirect(&d.node, du, samedir)?;
            } else if let (true, Some(du)) = (d.node.is_dir(), du) {
                if has_lower(&d.node) {
                    self.set_redirect(&d.node, &du, samedir)?;
                } else if has_lower(&p) && !crate::whiteout::has_opaque_xattr(&du.xpath()?, ns) {
                    crate::sys::fsops::setxattr(&du.xpath()?, ns.opaque(), b"y", 0)?;
                    trace::opaque(self, &p, name, "rename-into-merged-dir");
                }
            }
        }
        if !exchange {
            // An upper directory being replaced may still hold whiteouts; the rename
            // needs it really empty.
            if let Some(d) = &dst {
                if d.node.is_dir() && !self.pure_upper_dir(&d.node) {
                    if let Some(du) = d.node.state.read().upper.clone() {
                        clean_dir(du.dir()?.as_fd())?;
                    }
                }
            }
        }
        // Whether each side carries an origin, read before the names change: the parent it
        // lands in must then be marked impure.
        let src_origin = src_had_lower || has_origin(self, &su);
        let dst_origin = match (&dst, exchange) {
            (Some(d), true) => {
                has_lower(&d.node)
                    || d.node
                        .state
                        .read()
                        .upper
                        .as_ref()
                        .is_some_and(|u| has_origin(self, u))
            }
            _ => false,
        };
        if !samedir {
            // Before the rename, as the kernel marks them (so also when it fails).
            if src_origin {
                mark_impure(self, &np, &npu)?;
            }
            if dst_origin {
                mark_impure(self, &p, &pu)?;
            }
        }
        let (odf, ndf) = (pu.dir()?, npu.dir()?);
        let (od, nd) = (odf.as_fd(), ndf.as_fd());
        // From the rename of the real names until the nodes know their new places, no
        // request on them may read where they are: they wait for these locks (taken in
        // node order, the only place that holds two).
        let (mut sst, mut dst_st) = match &dst {
            Some(d) if d.node.ino < src.node.ino => {
                let dl = d.node.state.write();
                (src.node.state.write(), Some(dl))
            }
            Some(d) => {
                let sl = src.node.state.write();
                (sl, Some(d.node.state.write()))
            }
            None => (src.node.state.write(), None),
        };
        if let (false, Some(d), Some(dl)) = (exchange, &dst, dst_st.as_mut()) {
            // The replaced node may still be used (see `remove`).
            pin_victim(&d.node, dl)?;
        }
        if exchange {
            nix::fcntl::renameat2(od, name, nd, newname, RenameFlags::RENAME_EXCHANGE)?;
        } else if src.node.is_dir() && is_upper_whiteout(nd, newname) {
            // A directory cannot replace a whiteout (a non-directory) by rename: swap
            // them; the whiteout then sits at the old name, where it stays if needed.
            nix::fcntl::renameat2(od, name, nd, newname, RenameFlags::RENAME_EXCHANGE)?;
            trace::whiteout_removed(self, &np, newname, "rename");
            if !src_whiteout {
                nix::unistd::unlinkat(od, name, UnlinkatFlags::NoRemoveDir)?;
            }
        } else if src_whiteout {
            // One atomic step leaves the whiteout behind, as the kernel's overlay does.
            match nix::fcntl::renameat2(od, name, nd, newname, RenameFlags::RENAME_WHITEOUT) {
                Ok(()) => {}
                Err(nix::errno::Errno::EINVAL | nix::errno::Errno::EPERM) => {
                    nix::fcntl::renameat2(od, name, nd, newname, RenameFlags::empty())?;
                    self.whiteout_at(od, name)?;
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            nix::fcntl::renameat2(od, name, nd, newname, RenameFlags::empty())?;
        }
        if src_whiteout {
            trace::whiteout(self, &p, name, "rename");
        }
        crate::testhook::pause("rename");
        move_node(
            &mut sst,
            newparent,
            newname,
            npu.dir_ref()?,
            src.node.is_dir(),
        );
        if let (Some(dl), Some(d)) = (dst_st.as_mut(), &dst) {
            if exchange {
                move_node(dl, parent, name, pu.dir_ref()?, d.node.is_dir());
            } else {
                dl.unlinked = true;
            }
        }
        drop((sst, dst_st));
        if src_origin {
            mark_impure(self, &np, &npu)?;
        }
        if dst_origin {
            mark_impure(self, &p, &pu)?;
        }
        Ok(())
    }
}

/// The longest redirect the kernel writes (its `redirect_max` default); a longer one
/// makes the rename fail with EXDEV.
const REDIRECT_MAX: usize = 256;

impl UnionFs {
    /// Records, before a directory with lower content (or a metadata-only copy) moves,
    /// where that content is (the kernel's `ovl_set_redirect`): its name when it stays in
    /// its directory (and is no lower hard link), else the absolute path of its lower
    /// part, made of its own and its ancestors' names, each replaced by its redirect where
    /// it has one. A redirect that already says enough is kept. When none can be written
    /// the rename fails with EXDEV (so `mv` copies the directory), as in the kernel.
    fn set_redirect(&self, node: &Inode, upper: &Real, samedir: bool) -> Result<()> {
        let (current, name, lower_links) = {
            let st = node.state.read();
            let links = match (node.is_dir(), st.lowers.first()) {
                (false, Some(l)) => l.stat().map_or(1, |s| s.st_nlink),
                _ => 1,
            };
            (st.redirect().cloned(), st.name.to_os_string(), links)
        };
        // A lower hard link's other names may be anywhere: its redirect is absolute.
        let absolute = !samedir || lower_links > 1;
        if let Some(r) = &current {
            if !absolute || r.as_bytes().starts_with(b"/") {
                return Ok(());
            }
        }
        let value = if !absolute {
            name.into_vec()
        } else {
            self.absolute_redirect(node).ok_or(Errno::EXDEV)?
        };
        let set = upper.xpath().and_then(|x| {
            Ok(crate::sys::fsops::setxattr(
                &x,
                self.layers.ns.redirect(),
                &value,
                0,
            )?)
        });
        if let Err(e) = set {
            log::warn!("cannot set the redirect of {:?}: {e}", upper.ino);
            return Err(Errno::EXDEV);
        }
        if trace::on() {
            // Named where the directory is before the rename that needs the redirect.
            trace::emit(&format!(
                "event=redirect path={} redirect={}",
                trace::path_of(self, node),
                trace::quote(std::os::unix::ffi::OsStrExt::from_bytes(&value[..]))
            ));
        }
        node.state
            .write()
            .set_redirect(Some(OsString::from_vec(value)));
        Ok(())
    }

    /// A directory with no lower part and no origin: it holds no whiteouts (the kernel's
    /// `ovl_pure_upper`).
    fn pure_upper_dir(&self, node: &Inode) -> bool {
        let upper = {
            let st = node.state.read();
            if !st.lowers.is_empty() {
                return false;
            }
            st.upper.clone()
        };
        !upper.is_some_and(|u| has_origin(self, &u))
    }

    /// The absolute redirect of a directory (see `set_redirect`); None when it would be
    /// longer than the kernel allows or an ancestor is gone.
    fn absolute_redirect(&self, node: &Inode) -> Option<Vec<u8>> {
        let mut parts: Vec<Vec<u8>> = Vec::new();
        let mut len = 0;
        let mut cur = self.inode(node.ino).ok()?;
        while cur.ino != crate::inode::ROOT {
            let (part, parent) = {
                let st = cur.state.read();
                (
                    st.redirect()
                        .cloned()
                        .unwrap_or_else(|| st.name.to_os_string()),
                    st.parent,
                )
            };
            let part = part.into_vec();
            let absolute = part.starts_with(b"/");
            len += part.len() + usize::from(!absolute);
            if len > REDIRECT_MAX {
                return None;
            }
            parts.push(part);
            if absolute {
                break;
            }
            cur = self.inode(parent).ok()?;
        }
        let mut out = Vec::with_capacity(len);
        for part in parts.iter().rev() {
            if !part.starts_with(b"/") {
                out.push(b'/');
            }
            out.extend_from_slice(part);
        }
        Some(out)
    }
}

/// A node whose name goes must stay reachable: hold its upper object by descriptor (one
/// per removed node the kernel still holds, given back when it forgets the node).
fn pin_victim(node: &Inode, st: &mut State) -> Result<()> {
    if node.is_dir() {
        return Ok(());
    }
    if let Some(u) = st.upper.as_mut() {
        u.pin()?;
    }
    Ok(())
}

fn has_origin(fs: &UnionFs, r: &Real) -> bool {
    r.xpath()
        .ok()
        .and_then(|x| crate::sys::fsops::getxattr_vec(&x, fs.layers.ns.origin()).ok())
        .flatten()
        // An empty record is the kernel's "copied up, origin unknown": no origin.
        .is_some_and(|v| !v.is_empty())
}

fn move_node(st: &mut State, parent: u64, name: &OsStr, parent_upper: &Arc<DirRef>, dir: bool) {
    st.parent = parent;
    st.name = crate::inode::name_of(name);
    if let Some(u) = st.upper.as_mut() {
        match &u.loc {
            Loc::At(..) => u.loc = Loc::At(Arc::clone(parent_upper), Arc::clone(&st.name)),
            Loc::Dir(d) => d.moved(parent_upper, name),
            Loc::Fd(_) => {}
        }
    }
    // A moved directory keeps merging its lower directories (its redirect leads there
    // again after a remount), as the kernel's dentry keeps its lower stack. The lower
    // object of a file stays at the old name (its origin record keeps its inode number):
    // keeping it would make removing the new name leave a needless whiteout.
    if !dir && !st.metacopy {
        st.lowers = Lowers::None;
    }
}
