//! The kernel's overlay does not read the OCI markers `.wh.NAME` and `.wh..wh..opq` that
//! image layers keep (and unionfs honours). For the kernel backend each layer with markers
//! gets two small mask layers, built once per image and xattr namespace:
//!
//! - `below/I`, stacked just under layer I: a kernel whiteout (char 0/0) for each
//!   `.wh.NAME` and an opaque directory for each `.wh..wh..opq`, so they hide what the
//!   marker hid in the layers under I and nothing of layer I itself;
//! - `above/I`, just over layer I: a kernel whiteout over each marker file, so the markers
//!   do not show in the merged tree.
//!
//! Why masks and not a converted copy of the layers: they hold only the markers (no file
//! data is copied, the layers stay byte-for-byte what was imported and what unionfs and
//! `diff` read), and they are cheap enough to build lazily, in the xattr namespace of the
//! mount (`trusted.` as root, `user.` with `userxattr`). Mask directories copy the mode,
//! owner and times of the layer's directory, as the topmost copy of a merged directory
//! gives the merged one its attributes.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{mknod, Mode, SFlag};

use crate::error::{Error, Result};
use crate::fsutil::TempDir;
use crate::store::{ImageConfig, Store};
use crate::sys;

pub const WH_PREFIX: &str = ".wh.";
pub const OPAQUE: &str = ".wh..wh..opq";

/// A marker found in a layer, relative to the layer root.
#[derive(Debug, PartialEq)]
pub enum Marker {
    /// `dir/.wh.NAME`: hides `dir/NAME` below.
    Whiteout { dir: PathBuf, name: String },
    /// `dir/.wh..wh..opq`: `dir` hides everything below.
    Opaque { dir: PathBuf },
    /// Another `.wh..wh.*` name (AUFS bookkeeping): only hidden.
    Other { dir: PathBuf, name: String },
}

/// Classifies one directory entry name.
pub fn marker(dir: &Path, name: &str) -> Option<Marker> {
    let rest = name.strip_prefix(WH_PREFIX)?;
    if name == OPAQUE {
        Some(Marker::Opaque {
            dir: dir.to_path_buf(),
        })
    } else if rest.starts_with(WH_PREFIX) || rest.is_empty() {
        Some(Marker::Other {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        })
    } else {
        Some(Marker::Whiteout {
            dir: dir.to_path_buf(),
            name: rest.to_string(),
        })
    }
}

/// Every marker in a layer, in walk order.
pub fn scan(layer: &Path) -> Result<Vec<Marker>> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<Marker>) -> Result<()> {
        let dir = root.join(rel);
        let rd = fs::read_dir(&dir).map_err(|e| Error::path("read", &dir, e))?;
        for e in rd {
            let e = e.map_err(|e| Error::path("read", &dir, e))?;
            let name = e.file_name();
            let name_s = name.to_string_lossy();
            if let Some(m) = marker(rel, &name_s) {
                out.push(m);
                continue;
            }
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(root, &rel.join(&name), out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(layer, Path::new(""), &mut out)?;
    Ok(out)
}

/// The `lowerdir=` list (top first) for the kernel's overlay, with masks where needed.
pub fn kernel_lowers(
    store: &Store,
    image: &str,
    cfg: &ImageConfig,
    userxattr: bool,
) -> Result<Vec<PathBuf>> {
    let layers_top_first = store.layer_dirs(image, cfg);
    let ns = if userxattr { "user" } else { "trusted" };
    let masks = store.image_dir(image).join(format!("kernel-{ns}"));
    if !masks.exists() {
        build(store, &layers_top_first, &masks, ns)?;
    }
    let mut out = Vec::new();
    for (top_idx, layer) in layers_top_first.iter().enumerate() {
        let i = cfg.layers - 1 - top_idx;
        let above = masks.join("above").join(i.to_string());
        let below = masks.join("below").join(i.to_string());
        if above.exists() {
            out.push(above);
        }
        out.push(layer.clone());
        if below.exists() {
            out.push(below);
        }
    }
    Ok(out)
}

fn build(store: &Store, layers_top_first: &[PathBuf], masks: &Path, ns: &str) -> Result<()> {
    let tmp = TempDir::new_in(&store.tmp(), "masks")
        .map_err(|e| Error::path("create temporary directory in", &store.tmp(), e))?;
    let n = layers_top_first.len();
    for (top_idx, layer) in layers_top_first.iter().enumerate() {
        let i = n - 1 - top_idx;
        let markers = scan(layer)?;
        if markers.is_empty() {
            continue;
        }
        let above = tmp.path().join("above").join(i.to_string());
        let below = tmp.path().join("below").join(i.to_string());
        for m in &markers {
            match m {
                Marker::Whiteout { dir, name } => {
                    whiteout(&ensure_dir(layer, &above, dir)?.join(format!("{WH_PREFIX}{name}")))?;
                    whiteout(&ensure_dir(layer, &below, dir)?.join(name))?;
                }
                Marker::Opaque { dir } => {
                    whiteout(&ensure_dir(layer, &above, dir)?.join(OPAQUE))?;
                    let d = ensure_dir(layer, &below, dir)?;
                    let xattr = format!("{ns}.overlay.opaque");
                    sys::lsetxattr(&d, xattr.as_ref(), b"y")
                        .map_err(|e| Error::path(&format!("set {xattr} on"), &d, e))?;
                }
                Marker::Other { dir, name } => {
                    whiteout(&ensure_dir(layer, &above, dir)?.join(name))?;
                }
            }
        }
    }
    let _lock = store.lock()?;
    if !masks.exists() {
        fs::rename(tmp.path(), masks).map_err(|e| Error::path("rename into place", masks, e))?;
    }
    Ok(())
}

fn whiteout(p: &Path) -> Result<()> {
    mknod(p, SFlag::S_IFCHR, Mode::empty(), 0)
        .map_err(|e| Error::path("create whiteout", p, e.into()))
}

/// Creates `mask/rel` and its parents, each with the attributes of the layer's directory.
fn ensure_dir(layer: &Path, mask: &Path, rel: &Path) -> Result<PathBuf> {
    let mut cur_mask = mask.to_path_buf();
    let mut cur_layer = layer.to_path_buf();
    let mut parts = vec![None];
    parts.extend(rel.components().map(Some));
    for c in parts {
        if let Some(c) = c {
            cur_mask.push(c);
            cur_layer.push(c);
        }
        if cur_mask.exists() {
            continue;
        }
        fs::create_dir_all(&cur_mask).map_err(|e| Error::path("create", &cur_mask, e))?;
        if let Ok(md) = fs::symlink_metadata(&cur_layer) {
            let _ = fs::set_permissions(&cur_mask, fs::Permissions::from_mode(md.mode() & 0o7777));
            let _ = nix::unistd::chown(
                &cur_mask,
                Some(nix::unistd::Uid::from_raw(md.uid())),
                Some(nix::unistd::Gid::from_raw(md.gid())),
            );
        }
    }
    Ok(cur_mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        let d = Path::new("a");
        assert_eq!(
            marker(d, ".wh.foo"),
            Some(Marker::Whiteout {
                dir: d.into(),
                name: "foo".into()
            })
        );
        assert_eq!(
            marker(d, ".wh..wh..opq"),
            Some(Marker::Opaque { dir: d.into() })
        );
        assert!(matches!(
            marker(d, ".wh..wh.plnk"),
            Some(Marker::Other { .. })
        ));
        assert_eq!(marker(d, "foo.wh."), None);
        assert_eq!(marker(d, "wh.foo"), None);
    }
}
