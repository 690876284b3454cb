//! The event trace (`-o trace[=FILE]`, `-o trace_level=lookup`): one `key=value` line per
//! union event as it happens, for people learning what a union filesystem does.
//!
//! The tracer is process-wide (one daemon serves one union). When it is off, every event
//! site costs one relaxed load of [`LEVEL`]: callers test [`on`] (or [`lookups_on`]) before
//! they build any path or string. Paths in the lines are merged-view paths, built from the
//! node's parent chain only when a line is written.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use parking_lot::Mutex;

use crate::inode::{Inode, LayerRef, ROOT};
use crate::union::UnionFs;

/// How much is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Level {
    /// Nothing (the default).
    #[default]
    Off = 0,
    /// Changes the union makes to its upper layer or refuses: copy-up, whiteouts, opaque
    /// directories, EXDEV.
    Events = 1,
    /// Also every lookup, with the layer that answered it.
    Lookup = 2,
}

impl Level {
    /// `trace_level=` values.
    pub fn parse(v: &[u8]) -> Option<Level> {
        match v {
            b"events" => Some(Level::Events),
            b"lookup" => Some(Level::Lookup),
            _ => None,
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Off as u8);
static SINK: OnceLock<Mutex<Sink>> = OnceLock::new();

enum Sink {
    Stderr,
    File(File),
}

/// Whether events are traced: the one check every event site makes first.
#[inline]
pub fn on() -> bool {
    LEVEL.load(Ordering::Relaxed) >= Level::Events as u8
}

/// Whether lookups are traced too.
#[inline]
pub fn lookups_on() -> bool {
    LEVEL.load(Ordering::Relaxed) >= Level::Lookup as u8
}

/// Turns tracing on, to `file` (opened by the caller in append mode) or stderr. Once per
/// process: a second call only changes the level.
pub fn start(level: Level, file: Option<File>) {
    let _ = SINK.set(Mutex::new(match file {
        Some(f) => Sink::File(f),
        None => Sink::Stderr,
    }));
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Writes one line (the newline is added). One `write` per line, so lines from several
/// threads never interleave, and an `O_APPEND` file gets whole lines.
pub fn emit(line: &str) {
    let Some(sink) = SINK.get() else {
        return;
    };
    let mut buf = Vec::with_capacity(line.len() + 1);
    buf.extend_from_slice(line.as_bytes());
    buf.push(b'\n');
    let mut s = sink.lock();
    let r = match &mut *s {
        Sink::Stderr => std::io::stderr().write_all(&buf),
        Sink::File(f) => f.write_all(&buf),
    };
    if let Err(e) = r {
        // Losing the trace must not hurt the union: stop tracing, say so once.
        LEVEL.store(Level::Off as u8, Ordering::Relaxed);
        log::warn!("trace: cannot write ({e}); tracing stopped");
    }
}

/// What made a copy-up happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Opened for writing.
    OpenWrite,
    /// Opened with `O_TRUNC`, or truncated (setattr size).
    Truncate,
    Chmod,
    Chown,
    Utimes,
    Setxattr,
    Removexattr,
    /// `chattr` (file flags).
    Fileattr,
    Link,
    Rename,
    /// A name created in a directory that only a lower layer has.
    CreateInLowerDir,
    /// A name removed from a directory that only a lower layer has (it gets a whiteout).
    RemoveInLowerDir,
    /// Copied up because something below it was.
    Parent,
    Other,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::OpenWrite => "open-write",
            Cause::Truncate => "truncate",
            Cause::Chmod => "chmod",
            Cause::Chown => "chown",
            Cause::Utimes => "utimes",
            Cause::Setxattr => "setxattr",
            Cause::Removexattr => "removexattr",
            Cause::Fileattr => "fileattr",
            Cause::Link => "link",
            Cause::Rename => "rename",
            Cause::CreateInLowerDir => "create-in-lower-dir",
            Cause::RemoveInLowerDir => "remove-in-lower-dir",
            Cause::Parent => "parent",
            Cause::Other => "other",
        }
    }
}

thread_local! {
    static CAUSE: Cell<Cause> = const { Cell::new(Cause::Other) };
}

/// Restores the previous cause when dropped.
pub struct CauseGuard(Option<Cause>);

impl Drop for CauseGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            CAUSE.with(|x| x.set(c));
        }
    }
}

/// Names the reason for the copy-ups this thread makes until the guard drops. Nothing is
/// stored when tracing is off.
#[must_use]
pub fn because(c: Cause) -> CauseGuard {
    if !on() {
        return CauseGuard(None);
    }
    CauseGuard(Some(CAUSE.with(|x| x.replace(c))))
}

pub fn cause() -> Cause {
    CAUSE.with(|x| x.get())
}

/// A layer as the trace and `explain` name it: `upper`, `lower0` (the top lower), ...
pub fn layer_name(l: LayerRef) -> String {
    match l {
        LayerRef::Upper => "upper".into(),
        LayerRef::Lower(i) => format!("lower{i}"),
    }
}

/// The merged-view path of a node, from its parent chain (`/` for the root). A node whose
/// chain is broken (forgotten meanwhile) shows as `?/name`.
pub fn path_of(fs: &UnionFs, inode: &Inode) -> String {
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut cur = inode.ino;
    let name_parent = |n: &Inode| {
        let s = n.state.read();
        (s.parent, s.name.clone())
    };
    let mut st = name_parent(inode);
    // Bounded: a cycle cannot exist, but a trace must never hang the daemon.
    for _ in 0..4096 {
        if cur == ROOT {
            break;
        }
        names.push(st.1.as_bytes().to_vec());
        cur = st.0;
        if cur == ROOT {
            break;
        }
        match fs.inode(cur) {
            Ok(p) => st = name_parent(&p),
            Err(_) => {
                names.push(b"?".to_vec());
                break;
            }
        }
    }
    let mut out = String::new();
    for n in names.iter().rev() {
        out.push('/');
        out.push_str(&quote(OsStr::from_bytes(n)));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The merged-view path of `name` in the directory node `parent`.
pub fn child_path(fs: &UnionFs, parent: &Inode, name: &OsStr) -> String {
    let mut p = path_of(fs, parent);
    if !p.ends_with('/') {
        p.push('/');
    }
    p.push_str(&quote(name));
    p
}

/// A value safe in a `key=value` line: bytes outside printable ASCII, spaces, `=` and
/// backslashes are written `\xNN`.
pub fn quote(s: &OsStr) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_graphic() && b != b'\\' && b != b'=' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// `file`, `dir`, `symlink`, ... for a `S_IFMT` value.
pub fn kind_name(kind: u32) -> &'static str {
    match kind & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR => "chardev",
        libc::S_IFBLK => "blockdev",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        _ => "unknown",
    }
}

/// An event about `name` in the directory node `parent`:
/// `event=EVENT path=/dir/name cause=WHY`. Costs one relaxed load when tracing is off.
#[inline]
pub fn name_event(fs: &UnionFs, event: &str, parent: &Inode, name: &OsStr, why: &str) {
    if on() {
        emit(&format!(
            "event={event} path={} cause={why}",
            child_path(fs, parent, name)
        ));
    }
}

/// A whiteout made in the upper layer, hiding `name` of the lower layers.
#[inline]
pub fn whiteout(fs: &UnionFs, parent: &Inode, name: &OsStr, why: &str) {
    name_event(fs, "whiteout", parent, name, why);
}

/// A whiteout replaced by a new object.
#[inline]
pub fn whiteout_removed(fs: &UnionFs, parent: &Inode, name: &OsStr, why: &str) {
    name_event(fs, "whiteout-removed", parent, name, why);
}

/// A directory made opaque: the lower layers' directories under its name stop showing.
#[inline]
pub fn opaque(fs: &UnionFs, parent: &Inode, name: &OsStr, why: &str) {
    name_event(fs, "opaque", parent, name, why);
}

/// A rename refused with EXDEV, so that `mv` copies instead.
#[inline]
pub fn exdev(fs: &UnionFs, src: &Inode, to: (&Inode, &OsStr), reason: &str) {
    if on() {
        emit(&format!(
            "event=exdev path={} to={} reason={reason}",
            path_of(fs, src),
            child_path(fs, to.0, to.1)
        ));
    }
}

/// `event=lookup path=/etc/motd shown=lower0 type=file layers=lower0` (`shown=none` when
/// the name does not exist in the union or is whited out). `layers` lists where the object
/// has a part: for a directory, the layers whose listings merge.
pub fn lookup(fs: &UnionFs, parent: &Inode, name: &OsStr, found: Option<&crate::lookup::Found>) {
    let path = child_path(fs, parent, name);
    let Some(f) = found else {
        emit(&format!("event=lookup path={path} shown=none"));
        return;
    };
    let mut layers: Vec<String> = Vec::new();
    if let Some(u) = &f.upper {
        layers.push(layer_name(u.layer));
    }
    layers.extend(f.lowers.iter().map(|l| layer_name(l.layer)));
    emit(&format!(
        "event=lookup path={path} shown={} type={} layers={}",
        layers.first().map_or("none", String::as_str),
        kind_name(f.kind),
        layers.join(",")
    ));
}

/// Times a copy-up: started before the copy, reported after it.
pub struct Timer(Option<Instant>);

impl Timer {
    pub fn start() -> Timer {
        Timer(if on() { Some(Instant::now()) } else { None })
    }
    pub fn micros(&self) -> u128 {
        self.0.map_or(0, |t| t.elapsed().as_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote(OsStr::new("motd")), "motd");
        assert_eq!(quote(OsStr::new("a b=c")), "a\\x20b\\x3dc");
        assert_eq!(quote(OsStr::from_bytes(b"\xff")), "\\xff");
    }

    #[test]
    fn levels() {
        assert_eq!(Level::parse(b"lookup"), Some(Level::Lookup));
        assert_eq!(Level::parse(b"events"), Some(Level::Events));
        assert_eq!(Level::parse(b"all"), None);
        assert!(Level::Lookup > Level::Events);
    }

    #[test]
    fn cause_is_not_stored_when_off() {
        // Tracing is off in unit tests.
        let _g = because(Cause::Link);
        assert_eq!(cause(), Cause::Other);
    }
}
