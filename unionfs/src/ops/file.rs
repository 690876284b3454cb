//! Open files: open (copy-up when opened for writing), read, write, fsync, fallocate,
//! lseek, copy_file_range, release.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use nix::fcntl::{FallocateFlags, OFlag};

use crate::copyup::{ensure_upper, Data};
use crate::errno::{Errno, Result};
use crate::handle::FileHandle;
use crate::ops::fileattr::Change;
use crate::options::Passthrough;
use crate::union::UnionFs;

/// The flags we pass on to the real open: access mode and synchronous-I/O flags. O_APPEND is
/// left out since the kernel sends each write with its offset already at the end.
fn real_flags(flags: i32) -> OFlag {
    let keep = libc::O_ACCMODE | libc::O_SYNC | libc::O_DSYNC | libc::O_TRUNC;
    OFlag::from_bits_truncate(flags & keep)
}

pub fn wants_write(flags: i32) -> bool {
    (flags & libc::O_ACCMODE) != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// How the kernel gets an open file's data.
pub enum DataPath {
    /// Straight from the backing file (FUSE passthrough).
    Passthrough(Arc<crate::backing::Backing>),
    /// Reads and writes through the daemon (to the right real file), bypassing the page
    /// cache. Used while another open of the node passes through to a different real file
    /// (the lower one, opened before a copy-up, with `passthrough=all`): the kernel requires
    /// every open of such an inode to name that same backing file, and lets
    /// `FOPEN_DIRECT_IO` route the I/O to us instead. An mmap of such an open, shared or
    /// private, still maps the old backing file, which the kernel opens again for it with
    /// the opener's flags.
    Direct(Arc<crate::backing::Backing>),
    /// Through the daemon and the page cache.
    Cached,
}

/// An opened real file and the identity of the real object behind it.
pub struct Opened {
    pub file: File,
    pub real: (u64, u64),
    pub upper: bool,
    /// The lower object opened, when it is one (for `backing_file`).
    pub lower: Option<crate::inode::Real>,
    /// Opened for writing (see `data_path`).
    pub write: bool,
}

/// Whether a lower file passes through for some open of the node (`passthrough=all`).
fn lower_backing_live(opens: &crate::inode::Opens) -> bool {
    opens
        .backing
        .as_ref()
        .is_some_and(|b| b.lower && b.id.strong_count() > 0)
}

/// Waits a little for the node's lower passthrough opens to be released; whether they
/// are. A file closed just before comes to us as a RELEASE the kernel sends in the
/// background, which another request thread handles meanwhile.
fn lower_backing_gone(inode: &crate::inode::Inode) -> bool {
    let mut opens = inode.opens.lock();
    lower_backing_gone_locked(inode, &mut opens)
}

/// `lower_backing_gone` with the node's `opens` locked by the caller (unlocked while
/// waiting).
fn lower_backing_gone_locked(
    inode: &crate::inode::Inode,
    opens: &mut crate::inode::OpensGuard<'_>,
) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while lower_backing_live(opens) {
        if inode.released.wait_until(opens, deadline).timed_out() {
            return !lower_backing_live(opens);
        }
    }
    true
}

thread_local! {
    /// The read buffer of a request thread (see `UnionFs::read`).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl UnionFs {
    /// Chooses the data path for a new open of `ino` and counts the open; `register`
    /// makes a backing id for the file when one is needed.
    ///
    /// With `passthrough=upper` (the default as root) only upper files pass through: an
    /// upper file is never replaced, while a lower one is when copied up, and an open that
    /// passes through to the lower file can never see the copy (the kernel's overlay moves
    /// even read-only opens to the upper copy; ours move at their next read, see
    /// `follow_copy_up`).
    ///
    /// With `passthrough=all` lower files pass through too, and that is the mode's
    /// documented divergence: a read-only open of a lower file made before a copy-up keeps
    /// reading the lower file, like a shared mmap on the kernel's overlay. The kernel opens
    /// the backing file anew for each open of the inode with that open's flags, so lower
    /// backing files come from a read-only clone of the layer (`backing_file`), and
    /// `open_file` refuses write opens while a lower file passes through (ETXTBSY). Read
    /// opens of a copy made meanwhile (by truncate or chmod) are `Direct`: their reads
    /// reach the copy through us; only their mmap maps the lower file.
    ///
    /// The kernel refuses to mix passthrough and cached opens of an inode, and binds one
    /// backing file per inode while any passthrough open lives, so the first open decides
    /// for all that overlap it.
    pub fn data_path(
        &self,
        ino: u64,
        opened: &Opened,
        register: impl FnOnce() -> std::io::Result<crate::backing::Backing>,
    ) -> Result<DataPath> {
        let inode = self.inode(ino)?;
        let mut opens = inode.opens.lock();
        // `open_file` found no lower file passing through before it copied up, but a read
        // open that resolved the node before the copy can have passed the lower file
        // through since. This open would get that backing id (`Direct`), and the kernel
        // would open the lower file for writing as its backing, on the read-only clone,
        // and fail the open with EIO (see the race test
        // `append_open_of_a_lower_file_during_a_passthrough_read_open`). Wait for it to go,
        // as `open_file` does; refuse likewise.
        if opened.write && !lower_backing_gone_locked(&inode, &mut opens) {
            return Err(Errno(libc::ETXTBSY));
        }
        opens.handles += 1;
        if let Some(b) = opens.backing.as_ref() {
            if let Some(id) = b.id.upgrade() {
                return Ok(if b.real == opened.real {
                    DataPath::Passthrough(id)
                } else {
                    DataPath::Direct(id)
                });
            }
        }
        if opens.cached > 0 || !self.may_pass_through(opened.upper) {
            opens.cached += 1;
            return Ok(DataPath::Cached);
        }
        match register() {
            Ok(id) => {
                let id = Arc::new(id);
                opens.backing = Some(crate::inode::Backing {
                    real: opened.real,
                    lower: !opened.upper,
                    id: Arc::downgrade(&id),
                });
                Ok(DataPath::Passthrough(id))
            }
            Err(e) => {
                log::debug!("passthrough refused for node {ino}: {e}");
                if e.raw_os_error() == Some(libc::EPERM) {
                    self.disable_passthrough();
                }
                opens.cached += 1;
                Ok(DataPath::Cached)
            }
        }
    }

    /// Opens the real file for a node; copies it up first when opened for writing.
    ///
    /// `O_TRUNC` reaches here only from a front end that grants the kernel
    /// `FUSE_ATOMIC_O_TRUNC`, and none must (issue 14): the kernel then expects OPEN to have
    /// truncated, and its `handle_truncate` (`fuse_do_setattr` with `ATTR_OPEN`) later only
    /// sets its size to 0, under the inode lock but without asking us. An append that holds
    /// that lock meanwhile lands in the file after our truncation: the kernel's overlay
    /// would truncate after it (the VFS orders the two by the inode lock), while here its
    /// bytes stay behind a hole the kernel believes gone, so a mapping of the file faults
    /// (SIGBUS) while stat and read show them again. Without the flag the kernel truncates
    /// with a SETATTR from `handle_truncate`, under the inode lock, ordered with writes as on
    /// the overlay; the price is that OPEN no longer says `O_TRUNC`, so a lower file opened
    /// with it is copied up with its data before the SETATTR empties it
    /// (`races::open_trunc_during_an_append_truncates_after_it`).
    pub fn open_file(&self, ino: u64, flags: i32, caller: &crate::union::Ctx) -> Result<Opened> {
        let inode = self.inode(ino)?;
        let real = if wants_write(flags) {
            self.check_writable()?;
            let append = flags & libc::O_APPEND != 0 && flags & libc::O_TRUNC == 0;
            self.check(&inode, Change::Write { append })?;
            if !lower_backing_gone(&inode) {
                // The kernel would open the lower file for writing as this open's backing
                // (see `data_path`); refuse before copying up, as for a busy executable.
                return Err(Errno(libc::ETXTBSY));
            }
            let data = if flags & libc::O_TRUNC != 0 {
                Data::Skip
            } else {
                Data::Copy
            };
            let _c = crate::trace::because(if data == Data::Skip {
                crate::trace::Cause::Truncate
            } else {
                crate::trace::Cause::OpenWrite
            });
            // Tests hold open here the window between the check above and `data_path`.
            crate::testhook::pause("open-write-checked");
            ensure_upper(self, &inode, data)?
        } else {
            inode
                .state
                .read()
                .data_real()
                .cloned()
                .ok_or(Errno::ESTALE)?
        };
        let upper = real.layer == crate::inode::LayerRef::Upper;
        let file = real.open(real_flags(flags))?;
        if flags & libc::O_TRUNC != 0 {
            self.kill_setid(&real, caller, crate::killpriv::Cause::Write)?;
        }
        Ok(Opened {
            file,
            real: (real.dev, real.ino),
            upper,
            lower: if upper { None } else { Some(real) },
            write: wants_write(flags),
        })
    }

    /// The file a passthrough open registers as its backing file. The kernel opens the
    /// backing file anew for every open of the inode, with that open's flags, so a lower
    /// file is reopened on a read-only clone of its layer's mount: no open of the node, not
    /// even one of its upper copy made while a lower reader lives, can then write the lower
    /// layer (such an open fails instead; `open_file` refuses it first with ETXTBSY).
    /// `None`: the opened file itself. A failure here only keeps this open off
    /// passthrough, whatever its errno (EPERM from the kernel's registration turns
    /// passthrough off altogether, see `data_path`).
    pub fn backing_file(&self, opened: &Opened) -> std::io::Result<Option<File>> {
        let Some(real) = &opened.lower else {
            return Ok(None);
        };
        self.readonly_reopen(real, opened.real)
            .map(Some)
            .map_err(|e| std::io::Error::other(format!("no read-only lower backing file: {e}")))
    }

    fn readonly_reopen(&self, real: &crate::inode::Real, id: (u64, u64)) -> std::io::Result<File> {
        let crate::inode::LayerRef::Lower(i) = real.layer else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        let mount = self.readonly_lower(i)?;
        let (kind, handle) = real
            .file_handle()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESTALE))?;
        let file = File::from(crate::sys::fsops::open_by_handle(
            mount,
            kind,
            &handle,
            libc::O_RDONLY,
        )?);
        // The handle names the inode; make sure it is the very file this open read.
        let st = crate::layer::fstat_fd(file.as_fd()).map_err(std::io::Error::from)?;
        if (st.st_dev, st.st_ino) != id {
            return Err(std::io::Error::from_raw_os_error(libc::ESTALE));
        }
        Ok(file)
    }

    pub fn add_handle(&self, ino: u64, opened: Opened, path: &DataPath) -> u64 {
        let (cached, backing) = match path {
            DataPath::Cached => (true, None),
            DataPath::Passthrough(id) | DataPath::Direct(id) => (false, Some(Arc::clone(id))),
        };
        // A lower file the kernel reads itself (`passthrough=all`) stays the handle's file:
        // lseek and copy_file_range, which come to us, then agree with its reads.
        let follows = !opened.upper && !matches!(path, DataPath::Passthrough(_));
        self.handles.add_file(FileHandle {
            ino,
            file: RwLock::new(opened.file),
            on_lower: AtomicBool::new(follows),
            cached,
            backing,
        })
    }

    fn handle(&self, fh: u64) -> Result<Arc<FileHandle>> {
        self.handles.file(fh).ok_or(Errno::EBADF)
    }

    /// Reads up to `size` bytes at `offset` and hands them to `reply`, in a buffer kept
    /// per thread: allocating and zeroing up to a megabyte per request showed in profiles.
    pub fn read<R>(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        reply: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let h = self.handle(fh)?;
        if h.on_lower.load(Ordering::Relaxed) {
            // Until the copy can be opened (a rename of it may be under way), the lower
            // file it was made from still holds the same data.
            if let Err(e) = self.retry(|| self.follow_copy_up(&h)) {
                log::debug!("read of {}: still on the lower file: {e}", h.ino);
            }
        }
        let file = h.file.read();
        READ_BUF.with(|cell| {
            let mut buf = cell.borrow_mut();
            let want = size as usize;
            if buf.len() < want {
                buf.resize(want, 0);
            }
            let mut done = 0;
            while done < want {
                match file.read_at(&mut buf[done..want], offset + done as u64) {
                    Ok(0) => break,
                    Ok(n) => done += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(reply(&buf[..done]))
        })
    }

    /// Moves a read-only handle of a lower file to the upper copy once there is one.
    fn follow_copy_up(&self, h: &FileHandle) -> Result<()> {
        let inode = self.inode(h.ino)?;
        let upper = {
            let st = inode.state.read();
            st.upper.clone().filter(|_| !st.metacopy)
        };
        if let Some(u) = upper {
            let f = u.open(OFlag::O_RDONLY)?;
            *h.file.write() = f;
            h.on_lower.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let h = self.handle(fh)?;
        crate::testhook::pause("write");
        h.file.read().write_all_at(data, offset)?;
        u32::try_from(data.len()).map_err(|_| Errno::EINVAL)
    }

    pub fn release(&self, fh: u64) {
        let Some(h) = self.handles.remove_file(fh) else {
            return;
        };
        let inode = self.inode(h.ino).ok();
        if let Some(inode) = &inode {
            let mut opens = inode.opens.lock();
            opens.handles = opens.handles.saturating_sub(1);
            if h.cached {
                opens.cached = opens.cached.saturating_sub(1);
            }
        }
        // Only a write open waiting for a lower passthrough open to go listens (see
        // `lower_backing_gone`), so only `passthrough=all` handles ring.
        let ring = h.backing.is_some() && self.config.passthrough == Passthrough::All;
        // The last handle of a backing id closes it as it goes.
        drop(h);
        if let (true, Some(inode)) = (ring, inode) {
            // Under the lock, so that a waiter between its check and its wait still hears it.
            let _opens = inode.opens.lock();
            inode.released.notify_all();
        }
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let h = self.handle(fh)?;
        if datasync {
            h.file.read().sync_data()?;
        } else {
            h.file.read().sync_all()?;
        }
        Ok(())
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<()> {
        let h = self.handle(fh)?;
        let off = i64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let len = i64::try_from(length).map_err(|_| Errno::EINVAL)?;
        nix::fcntl::fallocate(
            h.file.read().as_fd(),
            FallocateFlags::from_bits_truncate(mode),
            off,
            len,
        )?;
        Ok(())
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> Result<i64> {
        let h = self.handle(fh)?;
        let whence = match whence {
            libc::SEEK_SET => nix::unistd::Whence::SeekSet,
            libc::SEEK_CUR => nix::unistd::Whence::SeekCur,
            libc::SEEK_END => nix::unistd::Whence::SeekEnd,
            libc::SEEK_DATA => nix::unistd::Whence::SeekData,
            libc::SEEK_HOLE => nix::unistd::Whence::SeekHole,
            _ => return Err(Errno::EINVAL),
        };
        let file = h.file.read();
        Ok(nix::unistd::lseek64(file.as_fd(), offset, whence)?)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> Result<u32> {
        let hi = self.handle(fh_in)?;
        let ho = self.handle(fh_out)?;
        let mut oi = i64::try_from(off_in).map_err(|_| Errno::EINVAL)?;
        let mut oo = i64::try_from(off_out).map_err(|_| Errno::EINVAL)?;
        let len = usize::try_from(len.min(u64::from(u32::MAX >> 1))).map_err(|_| Errno::EINVAL)?;
        let n = nix::fcntl::copy_file_range(
            hi.file.read().as_fd(),
            Some(&mut oi),
            ho.file.read().as_fd(),
            Some(&mut oo),
            len,
        )?;
        u32::try_from(n).map_err(|_| Errno::EINVAL)
    }
}
