//! Unpacks one layer tar into an empty directory, checking every member against the layer
//! root before anything is written.
//!
//! Every parent directory is opened component by component with `O_NOFOLLOW`, so no write
//! can pass through a symlink, whether the archive made it or not; final names are created
//! relative to their parent's descriptor (`openat`, `mkdirat`, `symlinkat`, ...) with
//! `O_EXCL`/no-follow, and whatever stood there is removed first (never followed).
//! Directory metadata is applied last, because adding children changes a directory's mtime
//! and a read-only mode would stop a non-root import from filling it.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use super::paths::components;
use super::progress::Progress;
use super::sparse;
use crate::error::{Error, Result};
use crate::sys;

/// Owner, mode and mtime from a tar header.
#[derive(Clone, Copy)]
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
}

pub struct Stats {
    /// Bytes of regular-file data written.
    pub bytes: u64,
    pub warnings: Vec<String>,
}

struct Extractor<'a> {
    root: OwnedFd,
    is_root: bool,
    dirs: Vec<(Vec<OsString>, Meta)>,
    stats: Stats,
    progress: &'a mut Progress,
}

/// Remembers whether the stream's last 512 bytes read were zeros: a complete tar ends with
/// zero blocks, a cut one mostly does not (the tar crate takes a clean EOF for the end).
struct TrailCheck<R> {
    inner: R,
    zero_run: u64,
}

impl<R: Read> Read for TrailCheck<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let chunk = buf.get(..n).unwrap_or_default();
        match chunk.iter().rposition(|b| *b != 0) {
            Some(i) => self.zero_run = (n - i - 1) as u64,
            None => self.zero_run += n as u64,
        }
        Ok(n)
    }
}

/// Unpacks `reader` (an uncompressed tar) into `dest`, an existing empty directory.
pub fn extract_layer(reader: impl Read, dest: &Path, progress: &mut Progress) -> Result<Stats> {
    let root = openat(
        nix::fcntl::AT_FDCWD,
        dest,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| Error::path("open layer directory", dest, e.into()))?;
    let mut x = Extractor {
        root,
        is_root: nix::unistd::geteuid().is_root(),
        dirs: Vec::new(),
        stats: Stats {
            bytes: 0,
            warnings: Vec::new(),
        },
        progress,
    };
    let mut check = TrailCheck {
        inner: reader,
        zero_run: 0,
    };
    let mut count = 0u64;
    {
        let mut ar = tar::Archive::new(&mut check);
        let entries = ar
            .entries()
            .map_err(|e| Error::refused(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry
                .map_err(|e| Error::refused(format!("not a tar archive or truncated: {e}")))?;
            x.entry(&mut entry)?;
            count += 1;
        }
    }
    if check.zero_run < 512 {
        return Err(Error::refused(if count == 0 {
            "not a tar archive (no tar header found)".to_string()
        } else {
            "truncated tar archive (no end-of-archive blocks)".to_string()
        }));
    }
    x.finish_dirs()?;
    Ok(x.stats)
}

fn show(comps: &[OsString]) -> String {
    let v: Vec<_> = comps.iter().map(|c| c.to_string_lossy()).collect();
    v.join("/")
}

/// Owner, mode and mtime from the header, overridden by the pax records `uid`, `gid` and
/// `mtime` (which carry values the header fields cannot hold; an mtime may have a
/// fraction, and may be negative).
fn meta_of(h: &tar::Header, pax: &[(Vec<u8>, Vec<u8>)]) -> Result<Meta> {
    let bad = |what: &str, e: io::Error| Error::refused(format!("bad {what} in tar header: {e}"));
    let pax_num = |key: &str| -> Result<Option<i64>> {
        let Some((_, v)) = pax.iter().find(|(k, _)| k == key.as_bytes()) else {
            return Ok(None);
        };
        let s = std::str::from_utf8(v).unwrap_or("");
        let int = s.split('.').next().unwrap_or("");
        int.parse::<i64>()
            .map(Some)
            .map_err(|_| Error::refused(format!("bad pax {key} {s:?}")))
    };
    let id = |v: i64, what: &str| {
        u32::try_from(v).map_err(|_| Error::refused(format!("{what} out of range")))
    };
    let uid = match pax_num("uid")? {
        Some(v) => id(v, "uid")?,
        None => id(
            i64::try_from(h.uid().map_err(|e| bad("uid", e))?).unwrap_or(-1),
            "uid",
        )?,
    };
    let gid = match pax_num("gid")? {
        Some(v) => id(v, "gid")?,
        None => id(
            i64::try_from(h.gid().map_err(|e| bad("gid", e))?).unwrap_or(-1),
            "gid",
        )?,
    };
    let mtime = match pax_num("mtime")? {
        Some(v) => v,
        None => i64::try_from(h.mtime().map_err(|e| bad("mtime", e))?).unwrap_or(i64::MAX),
    };
    Ok(Meta {
        uid,
        gid,
        mode: h.mode().map_err(|e| bad("mode", e))? & 0o7777,
        mtime,
    })
}

impl Extractor<'_> {
    fn entry<R: Read>(&mut self, e: &mut tar::Entry<R>) -> Result<()> {
        let pax = pax_of(e)?;
        let sparse = sparse::detect(&pax)?;
        let raw = match &sparse {
            Some(s) => s.name.clone(),
            None => e.path_bytes().into_owned(),
        };
        let comps = components(&raw)?;
        let kind = e.header().entry_type();
        // A hard link takes its metadata from its target; some tools leave its fields empty.
        let meta = if kind == tar::EntryType::Link {
            Meta {
                uid: 0,
                gid: 0,
                mode: 0,
                mtime: 0,
            }
        } else {
            meta_of(e.header(), &pax)?
        };
        let xattrs = xattrs_of(&pax)?;
        let Some((name, parents)) = comps.split_last() else {
            // "./": the layer root itself; it keeps the store's own mode.
            return if kind.is_dir() {
                Ok(())
            } else {
                Err(Error::refused(
                    "a non-directory member names the layer root",
                ))
            };
        };
        let dir = self.open_dir(parents, true)?;
        let what = show(&comps);
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st)
                        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
                            == SFlag::S_IFDIR => {}
                    Ok(_) => {
                        self.remove(&dir, name, &what)?;
                        self.mkdir(&dir, name, &what)?;
                    }
                    Err(_) => self.mkdir(&dir, name, &what)?,
                }
                self.dirs.push((comps.clone(), meta));
            }
            // GNUSparse (old GNU headers): the tar crate reads the holes back as zeros.
            T::Regular | T::Continuous | T::GNUSparse => {
                self.remove(&dir, name, &what)?;
                let fd = openat(
                    &dir,
                    name.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|err| Error::io(format!("create {what}"), err.into()))?;
                let mut file = std::fs::File::from(fd);
                let want = e.size();
                let mut counted = super::progress::Counting {
                    inner: &mut *e,
                    progress: self.progress,
                };
                let got = match &sparse {
                    Some(s) => {
                        let (chunks, used) = sparse::read_map(&mut counted)?;
                        used + sparse::copy(&mut counted, &mut file, &chunks, s.realsize)?
                    }
                    None => io::copy(&mut counted, &mut file)
                        .map_err(|err| Error::refused(format!("reading {what}: {err}")))?,
                };
                if got != want {
                    return Err(Error::refused(format!(
                        "truncated tar archive: {what} has {got} of {want} bytes"
                    )));
                }
                self.stats.bytes += got;
                self.owner_mode_time_fd(file.as_fd(), meta, &what)?;
            }
            T::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| Error::refused(format!("symlink {what} has no target")))?
                    .into_owned();
                self.remove(&dir, name, &what)?;
                symlinkat(os_name(&target)?, &dir, name.as_os_str())
                    .map_err(|err| Error::io(format!("create symlink {what}"), err.into()))?;
                if self.is_root {
                    fchownat(
                        &dir,
                        name.as_os_str(),
                        Some(Uid::from_raw(meta.uid)),
                        Some(Gid::from_raw(meta.gid)),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|err| Error::io(format!("chown {what}"), err.into()))?;
                }
                let t = TimeSpec::new(meta.mtime, 0);
                utimensat(
                    &dir,
                    name.as_os_str(),
                    &t,
                    &t,
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|err| Error::io(format!("set times of {what}"), err.into()))?;
            }
            T::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| Error::refused(format!("hard link {what} has no target")))?
                    .into_owned();
                let tcomps = components(&target)?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(Error::refused(format!(
                        "hard link {what} names the layer root"
                    )));
                };
                let tdir = self.open_dir(tparents, false)?;
                self.remove(&dir, name, &what)?;
                linkat(
                    &tdir,
                    tname.as_os_str(),
                    &dir,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|err| {
                    Error::io(format!("hard link {what} to {}", show(&tcomps)), err.into())
                })?;
            }
            T::Char | T::Block | T::Fifo => {
                let (kind_flag, dev) = match kind {
                    T::Char => (SFlag::S_IFCHR, self.dev_of(e)?),
                    T::Block => (SFlag::S_IFBLK, self.dev_of(e)?),
                    _ => (SFlag::S_IFIFO, 0),
                };
                self.remove(&dir, name, &what)?;
                match mknodat(
                    &dir,
                    name.as_os_str(),
                    kind_flag,
                    Mode::from_bits_truncate(0o600),
                    dev,
                ) {
                    Ok(()) => {}
                    Err(Errno::EPERM) if !self.is_root => {
                        self.stats
                            .warnings
                            .push(format!("skipped device node {what} (needs root)"));
                        return Ok(());
                    }
                    Err(err) => return Err(Error::io(format!("create node {what}"), err.into())),
                }
                let fd = openat(
                    &dir,
                    name.as_os_str(),
                    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|err| Error::io(format!("open {what}"), err.into()))?;
                // fchmod/fchown refuse O_PATH descriptors; go through /proc's link to it.
                let p = proc_fd(&fd);
                self.owner_mode_time_path(&p, meta, &what)?;
            }
            T::XGlobalHeader => return Ok(()),
            other => {
                return Err(Error::refused(format!(
                    "member {what} has an unsupported type {other:?}"
                )))
            }
        }
        for (k, v) in xattrs {
            let p = proc_fd(&dir).join(name);
            if let Err(err) = sys::lsetxattr(&p, &k, &v) {
                if self.is_root {
                    return Err(Error::io(
                        format!("set xattr {} on {what}", k.to_string_lossy()),
                        err,
                    ));
                }
                self.stats.warnings.push(format!(
                    "skipped xattr {} on {what}: {err}",
                    k.to_string_lossy()
                ));
            }
        }
        Ok(())
    }

    fn dev_of<R: Read>(&self, e: &tar::Entry<R>) -> Result<libc::dev_t> {
        let h = e.header();
        let major = h.device_major().ok().flatten().unwrap_or(0);
        let minor = h.device_minor().ok().flatten().unwrap_or(0);
        Ok(libc::makedev(major, minor))
    }

    fn mkdir(&self, dir: &OwnedFd, name: &OsStr, what: &str) -> Result<()> {
        // Owner-writable until finish_dirs sets the real mode.
        mkdirat(dir, name, Mode::from_bits_truncate(0o700))
            .map_err(|e| Error::io(format!("create directory {what}"), e.into()))
    }

    /// Clears the way for a new member: unlinks a non-directory (a symlink is removed, not
    /// followed), removes an empty directory, refuses a non-empty one.
    fn remove(&self, dir: &OwnedFd, name: &OsStr, what: &str) -> Result<()> {
        match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(Error::io(format!("stat {what}"), e.into())),
            Ok(st) => {
                let is_dir =
                    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
                let flag = if is_dir {
                    UnlinkatFlags::RemoveDir
                } else {
                    UnlinkatFlags::NoRemoveDir
                };
                unlinkat(dir, name, flag)
                    .map_err(|e| Error::io(format!("replace {what}"), e.into()))
            }
        }
    }

    /// Opens the directory `comps` below the layer root without following any symlink,
    /// creating missing ones (an archive may omit its parents) when `create` is set.
    fn open_dir(&self, comps: &[OsString], create: bool) -> Result<OwnedFd> {
        let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
        let mut cur = openat(&self.root, ".", flags, Mode::empty())
            .map_err(|e| Error::io("open layer root", e.into()))?;
        for (i, c) in comps.iter().enumerate() {
            let upto = show(comps.get(..=i).unwrap_or_default());
            let next = match openat(&cur, c.as_os_str(), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    mkdirat(&cur, c.as_os_str(), Mode::from_bits_truncate(0o755))
                        .map_err(|e| Error::io(format!("create directory {upto}"), e.into()))?;
                    openat(&cur, c.as_os_str(), flags, Mode::empty())
                        .map_err(|e| Error::io(format!("open directory {upto}"), e.into()))?
                }
                Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                    let st = fstatat(&cur, c.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok();
                    let link = st.is_some_and(|s| {
                        SFlag::from_bits_truncate(s.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK
                    });
                    return Err(Error::refused(if link {
                        format!("{upto} is a symlink: a member would be written through it")
                    } else {
                        format!("{upto} is not a directory but a member lies below it")
                    }));
                }
                Err(e) => return Err(Error::io(format!("open directory {upto}"), e.into())),
            };
            cur = next;
        }
        Ok(cur)
    }

    fn owner_mode_time_fd(
        &self,
        fd: std::os::fd::BorrowedFd<'_>,
        m: Meta,
        what: &str,
    ) -> Result<()> {
        if self.is_root {
            fchown(fd, Some(Uid::from_raw(m.uid)), Some(Gid::from_raw(m.gid)))
                .map_err(|e| Error::io(format!("chown {what}"), e.into()))?;
        }
        // After chown, which clears set-id bits.
        fchmod(fd, Mode::from_bits_truncate(m.mode))
            .map_err(|e| Error::io(format!("chmod {what}"), e.into()))?;
        let t = TimeSpec::new(m.mtime, 0);
        futimens(fd, &t, &t).map_err(|e| Error::io(format!("set times of {what}"), e.into()))
    }

    fn owner_mode_time_path(&self, p: &Path, m: Meta, what: &str) -> Result<()> {
        let cwd = nix::fcntl::AT_FDCWD;
        if self.is_root {
            fchownat(
                cwd,
                p,
                Some(Uid::from_raw(m.uid)),
                Some(Gid::from_raw(m.gid)),
                AtFlags::empty(),
            )
            .map_err(|e| Error::io(format!("chown {what}"), e.into()))?;
        }
        fchmodat(
            cwd,
            p,
            Mode::from_bits_truncate(m.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| Error::io(format!("chmod {what}"), e.into()))?;
        let t = TimeSpec::new(m.mtime, 0);
        utimensat(cwd, p, &t, &t, UtimensatFlags::FollowSymlink)
            .map_err(|e| Error::io(format!("set times of {what}"), e.into()))
    }

    fn finish_dirs(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (comps, meta) in dirs.iter().rev() {
            let fd = self.open_dir(comps, false)?;
            self.owner_mode_time_fd(fd.as_fd(), *meta, &show(comps))?;
        }
        Ok(())
    }
}

fn proc_fd(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The member's pax records, as (key, value).
fn pax_of<R: Read>(e: &mut tar::Entry<R>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let Some(exts) = e
        .pax_extensions()
        .map_err(|err| Error::refused(format!("bad pax header: {err}")))?
    else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(|err| Error::refused(format!("bad pax header: {err}")))?;
        out.push((ext.key_bytes().to_vec(), ext.value_bytes().to_vec()));
    }
    Ok(out)
}

fn xattrs_of(pax: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<(OsString, Vec<u8>)>> {
    let mut out = Vec::new();
    for (k, v) in pax {
        if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
            out.push((os_name(name)?.to_os_string(), v.clone()));
        }
    }
    Ok(out)
}

/// Bytes to a name (any bytes are a valid Unix name, except NUL, refused here).
fn os_name(b: &[u8]) -> Result<&OsStr> {
    use std::os::unix::ffi::OsStrExt;
    if b.contains(&0) {
        return Err(Error::refused("a name holds a NUL byte"));
    }
    Ok(OsStr::from_bytes(b))
}
