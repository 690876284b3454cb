//! `unionfs explain`: the merge rule applied to plain layer directories, with the reason
//! for each outcome, for people learning how a union decides what it shows. Nothing is
//! mounted: each layer's entry for a path is read with `lstat` and the overlay xattrs, and
//! the same rule as `lookup::resolve` (top-down; a whiteout ends the search; a
//! non-directory hides everything below it; directories merge until an opaque one) is
//! applied one path component at a time, from the root.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::layer::XattrNs;
use crate::sys::fsops::{getxattr_vec, XPath};
use crate::whiteout;

/// The layer directories of a union, as on the command line.
#[derive(Debug, Clone)]
pub struct LayerSet {
    /// Top-most first (`lower0` is the first).
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    /// Where the overlay markers are; None reads both namespaces (for layers written by
    /// either kind of mount, as runbox's containers are).
    pub ns: Option<XattrNs>,
    /// Follow `redirect` xattrs (`redirect_dir=follow`, the kernel's and unionfs's
    /// default; false for `redirect_dir=nofollow`).
    pub follow_redirects: bool,
}

/// One layer of the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LayerId {
    Upper,
    Lower(usize),
}

impl LayerId {
    pub fn name(self) -> String {
        match self {
            LayerId::Upper => "upper".into(),
            LayerId::Lower(i) => format!("lower{i}"),
        }
    }
}

/// What one layer directory holds under a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Absent,
    /// A kernel whiteout (char 0/0), or in a lower layer an AUFS `.wh.NAME` marker.
    Whiteout {
        aufs: bool,
    },
    Dir {
        /// `opaque=y` xattr, or in a lower layer a `.wh..wh..opq` marker.
        opaque: bool,
        /// The `redirect` xattr: where a moved directory's lower content is.
        redirect: Option<String>,
    },
    /// Anything else: `kind` as `trace::kind_name` spells it.
    NonDir {
        kind: &'static str,
        size: u64,
        /// An `origin` xattr: this is a copy-up of a lower object.
        origin: bool,
        /// A `metacopy` xattr: only the metadata was copied up; the data is still the
        /// lower file's (`metacopy=on`).
        metacopy: bool,
    },
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        matches!(self, Entry::Dir { .. })
    }

    /// `file, 24 bytes`, `dir (opaque)`, `whiteout (char 0/0)`, `absent`...
    pub fn describe(&self) -> String {
        match self {
            Entry::Absent => "absent".into(),
            Entry::Whiteout { aufs: false } => "whiteout (char 0/0)".into(),
            Entry::Whiteout { aufs: true } => "whiteout (.wh. marker)".into(),
            Entry::Dir { opaque, redirect } => {
                let mut s = String::from("dir");
                if *opaque {
                    s.push_str(", opaque");
                }
                if let Some(r) = redirect {
                    let _ = write!(s, ", redirect={r}");
                }
                s
            }
            Entry::NonDir {
                kind,
                size,
                origin,
                metacopy,
            } => {
                let mut s = format!("{kind}, {size} bytes");
                if *origin {
                    s.push_str(", copied up (origin xattr)");
                }
                if *metacopy {
                    s.push_str(", metadata only (metacopy: the data is below)");
                }
                s
            }
        }
    }
}

/// One layer's part in the answer.
#[derive(Debug, Clone)]
pub struct LayerEntry {
    pub layer: LayerId,
    pub entry: Entry,
    /// Whether the merge rule looked at this layer for this path: false when an upper
    /// layer stopped the search, or the parent directory is not merged from it.
    pub consulted: bool,
    /// Where the rule looked in this layer, when a redirect made it another path.
    pub at: Option<String>,
}

/// What the merged view shows at a path, and why.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// `/a/b`, the merged-view path.
    pub path: String,
    pub layers: Vec<LayerEntry>,
    /// The layer whose object shows, and its entry; None: nothing shows.
    pub shown: Option<(LayerId, Entry)>,
    /// The rule that decided it, in words.
    pub rule: String,
    /// For a directory: the layers whose listings merge, top first.
    pub merged: Vec<LayerId>,
    /// The same, with where each directory is in its layer.
    pub merged_at: Vec<Part>,
}

impl Explanation {
    /// The type shown (`file`, `dir`, ...), None when nothing shows.
    pub fn shown_kind(&self) -> Option<&'static str> {
        match &self.shown {
            Some((_, Entry::Dir { .. })) => Some("dir"),
            Some((_, Entry::NonDir { kind, .. })) => Some(kind),
            _ => None,
        }
    }

    /// The text `unionfs explain` prints.
    pub fn render(&self) -> String {
        let mut s = format!("{}\n", self.path);
        for l in &self.layers {
            let note = if l.consulted || l.entry == Entry::Absent {
                ""
            } else {
                "  (not consulted)"
            };
            let at =
                l.at.as_ref()
                    .map(|a| format!(" (at {a})"))
                    .unwrap_or_default();
            let _ = writeln!(
                s,
                "  {:<7} {}{at}{note}",
                l.layer.name(),
                l.entry.describe()
            );
        }
        match &self.shown {
            Some((id, e)) => {
                let _ = writeln!(
                    s,
                    "  shows   {} from {}",
                    match e {
                        Entry::Dir { .. } => "dir".to_string(),
                        Entry::NonDir { kind, size, .. } => format!("{kind}, {size} bytes"),
                        _ => String::new(),
                    },
                    id.name()
                );
            }
            None => s.push_str("  shows   nothing (no such file or directory)\n"),
        }
        let _ = writeln!(s, "  because {}", self.rule);
        if !self.merged.is_empty() {
            let names: Vec<String> = self.merged.iter().map(|l| l.name()).collect();
            let _ = writeln!(s, "  lists   {}", names.join(" + "));
        }
        s
    }
}

impl LayerSet {
    fn layer_ids(&self) -> Vec<LayerId> {
        let mut v = Vec::new();
        if self.upper.is_some() {
            v.push(LayerId::Upper);
        }
        v.extend((0..self.lowers.len()).map(LayerId::Lower));
        v
    }

    pub fn root(&self, id: LayerId) -> Option<&Path> {
        match id {
            LayerId::Upper => self.upper.as_deref(),
            LayerId::Lower(i) => self.lowers.get(i).map(PathBuf::as_path),
        }
    }

    fn xattr(&self, path: &Path, what: &str) -> Option<Vec<u8>> {
        let nss: &[XattrNs] = match self.ns {
            Some(XattrNs::Trusted) => &[XattrNs::Trusted],
            Some(XattrNs::User) => &[XattrNs::User],
            None => &[XattrNs::Trusted, XattrNs::User],
        };
        let x = xpath(path).ok()?;
        nss.iter().find_map(|ns| {
            let name = OsString::from(format!("{}{what}", ns.prefix()));
            getxattr_vec(&x, &name).ok().flatten()
        })
    }

    /// The raw entry of one layer at `rel` (relative to the layer root, no `..`).
    pub fn entry(&self, id: LayerId, rel: &Path) -> io::Result<Entry> {
        let Some(root) = self.root(id) else {
            return Ok(Entry::Absent);
        };
        let image = matches!(id, LayerId::Lower(_));
        let name = rel.file_name();
        if let (true, Some(n)) = (image, name) {
            if whiteout::is_aufs_name(n) {
                return Ok(Entry::Absent);
            }
        }
        let p = root.join(rel);
        let md = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                if let (true, Some(n)) = (image, name) {
                    if let Some(m) = whiteout::aufs_marker(n) {
                        if fs::symlink_metadata(p.with_file_name(m)).is_ok() {
                            return Ok(Entry::Whiteout { aufs: true });
                        }
                    }
                }
                return Ok(Entry::Absent);
            }
            Err(e) => return Err(e),
        };
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            return Ok(Entry::Whiteout { aufs: false });
        }
        if ft.is_dir() {
            let opaque = self.xattr(&p, "opaque").is_some_and(|v| v == b"y")
                || (image
                    && fs::symlink_metadata(p.join(OsStr::from_bytes(whiteout::AUFS_OPAQUE)))
                        .is_ok());
            let redirect = self
                .xattr(&p, "redirect")
                .map(|v| String::from_utf8_lossy(&v).into_owned());
            return Ok(Entry::Dir { opaque, redirect });
        }
        Ok(Entry::NonDir {
            kind: crate::trace::kind_name(md.mode()),
            size: md.size(),
            origin: id == LayerId::Upper && self.xattr(&p, "origin").is_some(),
            metacopy: self.xattr(&p, "metacopy").is_some(),
        })
    }

    /// Applies the merge rule to `path` (merged-view path; `/` or empty is the root).
    pub fn explain(&self, path: &Path) -> io::Result<Explanation> {
        let comps = components(path)?;
        let shown_path = show(&comps);
        let ids = self.layer_ids();
        // The root merges every layer.
        let mut stack: Vec<Part> = ids.iter().map(|&id| (id, PathBuf::new())).collect();
        let mut rel = PathBuf::new();
        if comps.is_empty() {
            let consulted: Vec<(LayerId, PathBuf, Entry)> = ids
                .iter()
                .map(|&id| Ok((id, PathBuf::new(), self.entry(id, Path::new(""))?)))
                .collect::<io::Result<_>>()?;
            return Ok(Explanation {
                path: shown_path,
                layers: self.entries(&rel, &ids, &consulted)?,
                shown: ids.first().map(|&id| {
                    (
                        id,
                        Entry::Dir {
                            opaque: false,
                            redirect: None,
                        },
                    )
                }),
                rule: format!("the root directory merges all {} layers", ids.len()),
                merged: ids,
                merged_at: stack,
            });
        }
        let last = comps.len() - 1;
        for (i, c) in comps.iter().enumerate() {
            rel.push(c);
            let decided = self.resolve(&stack, c)?;
            if i == last {
                let layers = self.entries(&rel, &ids, &decided.consulted)?;
                let merged_at = if decided.is_dir {
                    decided.merged
                } else {
                    Vec::new()
                };
                return Ok(Explanation {
                    path: shown_path,
                    layers,
                    shown: decided.shown,
                    rule: decided.rule,
                    merged: merged_at.iter().map(|(id, _)| *id).collect(),
                    merged_at,
                });
            }
            if !decided.is_dir {
                let layers = self.entries(
                    &rel.join(comps[i + 1..].iter().collect::<PathBuf>()),
                    &ids,
                    &[],
                )?;
                let parent = show(&comps[..=i]);
                let why = match decided.shown {
                    Some(_) => format!("{parent} is not a directory in the union"),
                    None => format!("{parent} does not exist in the union ({})", decided.rule),
                };
                return Ok(Explanation {
                    path: shown_path,
                    layers,
                    shown: None,
                    rule: why,
                    merged: Vec::new(),
                    merged_at: Vec::new(),
                });
            }
            stack = decided.merged;
        }
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// Each layer's entry: where the rule looked (`consulted`), else at the path itself.
    fn entries(
        &self,
        rel: &Path,
        ids: &[LayerId],
        consulted: &[(LayerId, PathBuf, Entry)],
    ) -> io::Result<Vec<LayerEntry>> {
        ids.iter()
            .map(|&id| {
                Ok(match consulted.iter().find(|c| c.0 == id) {
                    Some((_, at, e)) => LayerEntry {
                        layer: id,
                        entry: e.clone(),
                        consulted: true,
                        at: (at != rel).then(|| format!("/{}", at.display())),
                    },
                    None => LayerEntry {
                        layer: id,
                        entry: self.entry(id, rel)?,
                        consulted: false,
                        at: None,
                    },
                })
            })
            .collect()
    }

    /// The rule for `name` in a directory that merges the layer directories of `stack`.
    fn resolve(&self, stack: &[Part], name: &OsStr) -> io::Result<Decided> {
        let mut d = Decided::default();
        let mut layers: Vec<Part> = stack.to_vec();
        let mut dirs: Vec<Part> = Vec::new();
        let mut shown: Option<(LayerId, Entry)> = None;
        let mut rule: Option<String> = None;
        // A redirect on a directory found so far: where the layers below look instead.
        let mut redirect: Option<(LayerId, String)> = None;
        let mut pos = 0;
        while let Some((id, dir)) = layers.get(pos).cloned() {
            let here = pos;
            pos += 1;
            let at = match &redirect {
                None => dir.join(name),
                Some((_, r)) => match r.strip_prefix('/') {
                    Some(abs) => PathBuf::from(abs),
                    None => dir.join(r),
                },
            };
            let below = || {
                layers[here + 1..]
                    .iter()
                    .map(|l| l.0.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let e = self.entry(id, &at)?;
            d.consulted.push((id, at.clone(), e.clone()));
            match &e {
                Entry::Absent => continue,
                Entry::Whiteout { .. } => {
                    rule = Some(if shown.is_none() {
                        match below().as_str() {
                            "" => format!("whiteout in {} (nothing below it to hide)", id.name()),
                            b => format!("whiteout in {} hides {b}", id.name()),
                        }
                    } else {
                        merge_rule(
                            &dirs,
                            Some(format!("whiteout in {} stops the merge", id.name())),
                        )
                    });
                    break;
                }
                Entry::NonDir { .. } => {
                    if shown.is_none() {
                        let hidden = below();
                        let mut r = match (id, hidden.as_str()) {
                            (_, "") => format!("only {} has it", id.name()),
                            (LayerId::Upper, h) => format!("upper entry hides {h}"),
                            (_, h) => format!("non-directory in {} hides {h}", id.name()),
                        };
                        if matches!(e, Entry::NonDir { metacopy: true, .. }) {
                            r.push_str(
                                "; its data is still read from the lower file it was copied \
                                 from (metacopy)",
                            );
                        }
                        rule = Some(r);
                        shown = Some((id, e.clone()));
                    } else {
                        rule = Some(merge_rule(
                            &dirs,
                            Some(format!("non-directory in {} stops the merge", id.name())),
                        ));
                    }
                    break;
                }
                Entry::Dir {
                    opaque,
                    redirect: r,
                } => {
                    if shown.is_none() {
                        shown = Some((id, e.clone()));
                    }
                    dirs.push((id, at));
                    if *opaque {
                        let hidden = below();
                        rule = Some(if hidden.is_empty() {
                            merge_rule(&dirs, None)
                        } else if dirs.len() == 1 {
                            format!(
                                "opaque directory in {} stops the merge ({hidden} hidden)",
                                id.name()
                            )
                        } else {
                            merge_rule(
                                &dirs,
                                Some(format!(
                                    "opaque directory in {} stops the merge ({hidden} hidden)",
                                    id.name()
                                )),
                            )
                        });
                        break;
                    }
                    if let (Some(r), true) = (r, self.follow_redirects) {
                        if r.starts_with('/') {
                            // An absolute redirect looks in every lower layer below this
                            // one, from its root, as the kernel's lookup does.
                            let from = match id {
                                LayerId::Upper => 0,
                                LayerId::Lower(i) => i + 1,
                            };
                            layers.truncate(pos);
                            layers.extend(
                                (from..self.lowers.len())
                                    .map(|i| (LayerId::Lower(i), PathBuf::new())),
                            );
                        }
                        redirect = Some((id, r.clone()));
                    }
                }
            }
        }
        d.is_dir = shown.as_ref().is_some_and(|(_, e)| e.is_dir());
        let mut text = match (rule, &shown) {
            (Some(r), _) => r,
            (None, Some(_)) => merge_rule(&dirs, None),
            (None, None) => "no layer has it".into(),
        };
        if let (Some((id, r)), true) = (&redirect, d.is_dir) {
            let _ = write!(
                text,
                "; the redirect in {} sends the layers below to {r}",
                id.name()
            );
        }
        d.rule = text;
        d.merged = dirs;
        d.shown = shown;
        Ok(d)
    }

    /// The names a merged directory lists, with each one explained; `.wh.` markers and
    /// hidden names are included (with `shown: None`) so that a picture can draw them.
    pub fn list(&self, dir: &Path) -> io::Result<(Explanation, Vec<Explanation>)> {
        let here = self.explain(dir)?;
        let comps = components(dir)?;
        let rel: PathBuf = comps.iter().collect();
        let mut names: BTreeSet<OsString> = BTreeSet::new();
        let literal = self.layer_ids().into_iter().map(|id| (id, rel.clone()));
        for (id, at) in literal.chain(here.merged_at.iter().cloned()) {
            let Some(root) = self.root(id) else { continue };
            let Ok(rd) = fs::read_dir(root.join(&at)) else {
                continue;
            };
            for e in rd.flatten() {
                let n = e.file_name();
                if matches!(id, LayerId::Lower(_)) && whiteout::is_aufs_name(&n) {
                    if let Some(h) = whiteout::aufs_hidden_name(&n) {
                        names.insert(h.to_os_string());
                    }
                    continue;
                }
                names.insert(n);
            }
        }
        let mut out = Vec::new();
        for n in names {
            out.push(self.explain(&Path::new("/").join(&rel).join(n))?);
        }
        Ok((here, out))
    }
}

/// A directory of one layer taking part in a merge, and where it is in that layer (not
/// the merged path when a redirect led there).
pub type Part = (LayerId, PathBuf);

#[derive(Default)]
struct Decided {
    shown: Option<(LayerId, Entry)>,
    is_dir: bool,
    rule: String,
    merged: Vec<Part>,
    consulted: Vec<(LayerId, PathBuf, Entry)>,
}

fn merge_rule(dirs: &[Part], stop: Option<String>) -> String {
    let names: Vec<String> = dirs.iter().map(|l| l.0.name()).collect();
    let base = match dirs.len() {
        1 => format!("only {} has this directory", names.join(", ")),
        n => format!("directory merges {n} layers: {}", names.join(", ")),
    };
    match stop {
        Some(s) => format!("{base}; {s}"),
        None => base,
    }
}

/// The normal components of a merged-view path; `..` is refused.
fn components(path: &Path) -> io::Result<Vec<OsString>> {
    let mut v = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => v.push(n.to_os_string()),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "'..' is not allowed in the path",
                ))
            }
        }
    }
    Ok(v)
}

fn show(comps: &[OsString]) -> String {
    if comps.is_empty() {
        return "/".into();
    }
    comps
        .iter()
        .map(|c| format!("/{}", c.to_string_lossy()))
        .collect()
}

/// How the xattr calls name `path` without following a symlink at its end.
fn xpath(path: &Path) -> io::Result<XPath> {
    let open = |p: &Path| -> io::Result<OwnedFd> {
        Ok(nix::fcntl::open(
            p,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?)
    };
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            Ok(XPath::at(Arc::new(open(parent)?), name))
        }
        _ => Ok(XPath::fd(Arc::new(open(path)?))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path, data: &[u8]) {
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
        }
        fs::write(p, data).unwrap_or_else(|e| panic!("{e}"));
    }

    fn set(t: &Path) -> LayerSet {
        LayerSet {
            lowers: vec![t.join("l0"), t.join("l1")],
            upper: Some(t.join("up")),
            ns: None,
            follow_redirects: true,
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("unionfs-explain-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{e}"));
        p
    }

    #[test]
    fn rules() {
        let t = tmp("rules");
        touch(&t.join("l1/etc/motd"), b"lower1");
        touch(&t.join("l0/etc/motd"), b"lower0!");
        touch(&t.join("l1/etc/only1"), b"x");
        touch(&t.join("up/etc/motd"), b"up");
        touch(&t.join("l1/x/y"), b"x");
        touch(&t.join("l0/x"), b"file over dir");
        touch(&t.join("l0/gone"), b"x");
        touch(&t.join("l0/.wh.aufs"), b"");
        touch(&t.join("l1/aufs"), b"x");
        touch(&t.join("l0/d/.wh..wh..opq"), b"");
        touch(&t.join("l1/d/hidden"), b"x");
        let s = set(&t);
        let e = s
            .explain(Path::new("/etc/motd"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.shown.as_ref().map(|s| s.0), Some(LayerId::Upper));
        assert_eq!(e.rule, "upper entry hides lower0, lower1");
        let e = s
            .explain(Path::new("/etc"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            e.merged,
            [LayerId::Upper, LayerId::Lower(0), LayerId::Lower(1)]
        );
        assert_eq!(e.rule, "directory merges 3 layers: upper, lower0, lower1");
        let e = s.explain(Path::new("/x")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.rule, "non-directory in lower0 hides lower1");
        assert!(s
            .explain(Path::new("/x/y"))
            .unwrap_or_else(|e| panic!("{e}"))
            .shown
            .is_none());
        let e = s
            .explain(Path::new("/aufs"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(e.shown.is_none());
        assert_eq!(e.rule, "whiteout in lower0 hides lower1");
        let e = s.explain(Path::new("/d")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.merged, [LayerId::Lower(0)]);
        assert!(
            e.rule
                .contains("opaque directory in lower0 stops the merge (lower1 hidden)"),
            "{}",
            e.rule
        );
        assert!(s
            .explain(Path::new("/d/hidden"))
            .unwrap_or_else(|e| panic!("{e}"))
            .shown
            .is_none());
        let e = s
            .explain(Path::new("/etc/only1"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.rule, "only lower1 has it");
        assert!(s.explain(Path::new("/../x")).is_err());
        let (_, rows) = s.list(Path::new("/")).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = rows.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(names, ["/aufs", "/d", "/etc", "/gone", "/x"]);
        let _ = fs::remove_dir_all(&t);
    }
}
