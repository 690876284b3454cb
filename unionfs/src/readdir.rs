//! Merged directory listings: the union of the names in the upper and lower directories,
//! upper first, duplicates removed, whiteouts and markers hidden. A listing is taken once
//! per open directory (and again on rewind), so offsets stay stable while it is open.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use nix::dir::{Dir, Type};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

use crate::errno::Result;
use crate::inode::{natural_ino, LayerRef, State};
use crate::layer::Layers;
use crate::lookup::layer_fsid;
use crate::whiteout;

/// One entry of a real directory.
pub struct RawEntry {
    pub name: OsString,
    pub ino: u64,
    pub dtype: Option<Type>,
    pub is_dir: bool,
}

/// The entries of a real directory, without `.` and `..`.
pub fn list_raw(dir: BorrowedFd<'_>) -> Result<Vec<RawEntry>> {
    let mut d = Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsString::from(std::ffi::OsStr::from_bytes_compat(name));
        let dtype = match e.file_type() {
            Some(t) => Some(t),
            None => nix::sys::stat::fstatat(dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .ok()
                .and_then(|st| type_of_mode(st.st_mode)),
        };
        out.push(RawEntry {
            is_dir: dtype == Some(Type::Directory),
            name,
            ino: e.ino(),
            dtype,
        });
    }
    Ok(out)
}

trait FromBytesCompat {
    fn from_bytes_compat(b: &[u8]) -> &OsStr;
}
impl FromBytesCompat for OsStr {
    fn from_bytes_compat(b: &[u8]) -> &OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(b)
    }
}

pub fn type_of_mode(mode: u32) -> Option<Type> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFDIR => Type::Directory,
        libc::S_IFREG => Type::File,
        libc::S_IFLNK => Type::Symlink,
        libc::S_IFIFO => Type::Fifo,
        libc::S_IFSOCK => Type::Socket,
        libc::S_IFCHR => Type::CharacterDevice,
        libc::S_IFBLK => Type::BlockDevice,
        _ => return None,
    })
}

/// One entry of a merged listing.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: OsString,
    pub ino: u64,
    pub dtype: Type,
}

fn is_upper_whiteout(dir: BorrowedFd<'_>, e: &RawEntry) -> bool {
    e.dtype == Some(Type::CharacterDevice)
        && nix::sys::stat::fstatat(dir, e.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map(|st| whiteout::is_whiteout(&st))
            .unwrap_or(false)
}

/// The merged listing of a directory node, and whether any upper entry showed its
/// origin's inode number (what justifies the directory's impure marker).
pub fn merged(layers: &Layers, st: &State) -> Result<(Vec<Entry>, bool)> {
    let mut seen: HashSet<OsString> = HashSet::new();
    let mut out = Vec::new();
    let mut origins = false;
    if let Some(u) = &st.upper {
        let ufd = u.dir()?;
        for e in list_raw(ufd.as_fd())? {
            if is_upper_whiteout(ufd.as_fd(), &e) {
                seen.insert(e.name);
                continue;
            }
            let ino = if st.impure {
                upper_entry_ino(layers, &ufd, &e.name).unwrap_or(e.ino)
            } else {
                e.ino
            };
            origins |= ino != e.ino;
            if !st.lowers.is_empty() {
                seen.insert(e.name.clone());
            }
            out.push(Entry {
                name: e.name,
                ino,
                dtype: e.dtype.unwrap_or(Type::File),
            });
        }
    }
    for (i, l) in st.lowers.iter().enumerate() {
        let fsid = layer_fsid(layers, l.layer);
        let lfd = l.dir()?;
        let entries = list_raw(lfd.as_fd())?;
        let mut opaque = false;
        // Markers first: they hide names in this layer's siblings below, never above.
        let mut hidden: Vec<OsString> = Vec::new();
        for e in &entries {
            if whiteout::is_aufs_opaque(&e.name) {
                opaque = true;
            } else if let Some(h) = whiteout::aufs_hidden_name(&e.name) {
                hidden.push(h.to_os_string());
            }
        }
        // Names need remembering only for the layers still to come (hashing every name
        // was most of the cost of listing a large single-layer directory).
        let last = opaque || matches!(l.layer, LayerRef::Upper) || i + 1 == st.lowers.len();
        for e in entries {
            if whiteout::is_aufs_name(&e.name) || seen.contains(&e.name) {
                continue;
            }
            if e.dtype == Some(Type::CharacterDevice) && is_upper_whiteout(lfd.as_fd(), &e) {
                seen.insert(e.name);
                continue;
            }
            if !last {
                seen.insert(e.name.clone());
            }
            out.push(Entry {
                ino: natural_ino(e.ino, fsid),
                name: e.name,
                dtype: e.dtype.unwrap_or(Type::File),
            });
        }
        if last {
            break;
        }
        seen.extend(hidden);
    }
    Ok((out, origins))
}

/// The inode number an upper entry shows: its origin's when it has one.
fn upper_entry_ino(layers: &Layers, dir: &Arc<OwnedFd>, name: &OsStr) -> Option<u64> {
    let x = crate::sys::fsops::XPath::at(Arc::clone(dir), name);
    let v = crate::sys::fsops::getxattr_vec(&x, layers.ns.origin()).ok()??;
    layers.origin_ino(&v)
}

/// Whether a merged directory shows no entries (whiteouts do not count).
pub fn is_empty(layers: &Layers, st: &State) -> Result<bool> {
    Ok(merged(layers, st)?.0.is_empty())
}
