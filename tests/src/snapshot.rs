//! Walks a tree (a mounted union or an upper dir) into comparable entries
//! and diffs two such snapshots.
//!
//! Exclusions (reasons in README.md):
//! * directory sizes: the kernel reports different dir sizes through FUSE
//!   than through overlayfs (and ext4 dir sizes depend on history);
//! * st_ino / st_dev: the two sides are different copies (see `Ops::ino_stable`);
//! * mtime/atime/ctime unless requested (times differ by run);
//! * merged view: the overlay's own xattrs, `trusted.overlay.*` (`user.overlay.*` with
//!   `userxattr`; the other prefix is an ordinary name and shown), hidden by overlay;
//!   leaks are checked by the `listxattr` op in scenarios;
//! * upper dir: nlink of whiteouts (the kernel hard-links whiteouts to a
//!   shared one in workdir), the file handle bytes of `*.overlay.origin` (of a
//!   different copy; its header, length and uuid are compared, the uuid named by the
//!   lower layer whose filesystem has it), `*.overlay.impure` (presence
//!   only), `*.overlay.uuid` (random per filesystem instance).
//!   Every other overlay xattr is compared by value, `*.overlay.redirect`
//!   included: unionfs must write the kernel's redirects byte for byte.

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

/// What a walk needs to know about the union whose tree it reads.
#[derive(Clone, Debug, Default)]
pub struct WalkCtx {
    /// Mounted with `userxattr`: the overlay's own xattrs are `user.overlay.*`; without,
    /// `trusted.overlay.*`, and a `user.overlay.*` name is an ordinary one.
    pub userxattr: bool,
    /// The filesystem UUID of each lower layer, topmost first: an origin record's uuid is
    /// shown as the first layer that has it (the two sides' tmpfs UUIDs differ). None:
    /// origin records are compared as present only (`walk`, for unions whose two sides
    /// have lowers of different kinds, as `nested.rs`'s).
    pub lower_uuids: Option<Vec<[u8; 16]>>,
}

impl WalkCtx {
    /// The context of a union mounted with `opts` over `lowers`.
    pub fn new(opts: &str, lowers: &[std::path::PathBuf]) -> WalkCtx {
        WalkCtx {
            userxattr: opts.split(',').any(|o| o == "userxattr"),
            lower_uuids: Some(
                lowers
                    .iter()
                    .map(|l| sys::fs_uuid(l).unwrap_or([0; 16]))
                    .collect(),
            ),
        }
    }

    /// An origin record (`struct ovl_fb`): version, magic, length, flags, type and uuid
    /// compared, the file handle's bytes only counted.
    fn origin(&self, v: &[u8]) -> String {
        let Some(lower_uuids) = &self.lower_uuids else {
            return "<present>".to_string();
        };
        if v.len() < 21 || v[1] != 0xfb {
            return format!("<not a file handle: {}>", esc(v));
        }
        let uuid: [u8; 16] = v[5..21].try_into().unwrap_or([0; 16]);
        let who = if uuid == [0; 16] {
            "null".to_string()
        } else if let Some(i) = lower_uuids.iter().position(|u| *u == uuid) {
            format!("fs-of-l{}", i + 1)
        } else {
            "not-a-lower-fs".to_string()
        };
        format!(
            "fh(v{} len={}/{} flags={:#x} type={} uuid={who} fid={}B)",
            v[0],
            v[2],
            v.len(),
            v[3],
            v[4],
            v.len() - 21
        )
    }
}

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

fn xattr_desc(path: &Path, kind: WalkKind, ctx: &WalkCtx) -> String {
    let names = match sys::llistxattr(path) {
        Ok(n) => n,
        Err(e) => return format!(" xattrs=<{e}>"),
    };
    let own: &[u8] = if ctx.userxattr {
        b"user.overlay."
    } else {
        b"trusted.overlay."
    };
    let mut m = BTreeMap::new();
    for n in names {
        let hidden = n.starts_with(own);
        let v = match kind {
            WalkKind::Merged if hidden => continue,
            WalkKind::Upper if hidden && n.ends_with(b".overlay.uuid") => continue,
            WalkKind::Upper if hidden && n.ends_with(b".overlay.impure") => "<present>".to_string(),
            WalkKind::Upper if hidden && n.ends_with(b".overlay.origin") => {
                match sys::lgetxattr(path, &n) {
                    Ok(v) => ctx.origin(&v),
                    Err(e) => format!("<{e}>"),
                }
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
    describe_ctx(path, kind, with_mtime, &WalkCtx::default())
}

/// Like [`describe`], in the context of one union; directories show their nlink (the
/// kernel's overlay reports 1 for a merged one).
pub fn describe_ctx(path: &Path, kind: WalkKind, with_mtime: bool, ctx: &WalkCtx) -> String {
    describe_full(path, kind, with_mtime, true, true, Some(ctx))
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
    describe_full(path, kind, with_mtime, xattrs, content, None)
}

/// `ctx`: a tree walk's (directory nlink and xattrs in its context), None for an op's
/// `stat` line (no directory nlink).
fn describe_full(
    path: &Path,
    kind: WalkKind,
    with_mtime: bool,
    xattrs: bool,
    content: bool,
    ctx: Option<&WalkCtx>,
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
    } else if ctx.is_some() {
        s += &format!(" nlink={}", md.nlink());
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
        s += &xattr_desc(path, kind, ctx.unwrap_or(&WalkCtx::default()));
    }
    s
}

/// Recursively snapshots `root` (the root itself is the entry "/").
/// mtime is included only for the paths in `mtime_paths` (relative, no
/// leading slash), i.e. those a scenario set explicitly.
pub fn walk(root: &Path, kind: WalkKind, mtime_paths: &[Vec<u8>]) -> Snapshot {
    walk_ctx(root, kind, mtime_paths, &WalkCtx::default())
}

/// Like [`walk`], in the context of one union (its xattr namespace, its lowers' UUIDs).
pub fn walk_ctx(root: &Path, kind: WalkKind, mtime_paths: &[Vec<u8>], ctx: &WalkCtx) -> Snapshot {
    let mut out = Vec::new();
    out.push(Entry {
        path: b"/".to_vec(),
        line: describe_ctx(root, kind, mtime_paths.iter().any(|p| p.is_empty()), ctx),
    });
    rec(root, &mut Vec::new(), kind, mtime_paths, ctx, &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn rec(
    root: &Path,
    rel: &mut Vec<u8>,
    kind: WalkKind,
    mtime: &[Vec<u8>],
    ctx: &WalkCtx,
    out: &mut Snapshot,
) {
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
        let line = describe_ctx(&p, kind, mtime.iter().any(|m| m == rel), ctx);
        let is_dir = line.starts_with('d');
        out.push(Entry {
            path: [b"/", &rel[..]].concat(),
            line,
        });
        if is_dir {
            rec(root, rel, kind, mtime, ctx, out);
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
