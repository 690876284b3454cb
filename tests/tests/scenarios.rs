//! Named differential scenarios (initial state + operation). Each runs on
//! the kernel overlay (side A, reference) and on the target under test
//! (side B); the harness compares op logs, merged trees, upper dirs and
//! the workdir. `o.want(..)` pins the kernel's result where a scenario
//! exists to check a specific outcome.

use difftests::{OFlag, Ops, Scenario, Tree, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT};
use nix::unistd::AccessFlags;

/// The common lower layer.
fn base() -> Tree {
    Tree::new()
        .file("f", 0o644, "lower f\n")
        .xattr("f", "user.color", "blue")
        .mtime("f", 1_000_000)
        .dir("d", 0o755)
        .file("d/a", 0o644, "a in d\n")
        .file("d/b", 0o600, "b in d\n")
        .dir("d/sub", 0o755)
        .file("d/sub/deep", 0o644, "deep\n")
        .dir("empty", 0o755)
        .symlink("link", "f")
}

fn sc(name: &str) -> Scenario {
    Scenario::new(name).lower(base())
}

/// On the reference side: the last readdir reported no problem markers.
fn clean_readdir(o: &Ops) {
    if o.reference {
        let r = o.last();
        assert!(
            r.starts_with("ok [") && r.ends_with(']') && !r.contains("] ["),
            "{r}"
        );
    }
}

const WR: OFlag = OFlag::O_WRONLY;

// ---- copy-up -------------------------------------------------------------------

#[test]
fn open_lower_file_for_write_copies_up() {
    sc("open_lower_file_for_write_copies_up")
        .mtime_of("f")
        .run(|o| {
            o.open("f", WR, 0);
            o.want("ok");
            o.read("f");
            o.want("ok \"lower f\\n\"");
        });
}

#[test]
fn read_lower_no_copyup() {
    sc("read_lower_no_copyup").run(|o| {
        o.read("d/a");
        o.open("f", OFlag::O_RDONLY, 0);
        o.fsync("f");
        o.stat("d/sub/deep");
    });
}

#[test]
fn truncate_lower_copies_up() {
    sc("truncate_lower_copies_up").run(|o| {
        o.truncate("f", 3);
        o.want("ok");
        o.read("f");
        o.want("ok \"low\"");
    });
}

#[test]
fn o_trunc_lower() {
    sc("o_trunc_lower").run(|o| {
        o.open("d/a", WR | OFlag::O_TRUNC, 0);
        o.stat("d/a");
    });
}

#[test]
fn chmod_lower_copies_up_keeps_content() {
    sc("chmod_lower_copies_up_keeps_content")
        .mtime_of("f")
        .run(|o| {
            o.chmod("f", 0o600);
            o.want("ok");
            o.read("f");
            o.stat("f");
            o.getxattr("f", "user.color");
        });
}

#[test]
fn chmod_lower_dir() {
    sc("chmod_lower_dir").run(|o| {
        o.chmod("d", 0o700);
        o.stat("d");
        o.readdir("d");
    });
}

#[test]
fn chown_lower() {
    sc("chown_lower").run(|o| {
        o.chown("f", 1000, 1000);
        o.want("ok");
        o.stat("f");
        o.chown("link", 1001, 1001);
        o.stat("link");
        o.stat("f");
    });
}

#[test]
fn utimes_lower() {
    sc("utimes_lower").mtime_of("f").mtime_of("d").run(|o| {
        o.utimes("f", 1_000, 2_000);
        o.want("ok");
        o.stat_times("f");
        o.want("ok mtime=2000.000000000 atime=1000.000000000");
        o.utimes("d", 3_000, 4_000);
        o.stat_times("d");
    });
}

#[test]
fn setxattr_lower_copies_up() {
    sc("setxattr_lower_copies_up").run(|o| {
        o.setxattr("d/a", "user.new", "1");
        o.want("ok");
        o.getxattr("d/a", "user.new");
        o.listxattr("d/a");
        o.setxattr("d", "user.dirattr", "x");
        o.listxattr("d");
    });
}

#[test]
fn removexattr_lower() {
    sc("removexattr_lower").run(|o| {
        o.removexattr("f", "user.color");
        o.want("ok");
        o.getxattr("f", "user.color");
        o.want("ENODATA");
        o.listxattr("f");
    });
}

#[test]
fn xattr_create_replace_flags() {
    sc("xattr_create_replace_flags").run(|o| {
        o.setxattr_flags("f", "user.color", "red", libc::XATTR_CREATE);
        o.want("EEXIST");
        o.setxattr_flags("f", "user.none", "x", libc::XATTR_REPLACE);
        o.want("ENODATA");
        o.getxattr("d/a", "user.missing");
        o.want("ENODATA");
    });
}

#[test]
fn copyup_preserves_ino() {
    sc("copyup_preserves_ino").run(|o| {
        o.ino_stable("f", |o| {
            o.chmod("f", 0o640);
        });
        o.ino_stable("d", |o| {
            o.write("d/new", "x");
        });
        o.ino_stable("d/sub/deep", |o| {
            o.append("d/sub/deep", "more");
        });
    });
}

#[test]
fn copyup_dir_keeps_mode_owner() {
    let lower = Tree::new()
        .dir("od", 0o750)
        .owner("od", 1000, 1001)
        .file("od/x", 0o640, "x")
        .owner("od/x", 1002, 1003)
        .xattr("od", "user.d", "dirval");
    Scenario::new("copyup_dir_keeps_mode_owner")
        .lower(lower)
        .run(|o| {
            o.write("od/new", "n");
            o.stat("od");
            o.stat("od/new");
            o.chmod("od/x", 0o600);
            o.stat("od/x");
        });
}

#[test]
fn nested_copyup_parents() {
    sc("nested_copyup_parents").run(|o| {
        o.append("d/sub/deep", "+");
        o.want("ok");
        o.stat("d/sub");
        o.readdir("d");
    });
}

#[test]
fn deep_tree_copyup() {
    let mut t = Tree::new();
    let mut p = String::from("L0");
    for i in 1..10 {
        t = t.dir(&p, 0o700 + (i % 3) * 0o050);
        p += &format!("/L{i}");
    }
    t = t.file(format!("{p}.txt"), 0o644, "bottom");
    Scenario::new("deep_tree_copyup").lower(t).run(|o| {
        o.write("L0/L1/L2/L3/L4/L5/L6/L7/L8.txt", "new bottom");
        o.want("ok");
        o.mkdir("L0/L1/L2/L3/L4/L5/L6/L7/L8/n", 0o755);
        o.want("ok");
    });
}

#[test]
fn sparse_file_copyup_stays_sparse() {
    let lower = Tree::new().sparse("s", 0o644, 64 << 20, 32 << 20, "middle");
    Scenario::new("sparse_file_copyup_stays_sparse")
        .lower(lower)
        .run(|o| {
            o.sparse("s");
            o.want("ok sparse");
            o.pwrite("s", 0, "head");
            o.want("ok");
            o.sparse("s");
            o.want("ok sparse");
            o.seek_data("s", 4096);
        });
}

#[test]
fn hardlink_lower_then_write() {
    let lower = Tree::new()
        .file("h1", 0o644, "shared\n")
        .hardlink("h2", "h1");
    Scenario::new("hardlink_lower_then_write")
        .lower(lower)
        .run(|o| {
            o.stat("h1");
            o.same_ino("h1", "h2");
            o.append("h2", "via h2\n");
            o.want("ok");
            o.read("h1");
            o.read("h2");
            o.stat("h1");
            o.stat("h2");
        });
}

#[test]
fn copy_file_range_lower_to_upper() {
    sc("copy_file_range_lower_to_upper").run(|o| {
        o.copy_file_range("f", "copy", 100);
        o.want("ok 8");
        o.read("copy");
        o.copy_file_range("d/a", "d/b", 3);
        o.read("d/b");
    });
}

#[test]
fn open_rdonly_fd_then_copyup() {
    sc("open_rdonly_fd_then_copyup").run(|o| {
        let fd = o.open_keep("f", OFlag::O_RDONLY);
        o.write("f", "new content");
        o.fd_read(fd);
        o.close(fd);
    });
}

// ---- whiteouts, unlink, rmdir ----------------------------------------------------

#[test]
fn unlink_lower_file_makes_whiteout() {
    sc("unlink_lower_file_makes_whiteout").run(|o| {
        o.unlink("f");
        o.want("ok");
        o.stat("f");
        o.want("ENOENT");
        o.readdir("");
        o.unlink("link");
        o.unlink("d/sub/deep");
    });
}

#[test]
fn unlink_upper_only_file_no_whiteout() {
    sc("unlink_upper_only_file_no_whiteout").run(|o| {
        o.write("n", "new");
        o.write("d/n", "new");
        o.unlink("n");
        o.want("ok");
        o.unlink("d/n");
        o.want("ok");
        o.readdir("d");
    });
}

#[test]
fn unlink_then_recreate() {
    sc("unlink_then_recreate").run(|o| {
        o.unlink("f");
        o.write("f", "recreated");
        o.want("ok");
        o.stat("f");
        o.read("f");
        o.getxattr("f", "user.color");
        o.want("ENODATA");
    });
}

#[test]
fn create_over_whiteout() {
    Scenario::new("create_over_whiteout")
        .lower(base())
        .upper(Tree::new().whiteout("f").dir("d", 0o755).whiteout("d/a"))
        .run(|o| {
            o.stat("f");
            o.want("ENOENT");
            o.write("f", "new");
            o.want("ok");
            o.mkfifo("d/a", 0o644);
            o.want("ok");
            o.stat("d/a");
            o.readdir("d");
        });
}

#[test]
fn whiteout_in_upper_hides_lower() {
    Scenario::new("whiteout_in_upper_hides_lower")
        .lower(base())
        .upper(Tree::new().whiteout("f").whiteout("d"))
        .run(|o| {
            o.stat("f");
            o.want("ENOENT");
            o.stat("d/a");
            o.want("ENOENT");
            o.readdir("");
            o.want("ok [empty,link]");
            o.stat_follow("link");
            o.want("ENOENT");
        });
}

#[test]
fn whiteout_in_middle_lower_hides_lower() {
    Scenario::new("whiteout_in_middle_lower_hides_lower")
        .lower(Tree::new().whiteout("g").file("h", 0o644, "top h"))
        .lower(
            Tree::new()
                .file("g", 0o644, "g")
                .file("h", 0o644, "bottom h"),
        )
        .run(|o| {
            o.stat("g");
            o.want("ENOENT");
            o.readdir("");
            o.want("ok [h]");
            o.write("g", "new g");
            o.want("ok");
        });
}

#[test]
fn rmdir_merged_dir_whiteouts() {
    Scenario::new("rmdir_merged_dir_whiteouts")
        .lower(Tree::new().dir("m", 0o755).file("m/x", 0o644, "x"))
        .upper(Tree::new().dir("m", 0o755).file("m/y", 0o644, "y"))
        .run(|o| {
            o.unlink("m/x");
            o.unlink("m/y");
            o.readdir("m");
            o.want("ok []");
            o.rmdir("m");
            o.want("ok");
            o.stat("m");
            o.want("ENOENT");
        });
}

#[test]
fn rmdir_nonempty_merged_enotempty() {
    sc("rmdir_nonempty_merged_enotempty").run(|o| {
        o.rmdir("d");
        o.want("ENOTEMPTY");
        o.rmdir("d/sub");
        o.want("ENOTEMPTY");
        o.rmdir("empty");
        o.want("ok");
    });
}

#[test]
fn rmdir_dir_with_only_whiteouts_ok() {
    Scenario::new("rmdir_dir_with_only_whiteouts_ok")
        .lower(
            Tree::new()
                .dir("w", 0o755)
                .file("w/a", 0o644, "")
                .file("w/b", 0o644, ""),
        )
        .upper(Tree::new().dir("w", 0o755).whiteout("w/a").whiteout("w/b"))
        .run(|o| {
            o.readdir("w");
            o.want("ok []");
            o.rmdir("w");
            o.want("ok");
            o.readdir("");
        });
}

#[test]
fn mkdir_over_whiteout_is_opaque() {
    sc("mkdir_over_whiteout_is_opaque").run(|o| {
        o.unlink("d/a");
        o.unlink("d/b");
        o.unlink("d/sub/deep");
        o.rmdir("d/sub");
        o.rmdir("d");
        o.want("ok");
        o.mkdir("d", 0o700);
        o.want("ok");
        o.readdir("d");
        o.want("ok []");
        o.stat("d");
    });
}

#[test]
fn mkdir_existing_lower_eexist() {
    sc("mkdir_existing_lower_eexist").run(|o| {
        o.mkdir("d", 0o755);
        o.want("EEXIST");
        o.mkdir("f", 0o755);
        o.want("EEXIST");
        o.mkdir("nodir/x", 0o755);
        o.want("ENOENT");
    });
}

#[test]
fn wrong_type_errors() {
    sc("wrong_type_errors").run(|o| {
        o.unlink("d");
        o.want("EISDIR");
        o.rmdir("f");
        o.want("ENOTDIR");
        o.stat("f/x");
        o.want("ENOTDIR");
        o.link("d", "d2");
        o.want("EPERM");
        o.symlink("x", "f");
        o.want("EEXIST");
    });
}

// ---- readdir / lookup ----------------------------------------------------------

#[test]
fn readdir_merged_dedup() {
    Scenario::new("readdir_merged_dedup")
        .lower(
            Tree::new()
                .file("d/a", 0o644, "1a")
                .file("d/b", 0o644, "1b"),
        )
        .lower(
            Tree::new()
                .file("d/b", 0o644, "2b")
                .file("d/c", 0o644, "2c"),
        )
        .upper(
            Tree::new()
                .file("d/c", 0o644, "uc")
                .file("d/e", 0o644, "ue"),
        )
        .run(|o| {
            o.readdir("d");
            o.want("ok [a,b,c,e]");
            o.read("d/b");
            o.want("ok \"1b\"");
            o.read("d/c");
            o.want("ok \"uc\"");
        });
}

#[test]
fn readdir_hides_whiteouts() {
    Scenario::new("readdir_hides_whiteouts")
        .lower(base())
        .upper(Tree::new().dir("d", 0o755).whiteout("d/a"))
        .run(|o| {
            o.readdir("d");
            o.want("ok [b,sub]");
            o.unlink("d/b");
            o.readdir("d");
            o.want("ok [sub]");
        });
}

#[test]
fn readdir_opaque_dir() {
    Scenario::new("readdir_opaque_dir")
        .lower(base())
        .upper(Tree::new().opaque("d").file("d/new", 0o644, "n"))
        .run(|o| {
            o.readdir("d");
            o.want("ok [new]");
            o.stat("d/a");
            o.want("ENOENT");
        });
}

#[test]
fn opaque_upper_dir_hides_lower() {
    Scenario::new("opaque_upper_dir_hides_lower")
        .lower(base())
        .upper(Tree::new().opaque("d").opaque("empty"))
        .run(|o| {
            o.readdir("d");
            o.want("ok []");
            o.rmdir("d");
            o.want("ok");
            o.readdir("");
        });
}

#[test]
fn opaque_dir_in_lower_layer() {
    Scenario::new("opaque_dir_in_lower_layer")
        .lower(Tree::new().opaque("d").file("d/top", 0o644, "t"))
        .lower(base())
        .run(|o| {
            o.readdir("d");
            o.want("ok [top]");
        });
}

#[test]
fn lookup_nondir_hides_lower_dir() {
    Scenario::new("lookup_nondir_hides_lower_dir")
        .lower(base())
        .upper(Tree::new().file("d", 0o644, "I am a file"))
        .run(|o| {
            o.stat("d");
            o.read("d");
            o.want("ok \"I am a file\"");
            o.stat("d/a");
            o.want("ENOTDIR");
            o.readdir("");
        });
}

#[test]
fn lower_dir_over_lower_file() {
    Scenario::new("lower_dir_over_lower_file")
        .lower(Tree::new().dir("x", 0o755).file("x/in", 0o644, "in"))
        .lower(
            Tree::new()
                .file("x", 0o644, "file x")
                .dir("y", 0o755)
                .file("y/k", 0o644, ""),
        )
        .run(|o| {
            o.readdir("x");
            o.want("ok [in]");
            o.readdir("y");
        });
}

#[test]
fn three_lower_layers_topmost_wins() {
    Scenario::new("three_lower_layers_topmost_wins")
        .lower(Tree::new().file("f", 0o644, "1").dir("dd", 0o711))
        .lower(
            Tree::new()
                .file("f", 0o600, "2")
                .file("g", 0o644, "g2")
                .dir("dd", 0o755)
                .file("dd/x", 0o644, "x"),
        )
        .lower(
            Tree::new()
                .file("f", 0o666, "3")
                .file("h", 0o644, "h3")
                .file("g", 0o644, "g3")
                .file("dd/y", 0o644, "y"),
        )
        .run(|o| {
            o.read("f");
            o.want("ok \"1\"");
            o.read("g");
            o.want("ok \"g2\"");
            o.readdir("");
            o.readdir("dd");
            o.want("ok [x,y]");
            o.stat("dd");
            o.append("dd/y", "+");
        });
}

#[test]
fn readdir_seek_telldir() {
    let mut l = Tree::new();
    let mut u = Tree::new();
    for i in 0..60 {
        l = l.file(format!("big/lower{i:02}"), 0o644, "");
        if i % 3 == 0 {
            u = u.file(format!("big/lower{i:02}"), 0o644, "u");
        }
        if i % 4 == 0 {
            u = u.file(format!("big/upper{i:02}"), 0o644, "");
        }
        if i % 5 == 1 && i % 3 != 0 {
            u = u.whiteout(format!("big/lower{i:02}"));
        }
    }
    Scenario::new("readdir_seek_telldir")
        .lower(l)
        .upper(u)
        .run(|o| {
            o.readdir("big");
            clean_readdir(o);
        });
}

#[test]
fn dino_matches_stat() {
    sc("dino_matches_stat").run(|o| {
        o.readdir("");
        clean_readdir(o);
        o.readdir("d");
        clean_readdir(o);
        o.chmod("d/a", 0o600);
        o.write("d/new", "n");
        o.mkdir("d/nd", 0o755);
        o.readdir("d");
        clean_readdir(o);
    });
}

#[test]
fn readdir_after_mixed_changes() {
    sc("readdir_after_mixed_changes").run(|o| {
        o.unlink("d/a");
        o.write("d/z", "z");
        o.rename("d/b", "d/bb");
        o.mkfifo("d/p", 0o600);
        o.symlink("../f", "d/l");
        o.readdir("d");
        clean_readdir(o);
    });
}

// ---- rename --------------------------------------------------------------------------

#[test]
fn rename_lower_dir_exdev() {
    sc("rename_lower_dir_exdev").run(|o| {
        o.rename("d", "d2");
        o.want("EXDEV");
        o.rename("d/sub", "sub2");
        o.want("EXDEV");
        o.readdir("d");
    });
}

#[test]
fn rename_upper_dir_ok() {
    sc("rename_upper_dir_ok").run(|o| {
        o.mkdir("nd", 0o755);
        o.write("nd/x", "x");
        o.rename("nd", "nd2");
        o.want("ok");
        o.rename("nd2", "d/nd3");
        o.want("ok");
        o.read("d/nd3/x");
    });
}

#[test]
fn rename_file_over_lower_file() {
    sc("rename_file_over_lower_file").run(|o| {
        o.rename("d/a", "f");
        o.want("ok");
        o.read("f");
        o.want("ok \"a in d\\n\"");
        o.stat("d/a");
        o.want("ENOENT");
    });
}

#[test]
fn rename_leaves_whiteout() {
    sc("rename_leaves_whiteout").run(|o| {
        o.rename("f", "g");
        o.want("ok");
        o.stat("f");
        o.want("ENOENT");
        o.getxattr("g", "user.color");
        o.rename("d/sub/deep", "d/deeper");
        o.readdir("d/sub");
    });
}

#[test]
fn rename_over_whiteout_name() {
    sc("rename_over_whiteout_name").run(|o| {
        o.unlink("f");
        o.write("g", "g");
        o.rename("g", "f");
        o.want("ok");
        o.read("f");
    });
}

#[test]
fn rename_noreplace_existing_eexist() {
    sc("rename_noreplace_existing_eexist").run(|o| {
        o.rename2("f", "d/a", RENAME_NOREPLACE);
        o.want("EEXIST");
        o.rename2("f", "d/new", RENAME_NOREPLACE);
        o.want("ok");
    });
}

#[test]
fn rename_exchange() {
    sc("rename_exchange").run(|o| {
        o.write("u1", "upper one");
        o.write("u2", "upper two");
        o.rename2("u1", "u2", RENAME_EXCHANGE);
        o.want("ok");
        o.read("u1");
        o.want("ok \"upper two\"");
        o.rename2("f", "d/a", RENAME_EXCHANGE);
        o.read("f");
        o.read("d/a");
        o.rename2("u1", "nonexistent", RENAME_EXCHANGE);
        o.want("ENOENT");
    });
}

#[test]
fn rename_whiteout_flag() {
    sc("rename_whiteout_flag").run(|o| {
        o.write("u1", "x");
        o.rename2("u1", "u2", RENAME_WHITEOUT);
        o.stat("u1");
        o.stat("u2");
    });
}

#[test]
fn rename_flags_invalid_einval() {
    sc("rename_flags_invalid_einval").run(|o| {
        o.rename2("f", "g", RENAME_NOREPLACE | RENAME_EXCHANGE);
        o.want("EINVAL");
        o.rename2("f", "g", 1 << 7);
        o.want("EINVAL");
        o.stat("f");
    });
}

#[test]
fn rename_to_self_noop() {
    sc("rename_to_self_noop").run(|o| {
        o.rename("f", "f");
        o.want("ok");
        o.rename("d", "d");
        o.want("ok");
        o.rename("link", "link");
    });
}

#[test]
fn rename_dir_over_empty_dir() {
    sc("rename_dir_over_empty_dir").run(|o| {
        o.mkdir("x", 0o755);
        o.write("x/f", "xf");
        o.mkdir("y", 0o755);
        o.rename("x", "y");
        o.want("ok");
        o.read("y/f");
        o.mkdir("z", 0o700);
        o.rename("z", "empty");
        o.readdir("empty");
        o.rename("y", "d");
        o.want("ENOTEMPTY");
    });
}

#[test]
fn rename_dir_into_own_subdir_einval() {
    sc("rename_dir_into_own_subdir_einval").run(|o| {
        o.mkdir("x", 0o755);
        o.mkdir("x/y", 0o755);
        o.rename("x", "x/y/z");
        o.want("EINVAL");
        o.rename("f", "d");
        o.want("EISDIR");
        o.rename("d", "f");
        o.want("ENOTDIR");
    });
}

// ---- create / link / special files ----------------------------------------------

#[test]
fn write_then_read_back() {
    sc("write_then_read_back").run(|o| {
        o.write("n", "hello");
        o.want("ok");
        o.pwrite("n", 10, "world");
        o.read("n");
        o.want("ok \"hello\\x00\\x00\\x00\\x00\\x00world\"");
        o.write("d/sub/n2", vec![7u8; 100_000]);
        o.read("d/sub/n2");
    });
}

#[test]
fn append_lower() {
    sc("append_lower").run(|o| {
        o.append("f", "appended\n");
        o.want("ok");
        o.read("f");
        o.want("ok \"lower f\\nappended\\n\"");
    });
}

#[test]
fn o_excl_existing_lower() {
    sc("o_excl_existing_lower").run(|o| {
        o.open("f", WR | OFlag::O_CREAT | OFlag::O_EXCL, 0o644);
        o.want("EEXIST");
        o.open("link", WR | OFlag::O_CREAT | OFlag::O_EXCL, 0o644);
        o.want("EEXIST");
        o.open("d/new", WR | OFlag::O_CREAT | OFlag::O_EXCL, 0o600);
        o.want("ok");
        o.stat("d/new");
    });
}

#[test]
fn link_lower_file() {
    sc("link_lower_file").run(|o| {
        o.link("f", "f2");
        o.want("ok");
        o.stat("f2");
        o.same_ino("f", "f2");
        o.read("f2");
        o.link("d/a", "d/sub/a2");
        o.stat("d/a");
    });
}

#[test]
fn symlink_create() {
    sc("symlink_create").run(|o| {
        o.symlink("target/that/does/not/exist", "s");
        o.want("ok");
        o.readlink("s");
        o.want("ok target/that/does/not/exist");
        o.symlink("f", "d/s2");
        o.stat("d/s2");
    });
}

#[test]
fn readlink_lower() {
    sc("readlink_lower").run(|o| {
        o.readlink("link");
        o.want("ok f");
        o.stat_follow("link");
        o.readlink("f");
        o.want("EINVAL");
    });
}

#[test]
fn mknod_fifo() {
    sc("mknod_fifo").run(|o| {
        o.mknod_fifo("p", 0o640);
        o.want("ok");
        o.mkfifo("d/p2", 0o600);
        o.want("ok");
        o.stat("p");
    });
}

#[test]
fn mknod_chardev() {
    sc("mknod_chardev").run(|o| {
        o.mknod_char("c", 0o644, 1, 3);
        o.want("ok");
        o.stat("c");
        o.mknod_char("d/c2", 0o600, 4, 64);
    });
}

#[test]
fn name_255_bytes() {
    let n = "n".repeat(255);
    sc("name_255_bytes").run(move |o| {
        o.write(&n, "long");
        o.want("ok");
        o.mkdir(format!("d/{n}"), 0o755);
        o.want("ok");
        o.readdir("");
    });
}

#[test]
fn name_256_bytes_enametoolong() {
    let n = "n".repeat(256);
    sc("name_256_bytes_enametoolong").run(move |o| {
        o.write(&n, "long");
        o.want("open:ENAMETOOLONG");
        o.mkdir(&n, 0o755);
        o.want("ENAMETOOLONG");
        o.stat(&n);
        o.want("ENAMETOOLONG");
    });
}

#[test]
fn non_utf8_name() {
    let lower = Tree::new()
        .file(b"caf\xe9", 0o644, "latin1")
        .dir(b"d\xff", 0o755)
        .file(b"d\xff/\x01\x7f", 0o644, "ctl");
    Scenario::new("non_utf8_name").lower(lower).run(|o| {
        o.readdir("");
        o.want("ok [caf\\xe9,d\\xff]");
        o.read(b"caf\xe9");
        o.write(b"n\xfe\xff", "x");
        o.rename(b"caf\xe9", b"caf\xc3\xa9");
        o.readdir(b"d\xff");
        o.unlink(b"d\xff/\x01\x7f");
    });
}

// ---- data ------------------------------------------------------------------------

#[test]
fn lseek_data_hole() {
    let lower = Tree::new().sparse("s", 0o644, 8 << 20, 4 << 20, vec![1u8; 8192]);
    Scenario::new("lseek_data_hole").lower(lower).run(|o| {
        o.seek_data("s", 0);
        o.want("ok 4194304");
        o.seek_hole("s", 4 << 20);
        o.seek_data("s", 6 << 20);
        o.want("ENXIO");
        o.append("s", "tail");
        o.seek_data("s", 0);
        o.seek_hole("s", 0);
    });
}

#[test]
fn fallocate_upper() {
    sc("fallocate_upper").run(|o| {
        o.write("n", "abc");
        o.fallocate("n", 0, 0, 1 << 20);
        o.want("ok");
        o.stat("n");
        o.fallocate("n", libc::FALLOC_FL_KEEP_SIZE, 0, 2 << 20);
        o.stat("n");
        o.fallocate(
            "n",
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        );
        o.read("n");
        o.fallocate("f", 0, 100, 100);
        o.stat("f");
    });
}

#[test]
fn fsync_and_truncate_upper() {
    sc("fsync_and_truncate_upper").run(|o| {
        o.write("n", "0123456789");
        o.fsync("n");
        o.want("ok");
        o.truncate("n", 4);
        o.truncate("n", 100_000);
        o.read("n");
        o.truncate("d", 0);
        o.want("EISDIR");
    });
}

// ---- ownership, permissions, umask -------------------------------------------------

#[test]
fn setgid_dir_inherits_group() {
    let lower = Tree::new()
        .dir("sg", 0o2775)
        .owner("sg", 0, 1234)
        .dir("sg", 0o2775);
    Scenario::new("setgid_dir_inherits_group")
        .lower(lower)
        .run(|o| {
            o.mkdir("sg/sub", 0o755);
            o.want("ok");
            o.stat("sg/sub");
            o.want("ok d mode=2755 uid=0 gid=1234");
            o.write("sg/file", "x");
            o.stat("sg/file");
        });
}

#[test]
fn umask_applied_once() {
    sc("umask_applied_once").umask(0o027).run(|o| {
        o.mkdir("x", 0o777);
        o.stat("x");
        o.want("ok d mode=0750 uid=0 gid=0");
        o.write_flags("y", WR | OFlag::O_CREAT, 0o666, "y");
        o.stat("y");
        o.umask(0o077);
        o.mknod_fifo("p", 0o666);
        o.stat("p");
        o.umask(0);
        o.mkdir("z", 0o777);
        o.stat("z");
    });
}

#[test]
fn access_checks() {
    sc("access_checks").run(|o| {
        o.access("f", AccessFlags::W_OK);
        o.want("ok");
        o.access("d/b", AccessFlags::R_OK | AccessFlags::W_OK);
        o.access("f", AccessFlags::X_OK);
        o.want("EACCES");
        o.access("missing", AccessFlags::F_OK);
        o.want("ENOENT");
    });
}

#[test]
fn permission_denied_as_other_user() {
    sc("permission_denied_as_other_user").run(|o| {
        o.as_user(1000, 1000, |o| {
            o.read("d/b");
            o.want("EACCES");
            o.write("f", "x");
            o.want("open:EACCES");
            o.mkdir("newdir", 0o755);
            o.want("EACCES");
            o.unlink("d/a");
            o.want("EACCES");
            o.read("d/a");
            o.want("ok \"a in d\\n\"");
            o.access("f", AccessFlags::W_OK);
            o.want("EACCES");
        });
    });
}

#[test]
fn create_as_other_user_sets_owner() {
    let lower = Tree::new()
        .dir("pub", 0o777)
        .dir("mine", 0o755)
        .owner("mine", 1000, 1000);
    Scenario::new("create_as_other_user_sets_owner")
        .lower(lower)
        .run(|o| {
            o.as_user(1000, 1000, |o| {
                o.write("pub/u", "u");
                o.want("ok");
                o.stat("pub/u");
                o.want("ok f mode=0644 uid=1000 gid=1000 size=1 nlink=1");
                o.mkdir("mine/sub", 0o700);
                o.symlink("x", "mine/l");
                o.chmod("mine", 0o700);
                o.want("ok");
            });
            o.stat("mine");
        });
}

#[test]
fn write_clears_setuid_as_user() {
    let lower = Tree::new().file("suid", 0o6777, "#!/bin/true\n");
    Scenario::new("write_clears_setuid_as_user")
        .lower(lower)
        .run(|o| {
            o.stat("suid");
            o.as_user(1000, 1000, |o| {
                o.append("suid", "x");
                o.want("ok");
            });
            o.stat("suid");
        });
}

// ---- read-only union, overlay-private names ------------------------------------------

#[test]
fn ro_union_write_erofs() {
    sc("ro_union_write_erofs")
        .readonly()
        .lower(Tree::new().file("g", 0o644, "g"))
        .run(|o| {
            o.read("f");
            o.want("ok \"lower f\\n\"");
            o.open("f", WR, 0);
            o.want("EROFS");
            o.mkdir("x", 0o755);
            o.want("EROFS");
            o.unlink("g");
            o.want("EROFS");
            o.setxattr("f", "user.x", "1");
            o.want("EROFS");
            o.readdir("");
            o.access("f", AccessFlags::W_OK);
            o.want("EROFS");
        });
}

#[test]
fn xattr_overlay_names_hidden() {
    Scenario::new("xattr_overlay_names_hidden")
        .lower(
            base()
                .xattr("d/a", "trusted.overlay.foo", "bar")
                .xattr("d/a", "trusted.other", "v"),
        )
        .upper(Tree::new().opaque("od").file("od/x", 0o644, ""))
        .run(|o| {
            o.listxattr("od");
            o.getxattr("od", "trusted.overlay.opaque");
            o.listxattr("d/a");
            o.getxattr("d/a", "trusted.overlay.foo");
            o.getxattr("d/a", "trusted.other");
            o.want("ok \"v\"");
            o.setxattr("f", "trusted.overlay.opaque", "y");
            o.listxattr("f");
        });
}

#[test]
fn aufs_wh_markers_in_lower_hidden() {
    // Image layers (OCI / containers-storage) mark deletions with `.wh.NAME` files and
    // opaque directories with a `.wh..wh..opq` file. The kernel's overlay does not read
    // them, so the kernel side gets the same layers converted to its own format (a 0/0
    // whiteout, the opaque xattr): both must show the same union and write the same upper.
    let aufs = Tree::new()
        .file("d/.wh.a", 0o644, "")
        .file("d/b", 0o644, "b")
        .file("e/.wh..wh..opq", 0o644, "")
        .file("e/x", 0o644, "x");
    let kernel = Tree::new()
        .whiteout("d/a")
        .file("d/b", 0o644, "b")
        .dir("e", 0o755)
        .opaque("e")
        .file("e/x", 0o644, "x");
    let bottom = Tree::new()
        .file("d/a", 0o644, "a")
        .file("d/c", 0o644, "c")
        .file("e/y", 0o644, "y");
    Scenario::new("aufs_wh_markers_in_lower_hidden")
        .lower(aufs)
        .lower(bottom.clone())
        .kernel_lowers(vec![kernel, bottom])
        .run(|o| {
            o.readdir("d");
            o.stat("d/a");
            o.want("ENOENT");
            o.stat("d/.wh.a");
            o.want("ENOENT");
            o.readdir("e");
            o.stat("e/y");
            o.want("ENOENT");
            o.write("d/a", "new a");
            o.readdir("d");
            o.unlink("d/b");
            o.mkdir("e/y", 0o755);
            o.readdir("e");
        });
}

// ---- more copy-up / lifetime cases ---------------------------------------------------

#[test]
fn large_file_copyup_content() {
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let lower = Tree::new().file("big", 0o644, data);
    Scenario::new("large_file_copyup_content")
        .lower(lower)
        .run(|o| {
            o.pwrite("big", 1_500_000, "MIDDLE");
            o.want("ok");
            o.read("big");
        });
}

#[test]
fn unlink_open_file_keeps_data() {
    sc("unlink_open_file_keeps_data").run(|o| {
        let fd = o.open_keep("d/a", OFlag::O_RDWR);
        o.unlink("d/a");
        o.want("ok");
        o.fd_write(fd, "X");
        o.fd_read(fd);
        o.fd_stat(fd);
        o.close(fd);
        o.stat("d/a");
        o.want("ENOENT");
    });
}

#[test]
fn setxattr_symlink_lower() {
    sc("setxattr_symlink_lower").run(|o| {
        o.setxattr("link", "user.x", "1");
        o.want("EPERM");
        o.setxattr("link", "trusted.t", "1");
        o.want("ok");
        o.listxattr("link");
    });
}

#[test]
fn chmod_via_symlink_copies_target() {
    sc("chmod_via_symlink_copies_target").run(|o| {
        o.chmod("link", 0o700);
        o.want("ok");
        o.stat("f");
        o.stat("link");
    });
}

#[test]
fn mkdir_over_whiteout_of_file() {
    sc("mkdir_over_whiteout_of_file").run(|o| {
        o.unlink("f");
        o.mkdir("f", 0o755);
        o.want("ok");
        o.write("f/x", "x");
        o.readdir("f");
        o.want("ok [x]");
        o.rmdir("empty");
        o.write("empty", "now a file");
        o.stat("empty");
    });
}

#[test]
fn rename_exchange_file_and_dir() {
    sc("rename_exchange_file_and_dir").run(|o| {
        o.mkdir("nd", 0o755);
        o.write("nd/in", "in");
        o.write("nf", "nf");
        o.rename2("nd", "nf", RENAME_EXCHANGE);
        o.want("ok");
        o.stat("nd");
        o.read("nf/in");
        o.rename2("d", "nf", RENAME_EXCHANGE);
        o.want("EXDEV");
    });
}

#[test]
fn hardlink_upper_nlink() {
    sc("hardlink_upper_nlink").run(|o| {
        o.write("n", "n");
        o.link("n", "d/n2");
        o.link("n", "n3");
        o.stat("n");
        o.want("ok f mode=0644 uid=0 gid=0 size=1 nlink=3");
        o.unlink("n3");
        o.stat("d/n2");
        o.same_ino("n", "d/n2");
        o.want("ok same");
    });
}

#[test]
fn rmdir_recreate_cycle() {
    sc("rmdir_recreate_cycle").run(|o| {
        o.rmdir("empty");
        o.mkdir("empty", 0o755);
        o.rmdir("empty");
        o.want("ok");
        o.mkdir("empty", 0o711);
        o.stat("empty");
        o.readdir("");
    });
}
