//! The merge rule for one name in one merged directory: top-down over the upper and the
//! lower layers, a whiteout ends the search, a non-directory hides everything below it,
//! directories merge until an opaque one.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::Arc;

use nix::errno::Errno as NixErrno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};

use crate::dirfd::DirRef;
use crate::errno::{Errno, Result};
use crate::inode::{LayerRef, Loc, Real, State};
use crate::layer::Layers;
use crate::whiteout;

/// What one layer directory holds under a name.
pub enum Probe {
    Missing,
    Whiteout,
    Found(Loc, FileStat),
}

/// Looks `name` up in one layer directory. `image_layer` turns on the AUFS markers, which
/// only lower layers can carry. A directory found is held open; anything else is named in
/// its parent, which costs no descriptor.
pub fn probe(dref: &Arc<DirRef>, name: &OsStr, image_layer: bool) -> Result<Probe> {
    if image_layer && whiteout::is_aufs_name(name) {
        return Ok(Probe::Missing);
    }
    let dir = dref.fd()?;
    let st = match nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(NixErrno::ENOENT) => {
            if image_layer {
                if let Some(marker) = whiteout::aufs_marker(name) {
                    if nix::sys::stat::fstatat(
                        dir.as_fd(),
                        marker.as_os_str(),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .is_ok()
                    {
                        return Ok(Probe::Whiteout);
                    }
                }
            }
            return Ok(Probe::Missing);
        }
        Err(e) => return Err(e.into()),
    };
    if whiteout::is_whiteout(&st) {
        return Ok(Probe::Whiteout);
    }
    if is_dir(&st) {
        let fd = nix::fcntl::openat(
            dir.as_fd(),
            name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        return Ok(Probe::Found(
            Loc::Dir(DirRef::child(dref, name, Some(fd))),
            st,
        ));
    }
    Ok(Probe::Found(
        Loc::At(Arc::clone(dref), name.to_os_string()),
        st,
    ))
}

/// A name as the union shows it.
pub struct Found {
    pub kind: u32,
    pub upper: Option<Real>,
    pub lowers: Vec<Real>,
    /// The stat of the object shown (the upper one if any).
    pub st: FileStat,
    /// The inode number `stat` must show.
    pub natural_ino: u64,
    pub impure: bool,
    /// A merged directory whose upper has no origin record yet.
    pub fix_origin: bool,
}

impl Found {
    pub fn into_state(self, parent: u64, name: &OsStr) -> State {
        State {
            parent,
            name: name.to_os_string(),
            upper: self.upper,
            lowers: self.lowers,
            impure: self.impure,
            unlinked: false,
            aliases: Vec::new(),
        }
    }
}

pub fn is_dir(st: &FileStat) -> bool {
    (st.st_mode & libc::S_IFMT) == libc::S_IFDIR
}

fn real(loc: Loc, st: &FileStat, layer: LayerRef) -> Real {
    Real {
        loc,
        layer,
        dev: st.st_dev,
        ino: st.st_ino,
    }
}

/// Whether a lower directory is opaque: the overlay xattr, or an AUFS opaque marker in it.
fn lower_dir_opaque(layers: &Layers, dir: &Real) -> Result<bool> {
    let fd = dir.dir()?;
    Ok(whiteout::has_opaque_xattr(&dir.xpath()?, layers.ns)
        || nix::sys::stat::fstatat(
            fd.as_fd(),
            OsStr::new(std::str::from_utf8(whiteout::AUFS_OPAQUE).unwrap_or(".wh..wh..opq")),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .is_ok())
}

/// Resolves `name` in the merged directory `parent`.
pub fn resolve(layers: &Layers, parent: &State, name: &OsStr) -> Result<Option<Found>> {
    if name.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    let mut upper: Option<(Real, FileStat)> = None;
    let mut opaque = false;
    if let Some(pu) = &parent.upper {
        match probe(pu.dir_ref()?, name, false)? {
            Probe::Whiteout => return Ok(None),
            Probe::Missing => {}
            Probe::Found(loc, st) => {
                let r = real(loc, &st, LayerRef::Upper);
                opaque = !is_dir(&st) || whiteout::has_opaque_xattr(&r.xpath()?, layers.ns);
                upper = Some((r, st));
            }
        }
    }
    let mut lowers: Vec<(Real, FileStat)> = Vec::new();
    if !opaque {
        for pl in &parent.lowers {
            let LayerRef::Lower(idx) = pl.layer else {
                continue;
            };
            match probe(pl.dir_ref()?, name, true)? {
                Probe::Missing => continue,
                Probe::Whiteout => break,
                Probe::Found(loc, st) => {
                    let r = real(loc, &st, LayerRef::Lower(idx));
                    if !is_dir(&st) {
                        // A non-directory shows only when nothing is above it.
                        if upper.is_none() && lowers.is_empty() {
                            lowers.push((r, st));
                        }
                        break;
                    }
                    let stop = lower_dir_opaque(layers, &r)?;
                    lowers.push((r, st));
                    if stop {
                        break;
                    }
                }
            }
        }
    }
    let (st, kind) = match (&upper, lowers.first()) {
        (Some((_, st)), _) | (None, Some((_, st))) => (*st, st.st_mode & libc::S_IFMT),
        (None, None) => return Ok(None),
    };
    let mut impure = false;
    let mut fix_origin = false;
    let natural_ino = match &upper {
        Some((u, _)) => {
            // Only a copy-up or a rename records an origin, and both mark the parent
            // impure: a pure parent spares us the xattr read.
            let record = if parent.impure || kind == libc::S_IFDIR {
                crate::sys::fsops::getxattr_vec(&u.xpath()?, layers.ns.origin())
                    .ok()
                    .flatten()
            } else {
                None
            };
            // A merged directory without an origin gets its first lower directory as
            // origin, as the kernel's lookup does (`ovl_fix_origin`).
            fix_origin = record.is_none() && kind == libc::S_IFDIR && !lowers.is_empty();
            let origin = match (&record, lowers.first()) {
                (Some(v), _) => layers.origin_ino(v),
                (None, Some((l, _))) if fix_origin => Some(crate::inode::natural_ino(
                    l.ino,
                    layer_fsid(layers, l.layer),
                )),
                _ => None,
            };
            if kind == libc::S_IFDIR {
                impure = crate::sys::fsops::getxattr_vec(&u.xpath()?, layers.ns.impure())
                    .ok()
                    .flatten()
                    .is_some();
            }
            origin.unwrap_or(u.ino)
        }
        None => match lowers.first() {
            Some((l, _)) => crate::inode::natural_ino(l.ino, layer_fsid(layers, l.layer)),
            None => return Ok(None),
        },
    };
    Ok(Some(Found {
        fix_origin,
        kind,
        upper: upper.map(|(r, _)| r),
        lowers: lowers.into_iter().map(|(r, _)| r).collect(),
        st,
        natural_ino,
        impure,
    }))
}

pub fn layer_fsid(layers: &Layers, l: LayerRef) -> u64 {
    match l {
        LayerRef::Upper => 0,
        LayerRef::Lower(i) => layers.lowers.get(i).map_or(0, |l| l.fsid),
    }
}
