//! Walks a tree (a mounted union or an upper dir) into comparable entries
//! and diffs two such snapshots.
//!
//! Exclusions (reasons in README.md):
//! * directory sizes: the kernel reports different dir sizes through FUSE
//!   than through overlayfs (and ext4 dir sizes depend on history);
//! * st_ino / st_dev: the two sides are different copies (see `Ops::ino_stable`);
//! * mtime/atime/ctime unless requested (times differ by run);
//! * merged view: `trusted.overlay.*` / `user.overlay.*` xattrs (hidden by
//!   overlay; leaks are checked by the `listxattr` op in scenarios);
//! * upper dir: nlink of whiteouts (the kernel hard-links whiteouts to a
//!   shared one in workdir), `trusted.overlay.origin` (a file handle of a
//!   different copy: presence only), `trusted.overlay.impure` (presence
//!   only), `trusted.overlay.uuid` (random per filesystem instance). Every other
//!   overlay xattr is compared by value, `*.overlay.redirect` included: unionfs must
//!   write the kernel's redirects byte for byte.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::hash::{Hash, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::ops::esc;
use crate::sys;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkKind {
    /// The merged view of a mounted union.
    Merged,
    /// A raw upper directory (after unmount).
    Upper,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    pub line: String,
}

pub type Snapshot = Vec<Entry>;

fn kind_char(ft: &std::fs::FileType) -> char {
    if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else if ft.is_socket() {
        's'
    } else {
        '?'
    }
}

/// Short, stable description of a file's bytes.
pub fn content_digest(data: &[u8]) -> String {
    if data.len() <= 48 {
        format!("\"{}\"", esc(data))
    } else {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        data.hash(&mut h);
        format!("len={} hash={:016x}", data.len(), h.finish())
    }
}

fn xattr_desc(path: &Path, kind: WalkKind) -> String {
    let names = match sys::llistxattr(path) {
        Ok(n) => n,
        Err(e) => return format!(" xattrs=<{e}>"),
    };
    let mut m = BTreeMap::new();
    for n in names {
        let hidden = n.starts_with(b"trusted.overlay.") || n.starts_with(b"user.overlay.");
        let v = match kind {
            WalkKind::Merged if hidden => continue,
            WalkKind::Upper if n.ends_with(b".overlay.uuid") && hidden => continue,
            WalkKind::Upper
                if hidden
                    && (n.ends_with(b".overlay.origin") || n.ends_with(b".overlay.impure")) =>
            {
                "<present>".to_string()
            }
            _ => match sys::lgetxattr(path, &n) {
                Ok(v) if n.starts_with(b"system.posix_acl_") => crate::acl::decode(&v),
                Ok(v) => format!("\"{}\"", esc(&v)),
                Err(e) => format!("<{e}>"),
            },
        };
        m.insert(n, v);
    }
    if m.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = m.iter().map(|(k, v)| format!("{}={}", esc(k), v)).collect();
    format!(" xattrs={{{}}}", parts.join(","))
}

/// Describes one object (not following symlinks).
pub fn describe(path: &Path, kind: WalkKind, with_mtime: bool) -> String {
    describe_opt(path, kind, with_mtime, true, true)
}

/// Like [`describe`]; `xattrs=false` leaves xattrs out, `content=false`
/// leaves file data out.
pub fn describe_opt(
    path: &Path,
    kind: WalkKind,
    with_mtime: bool,
    xattrs: bool,
    content: bool,
) -> String {
    let md = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return format!("<lstat: {e}>"),
    };
    let ft = md.file_type();
    let k = kind_char(&ft);
    let mut s = format!(
        "{k} mode={:04o} uid={} gid={}",
        md.mode() & 0o7777,
        md.uid(),
        md.gid()
    );
    let whiteout = k == 'c' && md.rdev() == 0;
    if k != 'd' {
        s += &format!(" size={}", md.size());
        if !(kind == WalkKind::Upper && whiteout) {
            s += &format!(" nlink={}", md.nlink());
        }
    }
    match k {
        'f' if !content => {}
        'f' => match std::fs::read(path) {
            Ok(d) => s += &format!(" data={}", content_digest(&d)),
            Err(e) => s += &format!(" data=<{e}>"),
        },
        'l' => match std::fs::read_link(path) {
            Ok(t) => s += &format!(" -> {}", esc(t.as_os_str().as_bytes())),
            Err(e) => s += &format!(" -> <{e}>"),
        },
        'c' | 'b' => {
            let r = md.rdev();
            s += &format!(
                " rdev={}:{}",
                nix::sys::stat::major(r),
                nix::sys::stat::minor(r)
            );
        }
        _ => {}
    }
    if with_mtime {
        s += &format!(" mtime={}.{:09}", md.mtime(), md.mtime_nsec());
    }
    // File flags on the real upper objects (`chattr`): sync, immutable, append-only,
    // noatime; the kernel's overlay keeps immutable and append-only in an xattr instead.
    if kind == WalkKind::Upper && (k == 'f' || k == 'd') {
        if let Ok(f) = sys::get_flags(path) {
            let shown = f & (0x08 | 0x10 | 0x20 | 0x80);
            if shown != 0 {
                s += &format!(" flags={shown:#x}");
            }
        }
    }
    if xattrs {
        s += &xattr_desc(path, kind);
    }
    s
}

/// Recursively snapshots `root` (the root itself is the entry "/").
/// mtime is included only for the paths in `mtime_paths` (relative, no
/// leading slash), i.e. those a scenario set explicitly.
pub fn walk(root: &Path, kind: WalkKind, mtime_paths: &[Vec<u8>]) -> Snapshot {
    let mut out = Vec::new();
    out.push(Entry {
        path: b"/".to_vec(),
        line: describe(root, kind, mtime_paths.iter().any(|p| p.is_empty())),
    });
    rec(root, &mut Vec::new(), kind, mtime_paths, &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn rec(root: &Path, rel: &mut Vec<u8>, kind: WalkKind, mtime: &[Vec<u8>], out: &mut Snapshot) {
    let dir = root.join(OsStr::from_bytes(rel));
    let rd = match std::fs::read_dir(&dir) {
        Ok(r) => r,
        Err(e) => {
            out.push(Entry {
                path: [b"/", &rel[..], b"/<readdir>"].concat(),
                line: format!("<{e}>"),
            });
            return;
        }
    };
    let mut names: Vec<Vec<u8>> = rd
        .map(|e| match e {
            Ok(e) => e.file_name().as_bytes().to_vec(),
            Err(e) => format!("<readdir error {e}>").into_bytes(),
        })
        .collect();
    names.sort();
    for n in names {
        let saved = rel.len();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(&n);
        let p = root.join(OsStr::from_bytes(rel));
        let line = describe(&p, kind, mtime.iter().any(|m| m == rel));
        let is_dir = line.starts_with('d');
        out.push(Entry {
            path: [b"/", &rel[..]].concat(),
            line,
        });
        if is_dir {
            rec(root, rel, kind, mtime, out);
        }
        rel.truncate(saved);
    }
}

/// Human-readable differences between two snapshots (at most `max`
/// entries), or `None` if equal.
pub fn diff(a: &Snapshot, b: &Snapshot, la: &str, lb: &str, max: usize) -> Option<String> {
    if a == b {
        return None;
    }
    let ma: BTreeMap<&[u8], &str> = a.iter().map(|e| (&e.path[..], &e.line[..])).collect();
    let mb: BTreeMap<&[u8], &str> = b.iter().map(|e| (&e.path[..], &e.line[..])).collect();
    let mut keys: Vec<&[u8]> = ma.keys().chain(mb.keys()).copied().collect();
    keys.sort();
    keys.dedup();
    let mut out = String::new();
    let mut n = 0;
    for k in keys {
        let (x, y) = (ma.get(k), mb.get(k));
        if x == y {
            continue;
        }
        n += 1;
        if n <= max {
            out += &format!(
                "  {}\n    {la:>8}: {}\n    {lb:>8}: {}\n",
                esc(k),
                x.unwrap_or(&"<missing>"),
                y.unwrap_or(&"<missing>")
            );
        }
    }
    if n > max {
        out += &format!("  ... and {} more differing entries\n", n - max);
    }
    Some(out)
}
