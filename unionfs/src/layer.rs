//! The layer stack: the upper layer, the lower layers top-down, and the work directory,
//! each held open as an `O_PATH` descriptor so that requests resolve names beneath it.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};

use crate::errno::Result;

/// The namespace of the overlay's private xattrs (`trusted.overlay.*` or, with `userxattr`,
/// `user.overlay.*`), as the kernel's `userxattr` option selects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XattrNs {
    Trusted,
    User,
}

impl XattrNs {
    pub fn prefix(self) -> &'static str {
        match self {
            XattrNs::Trusted => "trusted.overlay.",
            XattrNs::User => "user.overlay.",
        }
    }
    pub fn opaque(self) -> &'static OsStr {
        OsStr::new(match self {
            XattrNs::Trusted => "trusted.overlay.opaque",
            XattrNs::User => "user.overlay.opaque",
        })
    }
    pub fn origin(self) -> &'static OsStr {
        OsStr::new(match self {
            XattrNs::Trusted => "trusted.overlay.origin",
            XattrNs::User => "user.overlay.origin",
        })
    }
    pub fn uuid(self) -> &'static OsStr {
        OsStr::new(match self {
            XattrNs::Trusted => "trusted.overlay.uuid",
            XattrNs::User => "user.overlay.uuid",
        })
    }
    pub fn impure(self) -> &'static OsStr {
        OsStr::new(match self {
            XattrNs::Trusted => "trusted.overlay.impure",
            XattrNs::User => "user.overlay.impure",
        })
    }
    /// An upper regular file whose data is still its lower file's (`metacopy=on`).
    pub fn metacopy(self) -> &'static OsStr {
        OsStr::new(match self {
            XattrNs::Trusted => "trusted.overlay.metacopy",
            XattrNs::User => "user.overlay.metacopy",
        })
    }
    /// Where a renamed directory's lower content is (`redirect_dir=on`).
    pub fn redirect(self) -> &'static OsStr {
        OsStr::new(match self {
            XattrNs::Trusted => "trusted.overlay.redirect",
            XattrNs::User => "user.overlay.redirect",
        })
    }
    /// Append-only and immutable (`a`, `i`), which are not set on the upper inode.
    pub fn protattr(self) -> &'static OsStr {
        OsStr::new(match self {
            XattrNs::Trusted => "trusted.overlay.protattr",
            XattrNs::User => "user.overlay.protattr",
        })
    }
}

/// One layer directory.
#[derive(Debug)]
pub struct Layer {
    pub path: PathBuf,
    pub root: Arc<OwnedFd>,
    pub dev: u64,
    /// Index of the layer's filesystem among the layers' distinct filesystems; 0 is the
    /// upper's. It goes into the high bits of inode numbers, as the kernel's `xino` does.
    pub fsid: u64,
    /// The filesystem's UUID, recorded in origin file handles.
    pub uuid: [u8; 16],
    /// The root opened for reading, the form `open_by_handle_at` takes (not `O_PATH`);
    /// None where the layer root cannot be read.
    handles: Option<OwnedFd>,
    /// The filesystem gives no file handles (an overlay without `nfs_export`): the kernel's
    /// overlay then records an empty origin ("a copy-up, origin unknown"), as we do.
    pub no_handles: bool,
}

impl Layer {
    /// The origin record of a copy-up from this layer of the object whose handle `fh`
    /// gives: the handle in the kernel's format, or the kernel's empty record where the
    /// filesystem has no handles. None when the handle could not be had otherwise.
    pub fn origin_record(&self, fh: impl FnOnce() -> Option<(i32, Vec<u8>)>) -> Option<Vec<u8>> {
        if self.no_handles {
            return Some(Vec::new());
        }
        fh().and_then(|h| crate::origin::encode(h, &self.uuid))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }
}

#[derive(Debug)]
pub struct Layers {
    pub upper: Option<Layer>,
    /// Top-down: `lowers[0]` is the topmost lower layer.
    pub lowers: Vec<Layer>,
    /// `workdir/work`, where copy-ups and whiteouts are built before they are renamed in.
    pub work: Option<Arc<OwnedFd>>,
    pub ns: XattrNs,
}

pub fn open_dir_path(path: &Path) -> Result<OwnedFd> {
    Ok(nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

pub fn fstat_fd(fd: BorrowedFd<'_>) -> Result<FileStat> {
    Ok(nix::sys::stat::fstatat(fd, "", AtFlags::AT_EMPTY_PATH)?)
}

/// The name of the kernel's (and our) scratch directory inside the workdir.
pub const WORK_SUBDIR: &str = "work";

impl Layers {
    pub fn open(
        lowers: &[PathBuf],
        upper: Option<&Path>,
        workdir: Option<&Path>,
        ns: XattrNs,
    ) -> Result<Layers> {
        let mut devs: Vec<u64> = Vec::new();
        let mut fsid_of = |dev: u64| -> u64 {
            if let Some(i) = devs.iter().position(|d| *d == dev) {
                i as u64
            } else {
                devs.push(dev);
                (devs.len() - 1) as u64
            }
        };
        let mut make = |path: &Path| -> Result<Layer> {
            let root = Arc::new(open_dir_path(path)?);
            let st = fstat_fd(root.as_fd())?;
            let dev = st.st_dev;
            let handles = nix::fcntl::openat(
                root.as_fd(),
                ".",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .ok();
            // Asked on the readable root: an ioctl on an `O_PATH` descriptor fails (EBADF).
            let uuid = handles
                .as_ref()
                .map_or([0; 16], |h| crate::sys::fsops::fs_uuid(h.as_fd()));
            let no_handles =
                crate::sys::fsops::name_to_handle(root.as_fd(), &std::ffi::CString::default())
                    .is_err_and(|e| e.raw_os_error() == Some(libc::EOPNOTSUPP));
            Ok(Layer {
                path: path.to_path_buf(),
                root,
                dev,
                fsid: fsid_of(dev),
                uuid,
                handles,
                no_handles,
            })
        };
        // The upper first, so that its filesystem gets fsid 0.
        let upper = upper.map(&mut make).transpose()?;
        let lowers = lowers.iter().map(|p| make(p)).collect::<Result<Vec<_>>>()?;
        let work = match workdir {
            Some(w) => {
                let (work, new) = prepare_work(w)?;
                if let (true, Some(u)) = (new, &upper) {
                    init_uuid(u, ns)?;
                }
                Some(Arc::new(work))
            }
            None => None,
        };
        Ok(Layers {
            upper,
            lowers,
            work,
            ns,
        })
    }

    pub fn read_only(&self) -> bool {
        self.upper.is_none()
    }

    /// The inode number `stat` shows for an upper object whose origin record is `record`:
    /// the origin's, on its filesystem (see `natural_ino`). As the kernel does, the lower
    /// object is found by opening its file handle, since a handle's layout is the
    /// filesystem's own (tmpfs puts the generation first, ext4 the inode number); only
    /// without the privilege for that is the layout of the common handle types read.
    pub fn origin_ino(&self, record: &[u8]) -> Option<u64> {
        let (kind, fid) = crate::origin::handle(record)?;
        let mut tried: Vec<u64> = Vec::new();
        for l in &self.lowers {
            let Some(h) = &l.handles else { continue };
            if tried.contains(&l.dev) {
                continue;
            }
            tried.push(l.dev);
            match crate::sys::fsops::open_by_handle(h.as_fd(), kind, fid, libc::O_PATH) {
                Ok(fd) => {
                    let st = fstat_fd(fd.as_fd()).ok()?;
                    if st.st_dev == l.dev {
                        return Some(crate::inode::natural_ino(st.st_ino, l.fsid));
                    }
                }
                // Not allowed to open handles (no CAP_DAC_READ_SEARCH): read the layout.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    let fsid = self.lowers.first().map_or(0, |l| l.fsid);
                    return crate::origin::decode_ino(record)
                        .map(|ino| crate::inode::natural_ino(ino, fsid));
                }
                // Not on this filesystem, or gone from it.
                Err(_) => {}
            }
        }
        None
    }
}

/// On the first mount of a new overlay the kernel gives the upper root a random UUID
/// (`*.overlay.uuid`, the `uuid=auto` default); we do the same so both write the same upper.
fn init_uuid(upper: &Layer, ns: XattrNs) -> Result<()> {
    let x = crate::sys::fsops::XPath::fd(Arc::clone(&upper.root));
    if crate::sys::fsops::getxattr_vec(&x, ns.uuid())?.is_some() {
        return Ok(());
    }
    let mut uuid = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut uuid)?;
    // RFC 4122 version 4, as the kernel's uuid_gen() makes it.
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    crate::sys::fsops::setxattr(&x, ns.uuid(), &uuid, 0)?;
    Ok(())
}

/// Creates `workdir/work` (mode 0 as root, as the kernel does; 0700 without privileges,
/// or we could not use it) and empties it of whatever an earlier crash left behind: those
/// are half-built copies that were never renamed into place. Returns whether the work
/// directory is new, which marks the first mount of a new overlay.
fn prepare_work(workdir: &Path) -> Result<(OwnedFd, bool)> {
    let wd = open_dir_path(workdir)?;
    let mode = if nix::unistd::geteuid().is_root() {
        Mode::empty()
    } else {
        Mode::S_IRWXU
    };
    let new = match nix::sys::stat::mkdirat(wd.as_fd(), WORK_SUBDIR, mode) {
        Ok(()) => true,
        Err(nix::errno::Errno::EEXIST) => false,
        Err(e) => return Err(e.into()),
    };
    let work = nix::fcntl::openat(
        wd.as_fd(),
        WORK_SUBDIR,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    // A default ACL on the workdir was inherited by `work` (as its default and access
    // ACLs) and would be by every copy built there: the kernel removes both and the mode
    // bits they gave, and so do we.
    let x = crate::sys::fsops::XPath::at(Arc::new(wd), OsStr::new(WORK_SUBDIR));
    for name in [crate::acl::DEFAULT, crate::acl::ACCESS] {
        match crate::sys::fsops::removexattr(&x, OsStr::new(name)) {
            Ok(()) => {}
            Err(e) if crate::sys::fsops::is_no_xattr(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let path = crate::sys::fsops::proc_fd_path(work.as_fd());
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        path.as_c_str(),
        mode,
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )?;
    clean_dir(work.as_fd())?;
    Ok((work, new))
}

/// Removes everything inside a directory (recursively), keeping the directory.
pub fn clean_dir(dir: BorrowedFd<'_>) -> Result<()> {
    let names = crate::readdir::list_raw(dir)?;
    for e in names {
        if e.is_dir {
            let sub = nix::fcntl::openat(
                dir,
                e.name.as_os_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            clean_dir(sub.as_fd())?;
            nix::unistd::unlinkat(
                dir,
                e.name.as_os_str(),
                nix::unistd::UnlinkatFlags::RemoveDir,
            )?;
        } else {
            nix::unistd::unlinkat(
                dir,
                e.name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            )?;
        }
    }
    Ok(())
}
