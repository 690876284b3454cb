//! The merge rule for one name in one merged directory: top-down over the upper and the
//! lower layers, a whiteout ends the search, a non-directory hides everything below it,
//! directories merge until an opaque one. A redirect (`*.overlay.redirect`) changes what
//! the layers below are asked for, and a metadata-only copy (`*.overlay.metacopy`) goes
//! on to its data below, as the kernel's `ovl_lookup`.

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;

use nix::errno::Errno as NixErrno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode};

use crate::dirfd::DirRef;
use crate::errno::{Errno, Result};
use crate::inode::{LayerRef, Loc, Lowers, Real, State};
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
        Loc::At(Arc::clone(dref), crate::inode::name_of(name)),
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
    /// The upper directory's redirect (or a metadata-only copy's).
    pub redirect: Option<OsString>,
    /// The upper object is a metadata-only copy of `lowers[0]`.
    pub metacopy: bool,
}

impl Found {
    pub fn into_state(self, parent: u64, name: &OsStr) -> State {
        // The node's name is its real object's name when they are the same (no redirect),
        // so that the two share one allocation.
        let shared = [self.upper.as_ref(), self.lowers.first()]
            .into_iter()
            .flatten()
            .find_map(|r| match &r.loc {
                Loc::At(_, n) if **n == *name => Some(Arc::clone(n)),
                _ => None,
            });
        let mut st = State::new(
            parent,
            shared.unwrap_or_else(|| crate::inode::name_of(name)),
            self.upper,
            Lowers::from(self.lowers),
        );
        st.impure = self.impure;
        st.metacopy = self.metacopy;
        st.set_redirect(self.redirect);
        st
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

/// How lookups treat redirects (`redirect_dir`), and where absolute ones start.
pub struct Redirects {
    /// Follow redirects. Without, lower content found through one fails the lookup with
    /// EPERM, as in the kernel (which reads them either way).
    pub follow: bool,
    /// Every lower layer's root, top-down: where an absolute redirect is looked up.
    pub roots: Vec<Real>,
    /// `metacopy=on`: a metadata-only upper copy shows its lower file's data. Without,
    /// finding one fails the lookup with EPERM, as in the kernel.
    pub metacopy: bool,
}

/// What the lookup of one name has learnt so far, as the kernel's `ovl_lookup_data`.
struct Search {
    /// Where to look in the next lower layer: a name in the parent's lower directory, or
    /// (starting with `/`) a path from the layer's root, when a redirect said so.
    name: Vec<u8>,
    /// A redirect changed `name`.
    redirected: bool,
    /// No lower layer below can add to the result.
    stop: bool,
    /// A directory was found (so a non-directory below ends the search).
    is_dir: bool,
    /// A metadata-only copy was found: its data is a regular file below.
    metacopy: bool,
}

impl Search {
    fn absolute(&self) -> bool {
        self.name.first() == Some(&b'/')
    }

    /// Applies the redirect of the directory found for the path element that starts at
    /// byte `pre` of `name` and is followed by `post` (empty or `/rest`).
    fn redirect(&mut self, to: &[u8], pre: usize, post: &[u8]) {
        let mut name = if to.first() == Some(&b'/') {
            // An absolute redirect below an opaque ancestor still reaches the layers below.
            self.stop = false;
            to.to_vec()
        } else {
            let mut n = self.name.get(..pre).unwrap_or_default().to_vec();
            n.extend_from_slice(to);
            n
        };
        name.extend_from_slice(post);
        self.name = name;
        self.redirected = true;
    }
}

/// A redirect the kernel accepts: an absolute path with no empty element, or one name.
fn valid_redirect(v: &[u8]) -> bool {
    match v.strip_prefix(b"/") {
        Some(path) => path.split(|b| *b == b'/').all(|e| !e.is_empty()),
        None => !v.is_empty() && !v.contains(&b'/'),
    }
}

/// The redirect of a directory, checked as the kernel checks it.
pub fn read_redirect(layers: &Layers, dir: &Real) -> Result<Option<Vec<u8>>> {
    let Some(v) = crate::sys::fsops::getxattr_vec(&dir.xpath()?, layers.ns.redirect())
        .ok()
        .flatten()
    else {
        return Ok(None);
    };
    if !valid_redirect(&v) {
        log::warn!("invalid redirect {:?}", String::from_utf8_lossy(&v));
        return Err(Errno::EINVAL);
    }
    Ok(Some(v))
}

/// Looks the search's name up in one lower layer, given the parent's directory there (or
/// the layer's root for an absolute name); `last`: the bottom layer, whose markers need
/// no reading. As the kernel's `ovl_lookup_layer`.
fn lookup_layer(
    layers: &Layers,
    redirects: &Redirects,
    base: &Real,
    d: &mut Search,
    last: bool,
) -> Result<Option<(Real, FileStat)>> {
    let LayerRef::Lower(idx) = base.layer else {
        return Ok(None);
    };
    let path = d.name.clone();
    let elems: Vec<&[u8]> = match path.strip_prefix(b"/") {
        Some(p) => p.split(|b| *b == b'/').collect(),
        None => vec![&path[..]],
    };
    let mut dir = Arc::clone(base.dir_ref()?);
    for (k, elem) in elems.iter().enumerate() {
        let last_elem = k + 1 == elems.len();
        let found = probe(&dir, OsStr::from_bytes(elem), true)?;
        let (loc, st) = match found {
            Probe::Missing => return Ok(None),
            Probe::Whiteout => {
                d.stop = true;
                return Ok(None);
            }
            Probe::Found(loc, st) => (loc, st),
        };
        let r = real(loc, &st, LayerRef::Lower(idx));
        // Where this element starts in the searched name, and what follows it.
        let pre = d
            .name
            .len()
            .saturating_sub(elems[k..].iter().map(|e| e.len() + 1).sum::<usize>() - 1);
        let post: Vec<u8> = elems[k + 1..]
            .iter()
            .flat_map(|e| std::iter::once(b'/').chain(e.iter().copied()))
            .collect();
        if !is_dir(&st) {
            // A non-directory shows only when nothing above it did (or as the data of a
            // metadata-only copy, then a regular file), and ends the search.
            d.stop = true;
            let reg = st.st_mode & libc::S_IFMT == libc::S_IFREG;
            if d.is_dir || !last_elem || (d.metacopy && !reg) {
                return Ok(None);
            }
            // A metadata-only copy in a lower layer (one that was an upper layer): its
            // data is further down, maybe where its redirect says. Read only with
            // `metacopy=on` (the kernel would refuse it without).
            d.metacopy = reg
                && !last
                && redirects.metacopy
                && crate::sys::fsops::getxattr_vec(&r.xpath()?, layers.ns.metacopy())
                    .ok()
                    .flatten()
                    .is_some();
            if d.metacopy {
                d.stop = false;
                if let Some(to) = read_redirect(layers, &r)? {
                    d.redirect(&to, pre, &post);
                }
            }
            return Ok(Some((r, st)));
        }
        if last_elem {
            d.is_dir = true;
        }
        if !last {
            if lower_dir_opaque(layers, &r)? {
                d.stop = true;
            } else if let Some(to) = read_redirect(layers, &r)? {
                d.redirect(&to, pre, &post);
            }
        }
        if last_elem {
            return Ok(Some((r, st)));
        }
        dir = Arc::clone(r.dir_ref()?);
    }
    Ok(None)
}

/// Resolves `name` in the merged directory `parent`.
pub fn resolve(
    layers: &Layers,
    redirects: &Redirects,
    parent: &State,
    name: &OsStr,
) -> Result<Option<Found>> {
    if name.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    let mut d = Search {
        name: name.as_bytes().to_vec(),
        redirected: false,
        stop: false,
        is_dir: false,
        metacopy: false,
    };
    let mut upper: Option<(Real, FileStat)> = None;
    let mut upper_redirect = None;
    if let Some(pu) = &parent.upper {
        match probe(pu.dir_ref()?, name, false)? {
            Probe::Whiteout => return Ok(None),
            Probe::Missing => {}
            Probe::Found(loc, st) => {
                let r = real(loc, &st, LayerRef::Upper);
                // Only a copy-up makes a metadata-only copy, and it marks the parent
                // impure: a pure parent spares us the xattr read.
                let metacopy = parent.impure
                    && st.st_mode & libc::S_IFMT == libc::S_IFREG
                    && crate::sys::fsops::getxattr_vec(&r.xpath()?, layers.ns.metacopy())
                        .ok()
                        .flatten()
                        .is_some();
                let opaque = is_dir(&st) && whiteout::has_opaque_xattr(&r.xpath()?, layers.ns);
                if (!is_dir(&st) && !metacopy) || opaque {
                    d.stop = true;
                } else {
                    d.is_dir = !metacopy;
                    d.metacopy = metacopy;
                    // Read even when not followed (then lower content found through it
                    // fails the lookup below), as the kernel does.
                    if redirects.follow || !parent.lowers.is_empty() {
                        if let Some(to) = read_redirect(layers, &r)? {
                            d.redirect(&to, 0, b"");
                            upper_redirect = Some(OsString::from_vec(to));
                        }
                    }
                }
                upper = Some((r, st));
            }
        }
    }
    let mut lowers: Vec<(Real, FileStat)> = Vec::new();
    let mut stack: &[Real] = if d.absolute() {
        &redirects.roots
    } else {
        &parent.lowers
    };
    let mut i = 0;
    while !d.stop && i < stack.len() {
        let pl = &stack[i];
        i += 1;
        let Some(idx) = pl.layer.lower_index() else {
            continue;
        };
        let last = if redirects.follow {
            idx + 1 == layers.lowers.len()
        } else {
            i == stack.len()
        };
        let Some(found) = lookup_layer(layers, redirects, pl, &mut d, last)? else {
            continue;
        };
        // Of a chain of metadata-only copies only the top-most is kept (its metadata
        // shows), then the data, as the kernel keeps them.
        if !d.metacopy || lowers.is_empty() {
            lowers.push(found);
        }
        let upper_metacopy = upper.is_some() && !d.is_dir && !lowers.is_empty();
        if upper_metacopy && !redirects.metacopy {
            log::warn!("refusing to follow the metadata-only copy {name:?} (metacopy=off)");
            return Err(Errno::EPERM);
        }
        if d.redirected && !redirects.follow {
            log::warn!("refusing to follow the redirect of {name:?} (redirect_dir=nofollow)");
            return Err(Errno::EPERM);
        }
        if d.absolute() && !std::ptr::eq(stack, redirects.roots.as_slice()) {
            // From here on the path is looked up from the roots of the layers below.
            stack = &redirects.roots;
            i = idx + 1;
        }
    }
    if d.metacopy {
        log::warn!("metadata-only copy {name:?} without lower data");
        return Err(Errno::EIO);
    }
    let (mut st, kind) = match (&upper, lowers.first()) {
        (Some((_, st)), _) | (None, Some((_, st))) => (*st, st.st_mode & libc::S_IFMT),
        (None, None) => return Ok(None),
    };
    // The data of a metadata-only copy (upper, or the top of a lower chain) is the last
    // lower file.
    let metacopy = kind == libc::S_IFREG && lowers.len() > usize::from(upper.is_none());
    if let (true, Some((_, data))) = (metacopy, lowers.last()) {
        // Its blocks are the data's, as the kernel reports them.
        st.st_blocks = data.st_blocks;
    }
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
        redirect: upper_redirect,
        metacopy,
        fix_origin,
        kind,
        upper: upper.map(|(r, _)| r),
        // A new Vec: collecting in place would keep the `(Real, FileStat)` allocation.
        lowers: {
            let mut v = Vec::with_capacity(lowers.len());
            v.extend(lowers.into_iter().map(|(r, _)| r));
            v
        },
        st,
        natural_ino,
        impure,
    }))
}

pub fn layer_fsid(layers: &Layers, l: LayerRef) -> u64 {
    match l {
        LayerRef::Upper => 0,
        LayerRef::Lower(_) => l
            .lower_index()
            .and_then(|i| layers.lowers.get(i))
            .map_or(0, |l| l.fsid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(name: &str) -> Search {
        Search {
            name: name.as_bytes().to_vec(),
            redirected: false,
            stop: true,
            is_dir: false,
            metacopy: false,
        }
    }

    #[test]
    fn redirects_rewrite_the_searched_path() {
        // The last element of a name: replaced.
        let mut d = search("b");
        d.redirect(b"a", 0, b"");
        assert_eq!((d.name.as_slice(), d.redirected), (&b"a"[..], true));
        // A middle element of an absolute path: the prefix and the rest stay.
        let mut d = search("/x/y/z");
        d.redirect(b"w", 3, b"/z");
        assert_eq!(d.name, b"/x/w/z");
        assert!(
            d.stop,
            "a relative redirect does not undo an opaque ancestor"
        );
        // An absolute one replaces the prefix, and reaches below an opaque ancestor.
        let mut d = search("/x/y/z");
        d.redirect(b"/p/q", 3, b"/z");
        assert_eq!(d.name, b"/p/q/z");
        assert!(!d.stop && d.absolute());
    }

    #[test]
    fn redirect_values_checked_as_the_kernel() {
        for ok in ["a", "/a", "/a/b c/d", "a b"] {
            assert!(valid_redirect(ok.as_bytes()), "{ok}");
        }
        for bad in ["", "a/b", "/", "//a", "/a//b", "/a/"] {
            assert!(!valid_redirect(bad.as_bytes()), "{bad}");
        }
    }
}
