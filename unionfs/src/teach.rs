//! The teaching subcommands, `unionfs explain` and `unionfs diff`: their command lines,
//! and how they find the layers of a live mount (a unionfs or a kernel overlay) from
//! `/proc/self/mountinfo`. The analysis itself is in `explain`, `diff` and `picture`.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::Parser;

use crate::explain::LayerSet;
use crate::layer::XattrNs;

const EXPLAIN_AFTER: &str = "\
Without -o, PATH must be inside a mounted unionfs or kernel overlay: its layers are read
from /proc/self/mountinfo (for unionfs, from the daemon's command line). With -o, PATH is
a path of the union's merged view ('/' is its root) and nothing needs to be mounted.

For PATH it prints each layer's entry (type and size, whiteout, opaque directory,
redirect, absent), which layer the merged view shows and the rule that decided it, and for
a directory which layers its listing merges. A layer marked '(not consulted)' has an
entry the merge rule never reached: a layer above stopped the search, or the parent
directory is not merged from that layer. --svg draws the directory PATH instead: one
column per layer and one for the merged view, one row per name.

Example:
  unionfs explain -o lowerdir=lower,upperdir=upper /etc/motd";

const DIFF_AFTER: &str = "\
Lists what the upper layer changes against the lower layers, as 'docker diff' does:
  A /path   added (nothing the lowers show has this name)
  C /path   changed (the upper layer holds a new version: a copy-up, or a directory with
            changes inside)
  D /path   deleted (a whiteout hides it)
one a line, sorted by path. Give -o with lowerdir and upperdir, or the MOUNTPOINT of a
mounted unionfs or kernel overlay.";

#[derive(Parser, Debug)]
#[command(
    name = "unionfs explain",
    bin_name = "unionfs explain",
    about = "Show how the union decides what a path is: each layer's entry and the rule.",
    override_usage = "unionfs explain [-o lowerdir=L1:L2,upperdir=U[,userxattr]] [--svg] PATH",
    after_help = EXPLAIN_AFTER
)]
struct ExplainCli {
    /// The layers (lowerdir=, upperdir=, userxattr; other options are ignored).
    #[arg(short = 'o', value_name = "OPTS")]
    opts: Option<OsString>,
    /// Draw the directory PATH as SVG on stdout.
    #[arg(long)]
    svg: bool,
    /// A path inside a mounted union, or with -o a merged-view path such as /etc/motd
    #[arg(value_name = "PATH")]
    path: PathBuf,
}

#[derive(Parser, Debug)]
#[command(
    name = "unionfs diff",
    bin_name = "unionfs diff",
    about = "List the changes of the upper layer against the lower ones, as docker diff.",
    override_usage = "unionfs diff -o lowerdir=L1:L2,upperdir=U [--json]\n       unionfs diff [--json] MOUNTPOINT",
    after_help = DIFF_AFTER
)]
struct DiffCli {
    /// The layers (lowerdir=, upperdir=, userxattr; other options are ignored).
    #[arg(short = 'o', value_name = "OPTS")]
    opts: Option<OsString>,
    /// Print a JSON array instead of lines.
    #[arg(long)]
    json: bool,
    /// A mounted unionfs or kernel overlay (instead of -o)
    #[arg(value_name = "MOUNTPOINT")]
    mountpoint: Option<PathBuf>,
}

/// Runs `unionfs explain ...` or `unionfs diff ...` when argv[1] names one, and gives the
/// exit code; None for any other command line (a mount).
pub fn subcommand(args: &[OsString]) -> Option<u8> {
    let verb = args.get(1)?.as_bytes();
    let rest = args.iter().skip(2).cloned();
    let result = match verb {
        b"explain" => run_explain(rest),
        b"diff" => run_diff(rest),
        _ => return None,
    };
    Some(match result {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(Exit::Usage(text)) => {
            print!("{text}");
            0
        }
        Err(Exit::Fail(msg)) => {
            eprintln!("unionfs: {msg}");
            1
        }
    })
}

enum Exit {
    /// --help: the text, exit 0.
    Usage(String),
    /// One line, exit 1.
    Fail(String),
}

fn parse<C: Parser>(name: &str, rest: impl Iterator<Item = OsString>) -> Result<C, Exit> {
    let argv = std::iter::once(OsString::from(name)).chain(rest);
    C::try_parse_from(argv).map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Exit::Usage(e.to_string()),
        _ => Exit::Fail(format!(
            "{name}: {}",
            e.to_string()
                .lines()
                .next()
                .unwrap_or("bad arguments")
                .trim_start_matches("error: ")
        )),
    })
}

fn run_explain(rest: impl Iterator<Item = OsString>) -> Result<String, Exit> {
    let cli: ExplainCli = parse("unionfs explain", rest)?;
    let (set, path) = match &cli.opts {
        Some(o) => (
            layers_from_opts(o.as_bytes()).map_err(Exit::Fail)?,
            cli.path.clone(),
        ),
        None => {
            let m = live_mount(&cli.path).map_err(Exit::Fail)?;
            (m.layers, m.inside)
        }
    };
    let fail = |e: std::io::Error| Exit::Fail(format!("{}: {e}", cli.path.display()));
    if cli.svg {
        let (here, rows) = set.list(&path).map_err(fail)?;
        if here.merged.is_empty() {
            return Err(Exit::Fail(format!(
                "{}: not a directory in the union ({})",
                here.path, here.rule
            )));
        }
        return Ok(crate::picture::draw(&set, &here, &rows));
    }
    Ok(set.explain(&path).map_err(fail)?.render())
}

fn run_diff(rest: impl Iterator<Item = OsString>) -> Result<String, Exit> {
    let cli: DiffCli = parse("unionfs diff", rest)?;
    let set = match (&cli.opts, &cli.mountpoint) {
        (Some(o), None) => layers_from_opts(o.as_bytes()).map_err(Exit::Fail)?,
        (None, Some(m)) => live_mount(m).map_err(Exit::Fail)?.layers,
        (Some(_), Some(_)) => {
            return Err(Exit::Fail(
                "unionfs diff: give either -o or a MOUNTPOINT, not both".into(),
            ))
        }
        (None, None) => {
            return Err(Exit::Fail(
                "unionfs diff: give -o lowerdir=...,upperdir=... or a MOUNTPOINT".into(),
            ))
        }
    };
    let Some(upper) = &set.upper else {
        return Err(Exit::Fail(
            "unionfs diff: the union has no upperdir, so nothing changed".into(),
        ));
    };
    for d in set.lowers.iter().chain(std::iter::once(upper)) {
        if !d.is_dir() {
            return Err(Exit::Fail(format!("{}: not a directory", d.display())));
        }
    }
    let changes =
        crate::diff::diff(upper, &set.lowers, set.ns).map_err(|e| Exit::Fail(e.to_string()))?;
    Ok(if cli.json {
        crate::diff::render_json(&changes)
    } else {
        crate::diff::render(&changes)
    })
}

/// The layers named by `lowerdir=`, `upperdir=` (and `userxattr`) in an `-o` string.
pub fn layers_from_opts(o: &[u8]) -> Result<LayerSet, String> {
    let mut set = LayerSet {
        lowers: Vec::new(),
        upper: None,
        ns: None,
        follow_redirects: true,
    };
    for item in crate::options::split_opt_list(o) {
        let (k, v) = match item.iter().position(|&c| c == b'=') {
            Some(i) => (&item[..i], &item[i + 1..]),
            None => (&item[..], &b""[..]),
        };
        match k {
            b"lowerdir" => {
                set.lowers = crate::options::unescape_split("lowerdir", v, Some(b':'))
                    .map_err(|e| e.to_string())?
            }
            b"upperdir" => {
                set.upper = crate::options::unescape_split("upperdir", v, None)
                    .map_err(|e| e.to_string())?
                    .pop()
            }
            b"userxattr" => set.ns = Some(XattrNs::User),
            b"redirect_dir" => set.follow_redirects = v != b"nofollow",
            _ => {}
        }
    }
    if set.lowers.is_empty() {
        return Err("missing option lowerdir=DIR[:DIR...]".into());
    }
    for d in &set.lowers {
        if !d.is_dir() {
            return Err(format!("lowerdir '{}' is not a directory", d.display()));
        }
    }
    if set.ns.is_none() {
        set.ns = Some(default_ns());
    }
    Ok(set)
}

/// The namespace a union mounted by this user keeps its markers in.
fn default_ns() -> XattrNs {
    if nix::unistd::geteuid().is_root() {
        XattrNs::Trusted
    } else {
        XattrNs::User
    }
}

/// A live union found from a path inside it.
pub struct LiveMount {
    pub layers: LayerSet,
    /// Where the path is in the merged view (`/etc/motd`).
    pub inside: PathBuf,
    /// `overlay` or `fuse.unionfs`.
    pub fstype: String,
}

/// A line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountLine {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub super_opts: String,
}

/// Octal escapes (`\040`) as the kernel writes them in mountinfo.
fn unoctal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(v) = b
                .get(i + 1..i + 4)
                .and_then(|d| std::str::from_utf8(d).ok())
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Parses mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<MountLine> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|&x| x == "-")?;
            Some(MountLine {
                mount_point: PathBuf::from(OsString::from_vec(unoctal(f.get(4)?))),
                fstype: (*f.get(sep + 1)?).to_string(),
                super_opts: (*f.get(sep + 3)?).to_string(),
            })
        })
        .collect()
}

/// The layers of a kernel overlay from its super options (`lowerdir=a:b,upperdir=u,...`).
pub fn overlay_layers(super_opts: &str) -> Result<LayerSet, String> {
    let mut set = LayerSet {
        lowers: Vec::new(),
        upper: None,
        ns: Some(XattrNs::Trusted),
        follow_redirects: true,
    };
    for item in super_opts.split(',') {
        let (k, v) = item.split_once('=').unwrap_or((item, ""));
        match k {
            // Data-only layers (after "::") take no part in the merge.
            "lowerdir" => {
                let regular = v.split("::").next().unwrap_or(v);
                set.lowers = regular
                    .split(':')
                    .filter(|p| !p.is_empty())
                    .map(|p| PathBuf::from(OsString::from_vec(unoctal(p))))
                    .collect();
            }
            "lowerdir+" => set
                .lowers
                .push(PathBuf::from(OsString::from_vec(unoctal(v)))),
            "upperdir" => set.upper = Some(PathBuf::from(OsString::from_vec(unoctal(v)))),
            "userxattr" => set.ns = Some(XattrNs::User),
            "redirect_dir" => set.follow_redirects = v != "nofollow",
            _ => {}
        }
    }
    if set.lowers.is_empty() {
        return Err("the overlay's mount options name no lowerdir".into());
    }
    Ok(set)
}

/// `path` made absolute without symlinks, for the longest part of it that exists (a name
/// the union does not show, e.g. one a whiteout hides, can still be explained). The last
/// component is not followed: explain speaks of the name itself, as `lstat` does.
fn canonical_prefix(path: &Path) -> Result<PathBuf, String> {
    let abs = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut missing: Vec<std::ffi::OsString> = Vec::new();
    let mut cur = abs.clone();
    if let Some(n) = cur.file_name() {
        missing.push(n.to_os_string());
        cur.pop();
    }
    loop {
        match fs::canonicalize(&cur) {
            Ok(mut c) => {
                for n in missing.iter().rev() {
                    if n == ".." {
                        return Err(format!("{}: '..' after a missing name", path.display()));
                    }
                    c.push(n);
                }
                return Ok(c);
            }
            Err(e) => match cur.file_name() {
                Some(n) => {
                    missing.push(n.to_os_string());
                    cur.pop();
                }
                None => return Err(format!("{}: {e}", path.display())),
            },
        }
    }
}

/// Finds the union `path` is in and its layers.
pub fn live_mount(path: &Path) -> Result<LiveMount, String> {
    let canon = canonical_prefix(path)?;
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mounts = parse_mountinfo(&text);
    // The last mount on the longest prefix is the one on top.
    let m = mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| canon.starts_with(&m.mount_point))
        .max_by_key(|(i, m)| (m.mount_point.as_os_str().len(), *i))
        .map(|(_, m)| m)
        .ok_or_else(|| format!("{}: no mount found", path.display()))?;
    let inside = Path::new("/").join(canon.strip_prefix(&m.mount_point).unwrap_or(Path::new("")));
    let layers = match m.fstype.as_str() {
        "overlay" => overlay_layers(&m.super_opts)?,
        "fuse.unionfs" => unionfs_daemon_layers(&m.mount_point)?,
        other => {
            return Err(format!(
                "{} is on {} ({other}), not on a unionfs or overlay mount: give the layers with -o",
                path.display(),
                m.mount_point.display()
            ))
        }
    };
    Ok(LiveMount {
        layers,
        inside,
        fstype: m.fstype.clone(),
    })
}

/// A FUSE mount's options do not name the layers: find the daemon serving `mount_point`
/// among the processes and read them from its command line.
fn unionfs_daemon_layers(mount_point: &Path) -> Result<LayerSet, String> {
    let rd = fs::read_dir("/proc").map_err(|e| format!("cannot read /proc: {e}"))?;
    for e in rd.flatten() {
        let pid = e.file_name();
        if !pid.as_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<OsString> = cmd
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect();
        let is_unionfs = args
            .first()
            .and_then(|a| Path::new(a).file_name())
            .is_some_and(|n| n == "unionfs");
        if !is_unionfs {
            continue;
        }
        let Ok(crate::options::ParseOutcome::Run(o)) = crate::options::parse_args(args) else {
            continue;
        };
        let cwd = fs::read_link(e.path().join("cwd")).unwrap_or_else(|_| PathBuf::from("/"));
        let abs = |p: &Path| cwd.join(p);
        if fs::canonicalize(abs(&o.mountpoint)).ok().as_deref() != Some(mount_point) {
            continue;
        }
        let root = nix::unistd::Uid::from_raw(
            fs::metadata(e.path())
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .unwrap_or(0),
        )
        .is_root();
        return Ok(LayerSet {
            lowers: o.lowerdirs.iter().map(|p| abs(p)).collect(),
            upper: o.upperdir.as_deref().map(abs),
            ns: Some(if o.userxattr || !root {
                XattrNs::User
            } else {
                XattrNs::Trusted
            }),
            follow_redirects: o.redirect_dir != Some(crate::options::RedirectDir::NoFollow),
        });
    }
    Err(format!(
        "no unionfs daemon found serving {}: give the layers with -o",
        mount_point.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let t = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - overlay overlay rw,lowerdir=/l\\0401:/l2,upperdir=/u,workdir=/w\n\
                 40 1 0:50 / /m rw - fuse.unionfs unionfs rw,user_id=0,group_id=0\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/a b"));
        assert_eq!(m[0].fstype, "overlay");
        assert_eq!(m[1].fstype, "fuse.unionfs");
        let s = overlay_layers(&m[0].super_opts).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.lowers, [PathBuf::from("/l 1"), PathBuf::from("/l2")]);
        assert_eq!(s.upper, Some(PathBuf::from("/u")));
        let s =
            overlay_layers("rw,lowerdir=/a:/b::/data,userxattr").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.lowers, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(s.ns, Some(XattrNs::User));
        assert!(overlay_layers("rw").is_err());
    }

    #[test]
    fn subcommands_are_recognised() {
        let a = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            subcommand(&a(&["unionfs", "-o", "lowerdir=/x", "/mnt"])),
            None
        );
        assert_eq!(subcommand(&a(&["unionfs"])), None);
        // A mount point called "explain" is still reachable as ./explain.
        assert_eq!(subcommand(&a(&["unionfs", "./explain"])), None);
    }
}
