//! `unionfs explain` held to the kernel's overlay on every scenario's end state: once the
//! reference side is unmounted, the merge rule that `explain` applies to the bare layer
//! directories must give, for every name in any layer, what the kernel's mount showed
//! (the object's type, or nothing).

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use unionfs::explain::LayerSet;
use unionfs::layer::XattrNs;

use crate::snapshot::Snapshot;

/// Every path (relative, `/`-separated, no leading `/`) under `root`.
fn names_under(root: &Path, rel: &mut Vec<u8>, out: &mut BTreeSet<Vec<u8>>) {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    };
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for e in rd.flatten() {
        let len = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(e.file_name().as_bytes());
        out.insert(rel.clone());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            names_under(root, rel, out);
        }
        rel.truncate(len);
    }
}

/// The type letter the snapshots use (`f`, `d`, `l`, `p`, `c`, `b`, `s`) for `explain`'s
/// kind name.
fn letter(kind: &str) -> char {
    match kind {
        "file" => 'f',
        "dir" => 'd',
        "symlink" => 'l',
        "fifo" => 'p',
        "chardev" => 'c',
        "blockdev" => 'b',
        "socket" => 's',
        _ => '?',
    }
}

/// The differences between `explain` on the layers and the kernel's merged tree `merged`
/// (walked while mounted with `opts`), one line each.
pub fn check(
    lowers: &[PathBuf],
    upper: Option<&Path>,
    opts: &str,
    merged: &Snapshot,
) -> Vec<String> {
    let items: Vec<&str> = opts.split(',').collect();
    let set = LayerSet {
        lowers: lowers.to_vec(),
        upper: upper.map(Path::to_path_buf),
        ns: Some(if items.contains(&"userxattr") {
            XattrNs::User
        } else {
            XattrNs::Trusted
        }),
        // The kernel follows redirects unless told not to (`off` follows too, the module's
        // `redirect_always_follow` being on); with `userxattr` its default is nofollow.
        follow_redirects: !items.contains(&"redirect_dir=nofollow")
            && (!items.contains(&"userxattr")
                || items
                    .iter()
                    .any(|o| matches!(*o, "redirect_dir=on" | "redirect_dir=follow"))),
    };
    let mut names = BTreeSet::new();
    for l in lowers.iter().map(PathBuf::as_path).chain(upper) {
        names_under(l, &mut Vec::new(), &mut names);
    }
    for e in merged {
        if e.path.len() > 1 {
            names.insert(e.path[1..].to_vec());
        }
    }
    let mut bad = Vec::new();
    for rel in names {
        let shown = merged
            .iter()
            .find(|e| e.path.len() == rel.len() + 1 && e.path[1..] == rel[..])
            .and_then(|e| e.line.chars().next());
        let path = Path::new("/").join(OsStr::from_bytes(&rel));
        match set.explain(&path) {
            Ok(x) => {
                let said = x.shown_kind().map(letter);
                if said != shown {
                    bad.push(format!(
                        "explain {}: shows {said:?}, the kernel's mount {shown:?} ({})",
                        path.display(),
                        x.rule
                    ));
                }
            }
            // A name under a non-directory, a whiteout or an opaque directory may not be
            // reachable at all; explain says so by failing only where the kernel showed
            // something.
            Err(e) if shown.is_some() => bad.push(format!(
                "explain {}: {e} (the kernel shows it)",
                path.display()
            )),
            Err(_) => {}
        }
    }
    bad
}
