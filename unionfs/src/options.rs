//! The command line: fuse-overlayfs-compatible arguments parsed once into typed [`Options`], and
//! the filesystem checks ([`validate`]) made on them before anything is mounted.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::{ArgAction, Parser};

/// What `redirect_dir=` asked for. Semantics follow the kernel overlayfs option
/// (overlayfs.rst, "Redirect dir").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectDir {
    /// Do not create redirects (renaming a directory with lower content gives EXDEV);
    /// follow existing ones if the kernel's `redirect_always_follow` is on (the default),
    /// as the kernel's `off` does.
    Off,
    /// Create redirects on directory rename and follow them.
    On,
    /// Follow existing redirects, never create new ones.
    Follow,
    /// Neither follow nor create redirects.
    NoFollow,
}

impl RedirectDir {
    /// The option value as spelled on the command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            RedirectDir::Off => "off",
            RedirectDir::On => "on",
            RedirectDir::Follow => "follow",
            RedirectDir::NoFollow => "nofollow",
        }
    }

    /// The kernel's default on this machine, from the overlay module's parameters
    /// (`redirect_dir`, `redirect_always_follow`; their build defaults when the module is
    /// not loaded): on, else follow, else nofollow.
    pub fn kernel_default() -> RedirectDir {
        if module_param("redirect_dir").unwrap_or(false) {
            RedirectDir::On
        } else if always_follow() {
            RedirectDir::Follow
        } else {
            RedirectDir::NoFollow
        }
    }

    /// Whether redirects are written (directories with lower content can be renamed).
    pub fn creates(self) -> bool {
        self == RedirectDir::On
    }

    /// Whether redirects are followed on lookup.
    pub fn follows(self) -> bool {
        match self {
            RedirectDir::On | RedirectDir::Follow => true,
            RedirectDir::NoFollow => false,
            RedirectDir::Off => always_follow(),
        }
    }
}

/// The kernel's default for `metacopy` (its overlay module's parameter; off when the
/// module is not loaded).
pub fn kernel_metacopy() -> bool {
    module_param("metacopy").unwrap_or(false)
}

/// The kernel's `redirect_always_follow` (on unless the module says otherwise).
fn always_follow() -> bool {
    module_param("redirect_always_follow").unwrap_or(true)
}

/// A boolean parameter of the overlay module, if it is loaded.
fn module_param(name: &str) -> Option<bool> {
    let v = std::fs::read_to_string(format!("/sys/module/overlay/parameters/{name}")).ok()?;
    Some(v.trim() == "Y")
}

/// What `passthrough=` asked for: whose file data the kernel reads and writes itself (FUSE
/// passthrough, which needs root) instead of asking the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Passthrough {
    /// Every read and write goes through the daemon (`nopassthrough`).
    #[default]
    Off,
    /// Upper files only (`passthrough`): a read-only open of a lower file follows a later
    /// copy-up, as on the kernel's overlay.
    Upper,
    /// Upper and lower files. A read-only open of a lower file keeps reading the lower file
    /// after a copy-up, where the kernel's overlay would move it to the copy.
    All,
}

/// `uring=`: whether FUSE over io_uring (the kernel's `enable_uring`) serves the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UringMode {
    /// The ring when the kernel offers it and it starts; else /dev/fuse, saying why.
    #[default]
    Auto,
    /// The ring or no mount.
    On,
    /// Always /dev/fuse.
    Off,
}

/// A mount option that is not ours but the kernel's: passed through to the FUSE mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelOpt {
    AllowOther,
    /// Not a kernel option: mount with `allow_other` and let the daemon admit only root and the
    /// owner (fuser `SessionACL::RootAndOwner`). `sys::fuse_mount` does the translation.
    AllowRoot,
    DefaultPermissions,
    NoDev,
    NoSuid,
    Suid,
    Dev,
    Exec,
    NoExec,
    Ro,
    Rw,
    NoAtime,
    Atime,
    Sync,
    Async,
    DirSync,
}

impl KernelOpt {
    const ALL: [KernelOpt; 16] = [
        KernelOpt::AllowOther,
        KernelOpt::AllowRoot,
        KernelOpt::DefaultPermissions,
        KernelOpt::NoDev,
        KernelOpt::NoSuid,
        KernelOpt::Suid,
        KernelOpt::Dev,
        KernelOpt::Exec,
        KernelOpt::NoExec,
        KernelOpt::Ro,
        KernelOpt::Rw,
        KernelOpt::NoAtime,
        KernelOpt::Atime,
        KernelOpt::Sync,
        KernelOpt::Async,
        KernelOpt::DirSync,
    ];

    /// The option as spelled on a mount command line.
    pub fn as_str(&self) -> &'static str {
        match self {
            KernelOpt::AllowOther => "allow_other",
            KernelOpt::AllowRoot => "allow_root",
            KernelOpt::DefaultPermissions => "default_permissions",
            KernelOpt::NoDev => "nodev",
            KernelOpt::NoSuid => "nosuid",
            KernelOpt::Suid => "suid",
            KernelOpt::Dev => "dev",
            KernelOpt::Exec => "exec",
            KernelOpt::NoExec => "noexec",
            KernelOpt::Ro => "ro",
            KernelOpt::Rw => "rw",
            KernelOpt::NoAtime => "noatime",
            KernelOpt::Atime => "atime",
            KernelOpt::Sync => "sync",
            KernelOpt::Async => "async",
            KernelOpt::DirSync => "dirsync",
        }
    }

    fn from_name(name: &[u8]) -> Option<KernelOpt> {
        KernelOpt::ALL
            .iter()
            .copied()
            .find(|k| k.as_str().as_bytes() == name)
    }
}

/// Everything the command line asked for, typed. Paths are kept as given (not canonicalized).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Top-most lower layer first.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub mountpoint: PathBuf,
    /// `-f`, or implied by `-d` (as in libfuse).
    pub foreground: bool,
    pub debug: bool,
    /// `-v`/`--verbose` (or `-d`): info-level messages, such as the transport chosen.
    pub verbose: bool,
    pub userxattr: bool,
    /// `volatile`, or `fsync=0`.
    pub volatile: bool,
    /// `xino=on`: as the kernel then does, new directories in merged ones are made
    /// opaque (the kernel's "no offline changes" rule). Inode numbers are unique across
    /// the layers' filesystems with every value (one FUSE st_dev for all files).
    pub xino_on: bool,
    /// `redirect_dir=`; None when not given (the daemon then takes the kernel's default,
    /// see `RedirectDir::kernel_default`).
    pub redirect_dir: Option<RedirectDir>,
    /// `metacopy=`; None when not given (the kernel's default, see `kernel_metacopy`).
    /// Given `on`, `redirect_dir` is `on` too unless given otherwise, which is refused.
    pub metacopy: Option<bool>,
    /// `passthrough[=MODE]` or `nopassthrough`; None when not given (the daemon then picks
    /// `Upper` as root, `Off` otherwise).
    pub passthrough: Option<Passthrough>,
    pub threads: Option<usize>,
    /// `frontend=wire|fuser`: which FUSE protocol front end serves the mount.
    pub frontend: Frontend,
    /// `uring=auto|on|off` (default auto).
    pub uring: UringMode,
    /// `noacl`: do not expose POSIX ACL xattrs.
    pub noacl: bool,
    /// `uidmapping=`, `gidmapping=`, `squash_to_root`, `squash_to_uid=`, `squash_to_gid=`
    /// (fuse-overlayfs): how owners on disk show through the union.
    pub idmap: crate::idmap::IdMap,
    /// In command-line order, exact repeats dropped. `Ro` is appended when there is no upperdir.
    pub kernel_opts: Vec<KernelOpt>,
    /// The last of `ro`/`rw` was `ro`, or there is no upperdir.
    pub read_only: bool,
    /// Non-fatal complaints, e.g. "unknown option 'foo' ignored"; print as `unionfs: warning: {w}`.
    pub warnings: Vec<String>,
    /// `trace[=FILE]`: what to trace (`Off` without it) and where (None: stderr).
    pub trace: crate::trace::Level,
    pub trace_file: Option<PathBuf>,
}

/// What `parse_args` decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseOutcome {
    /// Mount with these options.
    Run(Box<Options>),
    /// `--help` or `--version`: print the text on stdout and exit with the code (always 0).
    Exit(String, i32),
}

/// A command line or layer configuration problem; Display is one line naming the culprit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionsError(pub String);

/// The FUSE protocol front end (`frontend=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Frontend {
    /// Our own (`wire`), over `/dev/fuse`.
    #[default]
    Wire,
    /// The `fuser` crate's (`fs.rs`).
    Fuser,
}

impl fmt::Display for OptionsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OptionsError {}

fn err<T>(msg: impl Into<String>) -> Result<T, OptionsError> {
    Err(OptionsError(msg.into()))
}

const OPTIONS_HELP: &str = "\
Options for -o (comma-separated; '\\,' puts a comma inside a value):
  lowerdir=DIR[:DIR...]  Read-only layers, top-most first (required). In the paths, '\\:' is a
                         colon and '\\\\' a backslash.
  upperdir=DIR           Writable layer. Without it the union is read-only.
  workdir=DIR            Scratch directory for atomic copy-up; same filesystem as upperdir, not
                         inside it; required with upperdir. Locked while mounted.
  userxattr              Keep overlay metadata in user.overlay.* xattrs instead of trusted.*.
  volatile               Do not fsync copied-up data before it is put into place, as
                         the kernel's option (faster; a crash may lose recent copy-ups).
  fsync=0|1              fsync=0 is the same as volatile; fsync=1 is the default.
  redirect_dir=on|follow|nofollow|off
                         As the kernel's overlay. on: renaming a directory that has lower
                         content writes a redirect (*.overlay.redirect) to where its lower
                         content is, and lookups follow redirects. follow: follow existing
                         redirects, but such a rename gives EXDEV (so that mv copies the
                         directory). nofollow: neither. off: follow if the kernel's
                         redirect_always_follow is on, else nofollow; never create. Default:
                         the kernel's (its overlay module parameters; here follow), and
                         nofollow with userxattr, as the kernel. With on, as the kernel,
                         a new directory in a merged one is made opaque.
  passthrough=upper|all|off
                         FUSE passthrough of file data (the kernel reads and writes the
                         real file directly). upper: upper files only (default as root;
                         'passthrough' alone); off: none (default otherwise; 'nopassthrough');
                         all: lower files too (faster reads), but unlike the kernel's overlay
                         an fd opened read-only before a copy-up keeps reading the lower file,
                         and opening such a file for writing meanwhile fails (ETXTBSY).
  threads=N              Number of request-serving threads (N >= 1).
  frontend=wire|fuser    The FUSE protocol front end. wire (default): our own, over
                         /dev/fuse; it passes the kernel's set-id kill flags on (no /proc
                         reads for them). fuser: the fuser crate's, for comparison.
  uring=auto|on|off      FUSE over io_uring: requests come through one ring per CPU instead
                         of reads of /dev/fuse (needs Linux 6.14+ with the fuse module's
                         enable_uring set to Y). auto (default): the ring when the kernel
                         offers it, else /dev/fuse (-v says why); on: the ring or fail;
                         off: /dev/fuse.
  trace[=FILE]           Write one line per union event as it happens: copy-up (path, layer,
                         bytes, microseconds, cause; copy-up-data for a metacopy's data),
                         whiteout made or removed, directory made opaque, redirect written,
                         rename refused with EXDEV. Lines are key=value, e.g.
                           event=copy-up path=/etc/motd type=file from=lower0 bytes=24 us=812 cause=open-write
                         FILE is appended to; without it, stderr (seen with -f only).
  trace_level=events|lookup
                         With trace: lookup also writes every lookup and the layer that
                         answered it (event=lookup path=/etc shown=upper type=dir
                         layers=upper,lower0). Default: events.
  noacl                  POSIX ACLs are neither enforced nor shown (as fuse-overlayfs).
  uidmapping=C:H:L[:C2:H2:L2...], gidmapping=...
                         Owner translation (fuse-overlayfs's syntax; a leading ':' is
                         allowed): ids C..C+L stored in the layers show as H..H+L, and
                         chown and creation store them back. A stored id no range covers
                         shows as 65534 and cannot be written (EINVAL; creating by a caller
                         outside every range gives EOVERFLOW). Ranges must not overlap.
  squash_to_root, squash_to_uid=N, squash_to_gid=N
                         Every file shows as owned by root, or by uid/gid N (these win over
                         squash_to_root and over the mappings; what is stored is unchanged).
  xino=on|off|auto       Inode numbers are unique across the layers' filesystems with any
                         value (FUSE has one st_dev). With on, as the kernel's overlay,
                         a new directory in a merged one is made opaque.
  metacopy=on|off        As the kernel's overlay. on: chmod, chown, utimes, xattr and
                         flag changes, rename and link of a lower regular file copy up its
                         metadata only (*.overlay.metacopy); its data is read from the lower
                         file until the first open for writing or truncate copies it. Implies
                         redirect_dir=on (another redirect_dir is refused). Default: the
                         kernel's (its overlay module parameter; here off).
  index=off              Accepted for kernel overlayfs compatibility; no effect.
                         index=on is refused.
Mount options passed to the kernel:
  allow_other, allow_root, default_permissions, ro, rw, nodev, dev, nosuid, suid, noexec, exec,
  noatime, atime, sync, async, dirsync
Any other option is ignored with a warning. Giving the same option twice is an error
(repeated kernel mount options are allowed; the last of ro/rw wins).

Learning what the union does (docs/walkthrough.md walks through all three):
  -o trace[=FILE]        one line per copy-up, whiteout, opaque directory, EXDEV (above)
  unionfs explain PATH   each layer's entry for PATH and the rule that decides what shows;
                         --svg draws a directory (unionfs explain --help)
  unionfs diff           the upper layer's changes, as docker diff (unionfs diff --help)
A mount point named 'explain' or 'diff' must be written with a slash (./explain).";

#[derive(Parser, Debug)]
#[command(
    name = "unionfs",
    bin_name = "unionfs",
    version,
    about = "Union filesystem over FUSE, with the semantics and on-disk format of kernel overlayfs.",
    override_usage = "unionfs [-f] [-d] [-o OPTS]... [SOURCE] MOUNTPOINT\n       \
                      unionfs explain [-o lowerdir=..,upperdir=..] [--svg] PATH\n       \
                      unionfs diff [-o lowerdir=..,upperdir=..] [--json] [MOUNTPOINT]",
    after_help = OPTIONS_HELP
)]
struct Cli {
    /// Stay in the foreground instead of detaching once the mount is ready.
    #[arg(short = 'f')]
    foreground: bool,
    /// Log debugging output to stderr; implies -f.
    #[arg(short = 'd')]
    debug: bool,
    /// Log at info level: which transport serves the mount (io_uring or /dev/fuse) and why.
    #[arg(short = 'v', long = "verbose")]
    verbose: bool,
    /// Mount options, comma-separated; may be repeated (see below).
    #[arg(short = 'o', value_name = "OPTS", action = ArgAction::Append)]
    opts: Vec<OsString>,
    /// Where to mount. An argument before it (the SOURCE that mount(8) and mount.fuse3 pass)
    /// is ignored.
    #[arg(value_name = "MOUNTPOINT", required = true)]
    paths: Vec<OsString>,
}

/// Parses the whole command line, `args` starting with argv[0]. `--help`/`--version` come back
/// as `Ok(ParseOutcome::Exit(text, 0))`; every usage or option mistake as a one-line `Err`
/// (exit 1 after printing `unionfs: {err}`). Nothing on disk is looked at: see [`validate`].
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<ParseOutcome, OptionsError> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    Ok(ParseOutcome::Exit(e.to_string(), 0))
                }
                _ => Err(OptionsError(clap_message(&e))),
            }
        }
    };

    let mut paths = cli.paths;
    let mountpoint = match paths.len() {
        1 | 2 => PathBuf::from(paths.remove(paths.len() - 1)),
        _ => return err("too many arguments: expected [SOURCE] MOUNTPOINT"),
    };

    let mut b = Builder::default();
    for opts in &cli.opts {
        for item in split_opt_list(opts.as_bytes()) {
            b.item(&item)?;
        }
    }
    b.finish(mountpoint, cli.foreground || cli.debug, cli.debug)
        .map(|mut o| {
            o.verbose = cli.verbose || cli.debug;
            ParseOutcome::Run(Box::new(o))
        })
}

/// clap renders several lines (message, usage, tip); keep the message part on one line.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let mut parts = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            break;
        }
        parts.push(line.strip_prefix("error: ").unwrap_or(line));
    }
    parts.join(" ")
}

/// Splits an `-o` string on commas. `\,` becomes a literal comma; any other backslash pair is
/// kept verbatim so that the value parser below can still see `\\` and `\:`.
pub(crate) fn split_opt_list(s: &[u8]) -> Vec<Vec<u8>> {
    let mut items = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' if i + 1 < s.len() => {
                if s[i + 1] != b',' {
                    cur.push(b'\\');
                }
                cur.push(s[i + 1]);
                i += 2;
                continue;
            }
            b',' => items.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
        i += 1;
    }
    items.push(cur);
    items
}

/// Splits a value on unescaped `sep` (None: no splitting) and removes the backslash escapes,
/// like the kernel does for overlay paths (a backslash quotes the next byte).
pub(crate) fn unescape_split(
    key: &str,
    v: &[u8],
    sep: Option<u8>,
) -> Result<Vec<PathBuf>, OptionsError> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let c = v[i];
        if c == b'\\' {
            match v.get(i + 1) {
                Some(&next) => cur.push(next),
                None => return err(format!("option '{key}': value ends with a lone backslash")),
            }
            i += 2;
            continue;
        }
        if Some(c) == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
        i += 1;
    }
    out.push(cur);
    if out.iter().any(|p| p.is_empty()) {
        return err(format!(
            "option '{key}': empty path in '{}'",
            String::from_utf8_lossy(v)
        ));
    }
    Ok(out
        .into_iter()
        .map(|p| PathBuf::from(OsString::from_vec(p)))
        .collect())
}

#[derive(Default)]
struct Builder {
    seen: HashSet<&'static str>,
    lowerdirs: Option<Vec<PathBuf>>,
    upperdir: Option<PathBuf>,
    workdir: Option<PathBuf>,
    userxattr: bool,
    volatile: bool,
    xino_on: bool,
    redirect_dir: Option<RedirectDir>,
    metacopy: Option<bool>,
    passthrough: Option<Passthrough>,
    threads: Option<usize>,
    frontend: Frontend,
    uring: Option<UringMode>,
    noacl: bool,
    squash_to_root: bool,
    idmap: crate::idmap::IdMap,
    kernel_opts: Vec<KernelOpt>,
    warnings: Vec<String>,
    trace: bool,
    trace_file: Option<PathBuf>,
    trace_level: Option<crate::trace::Level>,
}

impl Builder {
    /// Our own options may appear only once; a repeat is almost always a scripting mistake
    /// (which of two upperdirs did the user mean?).
    fn once(&mut self, key: &'static str, shown: &str) -> Result<(), OptionsError> {
        if !self.seen.insert(key) {
            return err(format!("option '{shown}' given more than once"));
        }
        Ok(())
    }

    fn item(&mut self, item: &[u8]) -> Result<(), OptionsError> {
        // Empty items come from doubled or trailing commas; mount(8) tolerates them too.
        if item.is_empty() {
            return Ok(());
        }
        let (key, value) = match item.iter().position(|&c| c == b'=') {
            Some(i) => (&item[..i], Some(&item[i + 1..])),
            None => (item, None),
        };
        let shown = String::from_utf8_lossy(key).into_owned();
        let flag = |b: &mut Builder, name: &'static str| -> Result<(), OptionsError> {
            if value.is_some() {
                return err(format!("option '{name}' takes no value"));
            }
            b.once(name, name)
        };
        let value_of = |name: &str| -> Result<&[u8], OptionsError> {
            match value {
                Some(v) if !v.is_empty() => Ok(v),
                _ => err(format!("option '{name}' needs a value")),
            }
        };

        if let Some(k) = KernelOpt::from_name(key) {
            if value.is_some() {
                return err(format!("option '{}' takes no value", k.as_str()));
            }
            // mount(8) composes these from fstab and the command line, so repeats are normal.
            if !self.kernel_opts.contains(&k) {
                self.kernel_opts.push(k);
            } else if matches!(k, KernelOpt::Ro | KernelOpt::Rw) {
                // Keep "last of ro/rw wins" true of the list order.
                self.kernel_opts.retain(|&o| o != k);
                self.kernel_opts.push(k);
            }
            return Ok(());
        }

        match key {
            b"lowerdir" => {
                self.once("lowerdir", "lowerdir")?;
                let v = value_of("lowerdir")?;
                self.lowerdirs = Some(unescape_split("lowerdir", v, Some(b':'))?);
            }
            b"upperdir" => {
                self.once("upperdir", "upperdir")?;
                let v = value_of("upperdir")?;
                self.upperdir = unescape_split("upperdir", v, None)?.pop();
            }
            b"workdir" => {
                self.once("workdir", "workdir")?;
                let v = value_of("workdir")?;
                self.workdir = unescape_split("workdir", v, None)?.pop();
            }
            b"userxattr" => {
                flag(self, "userxattr")?;
                self.userxattr = true;
            }
            b"volatile" => {
                flag(self, "volatile")?;
                self.volatile = true;
            }
            b"noacl" => {
                flag(self, "noacl")?;
                self.noacl = true;
            }
            b"squash_to_root" => {
                flag(self, "squash_to_root")?;
                self.squash_to_root = true;
            }
            b"nopassthrough" => {
                if value.is_some() {
                    return err(format!("option '{shown}' takes no value"));
                }
                self.once("passthrough", &shown)?;
                self.passthrough = Some(Passthrough::Off);
            }
            b"passthrough" => {
                self.once("passthrough", &shown)?;
                self.passthrough = Some(match value {
                    None => Passthrough::Upper,
                    Some(b"upper") => Passthrough::Upper,
                    Some(b"all") => Passthrough::All,
                    Some(b"off") => Passthrough::Off,
                    Some(v) => {
                        return err(format!(
                            "invalid value '{}' for passthrough (expected upper, all or off)",
                            String::from_utf8_lossy(v)
                        ))
                    }
                });
            }
            b"redirect_dir" => {
                self.once("redirect_dir", "redirect_dir")?;
                self.redirect_dir = Some(match value_of("redirect_dir")? {
                    b"off" => RedirectDir::Off,
                    b"on" => RedirectDir::On,
                    b"follow" => RedirectDir::Follow,
                    b"nofollow" => RedirectDir::NoFollow,
                    v => {
                        return err(format!(
                            "invalid value '{}' for redirect_dir (expected off, on, follow or nofollow)",
                            String::from_utf8_lossy(v)
                        ))
                    }
                });
            }
            b"trace" => {
                self.once("trace", "trace")?;
                self.trace = true;
                if let Some(v) = value {
                    self.trace_file = unescape_split("trace", v, None)?.pop();
                }
            }
            b"trace_level" => {
                self.once("trace_level", "trace_level")?;
                let v = value_of("trace_level")?;
                match crate::trace::Level::parse(v) {
                    Some(l) => self.trace_level = Some(l),
                    None => {
                        return err(format!(
                            "invalid value '{}' for trace_level (expected events or lookup)",
                            String::from_utf8_lossy(v)
                        ))
                    }
                }
            }
            b"frontend" => {
                self.once("frontend", "frontend")?;
                self.frontend = match value_of("frontend")? {
                    b"wire" => Frontend::Wire,
                    b"fuser" => Frontend::Fuser,
                    v => {
                        return err(format!(
                            "invalid value '{}' for frontend (expected wire or fuser)",
                            String::from_utf8_lossy(v)
                        ))
                    }
                };
            }
            b"threads" => {
                self.once("threads", "threads")?;
                let v = value_of("threads")?;
                let n = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                    .filter(|&n| n >= 1);
                match n {
                    Some(n) => self.threads = Some(n),
                    None => {
                        return err(format!(
                            "invalid value '{}' for threads (expected a number >= 1)",
                            String::from_utf8_lossy(v)
                        ))
                    }
                }
            }
            b"uring" => {
                self.once("uring", "uring")?;
                self.uring = Some(match value_of("uring")? {
                    b"auto" => UringMode::Auto,
                    b"on" => UringMode::On,
                    b"off" => UringMode::Off,
                    v => {
                        return err(format!(
                            "invalid value '{}' for uring (expected auto, on or off)",
                            String::from_utf8_lossy(v)
                        ))
                    }
                });
            }
            b"fsync" => {
                self.once("fsync", "fsync")?;
                match value_of("fsync")? {
                    b"0" => self.volatile = true,
                    b"1" => {}
                    v => {
                        return err(format!(
                            "invalid value '{}' for fsync (expected 0 or 1)",
                            String::from_utf8_lossy(v)
                        ))
                    }
                }
            }
            b"xino" => {
                self.once("xino", "xino")?;
                match value_of("xino")? {
                    // FUSE hands out its own inode numbers: they follow xino's rules
                    // always. Only xino=on changes what is written (see `xino_on`).
                    b"on" => self.xino_on = true,
                    b"off" | b"auto" => self.xino_on = false,
                    v => {
                        return err(format!(
                            "invalid value '{}' for xino (expected on, off or auto)",
                            String::from_utf8_lossy(v)
                        ))
                    }
                }
            }
            b"index" => {
                self.once("index", "index")?;
                match value_of("index")? {
                    b"off" => {}
                    b"on" => return err("index=on is not supported"),
                    v => {
                        return err(format!(
                            "invalid value '{}' for index (expected off)",
                            String::from_utf8_lossy(v)
                        ))
                    }
                }
            }
            b"metacopy" => {
                self.once("metacopy", "metacopy")?;
                self.metacopy = Some(match value_of("metacopy")? {
                    b"off" => false,
                    b"on" => true,
                    v => {
                        return err(format!(
                            "invalid value '{}' for metacopy (expected on or off)",
                            String::from_utf8_lossy(v)
                        ))
                    }
                });
            }
            b"uidmapping" | b"gidmapping" => {
                let uid = key == b"uidmapping";
                self.once(if uid { "uidmapping" } else { "gidmapping" }, &shown)?;
                let v = String::from_utf8_lossy(value_of(&shown)?).into_owned();
                let ranges = crate::idmap::Ranges::parse(&v)
                    .map_err(|e| OptionsError(format!("invalid {shown}: {e}")))?;
                if uid {
                    self.idmap.uids = ranges;
                } else {
                    self.idmap.gids = ranges;
                }
            }
            b"squash_to_uid" | b"squash_to_gid" => {
                let uid = key == b"squash_to_uid";
                self.once(
                    if uid {
                        "squash_to_uid"
                    } else {
                        "squash_to_gid"
                    },
                    &shown,
                )?;
                let v = value_of(&shown)?;
                let id = std::str::from_utf8(v)
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
                    .ok_or_else(|| {
                        OptionsError(format!(
                            "invalid value '{}' for {shown} (expected an id)",
                            String::from_utf8_lossy(v)
                        ))
                    })?;
                if uid {
                    self.idmap.squash_uid = Some(id);
                } else {
                    self.idmap.squash_gid = Some(id);
                }
            }
            _ => self.warnings.push(format!(
                "unknown option '{}' ignored",
                String::from_utf8_lossy(item)
            )),
        }
        Ok(())
    }

    fn finish(
        mut self,
        mountpoint: PathBuf,
        foreground: bool,
        debug: bool,
    ) -> Result<Options, OptionsError> {
        let Some(lowerdirs) = self.lowerdirs else {
            return err(
                "missing option lowerdir=DIR[:DIR...] (at least one lower layer is required)",
            );
        };
        match (&self.upperdir, &self.workdir) {
            (Some(_), None) => return err("upperdir given without workdir"),
            (None, Some(_)) => return err("workdir given without upperdir"),
            _ => {}
        }
        if self.kernel_opts.contains(&KernelOpt::AllowOther)
            && self.kernel_opts.contains(&KernelOpt::AllowRoot)
        {
            return err("options 'allow_other' and 'allow_root' are mutually exclusive");
        }
        if self.trace_level.is_some() && !self.trace {
            return err("trace_level given without trace");
        }
        let last_ro_rw = self
            .kernel_opts
            .iter()
            .rev()
            .find(|k| matches!(k, KernelOpt::Ro | KernelOpt::Rw));
        let mut read_only = last_ro_rw == Some(&KernelOpt::Ro);
        if self.upperdir.is_none() && !read_only {
            // Like a kernel overlay without upper: the mount itself is read-only, so the kernel
            // answers writes with EROFS and mountinfo says "ro".
            self.kernel_opts.retain(|&k| k != KernelOpt::Rw);
            self.kernel_opts.push(KernelOpt::Ro);
            read_only = true;
        }
        if let (Some(true), Some(r)) = (self.metacopy, self.redirect_dir) {
            if r != RedirectDir::On {
                // As the kernel: metacopy needs redirects (a renamed metadata-only copy
                // finds its data through one).
                return err(format!(
                    "conflicting options: metacopy=on,redirect_dir={}",
                    r.as_str()
                ));
            }
        }
        Ok(Options {
            lowerdirs,
            upperdir: self.upperdir,
            workdir: self.workdir,
            mountpoint,
            foreground,
            debug,
            verbose: debug,
            userxattr: self.userxattr,
            volatile: self.volatile,
            xino_on: self.xino_on,
            redirect_dir: self.redirect_dir,
            metacopy: self.metacopy,
            passthrough: self.passthrough,
            threads: self.threads,
            frontend: self.frontend,
            uring: self.uring.unwrap_or_default(),
            noacl: self.noacl,
            idmap: crate::idmap::IdMap {
                // squash_to_uid/gid take precedence over squash_to_root, as in fuse-overlayfs.
                squash_uid: self.idmap.squash_uid.or(self.squash_to_root.then_some(0)),
                squash_gid: self.idmap.squash_gid.or(self.squash_to_root.then_some(0)),
                ..self.idmap
            },
            kernel_opts: self.kernel_opts,
            read_only,
            warnings: self.warnings,
            trace: match (self.trace, self.trace_level) {
                (false, _) => crate::trace::Level::Off,
                (true, l) => l.unwrap_or(crate::trace::Level::Events),
            },
            trace_file: self.trace_file,
        })
    }
}

/// An io::Error without the " (os error N)" suffix, which means nothing to a user.
fn io_msg(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

struct Dir<'a> {
    what: &'static str,
    given: &'a Path,
    canon: PathBuf,
    dev: u64,
}

fn check_dir<'a>(what: &'static str, given: &'a Path) -> Result<Dir<'a>, OptionsError> {
    let md = std::fs::metadata(given)
        .or_else(|e| err(format!("{what} '{}': {}", given.display(), io_msg(&e))))?;
    if !md.is_dir() {
        return err(format!("{what} '{}' is not a directory", given.display()));
    }
    let canon = std::fs::canonicalize(given)
        .or_else(|e| err(format!("{what} '{}': {}", given.display(), io_msg(&e))))?;
    Ok(Dir {
        what,
        given,
        canon,
        dev: md.dev(),
    })
}

/// Refuses `a` and `b` being the same directory or one inside the other.
fn refuse_overlap(a: &Dir, b: &Dir) -> Result<(), OptionsError> {
    let (ad, bd) = (a.given.display(), b.given.display());
    if a.canon == b.canon {
        err(format!(
            "{} '{ad}' and {} '{bd}' are the same directory",
            a.what, b.what
        ))
    } else if a.canon.starts_with(&b.canon) {
        err(format!("{} '{ad}' is inside {} '{bd}'", a.what, b.what))
    } else if b.canon.starts_with(&a.canon) {
        err(format!("{} '{bd}' is inside {} '{ad}'", b.what, a.what))
    } else {
        Ok(())
    }
}

/// Refuses an upper layer on a union: the kernel's overlay refuses one on an overlay (its
/// dentries are not real ones), and one on a FUSE union would take its copy-ups, whiteouts
/// and xattrs through another union's rules. Either union can be a lower layer.
fn refuse_union_upper(u: &Dir) -> Result<(), OptionsError> {
    use nix::sys::statfs::{statfs, FUSE_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC};
    let kind = match statfs(u.given) {
        Ok(st) if st.filesystem_type() == OVERLAYFS_SUPER_MAGIC => "an overlay",
        Ok(st) if st.filesystem_type() == FUSE_SUPER_MAGIC => "a FUSE",
        _ => return Ok(()),
    };
    err(format!(
        "upperdir '{}' is on {kind} filesystem, which is not supported as upperdir",
        u.given.display()
    ))
}

/// Checks the layers and mount point on disk. Returns the workdir opened and `flock`ed
/// exclusively: keep it open for the life of the daemon, it is what keeps a second unionfs off
/// the same workdir. None for a read-only union (no workdir).
pub fn validate(opts: &Options) -> Result<Option<File>, OptionsError> {
    let lowers = opts
        .lowerdirs
        .iter()
        .map(|p| check_dir("lowerdir", p))
        .collect::<Result<Vec<_>, _>>()?;
    let upper = opts
        .upperdir
        .as_deref()
        .map(|p| check_dir("upperdir", p))
        .transpose()?;
    if let Some(u) = &upper {
        refuse_union_upper(u)?;
    }
    let work = opts
        .workdir
        .as_deref()
        .map(|p| check_dir("workdir", p))
        .transpose()?;
    let mnt = check_dir("mount point", &opts.mountpoint)?;

    // Layers nested in each other would show their own contents twice, and copy-up into an
    // upper that is visible through a lower changes the lower under our feet. Lower layers may
    // overlap each other, as in the kernel.
    for dir in upper.iter().chain(work.iter()) {
        for lower in &lowers {
            refuse_overlap(dir, lower)?;
        }
    }
    if let (Some(u), Some(w)) = (&upper, &work) {
        refuse_overlap(w, u)?;
        // Copy-up links or renames from workdir into upperdir: only within one filesystem.
        if u.dev != w.dev {
            return err(format!(
                "workdir '{}' and upperdir '{}' are on different filesystems",
                w.given.display(),
                u.given.display()
            ));
        }
    }

    // A mount point inside a layer makes the union contain itself. Mounting over a lower
    // directory itself is allowed: the daemon opens the layers before mounting.
    for layer in upper.iter().chain(work.iter()) {
        if mnt.canon.starts_with(&layer.canon) {
            return err(format!(
                "mount point '{}' is inside {} '{}'",
                mnt.given.display(),
                layer.what,
                layer.given.display()
            ));
        }
    }
    for lower in &lowers {
        if mnt.canon != lower.canon && mnt.canon.starts_with(&lower.canon) {
            return err(format!(
                "mount point '{}' is inside lowerdir '{}'",
                mnt.given.display(),
                lower.given.display()
            ));
        }
    }

    let Some(work) = work else {
        return Ok(None);
    };
    // The kernel overlay takes no flock, so look for it in the mount table instead. A missing
    // /proc only loses this check.
    if let Ok(info) = std::fs::read("/proc/self/mountinfo") {
        if let Some(at) = overlay_using_workdir(&info, &work.canon) {
            return err(format!(
                "workdir '{}' is in use by the kernel overlay mounted on '{}'",
                work.given.display(),
                at.display()
            ));
        }
    }
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(work.given)
        .or_else(|e| {
            err(format!(
                "workdir '{}': {}",
                work.given.display(),
                io_msg(&e)
            ))
        })?;
    match lock.try_lock() {
        Ok(()) => Ok(Some(lock)),
        Err(std::fs::TryLockError::WouldBlock) => err(format!(
            "workdir '{}' is in use by another unionfs mount",
            work.given.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => err(format!(
            "workdir '{}': cannot lock: {}",
            work.given.display(),
            io_msg(&e)
        )),
    }
}

/// Undoes the octal escapes (`\040` etc.) the kernel puts in mountinfo fields.
pub fn unescape_mountinfo(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\'
            && i + 3 < s.len()
            && s[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = s[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, &c| acc * 8 + u32::from(c - b'0'));
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// The mount point of a kernel overlay whose `workdir=` is `workdir`, if any in `mountinfo`.
fn overlay_using_workdir(mountinfo: &[u8], workdir: &Path) -> Option<PathBuf> {
    for line in mountinfo.split(|&c| c == b'\n') {
        let fields: Vec<&[u8]> = line.split(|&c| c == b' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == b"-") else {
            continue;
        };
        let (Some(fstype), Some(superopts), Some(mountpoint)) =
            (fields.get(sep + 1), fields.get(sep + 3), fields.get(4))
        else {
            continue;
        };
        if *fstype != b"overlay" {
            continue;
        }
        // Commas inside paths are escaped (\054), so splitting first is safe.
        for opt in superopts.split(|&c| c == b',') {
            let Some(raw) = opt.strip_prefix(b"workdir=") else {
                continue;
            };
            let path = PathBuf::from(OsString::from_vec(unescape_mountinfo(raw)));
            // Older kernels show the path as the mounter typed it; resolve it to compare.
            let same = path == workdir
                || (path.is_absolute() && std::fs::canonicalize(&path).is_ok_and(|p| p == workdir));
            if same {
                return Some(PathBuf::from(OsString::from_vec(unescape_mountinfo(
                    mountpoint,
                ))));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn parse(args: &[&str]) -> Result<ParseOutcome, OptionsError> {
        parse_args(
            std::iter::once("unionfs")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    fn run(args: &[&str]) -> Options {
        match parse(args) {
            Ok(ParseOutcome::Run(o)) => *o,
            other => panic!("expected Run for {args:?}, got {other:?}"),
        }
    }

    fn fail(args: &[&str]) -> String {
        match parse(args) {
            Err(e) => e.0,
            other => panic!("expected an error for {args:?}, got {other:?}"),
        }
    }

    fn pb(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn minimal_read_only() {
        let o = run(&["-o", "lowerdir=/a", "/mnt"]);
        assert_eq!(o.lowerdirs, pb(&["/a"]));
        assert_eq!(o.upperdir, None);
        assert_eq!(o.mountpoint, PathBuf::from("/mnt"));
        assert!(o.read_only);
        assert_eq!(o.kernel_opts, vec![KernelOpt::Ro]);
        assert!(!o.foreground && !o.debug);
        assert_eq!(o.redirect_dir, None);
        assert!(o.warnings.is_empty());
    }

    #[test]
    fn full_read_write() {
        let o = run(&["-o", "lowerdir=/l1:/l2,upperdir=/u,workdir=/w", "/mnt"]);
        assert_eq!(o.lowerdirs, pb(&["/l1", "/l2"]));
        assert_eq!(o.upperdir, Some(PathBuf::from("/u")));
        assert_eq!(o.workdir, Some(PathBuf::from("/w")));
        assert!(!o.read_only);
        assert!(o.kernel_opts.is_empty());
    }

    #[test]
    fn colon_and_backslash_escapes_in_lowerdir() {
        let o = run(&["-o", r"lowerdir=/a\:b:/c\\:/d", "/m"]);
        assert_eq!(o.lowerdirs, pb(&["/a:b", r"/c\", "/d"]));
    }

    #[test]
    fn comma_escape_in_o_string() {
        let o = run(&["-o", r"lowerdir=/a\,b:/c,upperdir=/u\,v,workdir=/w", "/m"]);
        assert_eq!(o.lowerdirs, pb(&["/a,b", "/c"]));
        assert_eq!(o.upperdir, Some(PathBuf::from("/u,v")));
    }

    #[test]
    fn backslash_before_separator_comma() {
        // `\\,` is an escaped backslash followed by a real separator.
        let o = run(&["-o", r"lowerdir=/a\\,upperdir=/u,workdir=/w", "/m"]);
        assert_eq!(o.lowerdirs, pb(&[r"/a\"]));
        assert_eq!(o.upperdir, Some(PathBuf::from("/u")));
    }

    #[test]
    fn lone_trailing_backslash_is_an_error() {
        assert!(fail(&["-o", r"lowerdir=/a\", "/m"]).contains("lone backslash"));
    }

    #[test]
    fn empty_lower_layer_is_an_error() {
        assert!(fail(&["-o", "lowerdir=/a::/b", "/m"]).contains("empty path"));
        assert!(fail(&["-o", "lowerdir=/a:", "/m"]).contains("empty path"));
        assert!(fail(&["-o", "lowerdir=", "/m"]).contains("needs a value"));
    }

    #[test]
    fn glued_and_repeated_o() {
        let o = run(&[
            "-olowerdir=/a",
            "-o",
            "upperdir=/u",
            "-oworkdir=/w,userxattr",
            "/m",
        ]);
        assert_eq!(o.lowerdirs, pb(&["/a"]));
        assert_eq!(o.workdir, Some(PathBuf::from("/w")));
        assert!(o.userxattr);
    }

    #[test]
    fn duplicates_are_errors() {
        assert!(fail(&["-o", "lowerdir=/a,lowerdir=/b", "/m"])
            .contains("'lowerdir' given more than once"));
        assert!(fail(&[
            "-o",
            "lowerdir=/a,upperdir=/u,workdir=/w",
            "-o",
            "upperdir=/v",
            "/m"
        ])
        .contains("'upperdir' given more than once"));
        assert!(fail(&["-o", "lowerdir=/a,volatile,volatile", "/m"]).contains("volatile"));
        assert!(
            fail(&["-o", "lowerdir=/a,passthrough,nopassthrough", "/m"]).contains("nopassthrough")
        );
        assert_eq!(
            fail(&["-o", "lowerdir=/a,passthrough=all,passthrough=upper", "/m"]),
            "option 'passthrough' given more than once"
        );
        assert!(fail(&[
            "-o",
            "lowerdir=/a,nopassthrough",
            "-o",
            "passthrough=all",
            "/m"
        ])
        .contains("more than once"));
    }

    #[test]
    fn repeated_kernel_opts_are_deduplicated_and_last_ro_rw_wins() {
        let o = run(&[
            "-o",
            "lowerdir=/a,upperdir=/u,workdir=/w,nodev,ro,nodev,rw",
            "/m",
        ]);
        assert_eq!(
            o.kernel_opts,
            vec![KernelOpt::NoDev, KernelOpt::Ro, KernelOpt::Rw]
        );
        assert!(!o.read_only);
        let o = run(&["-o", "lowerdir=/a,upperdir=/u,workdir=/w,ro,rw,ro", "/m"]);
        assert_eq!(o.kernel_opts, vec![KernelOpt::Rw, KernelOpt::Ro]);
        assert!(o.read_only);
    }

    #[test]
    fn missing_lowerdir() {
        assert!(fail(&["-o", "upperdir=/u,workdir=/w", "/m"]).contains("lowerdir"));
        assert!(fail(&["/m"]).contains("lowerdir"));
    }

    #[test]
    fn upper_without_work_and_work_without_upper() {
        assert_eq!(
            fail(&["-o", "lowerdir=/a,upperdir=/u", "/m"]),
            "upperdir given without workdir"
        );
        assert_eq!(
            fail(&["-o", "lowerdir=/a,workdir=/w", "/m"]),
            "workdir given without upperdir"
        );
    }

    #[test]
    fn unknown_option_is_a_warning() {
        let o = run(&["-o", "lowerdir=/a,frobnicate,foo=bar", "/m"]);
        assert_eq!(
            o.warnings,
            vec![
                "unknown option 'frobnicate' ignored".to_string(),
                "unknown option 'foo=bar' ignored".to_string()
            ]
        );
    }

    #[test]
    fn trace_file_and_level() {
        use crate::trace::Level;
        let o = run(&["-o", "lowerdir=/a", "/m"]);
        assert_eq!((o.trace, o.trace_file), (Level::Off, None));
        let o = run(&["-o", "lowerdir=/a,trace", "/m"]);
        assert_eq!((o.trace, o.trace_file), (Level::Events, None));
        let o = run(&[
            "-o",
            "lowerdir=/a,trace=/t/a\\,b.log,trace_level=lookup",
            "/m",
        ]);
        assert_eq!(o.trace, Level::Lookup);
        assert_eq!(o.trace_file, Some(PathBuf::from("/t/a,b.log")));
        assert!(fail(&["-o", "lowerdir=/a,trace_level=lookup", "/m"]).contains("without trace"));
        assert!(fail(&["-o", "lowerdir=/a,trace,trace_level=x", "/m"]).contains("events or lookup"));
        assert!(fail(&["-o", "lowerdir=/a,trace,trace=/f", "/m"]).contains("more than once"));
    }

    #[test]
    fn extra_source_argument_is_ignored() {
        let o = run(&["overlay", "/m", "-o", "lowerdir=/a"]);
        assert_eq!(o.mountpoint, PathBuf::from("/m"));
        assert!(fail(&["-o", "lowerdir=/a", "a", "b", "c"]).contains("too many arguments"));
    }

    #[test]
    fn missing_mountpoint() {
        let e = fail(&["-o", "lowerdir=/a"]);
        assert!(e.contains("required"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn unknown_flag_is_a_one_line_error() {
        let e = fail(&["--bogus", "/m"]);
        assert!(e.contains("--bogus"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn help_and_version_exit_zero() {
        for flag in ["-h", "--help"] {
            match parse(&[flag]) {
                Ok(ParseOutcome::Exit(text, 0)) => {
                    assert!(text.contains("lowerdir="), "{text}");
                    assert!(text.contains("MOUNTPOINT"), "{text}");
                    assert!(text.contains("allow_other"), "{text}");
                    assert!(text.contains("passthrough=upper|all|off"), "{text}");
                }
                other => panic!("{other:?}"),
            }
        }
        match parse(&["-V"]) {
            Ok(ParseOutcome::Exit(text, 0)) => assert!(text.starts_with("unionfs "), "{text}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frontend_is_wire_unless_fuser_is_asked_for() {
        assert_eq!(run(&["-o", "lowerdir=/a", "/m"]).frontend, Frontend::Wire);
        let o = run(&["-o", "lowerdir=/a,frontend=fuser", "/m"]);
        assert_eq!(o.frontend, Frontend::Fuser);
        let o = run(&["-o", "lowerdir=/a,frontend=wire", "/m"]);
        assert_eq!(o.frontend, Frontend::Wire);
        assert!(fail(&["-o", "lowerdir=/a,frontend=x", "/m"]).contains("frontend"));
        match parse(&["--help"]) {
            Ok(ParseOutcome::Exit(text, 0)) => {
                assert!(text.contains("frontend=wire|fuser"), "{text}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn foreground_and_debug() {
        let o = run(&["-f", "-o", "lowerdir=/a", "/m"]);
        assert!(o.foreground && !o.debug);
        let o = run(&["-d", "-o", "lowerdir=/a", "/m"]);
        assert!(o.foreground && o.debug);
    }

    #[test]
    fn bool_and_enum_options() {
        let o = run(&[
            "-o",
            "lowerdir=/a,upperdir=/u,workdir=/w,volatile,redirect_dir=nofollow,passthrough,threads=4,noacl,squash_to_root",
            "/m",
        ]);
        assert!(o.volatile && o.noacl);
        assert_eq!((o.idmap.squash_uid, o.idmap.squash_gid), (Some(0), Some(0)));
        assert_eq!(o.redirect_dir, Some(RedirectDir::NoFollow));
        assert_eq!(o.passthrough, Some(Passthrough::Upper));
        assert_eq!(o.threads, Some(4));
        let o = run(&["-o", "lowerdir=/a,nopassthrough,redirect_dir=off", "/m"]);
        assert_eq!(o.passthrough, Some(Passthrough::Off));
        assert_eq!(o.redirect_dir, Some(RedirectDir::Off));
    }

    #[test]
    fn passthrough_values_and_aliases() {
        let mode = |o: &str| run(&["-o", &format!("lowerdir=/a,{o}"), "/m"]).passthrough;
        assert_eq!(mode("threads=2"), None, "not given: the daemon decides");
        assert_eq!(mode("passthrough=upper"), Some(Passthrough::Upper));
        assert_eq!(mode("passthrough=all"), Some(Passthrough::All));
        assert_eq!(mode("passthrough=off"), Some(Passthrough::Off));
        assert_eq!(mode("passthrough"), mode("passthrough=upper"));
        assert_eq!(mode("nopassthrough"), mode("passthrough=off"));
    }

    #[test]
    fn passthrough_bad_values() {
        for v in ["foo", "", "ALL", "on", "upper:all"] {
            let e = fail(&["-o", &format!("lowerdir=/a,passthrough={v}"), "/m"]);
            assert!(e.contains("passthrough"), "{v:?}: {e}");
            assert!(!e.contains('\n'), "{v:?}: {e}");
        }
        assert_eq!(
            fail(&["-o", "lowerdir=/a,passthrough=foo", "/m"]),
            "invalid value 'foo' for passthrough (expected upper, all or off)"
        );
        assert_eq!(
            fail(&["-o", "lowerdir=/a,nopassthrough=all", "/m"]),
            "option 'nopassthrough' takes no value"
        );
    }

    #[test]
    fn bad_values() {
        assert!(fail(&["-o", "lowerdir=/a,threads=0", "/m"]).contains("threads"));
        assert!(fail(&["-o", "lowerdir=/a,threads=x", "/m"]).contains("threads"));
        assert!(fail(&["-o", "lowerdir=/a,redirect_dir=maybe", "/m"]).contains("redirect_dir"));
        assert!(fail(&["-o", "lowerdir=/a,userxattr=1", "/m"]).contains("takes no value"));
        assert!(fail(&["-o", "lowerdir=/a,ro=1", "/m"]).contains("takes no value"));
        assert!(fail(&["-o", "lowerdir=/a,fsync=2", "/m"]).contains("fsync"));
    }

    #[test]
    fn uring_values() {
        let mode = |o: &str| run(&["-o", &format!("lowerdir=/a{o}"), "/m"]).uring;
        assert_eq!(mode(""), UringMode::Auto, "default");
        assert_eq!(mode(",uring=auto"), UringMode::Auto);
        assert_eq!(mode(",uring=on"), UringMode::On);
        assert_eq!(mode(",uring=off"), UringMode::Off);
        assert_eq!(
            fail(&["-o", "lowerdir=/a,uring=yes", "/m"]),
            "invalid value 'yes' for uring (expected auto, on or off)"
        );
        assert_eq!(
            fail(&["-o", "lowerdir=/a,uring", "/m"]),
            "option 'uring' needs a value"
        );
        assert_eq!(
            fail(&["-o", "lowerdir=/a,uring=on", "-o", "uring=off", "/m"]),
            "option 'uring' given more than once"
        );
        assert!(run(&["-v", "-o", "lowerdir=/a", "/m"]).verbose);
        assert!(run(&["--verbose", "-o", "lowerdir=/a", "/m"]).verbose);
        assert!(!run(&["-o", "lowerdir=/a", "/m"]).verbose);
        match parse(&["--help"]) {
            Ok(ParseOutcome::Exit(text, 0)) => {
                assert!(text.contains("uring=auto|on|off"), "{text}");
                assert!(text.contains("--verbose"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fsync_zero_means_volatile() {
        assert!(run(&["-o", "lowerdir=/a,fsync=0", "/m"]).volatile);
        assert!(!run(&["-o", "lowerdir=/a,fsync=1", "/m"]).volatile);
    }

    #[test]
    fn compat_options_accepted_or_refused() {
        let o = run(&["-o", "lowerdir=/a,xino=auto,index=off,metacopy=off", "/m"]);
        assert!(o.warnings.is_empty());
        assert_eq!(
            fail(&["-o", "lowerdir=/a,index=on", "/m"]),
            "index=on is not supported"
        );
        let o = run(&["-o", "lowerdir=/a,metacopy=on", "/m"]);
        assert_eq!((o.metacopy, o.redirect_dir), (Some(true), None));
        assert_eq!(
            fail(&["-o", "lowerdir=/a,metacopy=on,redirect_dir=follow", "/m"]),
            "conflicting options: metacopy=on,redirect_dir=follow"
        );
    }

    #[test]
    fn id_mappings_as_podman_passes_them() {
        // containers-storage's mount program call: an empty option and a leading ':'.
        let o = run(&[
            "-o",
            "lowerdir=/a,upperdir=/u,workdir=/w,,uidmapping=:0:100000:65536,gidmapping=:0:100000:65536",
            "/m",
        ]);
        assert_eq!(o.idmap.uids.to_shown(0), 100000);
        assert_eq!(o.idmap.gids.to_shown(65535), 165535);
        assert_eq!(o.idmap.uids.to_shown(65536), crate::idmap::OVERFLOW);
        let o = run(&["-o", "lowerdir=/a,squash_to_root,squash_to_uid=7", "/m"]);
        assert_eq!((o.idmap.squash_uid, o.idmap.squash_gid), (Some(7), Some(0)));
        assert!(fail(&["-o", "lowerdir=/a,uidmapping=0:1000", "/m"]).contains("invalid uidmapping"));
        assert!(fail(&["-o", "lowerdir=/a,gidmapping=0:10:5:3:12:5", "/m"]).contains("overlap"));
        assert!(fail(&["-o", "lowerdir=/a,squash_to_uid=x", "/m"]).contains("squash_to_uid"));
    }

    #[test]
    fn kernel_options_kept_in_order() {
        let o = run(&[
            "-o",
            "lowerdir=/a,upperdir=/u,workdir=/w,allow_other,default_permissions,nosuid,noatime",
            "/m",
        ]);
        let names: Vec<_> = o.kernel_opts.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            ["allow_other", "default_permissions", "nosuid", "noatime"]
        );
        assert!(fail(&["-o", "lowerdir=/a,allow_other,allow_root", "/m"])
            .contains("mutually exclusive"));
        for k in KernelOpt::ALL {
            assert_eq!(KernelOpt::from_name(k.as_str().as_bytes()), Some(k));
        }
    }

    #[test]
    fn empty_items_are_skipped() {
        let o = run(&["-o", ",lowerdir=/a,,", "/m"]);
        assert!(o.warnings.is_empty());
    }

    #[test]
    fn mountinfo_overlay_workdir() {
        let info = b"22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
            99 22 0:50 / /merged\\040dir rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/my\\040w\\054x,uuid=on\n";
        assert_eq!(
            overlay_using_workdir(info, Path::new("/my w,x")),
            Some(PathBuf::from("/merged dir"))
        );
        assert_eq!(overlay_using_workdir(info, Path::new("/my")), None);
        assert_eq!(overlay_using_workdir(b"garbage\n\n", Path::new("/w")), None);
    }

    // ---- validate ----

    /// A unique directory under the temp dir, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "unionfs-options-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).expect("create scratch dir");
            Scratch(p)
        }
        fn dir(&self, name: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::create_dir_all(&p).expect("create dir");
            p
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn opts(lower: &[&Path], upper: Option<&Path>, work: Option<&Path>, mnt: &Path) -> Options {
        let mut o = String::from("lowerdir=");
        o.push_str(
            &lower
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        );
        if let Some(u) = upper {
            o.push_str(&format!(",upperdir={}", u.display()));
        }
        if let Some(w) = work {
            o.push_str(&format!(",workdir={}", w.display()));
        }
        let m = mnt.display().to_string();
        run(&["-o", &o, &m])
    }

    #[test]
    fn validate_accepts_a_good_setup_and_locks_workdir() {
        let s = Scratch::new();
        let (l, u, w, m) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"));
        let o = opts(&[&l], Some(&u), Some(&w), &m);
        let lock = validate(&o).expect("valid").expect("lock held");
        let e = validate(&o).expect_err("workdir locked");
        assert!(e.0.contains("in use by another unionfs"), "{e}");
        drop(lock);
        assert!(validate(&o).expect("valid after unlock").is_some());
        // Read-only union: nothing to lock. Mount point equal to the lower is allowed.
        assert!(validate(&opts(&[&l], None, None, &l))
            .expect("valid")
            .is_none());
    }

    #[test]
    fn validate_reports_missing_and_non_directories() {
        let s = Scratch::new();
        let (l, m) = (s.dir("l"), s.dir("m"));
        let missing = s.0.join("nope");
        let e = validate(&opts(&[&l, &missing], None, None, &m)).expect_err("missing");
        assert!(e.0.starts_with("lowerdir '") && e.0.contains("nope"), "{e}");
        let file = s.0.join("file");
        std::fs::write(&file, b"x").expect("write");
        let e = validate(&opts(&[&l], None, None, &file)).expect_err("file");
        assert!(e.0.contains("is not a directory"), "{e}");
    }

    #[test]
    fn validate_refuses_overlaps() {
        let s = Scratch::new();
        let (l, w, m) = (s.dir("l"), s.dir("w"), s.dir("m"));
        let u_in_l = s.dir("l/u");
        let e = validate(&opts(&[&l], Some(&u_in_l), Some(&w), &m)).expect_err("upper in lower");
        assert!(
            e.0.contains("upperdir") && e.0.contains("inside lowerdir"),
            "{e}"
        );
        let u = s.dir("u");
        let w_in_u = s.dir("u/w");
        let e = validate(&opts(&[&l], Some(&u), Some(&w_in_u), &m)).expect_err("work in upper");
        assert!(
            e.0.contains("workdir") && e.0.contains("inside upperdir"),
            "{e}"
        );
        let m_in_u = s.dir("u/m");
        let e = validate(&opts(&[&l], Some(&u), Some(&w), &m_in_u)).expect_err("mnt in upper");
        assert!(
            e.0.contains("mount point") && e.0.contains("inside upperdir"),
            "{e}"
        );
        let m_in_l = s.dir("l/m");
        let e = validate(&opts(&[&l], None, None, &m_in_l)).expect_err("mnt in lower");
        assert!(e.0.contains("inside lowerdir"), "{e}");
        let e = validate(&opts(&[&l], Some(&u), Some(&u), &m)).expect_err("work == upper");
        assert!(e.0.contains("same directory"), "{e}");
    }

    #[test]
    fn validate_workdir_on_other_filesystem() {
        // /dev/shm is a tmpfs on most systems; skip where it is absent or shares the device.
        let s = Scratch::new();
        let (l, u, m) = (s.dir("l"), s.dir("u"), s.dir("m"));
        let shm = Path::new("/dev/shm");
        let (Ok(a), Ok(b)) = (std::fs::metadata(shm), std::fs::metadata(&u)) else {
            crate::testskip::skip(
                "validate_workdir_on_other_filesystem",
                crate::testskip::Skip::Missing,
                "no /dev/shm",
            );
            return;
        };
        if a.dev() == b.dev() {
            crate::testskip::skip(
                "validate_workdir_on_other_filesystem",
                crate::testskip::Skip::Missing,
                "/dev/shm is on the temp dir's filesystem",
            );
            return;
        }
        let w = shm.join(format!("unionfs-options-test-{}", std::process::id()));
        if std::fs::create_dir_all(&w).is_err() {
            crate::testskip::skip(
                "validate_workdir_on_other_filesystem",
                crate::testskip::Skip::Missing,
                "cannot create a directory in /dev/shm",
            );
            return;
        }
        let r = validate(&opts(&[&l], Some(&u), Some(&w), &m));
        let _ = std::fs::remove_dir_all(&w);
        let e = r.expect_err("different filesystems");
        assert!(e.0.contains("different filesystems"), "{e}");
    }

    #[test]
    fn validate_refuses_workdir_of_a_kernel_overlay() {
        // Needs mount privileges; skipped elsewhere.
        let s = Scratch::new();
        let (l, u, w, m, m2) = (s.dir("l"), s.dir("u"), s.dir("w"), s.dir("m"), s.dir("m2"));
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            l.display(),
            u.display(),
            w.display()
        );
        let mounted = nix::mount::mount(
            Some("overlay"),
            &m,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        );
        if let Err(e) = mounted {
            crate::testskip::skip(
                "validate_refuses_workdir_of_a_kernel_overlay",
                crate::testskip::root_or_missing(),
                &format!("cannot mount an overlay: {e}"),
            );
            return;
        }
        let r = validate(&opts(&[&l], Some(&u), Some(&w), &m2));
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        let e = r.expect_err("workdir used by overlay");
        assert!(e.0.contains("kernel overlay"), "{e}");
    }
}
