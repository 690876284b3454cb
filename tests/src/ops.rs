//! Script runner: one method per syscall, run against a mount root. Each
//! call appends `"<op> <args> -> <result>"` to the log, where result is
//! `ok`, `ok <value>` or the errno name (`ENOENT`, `EXDEV`, ...).

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag, AT_FDCWD};
use nix::sys::stat::{makedev, Mode, SFlag};

use crate::snapshot::{content_digest, describe_opt, WalkKind};
use crate::sys;

pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;
pub const RENAME_WHITEOUT: u32 = libc::RENAME_WHITEOUT;

/// Printable rendering of a byte string (`\xNN` for anything else).
pub fn esc(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        match c {
            b'\\' => s += "\\\\",
            b'"' => s += "\\\"",
            0x20..=0x7e => s.push(c as char),
            b'\n' => s += "\\n",
            _ => s += &format!("\\x{c:02x}"),
        }
    }
    s
}

fn en(e: Errno) -> String {
    format!("{e:?}")
}

fn ioen(e: std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => en(Errno::from_raw(n)),
        None => format!("error({e})"),
    }
}

fn ok<T>(r: nix::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => en(e),
    }
}

/// Creates a thread-private fs context (umask) for the calling thread and
/// sets its umask. Used for every script thread so that scenarios running
/// in parallel do not share the process umask.
pub fn private_umask(mask: u32) {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS).expect("unshare(CLONE_FS)");
    nix::sys::stat::umask(Mode::from_bits_truncate(mask));
}

pub struct Ops {
    root: PathBuf,
    pub log: Vec<String>,
    /// True on the kernel (reference) side: `want` asserts there.
    pub reference: bool,
    prefix: String,
    umask: u32,
    fds: Vec<Option<OwnedFd>>,
}

impl Ops {
    pub fn new(root: &Path, reference: bool, umask: u32) -> Ops {
        Ops {
            root: root.to_path_buf(),
            log: Vec::new(),
            reference,
            prefix: String::new(),
            umask,
            fds: Vec::new(),
        }
    }

    /// Absolute path of a mount-relative path ("" = the root).
    pub fn path(&self, p: impl AsRef<[u8]>) -> PathBuf {
        let p = p.as_ref();
        if p.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(p))
        }
    }

    fn rec(&mut self, what: String, res: String) -> String {
        self.log.push(format!("{}{what} -> {res}", self.prefix));
        res
    }

    /// Result of the last op.
    pub fn last(&self) -> &str {
        self.log
            .last()
            // the first " -> ": results may contain one (`stat` of a symlink)
            .and_then(|l| l.split_once(" -> ").map(|x| x.1))
            .unwrap_or("")
    }

    /// On the reference (kernel) side, asserts that the last op produced
    /// `expected` (so a harness bug cannot make both sides vacuously
    /// equal). On the side under test it does nothing: the log comparison
    /// reports the difference.
    pub fn want(&self, expected: &str) {
        if self.reference {
            assert_eq!(
                self.last(),
                expected,
                "reference side: unexpected result of `{}`",
                self.log.last().map(String::as_str).unwrap_or("")
            );
        }
    }

    /// Records an arbitrary note/value in the log.
    pub fn note(&mut self, what: &str, value: impl Into<String>) -> String {
        self.rec(what.to_string(), value.into())
    }

    // ---- open / read / write ------------------------------------------------

    fn open_raw(&self, p: &[u8], flags: OFlag, mode: u32) -> nix::Result<OwnedFd> {
        // O_NONBLOCK: never block opening a fifo (no-op for regular files).
        open(
            &self.path(p),
            flags | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::from_bits_truncate(mode),
        )
    }

    /// open(2) then close: `ok` or errno.
    pub fn open(&mut self, p: impl AsRef<[u8]>, flags: OFlag, mode: u32) -> String {
        let p = p.as_ref();
        let r = ok(self.open_raw(p, flags, mode));
        self.rec(format!("open {} {flags:?} {mode:o}", esc(p)), r)
    }

    /// Opens and keeps the fd; returns a slot number for `fd_*` ops.
    pub fn open_keep(&mut self, p: impl AsRef<[u8]>, flags: OFlag) -> usize {
        let p = p.as_ref();
        let r = self.open_raw(p, flags, 0o644);
        let slot = self.fds.len();
        let res = match r {
            Ok(fd) => {
                self.fds.push(Some(fd));
                format!("ok fd{slot}")
            }
            Err(e) => {
                self.fds.push(None);
                en(e)
            }
        };
        self.rec(format!("open_keep {} {flags:?}", esc(p)), res);
        slot
    }

    /// Reads the whole content through a kept fd (from offset 0).
    pub fn fd_read(&mut self, slot: usize) -> String {
        let r = match self.fds.get(slot).and_then(|f| f.as_ref()) {
            None => "EBADF".to_string(),
            Some(fd) => {
                let mut buf = vec![0u8; 1 << 16];
                let mut data = Vec::new();
                let mut off = 0i64;
                loop {
                    match nix::sys::uio::pread(fd, &mut buf, off) {
                        Ok(0) => break format!("ok {}", content_digest(&data)),
                        Ok(n) => {
                            data.extend_from_slice(&buf[..n]);
                            off += n as i64;
                        }
                        Err(e) => break en(e),
                    }
                }
            }
        };
        self.rec(format!("fd_read fd{slot}"), r)
    }

    pub fn fd_write(&mut self, slot: usize, data: impl AsRef<[u8]>) -> String {
        let data = data.as_ref();
        let r = match self.fds.get(slot).and_then(|f| f.as_ref()) {
            None => "EBADF".to_string(),
            Some(fd) => match nix::unistd::write(fd, data) {
                Ok(n) => format!("ok {n}"),
                Err(e) => en(e),
            },
        };
        self.rec(format!("fd_write fd{slot} \"{}\"", esc(data)), r)
    }

    /// fstat through a kept fd (size and nlink).
    pub fn fd_stat(&mut self, slot: usize) -> String {
        let r = match self.fds.get(slot).and_then(|f| f.as_ref()) {
            None => "EBADF".to_string(),
            Some(fd) => match nix::sys::stat::fstat(fd) {
                Ok(st) => format!(
                    "ok mode={:o} size={} nlink={}",
                    st.st_mode, st.st_size, st.st_nlink
                ),
                Err(e) => en(e),
            },
        };
        self.rec(format!("fd_stat fd{slot}"), r)
    }

    /// chmod through `/proc/self/fd/N` of a kept fd (an `O_PATH` one too): the request
    /// reaches the node the fd holds, whatever its name now names.
    pub fn fd_chmod_path(&mut self, slot: usize, mode: u32) -> String {
        let r = match self.fds.get(slot).and_then(|f| f.as_ref()) {
            None => "EBADF".to_string(),
            Some(fd) => {
                use std::os::fd::AsRawFd;
                let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
                ok(nix::sys::stat::fchmodat(
                    nix::fcntl::AT_FDCWD,
                    path.as_str(),
                    nix::sys::stat::Mode::from_bits_truncate(mode),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                ))
            }
        };
        self.rec(format!("fd_chmod_path fd{slot} {mode:o}"), r)
    }

    pub fn close(&mut self, slot: usize) -> String {
        let r = match self.fds.get_mut(slot).and_then(|f| f.take()) {
            None => "EBADF".to_string(),
            Some(fd) => ok(nix::unistd::close(fd)),
        };
        self.rec(format!("close fd{slot}"), r)
    }

    /// open(flags) + write(data) + close. Errors are prefixed by the step.
    pub fn write_flags(
        &mut self,
        p: impl AsRef<[u8]>,
        flags: OFlag,
        mode: u32,
        data: impl AsRef<[u8]>,
    ) -> String {
        let (p, data) = (p.as_ref(), data.as_ref());
        let r = match self.open_raw(p, flags, mode) {
            Err(e) => format!("open:{}", en(e)),
            Ok(fd) => match write_all(&fd, data) {
                Err(e) => format!("write:{}", en(e)),
                Ok(()) => match nix::unistd::close(fd) {
                    Ok(()) => "ok".into(),
                    Err(e) => format!("close:{}", en(e)),
                },
            },
        };
        self.rec(
            format!("write {} {flags:?} {mode:o} \"{}\"", esc(p), esc(data)),
            r,
        )
    }

    /// Creates or truncates `p` (mode 0644 before umask) and writes `data`.
    pub fn write(&mut self, p: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> String {
        self.write_flags(
            p,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC,
            0o644,
            data,
        )
    }

    /// open(O_WRONLY|O_APPEND) + write.
    pub fn append(&mut self, p: impl AsRef<[u8]>, data: impl AsRef<[u8]>) -> String {
        self.write_flags(p, OFlag::O_WRONLY | OFlag::O_APPEND, 0, data)
    }

    /// open(O_WRONLY) + pwrite(data, off).
    pub fn pwrite(&mut self, p: impl AsRef<[u8]>, off: i64, data: impl AsRef<[u8]>) -> String {
        let (p, data) = (p.as_ref(), data.as_ref());
        let r = match self.open_raw(p, OFlag::O_WRONLY, 0) {
            Err(e) => format!("open:{}", en(e)),
            Ok(fd) => match nix::sys::uio::pwrite(&fd, data, off) {
                Ok(n) if n == data.len() => "ok".into(),
                Ok(n) => format!("ok short {n}"),
                Err(e) => format!("pwrite:{}", en(e)),
            },
        };
        self.rec(format!("pwrite {} @{off} \"{}\"", esc(p), esc(data)), r)
    }

    /// Whole content: `ok "<content>"` (or length+hash for long files).
    pub fn read(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let r = match self.open_raw(p, OFlag::O_RDONLY, 0) {
            Err(e) => en(e),
            Ok(fd) => {
                let mut f = std::fs::File::from(fd);
                let mut d = Vec::new();
                match std::io::Read::read_to_end(&mut f, &mut d) {
                    Ok(_) => format!("ok {}", content_digest(&d)),
                    Err(e) => format!("read:{}", ioen(e)),
                }
            }
        };
        self.rec(format!("read {}", esc(p)), r)
    }

    // ---- metadata ------------------------------------------------------------

    pub fn truncate(&mut self, p: impl AsRef<[u8]>, len: i64) -> String {
        let p = p.as_ref();
        let r = ok(nix::unistd::truncate(&self.path(p), len));
        self.rec(format!("truncate {} {len}", esc(p)), r)
    }

    /// chmod(2) (follows symlinks).
    pub fn chmod(&mut self, p: impl AsRef<[u8]>, mode: u32) -> String {
        let p = p.as_ref();
        let r = ok(nix::sys::stat::fchmodat(
            AT_FDCWD,
            &self.path(p),
            Mode::from_bits_truncate(mode),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        ));
        self.rec(format!("chmod {} {mode:o}", esc(p)), r)
    }

    /// lchown(2); `u32::MAX` leaves an id unchanged.
    pub fn chown(&mut self, p: impl AsRef<[u8]>, uid: u32, gid: u32) -> String {
        let p = p.as_ref();
        let id = |x: u32| (x != u32::MAX).then_some(x);
        let r = ok(nix::unistd::fchownat(
            AT_FDCWD,
            &self.path(p),
            id(uid).map(nix::unistd::Uid::from_raw),
            id(gid).map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ));
        self.rec(format!("chown {} {uid}:{gid}", esc(p)), r)
    }

    /// utimensat(2) with explicit atime/mtime seconds, not following symlinks.
    pub fn utimes(&mut self, p: impl AsRef<[u8]>, atime: i64, mtime: i64) -> String {
        let p = p.as_ref();
        let (a, m) = (
            nix::sys::time::TimeSpec::new(atime, 0),
            nix::sys::time::TimeSpec::new(mtime, 0),
        );
        let r = ok(nix::sys::stat::utimensat(
            AT_FDCWD,
            &self.path(p),
            &a,
            &m,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        ));
        self.rec(format!("utimes {} {atime} {mtime}", esc(p)), r)
    }

    /// lstat: `ok <type> mode uid gid [size nlink] [rdev|data|target]`
    /// (no xattrs, no times, no inode numbers; dir size/nlink left out).
    pub fn stat(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let path = self.path(p);
        let r = match std::fs::symlink_metadata(&path) {
            Err(e) => ioen(e),
            Ok(_) => format!(
                "ok {}",
                describe_opt(&path, WalkKind::Merged, false, false, false)
            ),
        };
        self.rec(format!("stat {}", esc(p)), r)
    }

    /// lstat, permission bits only (`ok 0o6755`): for scenarios about set-id bits, whose
    /// expected value `want` can then state.
    pub fn mode(&mut self, p: impl AsRef<[u8]>) -> String {
        use std::os::unix::fs::PermissionsExt;
        let p = p.as_ref();
        let r = match std::fs::symlink_metadata(self.path(p)) {
            Err(e) => ioen(e),
            Ok(m) => format!("ok {:#o}", m.permissions().mode() & 0o7777),
        };
        self.rec(format!("mode {}", esc(p)), r)
    }

    /// stat following symlinks: type/mode/size only.
    pub fn stat_follow(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let r = match std::fs::metadata(self.path(p)) {
            Err(e) => ioen(e),
            Ok(m) => format!("ok mode={:o} size={}", m.mode(), m.size()),
        };
        self.rec(format!("stat_follow {}", esc(p)), r)
    }

    /// mtime and atime (for scenarios that set them explicitly).
    pub fn stat_times(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let r = match std::fs::symlink_metadata(self.path(p)) {
            Err(e) => ioen(e),
            Ok(m) => format!(
                "ok mtime={}.{:09} atime={}.{:09}",
                m.mtime(),
                m.mtime_nsec(),
                m.atime(),
                m.atime_nsec()
            ),
        };
        self.rec(format!("stat_times {}", esc(p)), r)
    }

    /// utimensat(2) with raw timespecs, so `libc::UTIME_NOW` / `libc::UTIME_OMIT`
    /// can be passed as the nsec of either time (seconds then ignored).
    pub fn utimens(&mut self, p: impl AsRef<[u8]>, atime: (i64, i64), mtime: (i64, i64)) -> String {
        let p = p.as_ref();
        let ts = |(s, n): (i64, i64)| {
            nix::sys::time::TimeSpec::from(libc::timespec {
                tv_sec: s as libc::time_t,
                tv_nsec: n as _,
            })
        };
        let r = ok(nix::sys::stat::utimensat(
            AT_FDCWD,
            &self.path(p),
            &ts(atime),
            &ts(mtime),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        ));
        let show = |(s, n): (i64, i64)| match n {
            libc::UTIME_NOW => "NOW".to_string(),
            libc::UTIME_OMIT => "OMIT".to_string(),
            _ => format!("{s}.{n:09}"),
        };
        self.rec(
            format!("utimens {} {} {}", esc(p), show(atime), show(mtime)),
            r,
        )
    }

    /// Like `stat_times`, but a time within 3 minutes of the current time
    /// is shown as `now` (for UTIME_NOW / implicit updates). Scenarios set an old time
    /// first, so that `now` shows only what the operation did.
    pub fn stat_times_now(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let show = |s: i64, n: i64| {
            if (s - now).abs() < 180 {
                "now".to_string()
            } else {
                format!("{s}.{n:09}")
            }
        };
        let r = match std::fs::symlink_metadata(self.path(p)) {
            Err(e) => ioen(e),
            Ok(m) => format!(
                "ok mtime={} atime={}",
                show(m.mtime(), m.mtime_nsec()),
                show(m.atime(), m.atime_nsec())
            ),
        };
        self.rec(format!("stat_times_now {}", esc(p)), r)
    }

    /// `ok sparse` if fewer than half of the file's bytes are allocated,
    /// `ok dense` otherwise.
    pub fn sparse(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let r = match std::fs::symlink_metadata(self.path(p)) {
            Err(e) => ioen(e),
            Ok(m) if m.blocks() * 512 < m.size() / 2 => "ok sparse".into(),
            Ok(_) => "ok dense".into(),
        };
        self.rec(format!("sparse {}", esc(p)), r)
    }

    /// Records whether st_ino of `p` is the same before and after `f`
    /// (raw inode numbers differ between the two copies; this does not).
    pub fn ino_stable(&mut self, p: impl AsRef<[u8]>, f: impl FnOnce(&mut Ops)) -> String {
        let p = p.as_ref().to_vec();
        let before = std::fs::symlink_metadata(self.path(&p)).map(|m| m.ino());
        f(self);
        let after = std::fs::symlink_metadata(self.path(&p)).map(|m| m.ino());
        let r = match (before, after) {
            (Ok(a), Ok(b)) => format!("ok {}", if a == b { "same" } else { "changed" }),
            (Err(e), _) | (_, Err(e)) => ioen(e),
        };
        self.rec(format!("ino_stable {}", esc(&p)), r)
    }

    /// Whether two paths currently have the same st_ino (and st_dev).
    pub fn same_ino(&mut self, a: impl AsRef<[u8]>, b: impl AsRef<[u8]>) -> String {
        let (a, b) = (a.as_ref(), b.as_ref());
        let r = match (
            std::fs::symlink_metadata(self.path(a)),
            std::fs::symlink_metadata(self.path(b)),
        ) {
            (Ok(x), Ok(y)) => format!(
                "ok {}",
                if (x.ino(), x.dev()) == (y.ino(), y.dev()) {
                    "same"
                } else {
                    "different"
                }
            ),
            (Err(e), _) | (_, Err(e)) => ioen(e),
        };
        self.rec(format!("same_ino {} {}", esc(a), esc(b)), r)
    }

    /// Whether st_ino of merged `p` equals st_ino of `lp` inside layer
    /// directory `layer` (`"l1"`, `"l2"`, .., `"u"`) of this side, read
    /// directly (not through the mount): `ok same` / `ok different`.
    pub fn ino_as_layer(
        &mut self,
        p: impl AsRef<[u8]>,
        layer: &str,
        lp: impl AsRef<[u8]>,
    ) -> String {
        let (p, lp) = (p.as_ref(), lp.as_ref());
        let base = self.root.parent().unwrap_or(&self.root).join(layer);
        // The layer may sit on a filesystem of its own, named here by a symlink.
        let base = std::fs::canonicalize(&base).unwrap_or(base);
        let lpath = if lp.is_empty() {
            base
        } else {
            base.join(OsStr::from_bytes(lp))
        };
        let r = match (
            std::fs::symlink_metadata(self.path(p)),
            std::fs::symlink_metadata(lpath),
        ) {
            // Across filesystems the kernel (xino) and unionfs put the filesystem's index
            // in the top bits: the layer's own number is in the rest.
            (Ok(x), Ok(y)) => format!(
                "ok {}",
                if x.ino() & XINO_LOW == y.ino() & XINO_LOW {
                    "same"
                } else {
                    "different"
                }
            ),
            (Err(e), _) | (_, Err(e)) => ioen(e),
        };
        self.rec(format!("ino_as_layer {} {layer}/{}", esc(p), esc(lp)), r)
    }

    /// faccessat(2) with AT_EACCESS (so the thread's fsuid is used).
    pub fn access(&mut self, p: impl AsRef<[u8]>, mode: nix::unistd::AccessFlags) -> String {
        let p = p.as_ref();
        let r = ok(nix::unistd::faccessat(
            AT_FDCWD,
            &self.path(p),
            mode,
            nix::fcntl::AtFlags::AT_EACCESS,
        ));
        self.rec(format!("access {} {mode:?}", esc(p)), r)
    }

    // ---- namespace -----------------------------------------------------------

    pub fn mkdir(&mut self, p: impl AsRef<[u8]>, mode: u32) -> String {
        let p = p.as_ref();
        let r = ok(nix::unistd::mkdir(
            &self.path(p),
            Mode::from_bits_truncate(mode),
        ));
        self.rec(format!("mkdir {} {mode:o}", esc(p)), r)
    }

    pub fn rmdir(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let r = ok(nix::unistd::unlinkat(
            AT_FDCWD,
            &self.path(p),
            nix::unistd::UnlinkatFlags::RemoveDir,
        ));
        self.rec(format!("rmdir {}", esc(p)), r)
    }

    pub fn unlink(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let r = ok(nix::unistd::unlink(&self.path(p)));
        self.rec(format!("unlink {}", esc(p)), r)
    }

    pub fn rename(&mut self, a: impl AsRef<[u8]>, b: impl AsRef<[u8]>) -> String {
        self.rename2(a, b, 0)
    }

    /// renameat2(2) with raw flags (RENAME_NOREPLACE / EXCHANGE / WHITEOUT).
    pub fn rename2(&mut self, a: impl AsRef<[u8]>, b: impl AsRef<[u8]>, flags: u32) -> String {
        let (a, b) = (a.as_ref(), b.as_ref());
        let r = ok(sys::renameat2(&self.path(a), &self.path(b), flags));
        self.rec(format!("rename {} {} flags={flags}", esc(a), esc(b)), r)
    }

    /// link(2): `new` becomes a hard link to `old`.
    pub fn link(&mut self, old: impl AsRef<[u8]>, new: impl AsRef<[u8]>) -> String {
        let (a, b) = (old.as_ref(), new.as_ref());
        let r = match std::fs::hard_link(self.path(a), self.path(b)) {
            Ok(()) => "ok".into(),
            Err(e) => ioen(e),
        };
        self.rec(format!("link {} {}", esc(a), esc(b)), r)
    }

    pub fn symlink(&mut self, target: impl AsRef<[u8]>, p: impl AsRef<[u8]>) -> String {
        let (t, p) = (target.as_ref(), p.as_ref());
        let r = match std::os::unix::fs::symlink(OsStr::from_bytes(t), self.path(p)) {
            Ok(()) => "ok".into(),
            Err(e) => ioen(e),
        };
        self.rec(format!("symlink {} {}", esc(t), esc(p)), r)
    }

    pub fn readlink(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let r = match std::fs::read_link(self.path(p)) {
            Ok(t) => format!("ok {}", esc(t.as_os_str().as_bytes())),
            Err(e) => ioen(e),
        };
        self.rec(format!("readlink {}", esc(p)), r)
    }

    pub fn mkfifo(&mut self, p: impl AsRef<[u8]>, mode: u32) -> String {
        let p = p.as_ref();
        let r = ok(nix::unistd::mkfifo(
            &self.path(p),
            Mode::from_bits_truncate(mode),
        ));
        self.rec(format!("mkfifo {} {mode:o}", esc(p)), r)
    }

    /// mknod(2) of a character device.
    pub fn mknod_char(&mut self, p: impl AsRef<[u8]>, mode: u32, major: u64, minor: u64) -> String {
        let p = p.as_ref();
        let r = ok(nix::sys::stat::mknod(
            &self.path(p),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        ));
        self.rec(format!("mknod_char {} {mode:o} {major}:{minor}", esc(p)), r)
    }

    /// mknod(2) of a fifo (S_IFIFO).
    pub fn mknod_fifo(&mut self, p: impl AsRef<[u8]>, mode: u32) -> String {
        let p = p.as_ref();
        let r = ok(nix::sys::stat::mknod(
            &self.path(p),
            SFlag::S_IFIFO,
            Mode::from_bits_truncate(mode),
            0,
        ));
        self.rec(format!("mknod_fifo {} {mode:o}", esc(p)), r)
    }

    /// mknod(2) of a block device.
    pub fn mknod_block(
        &mut self,
        p: impl AsRef<[u8]>,
        mode: u32,
        major: u64,
        minor: u64,
    ) -> String {
        let p = p.as_ref();
        let r = ok(nix::sys::stat::mknod(
            &self.path(p),
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(mode),
            makedev(major, minor),
        ));
        self.rec(
            format!("mknod_block {} {mode:o} {major}:{minor}", esc(p)),
            r,
        )
    }

    /// mknod(2) of a unix socket node (S_IFSOCK).
    pub fn mknod_sock(&mut self, p: impl AsRef<[u8]>, mode: u32) -> String {
        let p = p.as_ref();
        let r = ok(nix::sys::stat::mknod(
            &self.path(p),
            SFlag::S_IFSOCK,
            Mode::from_bits_truncate(mode),
            0,
        ));
        self.rec(format!("mknod_sock {} {mode:o}", esc(p)), r)
    }

    /// bind(2) of a unix stream socket to `p` (the socket is then closed;
    /// the node stays).
    pub fn bind_unix(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let r = match std::os::unix::net::UnixListener::bind(self.path(p)) {
            Ok(_) => "ok".into(),
            Err(e) => ioen(e),
        };
        self.rec(format!("bind_unix {}", esc(p)), r)
    }

    // ---- xattrs ----------------------------------------------------------------

    pub fn setxattr(
        &mut self,
        p: impl AsRef<[u8]>,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> String {
        self.setxattr_flags(p, name, value, 0)
    }

    /// lsetxattr with flags (libc::XATTR_CREATE / XATTR_REPLACE).
    pub fn setxattr_flags(
        &mut self,
        p: impl AsRef<[u8]>,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        flags: i32,
    ) -> String {
        let (p, n, v) = (p.as_ref(), name.as_ref(), value.as_ref());
        let r = ok(sys::lsetxattr(&self.path(p), n, v, flags));
        self.rec(
            format!(
                "setxattr {} {}=\"{}\" flags={flags}",
                esc(p),
                esc(n),
                esc(v)
            ),
            r,
        )
    }

    pub fn getxattr(&mut self, p: impl AsRef<[u8]>, name: impl AsRef<[u8]>) -> String {
        let (p, n) = (p.as_ref(), name.as_ref());
        let r = match sys::lgetxattr(&self.path(p), n) {
            Ok(v) => format!("ok \"{}\"", esc(&v)),
            Err(e) => en(e),
        };
        self.rec(format!("getxattr {} {}", esc(p), esc(n)), r)
    }

    /// llistxattr: sorted, unfiltered names.
    pub fn listxattr(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let r = match sys::llistxattr(&self.path(p)) {
            Ok(mut v) => {
                v.sort();
                let names: Vec<String> = v.iter().map(|n| esc(n)).collect();
                format!("ok [{}]", names.join(","))
            }
            Err(e) => en(e),
        };
        self.rec(format!("listxattr {}", esc(p)), r)
    }

    pub fn removexattr(&mut self, p: impl AsRef<[u8]>, name: impl AsRef<[u8]>) -> String {
        let (p, n) = (p.as_ref(), name.as_ref());
        let r = ok(sys::lremovexattr(&self.path(p), n));
        self.rec(format!("removexattr {} {}", esc(p), esc(n)), r)
    }

    /// Sets an ACL (`crate::acl::ACCESS` or `DEFAULT`) from its text form, as `setfacl`
    /// does, through the xattr.
    pub fn setacl(&mut self, p: impl AsRef<[u8]>, which: &[u8], text: &str) -> String {
        let p = p.as_ref();
        let r = ok(sys::lsetxattr(
            &self.path(p),
            which,
            &crate::acl::encode(text),
            0,
        ));
        self.rec(format!("setacl {} {} {text}", esc(p), esc(which)), r)
    }

    /// An ACL in text form (`ok u::rw-,...`), as `getfacl` shows it.
    pub fn getacl(&mut self, p: impl AsRef<[u8]>, which: &[u8]) -> String {
        let p = p.as_ref();
        let r = match sys::lgetxattr(&self.path(p), which) {
            Ok(v) => format!("ok {}", crate::acl::decode(&v)),
            Err(e) => en(e),
        };
        self.rec(format!("getacl {} {}", esc(p), esc(which)), r)
    }

    // ---- file flags ------------------------------------------------------------------

    /// `chattr SPEC p` (e.g. `+i`): `ok`, or chattr's complaint without the path.
    pub fn chattr(&mut self, p: impl AsRef<[u8]>, spec: &str) -> String {
        let p = p.as_ref();
        let path = self.path(p);
        let r = match std::process::Command::new("chattr")
            .arg(spec)
            .arg(&path)
            .output()
        {
            Err(e) => format!("spawn chattr: {e}"),
            Ok(o) if o.status.success() => "ok".into(),
            Ok(o) => tool_error(&o.stderr, &path),
        };
        self.rec(format!("chattr {spec} {}", esc(p)), r)
    }

    /// `lsattr -d p`: `ok` and the flags column, or lsattr's complaint without the path.
    pub fn lsattr(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let path = self.path(p);
        let r = match std::process::Command::new("lsattr")
            .arg("-d")
            .arg(&path)
            .output()
        {
            Err(e) => format!("spawn lsattr: {e}"),
            Ok(o) if o.status.success() => {
                let out = String::from_utf8_lossy(&o.stdout);
                format!("ok {}", out.split_whitespace().next().unwrap_or(""))
            }
            Ok(o) => tool_error(&o.stderr, &path),
        };
        self.rec(format!("lsattr {}", esc(p)), r)
    }

    /// `FS_IOC_FSGETXATTR`: `ok xflags=0x.. projid=N`.
    pub fn fsxattr(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let r = match sys::fsgetxattr(&self.path(p)) {
            Ok(v) => {
                let word = |i: usize| u32::from_le_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
                format!("ok xflags={:#x} projid={}", word(0), word(12))
            }
            Err(e) => en(e),
        };
        self.rec(format!("fsxattr {}", esc(p)), r)
    }

    /// `FS_IOC_FSGETXATTR`, then `FS_IOC_FSSETXATTR` with `set` added to and `clear` taken
    /// from the xflags (as `xfs_io -c 'chattr +a'` does).
    pub fn fsxattr_set(&mut self, p: impl AsRef<[u8]>, set: u32, clear: u32) -> String {
        let p = p.as_ref();
        let path = self.path(p);
        let r = match sys::fsgetxattr(&path) {
            Ok(mut v) => {
                let x = (u32::from_le_bytes([v[0], v[1], v[2], v[3]]) | set) & !clear;
                v[..4].copy_from_slice(&x.to_le_bytes());
                ok(sys::fssetxattr(&path, &v))
            }
            Err(e) => format!("get:{}", en(e)),
        };
        self.rec(format!("fsxattr_set {} +{set:#x} -{clear:#x}", esc(p)), r)
    }

    // ---- directories -------------------------------------------------------------

    /// readdir: `ok [a,b,c]` (sorted, without . and ..) followed by
    /// problems found: `[no-dot]` (. or .. missing), `[dup:x]`,
    /// `[seek:x]` (seekdir to the telldir taken before x does not yield x),
    /// `[dino:x]` (d_ino != lstat st_ino), `[dtype:x]` (d_type != lstat type).
    pub fn readdir(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let path = self.path(p);
        let r = readdir_checked(&path);
        self.rec(format!("readdir {}", esc(p)), r)
    }

    // ---- data ----------------------------------------------------------------------

    pub fn fsync(&mut self, p: impl AsRef<[u8]>) -> String {
        let p = p.as_ref();
        let r = match self.open_raw(p, OFlag::O_RDONLY, 0) {
            Err(e) => format!("open:{}", en(e)),
            Ok(fd) => ok(nix::unistd::fsync(&fd)),
        };
        self.rec(format!("fsync {}", esc(p)), r)
    }

    /// fallocate(2) with raw mode flags (libc::FALLOC_FL_*).
    pub fn fallocate(&mut self, p: impl AsRef<[u8]>, mode: i32, off: i64, len: i64) -> String {
        let p = p.as_ref();
        let r = match self.open_raw(p, OFlag::O_WRONLY, 0) {
            Err(e) => format!("open:{}", en(e)),
            Ok(fd) => ok(nix::fcntl::fallocate(
                &fd,
                nix::fcntl::FallocateFlags::from_bits_retain(mode),
                off,
                len,
            )),
        };
        self.rec(format!("fallocate {} mode={mode} {off}+{len}", esc(p)), r)
    }

    fn seek(&mut self, p: &[u8], off: i64, whence: nix::unistd::Whence, name: &str) -> String {
        let r = match self.open_raw(p, OFlag::O_RDONLY, 0) {
            Err(e) => format!("open:{}", en(e)),
            Ok(fd) => match nix::unistd::lseek(&fd, off, whence) {
                Ok(o) => format!("ok {o}"),
                Err(e) => en(e),
            },
        };
        self.rec(format!("{name} {} {off}", esc(p)), r)
    }

    pub fn seek_data(&mut self, p: impl AsRef<[u8]>, off: i64) -> String {
        self.seek(p.as_ref(), off, nix::unistd::Whence::SeekData, "seek_data")
    }

    pub fn seek_hole(&mut self, p: impl AsRef<[u8]>, off: i64) -> String {
        self.seek(p.as_ref(), off, nix::unistd::Whence::SeekHole, "seek_hole")
    }

    /// copy_file_range(2) of `len` bytes from offset 0 of `src` to offset 0
    /// of `dst` (opened O_WRONLY|O_CREAT, 0644): `ok <copied>`.
    pub fn copy_file_range(
        &mut self,
        src: impl AsRef<[u8]>,
        dst: impl AsRef<[u8]>,
        len: usize,
    ) -> String {
        let (s, d) = (src.as_ref(), dst.as_ref());
        let r = match (
            self.open_raw(s, OFlag::O_RDONLY, 0),
            self.open_raw(d, OFlag::O_WRONLY | OFlag::O_CREAT, 0o644),
        ) {
            (Err(e), _) => format!("open src:{}", en(e)),
            (_, Err(e)) => format!("open dst:{}", en(e)),
            (Ok(a), Ok(b)) => {
                let (mut oi, mut oo) = (0i64, 0i64);
                let mut total = 0usize;
                loop {
                    match nix::fcntl::copy_file_range(
                        &a,
                        Some(&mut oi),
                        &b,
                        Some(&mut oo),
                        len - total,
                    ) {
                        Ok(0) => break format!("ok {total}"),
                        Ok(n) => {
                            total += n;
                            if total >= len {
                                break format!("ok {total}");
                            }
                        }
                        Err(e) => break en(e),
                    }
                }
            }
        };
        self.rec(format!("copy_file_range {} {} {len}", esc(s), esc(d)), r)
    }

    /// copy_file_range(2) of up to `len` bytes from `src`@`soff` to
    /// `dst`@`doff` (dst opened O_WRONLY without O_CREAT; may be the same
    /// file as src): `ok <copied>` (one call, no loop).
    pub fn copy_range_at(
        &mut self,
        src: impl AsRef<[u8]>,
        soff: i64,
        dst: impl AsRef<[u8]>,
        doff: i64,
        len: usize,
    ) -> String {
        let (s, d) = (src.as_ref(), dst.as_ref());
        let r = match (
            self.open_raw(s, OFlag::O_RDONLY, 0),
            self.open_raw(d, OFlag::O_WRONLY, 0),
        ) {
            (Err(e), _) => format!("open src:{}", en(e)),
            (_, Err(e)) => format!("open dst:{}", en(e)),
            (Ok(a), Ok(b)) => {
                let (mut oi, mut oo) = (soff, doff);
                match nix::fcntl::copy_file_range(&a, Some(&mut oi), &b, Some(&mut oo), len) {
                    Ok(n) => format!("ok {n}"),
                    Err(e) => en(e),
                }
            }
        };
        self.rec(
            format!("copy_range_at {}@{soff} {}@{doff} {len}", esc(s), esc(d)),
            r,
        )
    }

    // ---- context -------------------------------------------------------------------

    /// Sets the umask of this script (each script runs in a thread with a
    /// private fs context, so this does not leak into other tests).
    pub fn umask(&mut self, mask: u32) -> String {
        nix::sys::stat::umask(Mode::from_bits_truncate(mask));
        self.umask = mask;
        self.rec(format!("umask {mask:o}"), "ok".into())
    }

    /// Runs `f` in a new thread whose fsuid/fsgid/groups are uid/gid/[gid]
    /// (per-thread credentials: see `sys::set_thread_fs_creds`). Its log
    /// entries are prefixed with `[uid:gid]`.
    pub fn as_user(&mut self, uid: u32, gid: u32, f: impl FnOnce(&mut Ops) + Send) {
        let mut sub = Ops {
            root: self.root.clone(),
            log: Vec::new(),
            reference: self.reference,
            prefix: format!("{}[{uid}:{gid}] ", self.prefix),
            umask: self.umask,
            fds: Vec::new(),
        };
        let mask = self.umask;
        let res = std::thread::scope(|s| {
            s.spawn(|| {
                private_umask(mask);
                sys::set_thread_fs_creds(uid, gid, &[gid]).expect("set thread creds");
                f(&mut sub);
            })
            .join()
        });
        self.log.append(&mut sub.log);
        if let Err(p) = res {
            std::panic::resume_unwind(p);
        }
    }
}

/// A tool's error message with the (side-specific) path taken out.
fn tool_error(stderr: &[u8], path: &Path) -> String {
    let msg = String::from_utf8_lossy(stderr);
    let msg = msg.replace(&*path.to_string_lossy(), "PATH");
    format!("error: {}", msg.trim())
}

fn write_all(fd: &OwnedFd, mut data: &[u8]) -> nix::Result<()> {
    while !data.is_empty() {
        let n = nix::unistd::write(fd, data)?;
        data = &data[n..];
    }
    Ok(())
}

fn dtype_of(m: &std::fs::Metadata) -> u8 {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        libc::DT_DIR
    } else if t.is_file() {
        libc::DT_REG
    } else if t.is_symlink() {
        libc::DT_LNK
    } else if t.is_fifo() {
        libc::DT_FIFO
    } else if t.is_char_device() {
        libc::DT_CHR
    } else if t.is_block_device() {
        libc::DT_BLK
    } else if t.is_socket() {
        libc::DT_SOCK
    } else {
        libc::DT_UNKNOWN
    }
}

fn readdir_checked(path: &Path) -> String {
    let mut ds = match sys::DirStream::open(path) {
        Ok(d) => d,
        Err(e) => return en(e),
    };
    let mut ents = Vec::new();
    loop {
        let pos = ds.tell();
        match ds.read() {
            Ok(Some(e)) => ents.push((pos, e)),
            Ok(None) => break,
            Err(e) => return format!("readdir:{}", en(e)),
        }
    }
    let mut problems = Vec::new();
    // telldir/seekdir stability, probed in reverse order
    for (pos, e) in ents.iter().rev() {
        ds.seek(*pos);
        match ds.read() {
            Ok(Some(x)) if x.name == e.name => {}
            _ => problems.push(format!("[seek:{}]", esc(&e.name))),
        }
    }
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut dots = 0;
    for (_, e) in &ents {
        if e.name == b"." || e.name == b".." {
            dots += 1;
            continue;
        }
        names.push(e.name.clone());
        match std::fs::symlink_metadata(path.join(OsStr::from_bytes(&e.name))) {
            Ok(m) => {
                if m.ino() != e.ino {
                    problems.push(format!("[dino:{}]", esc(&e.name)));
                }
                if dtype_of(&m) != e.dtype {
                    problems.push(format!("[dtype:{}]", esc(&e.name)));
                }
            }
            Err(err) => problems.push(format!("[lstat:{}:{}]", esc(&e.name), ioen(err))),
        }
    }
    if dots != 2 {
        problems.push("[no-dot]".into());
    }
    names.sort();
    let n0 = names.len();
    names.dedup();
    if names.len() != n0 {
        problems.push("[dup]".into());
    }
    let list: Vec<String> = names.iter().map(|n| esc(n)).collect();
    let mut s = format!("ok [{}]", list.join(","));
    for p in problems {
        s += " ";
        s += &p;
    }
    s
}

/// The bits of an inode number below those where xino puts the filesystem's index (the
/// kernel uses the top 1-8 bits, unionfs bits 56-63).
const XINO_LOW: u64 = (1 << 56) - 1;
