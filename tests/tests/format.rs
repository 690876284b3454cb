//! On-disk format compatibility: (a) a script runs on the target under
//! test, which is unmounted; the kernel overlay is mounted over the same
//! lower+upper (fresh workdir) and must show the same merged tree.
//! (b) the reverse: kernel writes, the target reads back.

use difftests::{remount_check, target, Ops, Scenario, Target, Tree, RENAME_EXCHANGE};

fn lower() -> Tree {
    Tree::new()
        .file("f", 0o644, "lower f\n")
        .xattr("f", "user.color", "blue")
        .file("g", 0o600, "lower g\n")
        .hardlink("g2", "g")
        .dir("d", 0o755)
        .file("d/a", 0o644, "a")
        .file("d/b", 0o644, "b")
        .dir("d/sub", 0o750)
        .file("d/sub/x", 0o644, "x")
        .dir("gone", 0o755)
        .file("gone/y", 0o644, "y")
        .symlink("link", "f")
        .mtime("f", 1_000_000)
        .mtime("d/a", 1_000_000)
}

fn lower2() -> Tree {
    Tree::new()
        .file("d/c", 0o644, "c from l2")
        .file("d/a", 0o644, "a from l2 (hidden)")
        .file("only2", 0o644, "only in l2")
}

fn scenario(name: &str) -> Scenario {
    Scenario::new(name)
        .lower(lower())
        .lower(lower2())
        .mtime_of("f")
        .mtime_of("d/a")
}

/// Whiteouts, opaque dirs, copy-ups with xattrs, renames, specials.
fn namespace_script(o: &mut Ops) {
    o.unlink("d/a");
    o.unlink("only2");
    o.unlink("gone/y");
    o.rmdir("gone");
    o.mkdir("gone", 0o700); // opaque
    o.write("gone/new", "new in opaque dir");
    o.rename("d/b", "d/b2"); // whiteout + copy-up
    o.write("d/sub/new", "n");
    o.mkfifo("fifo", 0o640);
    o.symlink("d/c", "link2");
    o.mkdir("nd", 0o755);
    o.write("nd/z", "z");
}

/// Metadata copy-ups.
fn metadata_script(o: &mut Ops) {
    o.chmod("f", 0o600);
    o.chown("d/sub", 1000, 1000);
    o.setxattr("d/c", "user.k", "v");
    o.utimes("d/a", 5, 6);
    o.append("g", "more");
    o.truncate("link", 2);
    o.setxattr("f", "trusted.overlay.opaque", "y"); // escaped private name
}

/// Pre-populated upper with whiteouts and an opaque dir, then more ops.
fn prepopulated(name: &str) -> Scenario {
    scenario(name).upper(
        Tree::new()
            .whiteout("g2")
            .opaque("d/sub")
            .file("d/sub/u", 0o644, "u")
            .dir("d", 0o755),
    )
}

fn prepop_script(o: &mut Ops) {
    o.unlink("d/c");
    o.write("g2", "recreated");
    o.rename2("f", "g", RENAME_EXCHANGE);
}

// (a) target writes, kernel reads back
#[test]
fn unionfs_then_kernel_namespace() {
    remount_check(
        &scenario("fmt_a_namespace"),
        target(),
        Target::Kernel,
        namespace_script,
    );
}

#[test]
fn unionfs_then_kernel_metadata() {
    remount_check(
        &scenario("fmt_a_metadata"),
        target(),
        Target::Kernel,
        metadata_script,
    );
}

#[test]
fn unionfs_then_kernel_prepopulated_upper() {
    remount_check(
        &prepopulated("fmt_a_prepop"),
        target(),
        Target::Kernel,
        prepop_script,
    );
}

// (b) kernel writes, target reads back
#[test]
fn kernel_then_unionfs_namespace() {
    remount_check(
        &scenario("fmt_b_namespace"),
        Target::Kernel,
        target(),
        namespace_script,
    );
}

#[test]
fn kernel_then_unionfs_metadata() {
    remount_check(
        &scenario("fmt_b_metadata"),
        Target::Kernel,
        target(),
        metadata_script,
    );
}

#[test]
fn kernel_then_unionfs_prepopulated_upper() {
    remount_check(
        &prepopulated("fmt_b_prepop"),
        Target::Kernel,
        target(),
        prepop_script,
    );
}

/// Inode numbers of copied-up files, a merged directory and a new file, read on `t`,
/// then again after an unmount and a remount with `t` (a fresh workdir): `stat` must show
/// the same numbers, as the kernel's overlay does (its origin records carry them).
fn inos_across_remount(t: Target) -> (Vec<u64>, Vec<u64>) {
    use difftests::fixture::Layout;
    use std::os::unix::fs::MetadataExt;
    let mut layout = Layout::build(
        &format!("ino_remount_{t:?}"),
        &[lower(), lower2()],
        None,
        true,
    );
    let names = ["f", "d", "d/a", "d/c", "new"];
    let inos = |m: &std::path::Path| -> Vec<u64> {
        names
            .iter()
            .map(|n| {
                std::fs::symlink_metadata(m.join(n))
                    .unwrap_or_else(|e| panic!("lstat {n}: {e}"))
                    .ino()
            })
            .collect()
    };
    let before = {
        let mut g = layout
            .mount(t)
            .unwrap_or_else(|e| panic!("mount {t:?}: {e}"));
        for n in ["f", "d/a", "d/c"] {
            std::fs::OpenOptions::new()
                .append(true)
                .open(g.path().join(n))
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"+"))
                .unwrap_or_else(|e| panic!("append {n}: {e}"));
        }
        std::fs::write(g.path().join("new"), "new").unwrap_or_else(|e| panic!("{e}"));
        let v = inos(g.path());
        g.unmount().unwrap_or_else(|e| panic!("{e}"));
        v
    };
    layout.fresh_workdir();
    let mut g = layout
        .mount(t)
        .unwrap_or_else(|e| panic!("remount {t:?}: {e}"));
    let after = inos(g.path());
    g.unmount().unwrap_or_else(|e| panic!("{e}"));
    (before, after)
}

#[test]
fn copied_up_inode_numbers_survive_remount() {
    if !difftests::scenario::require_root("copied_up_inode_numbers_survive_remount") {
        return;
    }
    let (kb, ka) = inos_across_remount(Target::Kernel);
    assert_eq!(kb, ka, "the kernel's overlay keeps them (reference)");
    let (ub, ua) = inos_across_remount(target());
    assert_eq!(
        ub, ua,
        "st_ino of f, d, d/a, d/c, new before and after a remount"
    );
}
