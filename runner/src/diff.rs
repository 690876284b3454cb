//! `diff`: what a container changed, from its upper directory against the image layers, as
//! `docker diff` prints it (`A`dded, `C`hanged, `D`eleted). Pure over directories, so the
//! same code can serve `unionfs diff` later.
//!
//! Rules: a kernel whiteout (char 0/0) or a `.wh.NAME` marker in the upper is `D`; an
//! entry that also exists in the image's merged view is `C`, otherwise `A`; directories are
//! listed and entered (an opaque directory is `C` or `A` like any other, and its contents
//! follow the same rule).

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::image::kernel::{OPAQUE, WH_PREFIX};
use crate::sys;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Added,
    Changed,
    Deleted,
}

impl Change {
    pub fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Changed => 'C',
            Change::Deleted => 'D',
        }
    }
}

/// The changes in `upper` over `lowers` (top first), sorted by path.
pub fn diff(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<(Change, String)>> {
    let mut out = Vec::new();
    walk(upper, Path::new(""), lowers, &mut out)?;
    out.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    out.dedup();
    Ok(out)
}

fn show(rel: &Path) -> String {
    format!("/{}", rel.display())
}

fn walk(
    upper: &Path,
    rel: &Path,
    lowers: &[PathBuf],
    out: &mut Vec<(Change, String)>,
) -> Result<()> {
    let dir = upper.join(rel);
    let rd = fs::read_dir(&dir).map_err(|e| Error::path("read", &dir, e))?;
    for e in rd {
        let e = e.map_err(|e| Error::path("read", &dir, e))?;
        let name = e.file_name();
        let name_s = name.to_string_lossy();
        if name_s == OPAQUE {
            continue;
        }
        if let Some(hidden) = name_s.strip_prefix(WH_PREFIX) {
            out.push((Change::Deleted, show(&rel.join(hidden))));
            continue;
        }
        let child = rel.join(&name);
        let md = e
            .metadata()
            .map_err(|err| Error::path("stat", &e.path(), err))?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            out.push((Change::Deleted, show(&child)));
            continue;
        }
        let kind = if in_lowers(lowers, &child) {
            Change::Changed
        } else {
            Change::Added
        };
        out.push((kind, show(&child)));
        if ft.is_dir() {
            walk(upper, &child, lowers, out)?;
        }
    }
    Ok(())
}

fn is_opaque(dir: &Path) -> bool {
    if dir.join(OPAQUE).exists() {
        return true;
    }
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|x| matches!(sys::lgetxattr(dir, x), Ok(Some(v)) if v == b"y"))
}

fn is_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

/// Whether `rel` shows in the merged view of the lower layers alone, honouring their
/// whiteouts (both formats), opaque directories and non-directories over directories.
pub fn in_lowers(lowers: &[PathBuf], rel: &Path) -> bool {
    let comps: Vec<_> = rel.components().collect();
    for layer in lowers {
        let mut cur = layer.clone();
        // Whether this layer hides `rel` from the layers under it.
        let mut hides = false;
        for (i, c) in comps.iter().enumerate() {
            let wh = cur.join(format!("{WH_PREFIX}{}", c.as_os_str().to_string_lossy()));
            let next = cur.join(c);
            if wh.exists() || is_whiteout(&next) {
                hides = true;
                break;
            }
            match fs::symlink_metadata(&next) {
                Err(_) => break,
                Ok(_) if i + 1 == comps.len() => return true,
                Ok(md) if !md.is_dir() => {
                    // A non-directory hides the whole subtree below it.
                    hides = true;
                    break;
                }
                Ok(_) => hides |= is_opaque(&next),
            }
            cur = next;
        }
        if hides || comps.is_empty() {
            return false;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
        }
        fs::write(p, b"x").unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn classifies_upper_entries() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (l0, l1, up) = (
            t.path().join("l0"),
            t.path().join("l1"),
            t.path().join("up"),
        );
        touch(&l0.join("etc/passwd"));
        touch(&l0.join("etc/gone"));
        touch(&l0.join("old/file"));
        touch(&l1.join("etc/.wh.passwd")); // the top lower deleted passwd
        touch(&l1.join("bin/sh"));
        touch(&up.join("etc/passwd")); // re-created: hidden in lowers, so added
        touch(&up.join("etc/.wh.gone"));
        touch(&up.join("bin/sh"));
        touch(&up.join("new/deep/file"));
        fs::create_dir_all(up.join("old")).unwrap_or_else(|e| panic!("{e}"));
        touch(&up.join("old/.wh..wh..opq"));
        touch(&up.join("old/file2"));
        let lowers = vec![l1, l0];
        let got: Vec<String> = diff(&up, &lowers)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|(c, p)| format!("{} {p}", c.letter()))
            .collect();
        assert_eq!(
            got,
            [
                "C /bin",
                "C /bin/sh",
                "C /etc",
                "D /etc/gone",
                "A /etc/passwd",
                "A /new",
                "A /new/deep",
                "A /new/deep/file",
                "C /old",
                "A /old/file2",
            ]
        );
    }

    #[test]
    fn lower_visibility() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (l0, l1) = (t.path().join("l0"), t.path().join("l1"));
        touch(&l0.join("d/f"));
        touch(&l0.join("x/y"));
        touch(&l1.join("d/.wh..wh..opq"));
        touch(&l1.join("x")); // a file over the directory
        let lowers = vec![l1, l0];
        assert!(in_lowers(&lowers, Path::new("d")));
        assert!(!in_lowers(&lowers, Path::new("d/f")));
        assert!(in_lowers(&lowers, Path::new("x")));
        assert!(!in_lowers(&lowers, Path::new("x/y")));
        assert!(!in_lowers(&lowers, Path::new("nothing")));
    }
}
