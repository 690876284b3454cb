//! Nested unions (overlayfs.rst, "Nesting overlayfs mounts"): a union used as a lower
//! layer of another keeps the outer union's markers. What a user of the inner union sets
//! as `trusted.overlay.X` is stored escaped (`trusted.overlay.overlay.X`) and shown
//! unescaped, so the outer union reads it as its own marker: here an opaque directory.
//!
//! unionfs over unionfs and the kernel's overlay over unionfs run the same steps as the
//! kernel's overlay over itself, the reference, and must match it: the inner upper layer,
//! what the outer union shows, and the outer upper layer (origin records there as present
//! only: they depend on the kind of inner union). The outer union's origin records are
//! held in full to the kernel's overlay over the same kind of inner union: over a kernel
//! overlay (no file handles without `nfs_export`) the kernel's empty record.

use std::path::Path;

use difftests::fixture::Layout;
use difftests::scenario::{require_root, run_script};
use difftests::snapshot::{diff, walk, walk_ctx, Snapshot, WalkCtx, WalkKind};
use difftests::{Ops, Target, Tree};

struct Seen {
    inner_log: Vec<String>,
    outer_log: Vec<String>,
    inner_upper: Snapshot,
    outer_merged: Snapshot,
    outer_upper: Snapshot,
}

/// What the inner union's user writes: a directory the outer union must see as opaque,
/// and an overlay xattr of the user's own on a file.
fn inner_script(o: &mut Ops) {
    o.mkdir("x", 0o755);
    o.write("x/kept", "kept\n");
    o.setxattr("x", "trusted.overlay.opaque", "y");
    o.want("ok");
    o.setxattr("x/kept", "trusted.overlay.note", "mine");
    o.listxattr("x");
    o.getxattr("x", "trusted.overlay.opaque");
    o.want("ok \"y\"");
    o.listxattr("x/kept");
    o.listxattr("pre");
}

fn outer_script(o: &mut Ops) {
    // `x` and `pre` are opaque to the outer union: the bottom layer's entries are hidden.
    o.readdir("x");
    o.want("ok [kept]");
    o.readdir("pre");
    o.want("ok [top]");
    o.readdir("open");
    o.want("ok [a,b]");
    o.listxattr("x");
    o.getxattr("x", "trusted.overlay.opaque");
    o.listxattr("x/kept");
    o.append("x/kept", "outer\n");
    o.read("x/kept");
    o.write("x/new", "new\n");
    // (No readdir here: after the copy-up the kernel's outer overlay over an overlay
    // reports a d_ino for `kept` that is not its st_ino; the merged walk lists `x`.)
}

/// The outer union's bottom layer: what the inner one's opaque directories hide.
fn bottom() -> Tree {
    Tree::new()
        .file("x/hidden", 0o644, "hidden\n")
        .file("pre/gone", 0o644, "gone\n")
        .file("open/b", 0o644, "b\n")
}

/// The inner union's lower layer: an escaped marker written there directly.
fn inner_lower() -> Tree {
    Tree::new()
        .dir("pre", 0o755)
        .file("pre/top", 0o644, "top\n")
        .xattr("pre", "trusted.overlay.overlay.opaque", "y")
        .file("open/a", 0o644, "a\n")
}

fn run(inner: Target, outer: Target) -> Seen {
    let tag = format!("nested-{inner:?}-{outer:?}");
    let il = Layout::build(&format!("{tag}-in"), &[inner_lower()], None, true);
    let mut ig = il
        .mount(inner)
        .unwrap_or_else(|e| panic!("[{tag}] inner mount: {e}"));
    let inner_log = run_script(&il.mnt, inner == Target::Kernel, 0o022, &inner_script);
    let mut ol = Layout::build(&format!("{tag}-out"), &[Tree::new(), bottom()], None, true);
    ol.lowers[0] = il.mnt.clone();
    let (outer_log, outer_merged) = {
        let mut og = ol
            .mount(outer)
            .unwrap_or_else(|e| panic!("[{tag}] outer mount: {e}"));
        let log = run_script(&ol.mnt, outer == Target::Kernel, 0o022, &outer_script);
        let merged = walk(og.path(), WalkKind::Merged, &[]);
        og.unmount()
            .unwrap_or_else(|e| panic!("[{tag}] outer: {e}"));
        (log, merged)
    };
    ig.unmount()
        .unwrap_or_else(|e| panic!("[{tag}] inner: {e}"));
    // Origin records in full (header, length, uuid; the handle's bytes counted): they
    // depend on the lower's kind, so they are compared only between unions over the same
    // kind of inner union (`origins_follow_the_kernel_over_the_same_lower`).
    let upper = |l: &Layout| {
        walk_ctx(
            l.upper.as_deref().unwrap_or(Path::new("/")),
            WalkKind::Upper,
            &[],
            &WalkCtx {
                lower_uuids: Some(Vec::new()),
                ..WalkCtx::default()
            },
        )
    };
    Seen {
        inner_log,
        outer_log,
        inner_upper: upper(&il),
        outer_merged,
        outer_upper: upper(&ol),
    }
}

/// Origin records shown as present only, for unions over different kinds of inner union.
fn origins_present(s: &Snapshot) -> Snapshot {
    s.iter()
        .map(|e| {
            let mut line = e.line.clone();
            for prefix in ["trusted.overlay.origin=", "user.overlay.origin="] {
                if let Some(i) = line.find(prefix) {
                    let start = i + prefix.len();
                    let end = line[start..]
                        .find(['}', ','])
                        .map_or(line.len(), |n| start + n);
                    line.replace_range(start..end, "<present>");
                }
            }
            difftests::snapshot::Entry {
                path: e.path.clone(),
                line,
            }
        })
        .collect()
}

/// `a` and `b` over different kinds of inner union: origin records as present only.
fn compare(name: &str, a: &Seen, b: &Seen) {
    let strip = |s: &Seen| Seen {
        inner_log: s.inner_log.clone(),
        outer_log: s.outer_log.clone(),
        inner_upper: origins_present(&s.inner_upper),
        outer_merged: s.outer_merged.clone(),
        outer_upper: origins_present(&s.outer_upper),
    };
    compare_exactly(name, &strip(a), &strip(b));
}

fn compare_exactly(name: &str, a: &Seen, b: &Seen) {
    let mut r = String::new();
    if let Some(d) = difftests::scenario::log_diff(&a.inner_log, &b.inner_log) {
        r += &format!("inner logs differ:\n{d}");
    }
    if let Some(d) = difftests::scenario::log_diff(&a.outer_log, &b.outer_log) {
        r += &format!("outer logs differ:\n{d}");
    }
    for (what, x, y) in [
        ("inner upper", &a.inner_upper, &b.inner_upper),
        ("outer merged", &a.outer_merged, &b.outer_merged),
        ("outer upper", &a.outer_upper, &b.outer_upper),
    ] {
        if let Some(d) = diff(x, y, "reference", name, 20) {
            r += &format!("{what} differs:\n{d}");
        }
    }
    assert!(r.is_empty(), "{name} differs from its reference:\n{r}");
}

#[test]
fn nested_unions_keep_the_outer_markers() {
    if !require_root("nested_unions_keep_the_outer_markers") {
        return;
    }
    let reference = run(Target::Kernel, Target::Kernel);
    compare(
        "unionfs over unionfs",
        &reference,
        &run(Target::Unionfs, Target::Unionfs),
    );
    compare(
        "kernel overlay over unionfs",
        &reference,
        &run(Target::Unionfs, Target::Kernel),
    );
}

/// The outer union's origin records, held to the kernel's overlay over the same kind of
/// inner union: over a kernel overlay (which gives no file handles) an empty record, the
/// kernel's "copied up, origin unknown"; over unionfs (FUSE) a FUSE file handle.
#[test]
fn origins_follow_the_kernel_over_the_same_lower() {
    if !require_root("origins_follow_the_kernel_over_the_same_lower") {
        return;
    }
    compare_exactly(
        "unionfs over a kernel overlay",
        &run(Target::Kernel, Target::Kernel),
        &run(Target::Kernel, Target::Unionfs),
    );
    compare_exactly(
        "unionfs over unionfs (against the kernel's overlay over unionfs)",
        &run(Target::Unionfs, Target::Kernel),
        &run(Target::Unionfs, Target::Unionfs),
    );
}

/// The escaping itself, with `-o userxattr`: a user's `user.overlay.X` is stored as
/// `user.overlay.overlay.X` and shown as it was set; `trusted.overlay.*` is then no marker
/// and stays as it is. Against the kernel's overlay, also the upper layer.
#[test]
fn userxattr_escapes_the_users_overlay_xattrs() {
    difftests::Scenario::new("userxattr_escapes_the_users_overlay_xattrs")
        .lower(Tree::new().file("f", 0o644, "f\n").dir("d", 0o755).xattr(
            "d",
            "user.overlay.overlay.opaque",
            "y",
        ))
        .mount_opts("userxattr")
        .run(|o| {
            o.listxattr("d");
            o.getxattr("d", "user.overlay.opaque");
            o.want("ok \"y\"");
            o.setxattr("f", "user.overlay.opaque", "y");
            o.want("ok");
            o.setxattr("f", "user.overlay.mine", "v");
            o.setxattr("f", "trusted.overlay.other", "t");
            o.listxattr("f");
            o.getxattr("f", "user.overlay.mine");
            o.want("ok \"v\"");
            o.removexattr("f", "user.overlay.opaque");
            o.want("ok");
            o.listxattr("f");
            o.mkdir("n", 0o755);
            o.setxattr("n", "user.overlay.opaque", "y");
            o.readdir("n");
        });
}

/// Without `userxattr` (as root) the overlay's own names are `trusted.overlay.*`: a user's
/// `user.overlay.X` is an ordinary xattr, shown, set and removed as it is, not escaped,
/// and no marker (a lower `user.overlay.opaque` makes nothing opaque). Against the
/// kernel's overlay, also the upper layer (snapshots show `user.overlay.*` in this mode).
#[test]
fn trusted_mode_keeps_the_users_user_overlay_xattrs_ordinary() {
    difftests::Scenario::new("trusted_mode_keeps_the_users_user_overlay_xattrs_ordinary")
        .lower(
            Tree::new()
                .file("f", 0o644, "f\n")
                .xattr("f", "user.overlay.mine", "lower")
                .dir("d", 0o755)
                .xattr("d", "user.overlay.opaque", "y")
                .file("d/top", 0o644, "top\n"),
        )
        .lower(Tree::new().file("d/below", 0o644, "below\n"))
        .run(|o| {
            o.listxattr("f");
            o.want("ok [user.overlay.mine]");
            o.getxattr("f", "user.overlay.mine");
            o.want("ok \"lower\"");
            o.readdir("d");
            o.want("ok [below,top]");
            o.getxattr("d", "user.overlay.opaque");
            o.want("ok \"y\"");
            o.setxattr("f", "user.overlay.other", "v");
            o.want("ok");
            o.getxattr("f", "user.overlay.other");
            o.want("ok \"v\"");
            o.removexattr("f", "user.overlay.mine");
            o.want("ok");
            o.listxattr("f");
            o.want("ok [user.overlay.other]");
            o.mkdir("n", 0o755);
            o.setxattr("n", "user.overlay.opaque", "y");
            o.want("ok");
            o.listxattr("n");
            o.want("ok [user.overlay.opaque]");
        });
}
