//! The teaching tools against the real thing:
//! - `explain` on unmounted layers says what a kernel overlay mount of the same layers
//!   shows (type, size, absent, directory listings), for small end states with whiteouts,
//!   opaque directories, non-directories over directories and back; and, for the AUFS
//!   markers the kernel does not read, what a unionfs mount shows;
//! - `diff` agrees with a walk of a kernel overlay mount compared with a mount of its
//!   lower layers alone;
//! - the trace names each event with its cause, `trace_level=lookup` each lookup;
//! - `explain` finds the layers of a live mount (unionfs and kernel overlay), `--svg` has
//!   the columns, rows and marks of the directory, and bad input gets one line.
//!
//! Tests that mount need root; without it they say SKIPPED.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use unionfs::explain::{LayerId, LayerSet};
use unionfs::layer::XattrNs;

/// What to put at a path of a layer.
#[derive(Clone, Copy)]
enum N {
    File(&'static str),
    Dir,
    /// A directory with `trusted.overlay.opaque=y` (or, in `aufs` trees, a
    /// `.wh..wh..opq` marker in a lower layer).
    Opaque,
    /// A char 0/0 device (or, in `aufs` trees, a `.wh.NAME` marker in a lower layer).
    Whiteout,
    Symlink(&'static str),
}

/// `layer` is "upper", "lower0", "lower1".
type Tree = &'static [(&'static str, &'static str, N)];

const TREES: &[(&str, Tree)] = &[
    (
        "files-and-dirs",
        &[
            ("lower1", "a/f", N::File("one")),
            ("lower1", "a/g", N::File("g1")),
            ("lower1", "b", N::File("b1")),
            ("lower1", "c/d/e", N::File("e")),
            ("lower1", "s", N::Symlink("a/f")),
            ("lower0", "a/f", N::File("zero!")),
            ("lower0", "a/h", N::File("h")),
            ("lower0", "b/x", N::File("x")),
            ("lower0", "c", N::File("c0")),
            ("upper", "a/g", N::Whiteout),
            ("upper", "a/new", N::File("new")),
            ("upper", "c", N::Whiteout),
            ("upper", "s", N::File("now a file")),
        ],
    ),
    (
        "opaque",
        &[
            ("lower1", "d/x", N::File("x")),
            ("lower1", "d/sub/y", N::File("y")),
            ("lower1", "e/z", N::File("z")),
            ("lower0", "d", N::Opaque),
            ("lower0", "d/z", N::File("z0")),
            ("upper", "d/w", N::File("w")),
            ("upper", "e", N::Opaque),
            ("upper", "e/k", N::File("k")),
        ],
    ),
    (
        "whiteouts-and-types",
        &[
            ("lower1", "wd/child", N::File("c")),
            ("lower1", "y/inner", N::File("i")),
            ("lower1", "q/r", N::File("r")),
            ("lower0", "y", N::File("file over dir")),
            ("lower0", "q", N::Whiteout),
            ("upper", "wd", N::Whiteout),
            ("upper", "y", N::Dir),
            ("upper", "y/up", N::File("u")),
            ("upper", "x", N::File("file")),
            ("lower0", "x/deep", N::File("hidden by the upper file")),
            ("upper", "q", N::Dir),
        ],
    ),
];

fn build(root: &Path, tree: Tree, aufs: bool) {
    for (layer, rel, n) in tree {
        let p = root.join(layer).join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("{e}"));
        }
        let lower = *layer != "upper";
        match n {
            N::File(s) => std::fs::write(&p, s).unwrap_or_else(|e| panic!("{e}")),
            N::Dir => std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{e}")),
            N::Symlink(t) => std::os::unix::fs::symlink(t, &p).unwrap_or_else(|e| panic!("{e}")),
            N::Opaque => {
                std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{e}"));
                if aufs && lower {
                    std::fs::write(p.join(".wh..wh..opq"), "").unwrap_or_else(|e| panic!("{e}"));
                } else {
                    run_ok(
                        Command::new("setfattr")
                            .args(["-n", "trusted.overlay.opaque", "-v", "y"])
                            .arg(&p),
                    );
                }
            }
            N::Whiteout => {
                if aufs && lower {
                    let name = format!(
                        ".wh.{}",
                        p.file_name().unwrap_or_default().to_string_lossy()
                    );
                    std::fs::write(p.with_file_name(name), "").unwrap_or_else(|e| panic!("{e}"));
                } else {
                    nix::sys::stat::mknod(
                        &p,
                        nix::sys::stat::SFlag::S_IFCHR,
                        nix::sys::stat::Mode::empty(),
                        0,
                    )
                    .unwrap_or_else(|e| panic!("mknod {}: {e}", p.display()));
                }
            }
        }
    }
    for l in ["upper", "lower0", "lower1", "work", "mnt"] {
        std::fs::create_dir_all(root.join(l)).unwrap_or_else(|e| panic!("{e}"));
    }
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn set_of(root: &Path) -> LayerSet {
    LayerSet {
        lowers: vec![root.join("lower0"), root.join("lower1")],
        upper: Some(root.join("upper")),
        ns: Some(XattrNs::Trusted),
        follow_redirects: true,
    }
}

/// Every relative path named in any layer (and their parents), plus a missing one in each
/// directory.
fn candidate_paths(tree: Tree) -> BTreeSet<PathBuf> {
    let mut v = BTreeSet::new();
    v.insert(PathBuf::from("nothing"));
    for (_, rel, _) in tree {
        let mut p = PathBuf::from(rel);
        v.insert(p.join("missing"));
        loop {
            v.insert(p.clone());
            if !p.pop() || p.as_os_str().is_empty() {
                break;
            }
        }
    }
    v
}

fn kind_of(md: &std::fs::Metadata) -> &'static str {
    let ft = md.file_type();
    if ft.is_dir() {
        "dir"
    } else if ft.is_symlink() {
        "symlink"
    } else if ft.is_file() {
        "file"
    } else if ft.is_char_device() {
        "chardev"
    } else {
        "other"
    }
}

/// explain's answer for each candidate path against what `mnt` shows.
fn compare_with_mount(name: &str, set: &LayerSet, tree: Tree, mnt: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    for rel in candidate_paths(tree) {
        let e = set
            .explain(&Path::new("/").join(&rel))
            .unwrap_or_else(|e| panic!("explain {}: {e}", rel.display()));
        let real = std::fs::symlink_metadata(mnt.join(&rel));
        let want = real.as_ref().ok().map(kind_of);
        if e.shown_kind() != want {
            bad.push(format!(
                "{name}: /{}: explain shows {:?}, the mount {:?}\n{}",
                rel.display(),
                e.shown_kind(),
                want,
                e.render()
            ));
            continue;
        }
        if let (Ok(md), Some((_, unionfs::explain::Entry::NonDir { size, .. }))) = (&real, &e.shown)
        {
            if md.size() != *size {
                bad.push(format!(
                    "{name}: /{}: size {} against {}",
                    rel.display(),
                    size,
                    md.size()
                ));
            }
        }
        if want == Some("dir") {
            let (_, rows) = set
                .list(&Path::new("/").join(&rel))
                .unwrap_or_else(|e| panic!("{e}"));
            let listed: BTreeSet<String> = rows
                .iter()
                .filter(|r| r.shown.is_some())
                .map(|r| r.path.rsplit('/').next().unwrap_or_default().to_string())
                .collect();
            let seen: BTreeSet<String> = std::fs::read_dir(mnt.join(&rel))
                .unwrap_or_else(|e| panic!("{e}"))
                .map(|d| {
                    d.map(|d| d.file_name().to_string_lossy().into_owned())
                        .unwrap_or_default()
                })
                .collect();
            if listed != seen {
                bad.push(format!(
                    "{name}: /{}: explain lists {listed:?}, the mount {seen:?}",
                    rel.display()
                ));
            }
        }
    }
    bad
}

#[test]
fn explain_agrees_with_kernel_overlay() {
    if !require_root(
        "explain_agrees_with_kernel_overlay",
        "needs root (mounts the kernel's overlay)",
    ) {
        return;
    }
    let mut bad = Vec::new();
    for (name, tree) in TREES {
        let s = Scratch::new(&format!("teach-k-{name}"));
        build(&s.0, tree, false);
        let set = set_of(&s.0);
        let lower = format!(
            "{}:{}",
            s.path("lower0").display(),
            s.path("lower1").display()
        );
        let _m = mount_kernel(
            &lower,
            &s.path("upper"),
            &s.path("work"),
            &s.path("mnt"),
            "",
        );
        bad.extend(compare_with_mount(name, &set, tree, &s.path("mnt")));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The kernel does not read the OCI/AUFS markers; unionfs honours them in lower layers, as
/// `explain` does.
#[test]
fn explain_agrees_with_unionfs_on_aufs_markers() {
    if !require_root(
        "explain_agrees_with_unionfs_on_aufs_markers",
        "needs root (mounts)",
    ) {
        return;
    }
    let mut bad = Vec::new();
    for (name, tree) in TREES {
        let s = Scratch::new(&format!("teach-a-{name}"));
        build(&s.0, tree, true);
        let set = set_of(&s.0);
        let lower = format!(
            "{}:{}",
            s.path("lower0").display(),
            s.path("lower1").display()
        );
        let _m = mount_unionfs(
            &lower,
            &s.path("upper"),
            &s.path("work"),
            &s.path("mnt"),
            "",
        );
        bad.extend(compare_with_mount(name, &set, tree, &s.path("mnt")));
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// path -> (kind, mode, size, content of a file or target of a link).
fn walk(root: &Path) -> BTreeMap<String, String> {
    fn go(root: &Path, rel: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
            return;
        };
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            let p = root.join(&r);
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let body = if md.is_file() {
                String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned()
            } else if md.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let kind = kind_of(&md);
            let size = if md.is_dir() { 0 } else { md.size() };
            out.insert(
                format!("/{}", r.display()),
                format!(
                    "{kind} {:o} {size} {body}",
                    md.permissions().mode() & 0o7777
                ),
            );
            if md.is_dir() {
                go(root, &r, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    go(root, Path::new(""), &mut out);
    out
}

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

#[test]
fn diff_agrees_with_kernel_walk() {
    if !require_root(
        "diff_agrees_with_kernel_walk",
        "needs root (mounts the kernel's overlay)",
    ) {
        return;
    }
    for (name, tree) in TREES {
        let s = Scratch::new(&format!("teach-d-{name}"));
        build(&s.0, tree, false);
        std::fs::create_dir_all(s.path("below")).unwrap_or_else(|e| panic!("{e}"));
        let lower = format!(
            "{}:{}",
            s.path("lower0").display(),
            s.path("lower1").display()
        );
        // The lowers alone, read-only.
        nix::mount::mount(
            Some("overlay"),
            &s.path("below"),
            Some("overlay"),
            nix::mount::MsFlags::MS_RDONLY,
            Some(format!("lowerdir={lower}").as_str()),
        )
        .unwrap_or_else(|e| panic!("mount lowers: {e}"));
        let _below = Mounted(s.path("below"));
        let m = s.path("mnt");
        let _m = mount_kernel(&lower, &s.path("upper"), &s.path("work"), &m, "");
        // Changes through the union: writes, deletes, new names, metadata.
        let script = "set -e; cd \"$1\"; \
            for f in a/f a/h b/x d/x d/z e/k y/up x; do [ -f $f ] && echo more >> $f; done; \
            for f in a/new d/w b/x c/d/e; do [ -e $f ] && rm -f $f; done; \
            [ -d c ] && rm -rf c; mkdir -p fresh/sub; echo n > fresh/sub/file; \
            [ -d a ] && touch a/created; [ -f b ] && chmod 600 b; true";
        run_ok(Command::new("sh").args(["-c", script, "sh"]).arg(&m));
        check_diff(name, &s, &m);
    }
}

/// `diff` of the scratch's upper against its lowers, held to a walk of the union mounted
/// at `m` and of the lowers alone mounted at `below`.
fn check_diff(name: &str, s: &Scratch, m: &Path) {
    let merged = walk(m);
    let below = walk(&s.path("below"));
    let changes = unionfs::diff::diff(
        &s.path("upper"),
        &[s.path("lower0"), s.path("lower1")],
        Some(XattrNs::Trusted),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let of = |c: char| -> BTreeSet<String> {
        changes
            .iter()
            .filter(|(k, _)| k.letter() == c)
            .map(|(_, p)| p.clone())
            .collect()
    };
    let (added, changed, deleted) = (of('A'), of('C'), of('D'));
    let want_added: BTreeSet<String> = merged
        .keys()
        .filter(|p| !below.contains_key(*p))
        .cloned()
        .collect();
    assert_eq!(added, want_added, "{name}: A lines against the walk");
    for p in &changed {
        assert!(
            merged.contains_key(p) && below.contains_key(p),
            "{name}: C {p} is not in both views"
        );
    }
    for (p, v) in &merged {
        if below.get(p).is_some_and(|b| b != v) {
            assert!(
                changed.contains(p),
                "{name}: {p} differs ({} -> {v}) but is not C",
                below[p]
            );
        }
    }
    for p in &deleted {
        assert!(
            below.contains_key(p) && !merged.contains_key(p),
            "{name}: D {p}"
        );
    }
    // A name gone from a directory both views show is D, unless an opaque upper
    // directory hid it (docker diff does not list those either).
    for p in below.keys().filter(|p| !merged.contains_key(*p)) {
        let dir = parent(p);
        let in_both = dir == "/"
            || (merged.get(dir).is_some_and(|v| v.starts_with("dir")) && below.contains_key(dir));
        let opaque = Command::new("getfattr")
            .args([
                "--absolute-names",
                "--only-values",
                "-n",
                "trusted.overlay.opaque",
            ])
            .arg(s.path("upper").join(dir.trim_start_matches('/')))
            .output()
            .is_ok_and(|o| o.stdout == b"y");
        if in_both && !opaque {
            assert!(
                deleted.contains(p),
                "{name}: {p} is gone but not D: {changes:?}"
            );
        }
    }
}

fn normalize(s: &str) -> String {
    s.lines()
        .map(|l| {
            l.split(' ')
                .map(|f| if f.starts_with("us=") { "us=N" } else { f })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn trace_names_each_event_and_its_cause() {
    if !require_root(
        "trace_names_each_event_and_its_cause",
        "needs root (mounts, chown, xattrs)",
    ) {
        return;
    }
    let s = Scratch::new("teach-trace");
    let files = ["w", "t", "m", "m2", "o", "u", "x", "l", "r", "gone"];
    for f in files {
        std::fs::create_dir_all(s.path("lower0/d")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(s.path(&format!("lower0/d/{f}")), "12345").unwrap_or_else(|e| panic!("{e}"));
    }
    // Large enough to be copied up on a worker thread (`offload`): the cause goes along.
    std::fs::write(s.path("lower0/d/big"), vec![7u8; 2 << 20]).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(s.path("lower0/ld/sub")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(s.path("lower0/e")).unwrap_or_else(|e| panic!("{e}"));
    s.mkdirs(&["upper", "work", "mnt"]);
    let log = s.path("trace.log");
    let _m = mount_unionfs(
        &s.path("lower0").display().to_string(),
        &s.path("upper"),
        &s.path("work"),
        &s.path("mnt"),
        &format!("trace={}", log.display()),
    );
    let m = s.path("mnt");
    // A script starting with '!' is a system call made here: `!truncate` and `!rename-dir`.
    let step = |what: &str, script: &str, want: &str| {
        std::fs::write(&log, "").unwrap_or_else(|e| panic!("{e}"));
        match script {
            "!truncate" => {
                nix::unistd::truncate(&m.join("d/t"), 2).unwrap_or_else(|e| panic!("truncate: {e}"))
            }
            "!rename-dir" => {
                let e = std::fs::rename(m.join("ld"), m.join("ld2"));
                assert_eq!(e.map_err(|e| e.raw_os_error()), Err(Some(libc::EXDEV)));
            }
            _ => {
                run_ok(
                    Command::new("sh")
                        .args(["-c", &format!("cd \"$1\" && {script}"), "sh"])
                        .arg(&m),
                );
            }
        }
        let got = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(
            normalize(got.trim_end()),
            normalize(want),
            "{what}: `{script}`"
        );
    };
    step(
        "open for writing",
        "echo x >> d/w",
        "event=copy-up path=/d type=dir from=lower0 bytes=0 us=1 cause=parent\n\
         event=copy-up path=/d/w type=file from=lower0 bytes=5 us=1 cause=open-write",
    );
    step(
        "open for writing, a large file",
        "echo x >> d/big",
        "event=copy-up path=/d/big type=file from=lower0 bytes=2097152 us=1 cause=open-write",
    );
    step(
        "truncate(2)",
        "!truncate",
        "event=copy-up path=/d/t type=file from=lower0 bytes=5 us=1 cause=truncate",
    );
    // The kernel's overlay copies no data here; unionfs does not take FUSE_ATOMIC_O_TRUNC
    // (it races with appends, issue 14), so OPEN does not say O_TRUNC: the data is copied
    // with the open for writing, and the SETATTR that follows truncates the copy.
    step(
        "open with O_TRUNC",
        ": > d/m2",
        "event=copy-up path=/d/m2 type=file from=lower0 bytes=5 us=1 cause=open-write",
    );
    step(
        "chmod",
        "chmod 600 d/m",
        "event=copy-up path=/d/m type=file from=lower0 bytes=5 us=1 cause=chmod",
    );
    step(
        "chown",
        "chown 1:1 d/o",
        "event=copy-up path=/d/o type=file from=lower0 bytes=5 us=1 cause=chown",
    );
    step(
        "utimes",
        "touch -h -d @0 d/u",
        "event=copy-up path=/d/u type=file from=lower0 bytes=5 us=1 cause=utimes",
    );
    step(
        "setxattr",
        "setfattr -n user.k -v v d/x",
        "event=copy-up path=/d/x type=file from=lower0 bytes=5 us=1 cause=setxattr",
    );
    step(
        "link",
        "ln d/l d/l2",
        "event=copy-up path=/d/l type=file from=lower0 bytes=5 us=1 cause=link",
    );
    step(
        "rename of a lower file",
        "mv d/r d/r2",
        "event=copy-up path=/d/r type=file from=lower0 bytes=5 us=1 cause=rename\n\
         event=whiteout path=/d/r cause=rename",
    );
    step(
        "unlink",
        "rm d/gone",
        "event=whiteout path=/d/gone cause=unlink",
    );
    step(
        "create in a lower directory",
        "echo n > e/new",
        "event=copy-up path=/e type=dir from=lower0 bytes=0 us=1 cause=create-in-lower-dir",
    );
    step(
        "mkdir over a whiteout",
        "mkdir d/gone",
        "event=whiteout-removed path=/d/gone cause=create\nevent=opaque path=/d/gone cause=mkdir-over-whiteout",
    );
    step(
        "directory rename",
        "!rename-dir",
        "event=exdev path=/ld to=/ld2 reason=dir-with-lower-content",
    );
    step(
        "rmdir of a lower directory",
        "rmdir ld/sub",
        "event=copy-up path=/ld type=dir from=lower0 bytes=0 us=1 cause=remove-in-lower-dir\n\
         event=whiteout path=/ld/sub cause=rmdir",
    );
}

#[test]
fn trace_level_lookup_names_the_layer() {
    if !require_root("trace_level_lookup_names_the_layer", "needs root (mounts)") {
        return;
    }
    let s = Scratch::new("teach-lookup");
    s.mkdirs(&["l0/etc", "l1/etc", "mnt"]);
    std::fs::write(s.path("l1/etc/issue"), "i").unwrap_or_else(|e| panic!("{e}"));
    let log = s.path("lookups.log");
    let out = Command::new(bin())
        .arg("-o")
        .arg(format!(
            "lowerdir={}:{},trace={},trace_level=lookup",
            s.path("l0").display(),
            s.path("l1").display(),
            log.display()
        ))
        .arg(s.path("mnt"))
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _m = Mounted(s.path("mnt"));
    let _ = std::fs::read(s.path("mnt/etc/issue"));
    let _ = std::fs::symlink_metadata(s.path("mnt/etc/none"));
    let got = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        got,
        "event=lookup path=/etc shown=lower0 type=dir layers=lower0,lower1\n\
         event=lookup path=/etc/issue shown=lower1 type=file layers=lower1\n\
         event=lookup path=/etc/none shown=none\n"
    );
}

fn unionfs_cmd(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn explain_finds_the_layers_of_live_mounts() {
    if !require_root(
        "explain_finds_the_layers_of_live_mounts",
        "needs root (mounts)",
    ) {
        return;
    }
    let s = Scratch::new("teach-live");
    build(&s.0, TREES[0].1, false);
    s.mkdirs(&["mnt2", "work2", "upper2"]);
    let lower = format!(
        "{}:{}",
        s.path("lower0").display(),
        s.path("lower1").display()
    );
    let _k = mount_kernel(
        &lower,
        &s.path("upper"),
        &s.path("work"),
        &s.path("mnt"),
        "",
    );
    let _u = mount_unionfs(
        &lower,
        &s.path("upper2"),
        &s.path("work2"),
        &s.path("mnt2"),
        "",
    );
    for mnt in ["mnt", "mnt2"] {
        let out = unionfs_cmd(&["explain", &s.path(mnt).join("a/f").display().to_string()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{mnt}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.starts_with("/a/f\n"), "{text}");
        assert!(
            text.contains("because non-directory in lower0 hides lower1"),
            "{mnt}: {text}"
        );
        // A name a whiteout hides is explained too.
        let out = unionfs_cmd(&["explain", &s.path(mnt).join("a/g").display().to_string()]);
        let text = String::from_utf8_lossy(&out.stdout);
        if mnt == "mnt" {
            assert!(
                text.contains("because whiteout in upper hides lower0, lower1"),
                "{text}"
            );
        } else {
            // upper2 is empty: lower1's g shows.
            assert!(text.contains("shows   file, 2 bytes from lower1"), "{text}");
        }
    }
    let out = unionfs_cmd(&["diff", &s.path("mnt").display().to_string()]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "C /a\nD /a/g\nA /a/new\nD /c\nC /s\n"
    );
    let out = unionfs_cmd(&["explain", "/proc/self"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not on a unionfs or overlay mount"));
}

#[test]
fn svg_draws_columns_rows_and_marks() {
    let s = Scratch::new("teach-svg");
    // No xattrs needed: AUFS markers in the lower, a char 0/0 whiteout needs root.
    let tree: Tree = &[
        ("lower1", "dir/a", N::File("a1")),
        ("lower1", "dir/b", N::File("b1")),
        ("lower1", "dir/sub/x", N::File("x")),
        ("lower0", "dir/sub", N::Opaque),
        ("lower0", "dir/c", N::Whiteout),
        ("lower1", "dir/c", N::File("c1")),
        ("upper", "dir/a", N::File("a, changed")),
    ];
    build(&s.0, tree, true);
    let opts = format!(
        "lowerdir={}:{},upperdir={}",
        s.path("lower0").display(),
        s.path("lower1").display(),
        s.path("upper").display()
    );
    let out = unionfs_cmd(&["explain", "-o", &opts, "--svg", "/dir"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    let columns: Vec<&str> = svg
        .match_indices("class=\"column\" data-layer=\"")
        .map(|(i, _)| {
            let rest = &svg[i + 27..];
            &rest[..rest.find('"').unwrap_or(0)]
        })
        .collect();
    assert_eq!(columns, ["lower1", "lower0", "upper", "merged"]);
    let rows: Vec<&str> = svg
        .match_indices("class=\"row\" data-name=\"")
        .map(|(i, _)| {
            let rest = &svg[i + 23..];
            &rest[..rest.find('"').unwrap_or(0)]
        })
        .collect();
    assert_eq!(rows, ["a", "b", "c", "sub"]);
    for mark in [
        r#"data-layer="lower0" data-mark="whiteout""#,
        r#"data-layer="lower0" data-mark="opaque""#,
        r#"data-layer="upper" data-mark="file""#,
        r#"data-layer="merged" data-mark="shown" data-from="upper""#,
        r#"data-layer="merged" data-mark="absent""#,
        r#"data-layer="merged" data-mark="shown" data-from="lower0""#,
        r#"class="link" data-why="same-name""#,
        r#"class="strike""#,
        r#"class="opaque-bar""#,
        r#"data-layer="lower1" data-mark="dir" data-hidden="yes""#,
    ] {
        assert!(svg.contains(mark), "no {mark} in\n{svg}");
    }
    // A file is not a directory to draw.
    let out = unionfs_cmd(&["explain", "-o", &opts, "--svg", "/dir/a"]);
    assert!(!out.status.success());
}

#[test]
fn bad_input_gets_one_line() {
    for (args, needle) in [
        (&["explain"][..], "unionfs explain:"),
        (
            &["explain", "-o", "upperdir=/tmp", "/x"][..],
            "missing option lowerdir",
        ),
        (
            &["explain", "-o", "lowerdir=/nonexistent-teach", "/x"][..],
            "is not a directory",
        ),
        (
            &["explain", "-o", "lowerdir=/tmp", "/../etc"][..],
            "'..' is not allowed",
        ),
        (
            &["diff"][..],
            "give -o lowerdir=...,upperdir=... or a MOUNTPOINT",
        ),
        (&["diff", "-o", "lowerdir=/tmp"][..], "no upperdir"),
        (
            &["-o", "lowerdir=/tmp,trace_level=lookup", "/mnt"][..],
            "trace_level given without trace",
        ),
        (
            &["-o", "lowerdir=/tmp,trace,trace_level=all", "/mnt"][..],
            "invalid value 'all' for trace_level",
        ),
    ] {
        let out = unionfs_cmd(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = unionfs_cmd(&["explain", "--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("unionfs explain"));
    let out = unionfs_cmd(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("trace[=FILE]")
            && help.contains("unionfs explain")
            && help.contains("trace_level=events|lookup")
    );
}

#[test]
fn explain_ids_are_named_as_in_the_trace() {
    assert_eq!(LayerId::Lower(0).name(), "lower0");
    assert_eq!(LayerId::Upper.name(), "upper");
}

/// `-o trace` without FILE writes to the daemon's stderr, which stays open with `-f`.
#[test]
fn trace_without_file_goes_to_stderr_in_the_foreground() {
    if !require_root(
        "trace_without_file_goes_to_stderr_in_the_foreground",
        "needs root (mounts)",
    ) {
        return;
    }
    let s = Scratch::new("teach-stderr");
    s.mkdirs(&["lower/d", "upper", "work", "mnt"]);
    std::fs::write(s.path("lower/d/f"), "abc").unwrap_or_else(|e| panic!("{e}"));
    let child = Command::new(bin())
        .arg("-f")
        .arg("-o")
        .arg(format!(
            "{},trace",
            union_opts(
                &s.path("lower").display().to_string(),
                &s.path("upper"),
                &s.path("work"),
                ""
            )
        ))
        .arg(s.path("mnt"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut m = Mounted(s.path("mnt"));
    let up = wait_until(std::time::Duration::from_secs(10), || {
        mount_entry(&s.path("mnt")).is_some()
    });
    assert!(up, "the foreground daemon did not mount");
    std::fs::remove_file(s.path("mnt/d/f")).unwrap_or_else(|e| panic!("{e}"));
    m.unmount();
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("event=copy-up path=/d type=dir from=lower0 bytes=0 us=")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l == "event=whiteout path=/d/f cause=unlink"),
        "{err}"
    );
}

/// Every relative path in a tree (directories entered, symlinks not followed).
fn paths_in(root: &Path) -> BTreeSet<PathBuf> {
    fn go(root: &Path, rel: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(root.join(rel)) else {
            return;
        };
        for e in rd.flatten() {
            let r = rel.join(e.file_name());
            out.insert(r.clone());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                go(root, &r, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    go(root, Path::new(""), &mut out);
    out
}

/// Directories renamed by a kernel overlay with `redirect_dir=on` carry `redirect` xattrs
/// (relative for a rename in place, absolute for a move to another directory); `explain`
/// follows them as the kernel's lookup does on the next mount.
#[test]
fn explain_follows_redirects_as_the_kernel() {
    if !require_root(
        "explain_follows_redirects_as_the_kernel",
        "needs root (mounts the kernel's overlay)",
    ) {
        return;
    }
    let s = Scratch::new("teach-redirect");
    let tree: Tree = &[
        ("lower1", "d/one", N::File("1")),
        ("lower1", "d/sub/deep", N::File("deep")),
        ("lower0", "d/two", N::File("22")),
        ("lower1", "a/x/in-x", N::File("x")),
        ("lower0", "b/keep", N::File("k")),
    ];
    build(&s.0, tree, false);
    let lower = format!(
        "{}:{}",
        s.path("lower0").display(),
        s.path("lower1").display()
    );
    {
        let _m = mount_kernel(
            &lower,
            &s.path("upper"),
            &s.path("work"),
            &s.path("mnt"),
            "redirect_dir=on",
        );
        let m = s.path("mnt");
        std::fs::rename(m.join("d"), m.join("renamed")).unwrap_or_else(|e| panic!("rename d: {e}"));
        std::fs::rename(m.join("a/x"), m.join("b/moved"))
            .unwrap_or_else(|e| panic!("rename a/x: {e}"));
        std::fs::write(m.join("renamed/three"), "333").unwrap_or_else(|e| panic!("{e}"));
    }
    let redirect = |p: &str| {
        run_ok(
            Command::new("getfattr")
                .args([
                    "--absolute-names",
                    "--only-values",
                    "-n",
                    "trusted.overlay.redirect",
                ])
                .arg(s.path("upper").join(p)),
        )
    };
    assert_eq!(redirect("renamed"), "d");
    assert_eq!(redirect("b/moved"), "/a/x");
    let _m = mount_kernel(
        &lower,
        &s.path("upper"),
        &s.path("work"),
        &s.path("mnt"),
        "",
    );
    let set = set_of(&s.0);
    let mut paths = paths_in(&s.path("mnt"));
    for l in ["upper", "lower0", "lower1"] {
        paths.extend(paths_in(&s.path(l)));
    }
    let mut bad = Vec::new();
    for rel in &paths {
        let e = set
            .explain(&Path::new("/").join(rel))
            .unwrap_or_else(|e| panic!("{e}"));
        let want = std::fs::symlink_metadata(s.path("mnt").join(rel))
            .ok()
            .map(|m| kind_of(&m));
        if e.shown_kind() != want {
            bad.push(format!(
                "/{}: explain {:?}, kernel {want:?}\n{}",
                rel.display(),
                e.shown_kind(),
                e.render()
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    let e = set
        .explain(Path::new("/renamed"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        e.merged,
        [LayerId::Upper, LayerId::Lower(0), LayerId::Lower(1)]
    );
    assert!(
        e.rule
            .ends_with("the redirect in upper sends the layers below to d"),
        "{}",
        e.rule
    );
    assert!(e.render().contains("lower0  dir (at /d)"), "{}", e.render());
    let e = set
        .explain(Path::new("/b/moved/in-x"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.shown.map(|s| s.0), Some(LayerId::Lower(1)));
}

/// With `redirect_dir=on` a merged directory moves (a redirect, no EXDEV), and with
/// `metacopy=on` a metadata change copies no data until a write needs it.
#[test]
fn trace_redirect_and_metacopy() {
    if !require_root("trace_redirect_and_metacopy", "needs root (mounts)") {
        return;
    }
    let s = Scratch::new("teach-redirect-trace");
    s.mkdirs(&["lower/ld/sub", "lower/d", "upper", "work", "mnt"]);
    std::fs::write(s.path("lower/d/f"), "12345").unwrap_or_else(|e| panic!("{e}"));
    let log = s.path("trace.log");
    let _m = mount_unionfs(
        &s.path("lower").display().to_string(),
        &s.path("upper"),
        &s.path("work"),
        &s.path("mnt"),
        &format!("redirect_dir=on,metacopy=on,trace={}", log.display()),
    );
    let m = s.path("mnt");
    std::fs::set_permissions(m.join("d/f"), std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(m.join("d/f"))
        .unwrap_or_else(|e| panic!("{e}"));
    std::io::Write::write_all(&mut f, b"x").unwrap_or_else(|e| panic!("{e}"));
    drop(f);
    std::fs::rename(m.join("ld"), m.join("ld2")).unwrap_or_else(|e| panic!("rename: {e}"));
    std::fs::rename(m.join("ld2/sub"), m.join("sub2")).unwrap_or_else(|e| panic!("rename: {e}"));
    let got = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        normalize(got.trim_end()),
        normalize(
            "event=copy-up path=/d type=dir from=lower0 bytes=0 us=1 cause=parent\n\
             event=copy-up path=/d/f type=file from=lower0 bytes=0 us=1 cause=chmod metacopy=yes\n\
             event=copy-up-data path=/d/f bytes=5 us=1 cause=open-write\n\
             event=copy-up path=/ld type=dir from=lower0 bytes=0 us=1 cause=rename\n\
             event=redirect path=/ld redirect=ld\n\
             event=whiteout path=/ld cause=rename\n\
             event=copy-up path=/ld2/sub type=dir from=lower0 bytes=0 us=1 cause=rename\n\
             event=redirect path=/ld2/sub redirect=/ld/sub\n\
             event=whiteout path=/ld2/sub cause=rename"
        )
    );
    // explain reads the redirects it left.
    let set = LayerSet {
        lowers: vec![s.path("lower")],
        upper: Some(s.path("upper")),
        ns: Some(XattrNs::Trusted),
        follow_redirects: true,
    };
    let e = set
        .explain(Path::new("/sub2"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        e.merged,
        [LayerId::Upper, LayerId::Lower(0)],
        "{}",
        e.render()
    );
    assert!(
        e.render().contains("lower0  dir (at /ld/sub)"),
        "{}",
        e.render()
    );
}
