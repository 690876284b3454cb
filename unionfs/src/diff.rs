//! `diff`: what an upper layer changed against its lower layers, as `docker diff` prints it
//! (`A`dded, `C`hanged, `D`eleted). Pure over directories: `unionfs diff` and runbox's
//! `diff NAME` both call it.
//!
//! Rules: a kernel whiteout (char 0/0) or a `.wh.NAME` marker in the upper is `D`; an
//! entry that also shows in the merged view of the lower layers alone is `C`, otherwise
//! `A`; directories are listed and entered (an opaque directory is `C` or `A` like any
//! other, and its contents follow the same rule).

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::explain::LayerSet;
use crate::layer::XattrNs;
use crate::whiteout;

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

    pub fn word(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Changed => "changed",
            Change::Deleted => "deleted",
        }
    }
}

/// A failure, naming what was being done to which path.
#[derive(Debug)]
pub struct DiffError {
    pub what: &'static str,
    pub path: PathBuf,
    pub err: io::Error,
}

impl std::fmt::Display for DiffError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot {} {}: {}",
            self.what,
            self.path.display(),
            self.err
        )
    }
}

impl std::error::Error for DiffError {}

fn fail<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> DiffError + 'a {
    move |err| DiffError {
        what,
        path: path.to_path_buf(),
        err,
    }
}

/// The changes in `upper` over `lowers` (top first), sorted by path. `ns` says where the
/// overlay markers are (None: either namespace).
pub fn diff(
    upper: &Path,
    lowers: &[PathBuf],
    ns: Option<XattrNs>,
) -> Result<Vec<(Change, String)>, DiffError> {
    let below = LayerSet {
        lowers: lowers.to_vec(),
        upper: None,
        ns,
        follow_redirects: true,
    };
    let full = LayerSet {
        upper: Some(upper.to_path_buf()),
        ..below.clone()
    };
    let mut out = Vec::new();
    walk(upper, Path::new(""), (&below, &full), &mut out)?;
    out.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
    out.dedup();
    Ok(out)
}

/// `A /path` lines, one a line.
pub fn render(changes: &[(Change, String)]) -> String {
    changes
        .iter()
        .map(|(c, p)| format!("{} {p}\n", c.letter()))
        .collect()
}

/// A JSON array of `{"change":"A","path":"/x"}` objects, one a line.
pub fn render_json(changes: &[(Change, String)]) -> String {
    let mut s = String::from("[");
    for (i, (c, p)) in changes.iter().enumerate() {
        s.push_str(if i == 0 { "\n" } else { ",\n" });
        s.push_str(&format!(
            "  {{\"change\": \"{}\", \"kind\": \"{}\", \"path\": \"{}\"}}",
            c.letter(),
            c.word(),
            json_escape(p)
        ));
    }
    s.push_str(if changes.is_empty() { "]\n" } else { "\n]\n" });
    s
}

fn json_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

fn show(rel: &Path) -> String {
    format!("/{}", rel.display())
}

/// `views`: the lower layers alone, and the whole union.
fn walk(
    upper: &Path,
    rel: &Path,
    views: (&LayerSet, &LayerSet),
    out: &mut Vec<(Change, String)>,
) -> Result<(), DiffError> {
    let (below, full) = views;
    let dir = upper.join(rel);
    let rd = fs::read_dir(&dir).map_err(fail("read", &dir))?;
    for e in rd {
        let e = e.map_err(fail("read", &dir))?;
        let name = e.file_name();
        if whiteout::is_aufs_opaque(&name) {
            continue;
        }
        if let Some(hidden) = whiteout::aufs_hidden_name(&name) {
            out.push((Change::Deleted, show(&rel.join(hidden))));
            continue;
        }
        let child = rel.join(&name);
        let path = e.path();
        let md = e.metadata().map_err(fail("stat", &path))?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            out.push((Change::Deleted, show(&child)));
            continue;
        }
        let kind = if in_lowers(below, &child) {
            Change::Changed
        } else {
            Change::Added
        };
        out.push((kind, show(&child)));
        if ft.is_dir() {
            // A new directory that brings lower content along (renamed with a redirect):
            // everything in it is new at this path.
            let merged = full
                .explain(&Path::new("/").join(&child))
                .map_err(fail("explain", &path))?;
            if kind == Change::Added && merged.merged.len() > 1 {
                added_tree(full, &child, out).map_err(fail("explain", &path))?;
            } else {
                walk(upper, &child, views, out)?;
            }
        }
    }
    Ok(())
}

/// Every name the union shows below `rel`, as added.
fn added_tree(full: &LayerSet, rel: &Path, out: &mut Vec<(Change, String)>) -> io::Result<()> {
    let (_, rows) = full.list(&Path::new("/").join(rel))?;
    for r in rows {
        if r.shown.is_none() {
            continue;
        }
        out.push((Change::Added, r.path.clone()));
        if !r.merged.is_empty() {
            added_tree(full, Path::new(r.path.trim_start_matches('/')), out)?;
        }
    }
    Ok(())
}

/// Whether `rel` shows in the merged view of the lower layers alone.
pub fn in_lowers(below: &LayerSet, rel: &Path) -> bool {
    below
        .explain(&Path::new("/").join(rel))
        .is_ok_and(|e| e.shown.is_some())
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

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("unionfs-diff-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{e}"));
        p
    }

    #[test]
    fn classifies_upper_entries() {
        let t = tmp("classify");
        let (l0, l1, up) = (t.join("l0"), t.join("l1"), t.join("up"));
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
        let got = diff(&up, &lowers, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            render(&got),
            "C /bin\nC /bin/sh\nC /etc\nD /etc/gone\nA /etc/passwd\nA /new\nA /new/deep\n\
             A /new/deep/file\nC /old\nA /old/file2\n"
        );
        assert!(render_json(&got[..1])
            .contains("{\"change\": \"C\", \"kind\": \"changed\", \"path\": \"/bin\"}"));
        assert_eq!(render_json(&[]), "[]\n");
        let _ = fs::remove_dir_all(&t);
    }

    #[test]
    fn lower_visibility() {
        let t = tmp("vis");
        let (l0, l1) = (t.join("l0"), t.join("l1"));
        touch(&l0.join("d/f"));
        touch(&l0.join("x/y"));
        touch(&l1.join("d/.wh..wh..opq"));
        touch(&l1.join("x")); // a file over the directory
        let below = LayerSet {
            lowers: vec![l1, l0],
            upper: None,
            ns: None,
            follow_redirects: true,
        };
        assert!(in_lowers(&below, Path::new("d")));
        assert!(!in_lowers(&below, Path::new("d/f")));
        assert!(in_lowers(&below, Path::new("x")));
        assert!(!in_lowers(&below, Path::new("x/y")));
        assert!(!in_lowers(&below, Path::new("nothing")));
        let _ = fs::remove_dir_all(&t);
    }
}
