//! `redirect_dir`: renaming directories that have lower content. Both sides are mounted
//! with `redirect_dir=on` (or the mode a scenario names); the harness compares the upper
//! directories with their `*.overlay.redirect` values, so unionfs must write the
//! kernel's redirects (relative within a directory, absolute across). The format checks
//! remount the same upper with the other implementation, both ways.

use difftests::{remount_check, target, Ops, Scenario, Target, Tree, RENAME_EXCHANGE};

fn lower1() -> Tree {
    Tree::new()
        .dir("d", 0o755)
        .file("d/a", 0o644, "a in l1\n")
        .file("d/b", 0o600, "b in l1\n")
        .file("d/sub/deep", 0o644, "deep\n")
        .file("d/sub/s2/x", 0o644, "x\n")
        .file("m/m1", 0o644, "m1\n")
        .dir("empty", 0o755)
        .file("f", 0o644, "f\n")
        .file("p/q/r/z", 0o644, "z\n")
}

fn lower2() -> Tree {
    Tree::new()
        .file("d/a", 0o644, "a in l2 (hidden)\n")
        .file("d/c", 0o644, "c in l2\n")
        .file("d/sub/l2only", 0o644, "l2only\n")
        .file("m/m2", 0o644, "m2\n")
        .file("only2/o", 0o644, "o\n")
}

fn sc(name: &str) -> Scenario {
    Scenario::new(name)
        .lower(lower1())
        .lower(lower2())
        .mount_opts("redirect_dir=on")
}

/// Reads every file of the tree under `d` and lists its directories.
fn read_tree(o: &mut Ops, d: &str) {
    o.readdir(d);
    for f in ["a", "b", "c", "sub/deep", "sub/s2/x", "sub/l2only"] {
        o.read(format!("{d}/{f}"));
    }
    o.readdir(format!("{d}/sub"));
    o.readdir(format!("{d}/sub/s2"));
}

#[test]
fn redirect_rename_lower_dir_and_back() {
    sc("redirect_rename_lower_dir_and_back").run(|o| {
        o.rename("empty", "empty2");
        o.want("ok");
        o.readdir("");
        o.rename("empty2", "empty");
        o.want("ok");
        o.readdir("empty");
        o.want("ok []");
        o.rename("only2", "o2");
        o.want("ok");
        o.read("o2/o");
        o.want("ok \"o\\n\"");
        o.stat("only2");
        o.want("ENOENT");
        o.readdir("");
    });
}

#[test]
fn redirect_rename_merged_dir_keeps_merging() {
    sc("redirect_rename_merged_dir_keeps_merging").run(|o| {
        o.write("d/new", "new\n");
        o.rename("d", "e");
        o.want("ok");
        read_tree(o, "e");
        o.read("e/new");
        o.stat("d");
        o.want("ENOENT");
        o.ino_as_layer("e", "l1", "d");
        o.want("ok same");
        o.ino_as_layer("e/sub/deep", "l1", "d/sub/deep");
        o.want("ok same");
        o.write("e/sub/deep", "changed\n");
        o.read("e/sub/deep");
        o.rename("e", "d");
        o.want("ok");
        read_tree(o, "d");
        o.readdir("");
    });
}

#[test]
fn redirect_into_other_merged_dir_and_back() {
    sc("redirect_into_other_merged_dir_and_back").run(|o| {
        o.rename("d", "m/d");
        o.want("ok");
        read_tree(o, "m/d");
        o.readdir("m");
        o.ino_as_layer("m/d", "l1", "d");
        o.want("ok same");
        o.rename("m/d", "m/d2");
        o.want("ok");
        o.rename("m/d2", "d");
        o.want("ok");
        read_tree(o, "d");
        o.rename("m", "d/sub/m");
        o.want("ok");
        o.readdir("d/sub/m");
        o.read("d/sub/m/m2");
        o.readdir("");
        o.readdir("d/sub");
    });
}

#[test]
fn redirect_nested_renames_make_absolute_paths() {
    sc("redirect_nested_renames_make_absolute_paths").run(|o| {
        // A relative redirect, then a move out of the directory: the absolute redirect
        // is built from the parents' redirects.
        o.rename("d/sub", "d/sub2");
        o.want("ok");
        o.rename("d", "e");
        o.want("ok");
        o.rename("e/sub2/s2", "s3");
        o.want("ok");
        o.read("s3/x");
        o.rename("e/sub2", "p/q/sub3");
        o.want("ok");
        o.read("p/q/sub3/deep");
        o.read("p/q/sub3/l2only");
        o.readdir("p/q/sub3");
        o.rename("p/q", "q2");
        o.want("ok");
        o.readdir("q2");
        o.read("q2/r/z");
        o.read("q2/sub3/deep");
        o.rename("q2/r", "r2");
        o.want("ok");
        o.read("r2/z");
        o.readdir("");
        o.readdir("e");
        o.readdir("p");
    });
}

#[test]
fn redirect_rename_over_whiteouts_and_empty_dirs() {
    sc("redirect_rename_over_whiteouts_and_empty_dirs").run(|o| {
        // Over the whiteout of a lower directory, of a lower file, onto an empty lower
        // directory, and back onto the whiteout it left.
        o.rmdir("empty");
        o.rename("d", "empty");
        o.want("ok");
        read_tree(o, "empty");
        o.unlink("f");
        o.rename("m", "f");
        o.want("ok");
        o.readdir("f");
        o.mkdir("em2", 0o755);
        o.rename("only2", "em2");
        o.want("ok");
        o.readdir("em2");
        o.rename("empty", "d");
        o.want("ok");
        read_tree(o, "d");
        o.rename("d", "only2");
        o.want("ok");
        o.readdir("");
    });
}

#[test]
fn redirect_exchange_merged_dirs() {
    sc("redirect_exchange_merged_dirs").run(|o| {
        o.rename2("d", "m", RENAME_EXCHANGE);
        o.want("ok");
        o.readdir("d");
        o.readdir("m");
        o.read("m/sub/deep");
        o.read("d/m2");
        o.rename2("m/sub", "only2", RENAME_EXCHANGE);
        o.want("ok");
        o.readdir("only2");
        o.readdir("m/sub");
        o.rename2("d", "p", RENAME_EXCHANGE);
        o.want("ok");
        o.readdir("p");
        o.readdir("d/q");
    });
}

#[test]
fn redirect_rm_rf_renamed_dir() {
    sc("redirect_rm_rf_renamed_dir").run(|o| {
        o.write("d/sub/new", "n");
        o.rename("d", "gone");
        o.want("ok");
        o.rmdir("gone");
        o.want("ENOTEMPTY");
        for f in [
            "a",
            "b",
            "c",
            "sub/deep",
            "sub/l2only",
            "sub/new",
            "sub/s2/x",
        ] {
            o.unlink(format!("gone/{f}"));
            o.want("ok");
        }
        o.rmdir("gone/sub/s2");
        o.rmdir("gone/sub");
        o.readdir("gone");
        o.want("ok []");
        o.rmdir("gone");
        o.want("ok");
        o.readdir("");
        // The old name is free: a new directory there is opaque.
        o.mkdir("d", 0o755);
        o.readdir("d");
        o.want("ok []");
        // A renamed directory whose new name a lower layer shows leaves a whiteout.
        o.rename("m", "empty");
        o.want("ok");
        o.unlink("empty/m1");
        o.unlink("empty/m2");
        o.rmdir("empty");
        o.want("ok");
        o.readdir("");
    });
}

#[test]
fn redirect_inode_numbers_follow_origin() {
    sc("redirect_inode_numbers_follow_origin").run(|o| {
        o.ino_stable("m", |o| {
            o.rename("m", "m2");
            o.rename("m2", "m");
        });
        o.want("ok same");
        o.rename("d", "m/dd");
        o.ino_as_layer("m/dd", "l1", "d");
        o.want("ok same");
        o.ino_as_layer("m/dd/c", "l2", "d/c");
        o.want("ok same");
        o.ino_as_layer("m/dd/sub", "l1", "d/sub");
        o.want("ok same");
        o.readdir("m");
        o.readdir("m/dd");
        o.readdir("m/dd/sub");
    });
}

/// An absolute redirect longer than the kernel's `redirect_max` (256) is not written:
/// the rename fails with EXDEV (so `mv` copies); one just short of it is.
#[test]
fn redirect_too_long_gives_exdev() {
    let (a, b) = ("a".repeat(100), "b".repeat(100));
    let long = format!("{a}/{b}/{}", "c".repeat(54));
    let fits = format!("{a}/{b}/{}", "d".repeat(53));
    Scenario::new("redirect_too_long_gives_exdev")
        .lower(Tree::new().file(format!("{long}/f"), 0o644, "f").file(
            format!("{fits}/f"),
            0o644,
            "f",
        ))
        .mount_opts("redirect_dir=on")
        .run(|o| {
            o.rename(&long, "long");
            o.want("EXDEV");
            o.rename(&fits, "fits");
            o.want("ok");
            o.read("fits/f");
        });
}

/// Without `on`, the kernel refuses such renames with EXDEV (so `mv` copies).
#[test]
fn redirect_follow_and_nofollow_refuse_renames() {
    for mode in ["follow", "nofollow"] {
        sc(&format!("redirect_{mode}_refuses_renames"))
            .mount_opts(&format!("redirect_dir={mode}"))
            .run(|o| {
                o.rename("d", "e");
                o.want("EXDEV");
                o.rename("m", "d/m");
                o.want("EXDEV");
                o.mkdir("n", 0o755);
                o.rename("n", "n2");
                o.want("ok");
            });
    }
}

/// An upper written by an earlier mount with redirects, followed with `on`, `follow` and
/// `off` (the kernel's `redirect_always_follow` being on). Not compared: `nofollow`,
/// where both fail the lookup with EPERM but the kernel still lists the name and
/// unionfs's listings (READDIRPLUS, each entry with its attributes) leave it out. The
/// names are looked up
/// before the root is listed: this upper has no origin records, and the kernel's listing
/// taken before its lookups records them gives other inode numbers than its `stat`.
#[test]
fn redirect_follow_modes_on_existing_redirects() {
    let upper = || {
        Tree::new()
            .whiteout("d")
            .dir("e", 0o755)
            .xattr("e", "trusted.overlay.redirect", "d")
            .dir("x", 0o755)
            .opaque("x")
            .dir("x/y", 0o755)
            .xattr("x/y", "trusted.overlay.redirect", "/m")
            // The kernel shows a lower directory once: its old name is whited out.
            .whiteout("m")
    };
    for mode in ["follow", "on", "off"] {
        sc(&format!("redirect_existing_{mode}"))
            .upper(upper())
            .mount_opts(&format!("redirect_dir={mode}"))
            .run(|o| {
                o.stat("e");
                o.stat("x/y");
                o.readdir("");
                o.readdir("e");
                o.read("e/sub/deep");
                o.readdir("x/y");
                o.read("x/y/m2");
            });
    }
}

// ---- random sequences live in random_ops.rs; format checks below -----------------

fn format_scenario(name: &str) -> Scenario {
    sc(name).mtime_of("d/a")
}

/// Renames of every kind; the upper it leaves is read back by the other implementation.
fn rename_script(o: &mut Ops) {
    o.write("d/new", "new\n");
    o.rename("d", "e");
    o.rename("e/sub", "e/sub2");
    o.rename("e/sub2/s2", "m/s3");
    o.rename("only2", "m/o2");
    o.rmdir("empty");
    o.rename("p", "empty");
    o.rename("empty/q", "q");
    o.rename2("e", "m", RENAME_EXCHANGE);
    o.unlink("m/a");
    o.mkdir("d", 0o700);
    // rm -rf of a moved directory.
    o.unlink("e/o2/o");
    o.rmdir("e/o2");
    o.rename("m/sub2", "gone");
    o.unlink("gone/deep");
    o.unlink("gone/l2only");
    o.rmdir("gone");
}

#[test]
fn redirect_unionfs_then_kernel() {
    remount_check(
        &format_scenario("fmt_a_redirect"),
        target(),
        Target::Kernel,
        rename_script,
    );
}

#[test]
fn redirect_kernel_then_unionfs() {
    remount_check(
        &format_scenario("fmt_b_redirect"),
        Target::Kernel,
        target(),
        rename_script,
    );
}

// ---- metacopy=on: metadata-only copy-up ------------------------------------------

fn meta(name: &str) -> Scenario {
    Scenario::new(name)
        .lower(lower1().file("big", 0o644, "0123456789".repeat(1000)))
        .lower(lower2())
        .mount_opts("metacopy=on")
}

#[test]
fn metacopy_metadata_changes_copy_no_data() {
    meta("metacopy_metadata_changes_copy_no_data")
        .mtime_of("f")
        .run(|o| {
            o.chmod("f", 0o600);
            o.chown("d/a", 1000, 1000);
            o.utimes("f", 100, 200);
            o.setxattr("d/c", "user.k", "v");
            o.setxattr("big", "user.k", "v");
            o.removexattr("big", "user.k");
            o.read("f");
            o.read("d/a");
            o.read("d/c");
            o.read("big");
            o.stat("big");
            o.ino_as_layer("f", "l1", "f");
            o.want("ok same");
            o.ino_as_layer("d/c", "l2", "d/c");
            o.want("ok same");
            o.readdir("d");
        });
}

#[test]
fn metacopy_data_copied_on_write_open_and_truncate() {
    meta("metacopy_data_copied_on_write_open_and_truncate").run(|o| {
        o.chmod("f", 0o600);
        o.chmod("big", 0o640);
        o.chmod("d/a", 0o640);
        let slot = o.open_keep("big", difftests::OFlag::O_RDONLY);
        o.append("f", "+more\n");
        o.read("f");
        o.truncate("big", 5000);
        o.fd_read(slot);
        o.close(slot);
        o.read("big");
        o.write_flags(
            "d/a",
            difftests::OFlag::O_WRONLY | difftests::OFlag::O_TRUNC,
            0o644,
            "new a",
        );
        o.read("d/a");
        o.ino_as_layer("big", "l1", "big");
        o.want("ok same");
    });
}

#[test]
fn metacopy_rename_and_link_write_redirects() {
    meta("metacopy_rename_and_link_write_redirects").run(|o| {
        // A lower file renamed or linked copies up metadata only, with a redirect to
        // its data (relative in the same directory, else absolute).
        o.rename("f", "g");
        o.want("ok");
        o.read("g");
        o.rename("d/c", "d/c2");
        o.read("d/c2");
        o.rename("d/c2", "m/c3");
        o.read("m/c3");
        o.link("big", "d/big2");
        o.want("ok");
        o.read("d/big2");
        o.same_ino("big", "d/big2");
        o.unlink("big");
        o.read("d/big2");
        o.rename("d", "e");
        o.read("e/a");
        o.append("m/c3", "+");
        o.read("m/c3");
        o.readdir("");
        o.readdir("m");
    });
}

#[test]
fn metacopy_lower_hard_links() {
    Scenario::new("metacopy_lower_hard_links")
        .lower(
            Tree::new()
                .file("h", 0o644, "hard\n")
                .hardlink("h2", "h")
                .hardlink("d/h4", "h")
                .file("d/x", 0o644, "x\n"),
        )
        .mount_opts("metacopy=on")
        .run(|o| {
            o.chmod("h", 0o600);
            o.read("h");
            o.read("h2");
            o.same_ino("h", "h2");
            o.rename("h2", "h3");
            o.read("h3");
            o.rename("d/h4", "h4");
            o.read("h4");
            o.append("h", "+");
            o.read("h");
            o.read("h3");
            o.readdir("");
        });
}

/// A lower layer that was an upper with metadata-only copies (one found by name, one by
/// its redirect): their metadata shows, their data is found below.
#[test]
fn metacopy_in_lower_layer_followed_to_data() {
    Scenario::new("metacopy_in_lower_layer_followed_to_data")
        .lower(
            Tree::new()
                .file("mf", 0o600, "\0\0\0\0\0\0\0")
                .xattr("mf", "trusted.overlay.metacopy", "")
                .file("dir/moved", 0o640, "\0\0\0\0\0")
                .xattr("dir/moved", "trusted.overlay.metacopy", "")
                .xattr("dir/moved", "trusted.overlay.redirect", "/data/orig"),
        )
        .lower(
            Tree::new()
                .file("mf", 0o644, "mf data")
                .file("data/orig", 0o644, "orig!"),
        )
        .mount_opts("metacopy=on")
        .run(|o| {
            o.stat("mf");
            o.read("mf");
            o.read("dir/moved");
            o.stat("dir/moved");
            o.chmod("mf", 0o640);
            o.read("mf");
            o.rename("dir/moved", "moved2");
            o.read("moved2");
            o.append("mf", "+");
            o.read("mf");
            o.readdir("");
        });
}

fn meta_script(o: &mut Ops) {
    o.chmod("f", 0o600);
    o.setxattr("d/c", "user.k", "v");
    o.rename("d/a", "d/a2");
    o.rename("d/b", "m/b2");
    o.link("big", "m/big2");
    o.chown("d/sub/deep", 1000, 1000);
    o.append("d/sub/l2only", "+");
    o.rename("d", "e");
}

#[test]
fn metacopy_unionfs_then_kernel() {
    remount_check(
        &meta("fmt_a_metacopy"),
        target(),
        Target::Kernel,
        meta_script,
    );
}

#[test]
fn metacopy_kernel_then_unionfs() {
    remount_check(
        &meta("fmt_b_metacopy"),
        Target::Kernel,
        target(),
        meta_script,
    );
}
