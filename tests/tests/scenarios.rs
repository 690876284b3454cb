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

/// Why copy_file_range scenarios run on one filesystem only.
const CROSS_FS_COPY: &str = "between layers on two filesystems the kernel's overlay gives \
EXDEV, while FUSE never returns EXDEV to the caller: fs/fuse/file.c copies by splice \
instead, so the copy succeeds through unionfs";

#[test]
fn copy_file_range_lower_to_upper() {
    if !difftests::scenario::require_one_fs("copy_file_range_lower_to_upper", CROSS_FS_COPY) {
        return;
    }
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

// ---- requests on a node whose name went -----------------------------------------------
// A request that reached a node before its name was removed or taken (here made
// repeatable by a kept `O_PATH` fd) must act on that node's object: under concurrent
// load these requests acted on the whiteout or the file that took the name (EIO).

/// A lower file held, removed, then changed through the fd: the copy-up finds the
/// whiteout under the name (EEXIST on the kernel's overlay); nothing comes back.
#[test]
fn chmod_held_lower_file_after_unlink() {
    sc("chmod_held_lower_file_after_unlink").run(|o| {
        let h = o.open_keep("d/a", OFlag::O_PATH);
        o.unlink("d/a");
        o.fd_stat(h);
        o.want("ok mode=100644 size=7 nlink=1");
        o.fd_chmod_path(h, 0o600);
        o.want("EEXIST");
        o.fd_stat(h);
        o.stat("d/a");
        o.want("ENOENT");
        o.readdir("d");
    });
}

/// An upper file held, removed, then changed: the change reaches the removed file.
#[test]
fn chmod_held_upper_file_after_unlink() {
    sc("chmod_held_upper_file_after_unlink").run(|o| {
        o.write("d/new", "new");
        let h = o.open_keep("d/new", OFlag::O_PATH);
        o.unlink("d/new");
        o.fd_chmod_path(h, 0o600);
        o.want("ok");
        o.fd_stat(h);
        o.want("ok mode=100600 size=3 nlink=0");
        o.readdir("d");
    });
}

/// A file held, then another renamed over its name: the change reaches the held file,
/// not the one that took the name.
#[test]
fn chmod_held_file_after_rename_over_it() {
    sc("chmod_held_file_after_rename_over_it").run(|o| {
        o.write("d/a", "changed");
        let h = o.open_keep("d/a", OFlag::O_PATH);
        o.rename("d/b", "d/a");
        o.fd_chmod_path(h, 0o640);
        o.want("ok");
        o.fd_stat(h);
        o.stat("d/a");
        o.want("ok f mode=0600 uid=0 gid=0 size=7 nlink=1");
        o.read("d/a");
        o.want("ok \"b in d\\n\"");
    });
}

/// A lower file held, removed, and a new file made under its name: the copy-up the
/// change needs finds the new file (EEXIST, as on the kernel's overlay), which stays as
/// it is.
#[test]
fn chmod_held_file_after_unlink_and_create() {
    sc("chmod_held_file_after_unlink_and_create").run(|o| {
        let h = o.open_keep("f", OFlag::O_PATH);
        o.unlink("f");
        o.write("f", "new f");
        o.fd_chmod_path(h, 0o600);
        o.want("EEXIST");
        o.stat("f");
        o.want("ok f mode=0644 uid=0 gid=0 size=5 nlink=1");
    });
}

/// A file held and renamed: the change reaches it at its new name.
#[test]
fn chmod_held_file_after_rename() {
    sc("chmod_held_file_after_rename").run(|o| {
        let h = o.open_keep("d/a", OFlag::O_PATH);
        o.rename("d/a", "d/moved");
        o.write("d/a", "other");
        o.fd_chmod_path(h, 0o600);
        o.want("ok");
        o.stat("d/moved");
        o.want("ok f mode=0600 uid=0 gid=0 size=7 nlink=1");
        o.stat("d/a");
        o.want("ok f mode=0644 uid=0 gid=0 size=5 nlink=1");
    });
}

// ---- rename --------------------------------------------------------------------------

/// A lower file renamed and renamed back is still there (it vanished when the layers were
/// on two filesystems: a second node for the same upper file kept the stale name).
#[test]
fn rename_lower_file_and_back() {
    sc("rename_lower_file_and_back").run(|o| {
        o.stat("d/a");
        o.rename("d/a", "d/z");
        o.stat("d/z");
        o.rename("d/z", "d/a");
        o.stat("d/a");
        o.want("ok f mode=0644 uid=0 gid=0 size=7 nlink=1");
        o.read("d/a");
        o.want("ok \"a in d\\n\"");
        o.ino_as_layer("d/a", "l1", "d/a");
        o.want("ok same");
        o.readdir("d");
        clean_readdir(o);
    });
}

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

/// The set-id rules around writes, truncates and chown, for a caller without CAP_FSETID
/// (a user) and for root, on a lower file (copied up on the way) and on an upper one. The
/// kernel kills suid on a user's write or truncate, sgid with group execute or for a caller
/// outside the group, and nothing for root; chown kills suid (and sgid with group execute)
/// even for root. Each step says what the kernel did.
fn setid_scenario(name: &str, mode: u32, f: impl Fn(&mut Ops) + Send + Sync + 'static) {
    let lower = Tree::new().file("low", mode, "#!/bin/true\n");
    Scenario::new(name).lower(lower).run(move |o| {
        o.write("up", "#!/bin/true\n");
        o.chmod("up", mode);
        f(o);
    });
}

#[test]
fn setid_user_truncate_and_open_trunc_clear() {
    setid_scenario("setid_user_truncate_and_open_trunc_clear", 0o6777, |o| {
        o.as_user(1000, 1000, |o| {
            o.truncate("low", 3);
            o.want("ok");
            o.write("up", "x");
            o.want("ok");
        });
        o.mode("low");
        o.want("ok 0o777");
        o.mode("up");
        o.want("ok 0o777");
    });
}

#[test]
fn setid_user_writes_twice_upper_file() {
    setid_scenario("setid_user_writes_twice_upper_file", 0o6777, |o| {
        o.as_user(1000, 1000, |o| {
            o.append("up", "x");
            o.append("up", "y");
            o.want("ok");
        });
        o.mode("up");
        o.want("ok 0o777");
        o.chmod("up", 0o6777);
        o.as_user(1000, 1000, |o| {
            o.append("up", "z");
        });
        o.mode("up");
        o.want("ok 0o777");
        o.read("up");
    });
}

/// Set-group-id without group execute stays for a caller in the file's group, and goes for
/// one outside it.
#[test]
fn setid_user_write_sgid_without_group_exec() {
    setid_scenario("setid_user_write_sgid_without_group_exec", 0o6767, |o| {
        o.as_user(1000, 0, |o| {
            o.append("low", "x");
            o.want("ok");
            o.truncate("up", 1);
            o.want("ok");
        });
        o.mode("low");
        o.want("ok 0o2767");
        o.mode("up");
        o.want("ok 0o2767");
        o.chmod("low", 0o6767);
        o.as_user(1000, 1000, |o| {
            o.append("low", "y");
            o.want("ok");
        });
        o.mode("low");
        o.want("ok 0o767");
    });
}

#[test]
fn setid_root_write_truncate_keep() {
    setid_scenario("setid_root_write_truncate_keep", 0o6777, |o| {
        o.append("low", "x");
        o.truncate("up", 2);
        o.write("up", "y");
        o.mode("low");
        o.want("ok 0o6777");
        o.mode("up");
        o.want("ok 0o6777");
    });
}

#[test]
fn setid_chown_keeping_ids_kills_suid() {
    setid_scenario("setid_chown_keeping_ids_kills_suid", 0o6777, |o| {
        o.chown("low", u32::MAX, u32::MAX);
        o.chown("up", 0, 0);
        o.mode("low");
        o.want("ok 0o777");
        o.mode("up");
        o.want("ok 0o777");
        o.chmod("low", 0o6767);
        o.chown("low", u32::MAX, u32::MAX);
        o.mode("low");
        o.want("ok 0o2767");
    });
}

/// The other ways a user modifies a file's data clear set-user-id too: pwrite, fallocate,
/// and copy_file_range into it.
#[test]
fn setid_user_pwrite_fallocate_copy_range_clear() {
    setid_scenario(
        "setid_user_pwrite_fallocate_copy_range_clear",
        0o4777,
        |o| {
            o.write("src", "data");
            o.chmod("src", 0o644);
            o.chmod("up", 0o4777);
            o.as_user(1000, 1000, |o| {
                o.pwrite("low", 1, "x");
                o.want("ok");
                o.fallocate("up", 0, 0, 8192);
                o.want("ok");
            });
            o.mode("low");
            o.want("ok 0o777");
            o.mode("up");
            o.want("ok 0o777");
            o.chmod("up", 0o4777);
            o.as_user(1000, 1000, |o| {
                o.copy_file_range("src", "up", 4);
                o.want("ok 4");
            });
            o.mode("up");
            o.want("ok 0o777");
            o.read("up");
        },
    );
}

/// A write removes file capabilities (`security.capability`), whoever writes: the kernel
/// asks for them before writing and removes them (REMOVEXATTR) when present.
#[test]
fn setid_write_removes_file_capabilities() {
    // VFS_CAP_REVISION_2 with CAP_NET_RAW permitted and effective.
    let caps: &[u8] = &[
        0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    setid_scenario("setid_write_removes_file_capabilities", 0o755, move |o| {
        for f in ["low", "up"] {
            o.setxattr(f, "security.capability", caps);
            o.want("ok");
            o.getxattr(f, "security.capability");
            o.append(f, "x");
            o.want("ok");
            o.getxattr(f, "security.capability");
            o.want("ENODATA");
        }
        o.chmod("up", 0o777);
        o.setxattr("up", "security.capability", caps);
        o.as_user(1000, 1000, |o| {
            o.append("up", "y");
            o.want("ok");
        });
        o.getxattr("up", "security.capability");
        o.want("ENODATA");
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

// ==== spec coverage: scenarios added for bullets that had no named scenario ====

// ---- lookup merging ------------------------------------------------------------------

#[test]
fn lookup_upper_dir_over_lower_file_hides_deeper_dir() {
    // upper dir x over a file x in l1 over a dir x in l2: the file ends the
    // lookup, so l2's x/ is not merged into the upper dir.
    Scenario::new("lookup_upper_dir_over_lower_file_hides_deeper_dir")
        .lower(Tree::new().file("x", 0o644, "file x in l1"))
        .lower(Tree::new().dir("x", 0o755).file("x/from_l2", 0o644, "l2"))
        .lower(Tree::new().dir("x", 0o755).file("x/from_l3", 0o644, "l3"))
        .upper(Tree::new().dir("x", 0o711).file("x/from_u", 0o644, "u"))
        .run(|o| {
            o.stat("x");
            o.want("ok d mode=0711 uid=0 gid=0");
            o.readdir("x");
            o.want("ok [from_u]");
            o.stat("x/from_l2");
            o.want("ENOENT");
            o.rmdir("x");
            o.want("ENOTEMPTY");
            o.unlink("x/from_u");
            o.rmdir("x");
            o.want("ok");
            o.stat("x");
            o.want("ENOENT");
        });
}

#[test]
fn lookup_symlink_over_lower_dir() {
    // a symlink (upper, and in l1) hides a directory of the same name below
    Scenario::new("lookup_symlink_over_lower_dir")
        .lower(
            Tree::new()
                .symlink("s", "target_dir")
                .dir("target_dir", 0o755),
        )
        .lower(base().dir("s", 0o755).file("s/hidden", 0o644, "h"))
        .upper(Tree::new().symlink("d", "empty"))
        .run(|o| {
            o.readlink("d");
            o.want("ok empty");
            o.stat("d/a");
            o.want("ENOENT");
            o.readdir("d");
            o.want("ok []");
            o.readlink("s");
            o.want("ok target_dir");
            o.stat("s/hidden");
            o.want("ENOENT");
            o.readdir("");
            o.want("ok [d,empty,f,link,s,target_dir]");
        });
}

#[test]
fn lookup_three_lowers_whiteout_in_middle() {
    // l2 (the middle lower) whiteouts names that exist in l3; l1 adds its own
    Scenario::new("lookup_three_lowers_whiteout_in_middle")
        .lower(Tree::new().file("m/a", 0o644, "l1 a"))
        .lower(
            Tree::new()
                .dir("m", 0o755)
                .whiteout("m/b")
                .whiteout("g")
                .whiteout("gd"),
        )
        .lower(
            Tree::new()
                .file("m/b", 0o644, "l3 b")
                .file("m/c", 0o644, "l3 c")
                .file("g", 0o644, "l3 g")
                .file("gd/in", 0o644, "in"),
        )
        .run(|o| {
            o.readdir("m");
            o.want("ok [a,c]");
            o.stat("m/b");
            o.want("ENOENT");
            o.stat("g");
            o.want("ENOENT");
            o.stat("gd/in");
            o.want("ENOENT");
            o.readdir("");
            o.want("ok [m]");
            o.write("m/b", "new b");
            o.want("ok");
            o.mkdir("gd", 0o755);
            o.want("ok");
            o.readdir("gd");
            o.want("ok []");
        });
}

#[test]
fn lookup_three_lowers_opaque_and_nondir_stop_merge() {
    // m: dir in l1, opaque dir in l2, dir in l3 -> l1+l2 merged, l3 hidden.
    // n: dir in l1, file in l2, dir in l3 -> only l1.
    Scenario::new("lookup_three_lowers_opaque_and_nondir_stop_merge")
        .lower(
            Tree::new()
                .file("m/x1", 0o644, "1")
                .file("n/y1", 0o644, "1"),
        )
        .lower(
            Tree::new()
                .opaque("m")
                .file("m/x2", 0o644, "2")
                .file("n", 0o644, "file n"),
        )
        .lower(
            Tree::new()
                .file("m/x3", 0o644, "3")
                .file("n/y3", 0o644, "3"),
        )
        .run(|o| {
            o.readdir("m");
            o.want("ok [x1,x2]");
            o.stat("m/x3");
            o.want("ENOENT");
            o.readdir("n");
            o.want("ok [y1]");
            o.stat("n/y3");
            o.want("ENOENT");
            o.write("m/new", "n");
            o.readdir("m");
            o.want("ok [new,x1,x2]");
        });
}

// ---- readdir ---------------------------------------------------------------------------

#[test]
fn readdir_merged_subdirs_dino_three_lowers() {
    // d_ino == st_ino for: a lower-only entry, an upper-only entry, an entry
    // present in several layers, a merged subdir (upper + lowers), a merged
    // subdir only in lowers, and entries copied up during the script.
    Scenario::new("readdir_merged_subdirs_dino_three_lowers")
        .lower(
            Tree::new()
                .file("r/l1only", 0o644, "1")
                .file("r/all", 0o644, "l1")
                .file("r/ms/in1", 0o644, "1")
                .file("r/ls/in1", 0o644, "1"),
        )
        .lower(
            Tree::new()
                .file("r/l2only", 0o644, "2")
                .file("r/all", 0o644, "l2")
                .file("r/ls/in2", 0o644, "2"),
        )
        .lower(
            Tree::new()
                .file("r/l3only", 0o644, "3")
                .file("r/all", 0o644, "l3")
                .file("r/ms/in3", 0o644, "3"),
        )
        .upper(Tree::new().file("r/uonly", 0o644, "u"))
        .run(|o| {
            o.readdir("r");
            o.want("ok [all,l1only,l2only,l3only,ls,ms,uonly]");
            o.readdir("r/ms");
            o.want("ok [in1,in3]");
            o.write("r/ms/inu", "u");
            o.readdir("r/ms");
            o.want("ok [in1,in3,inu]");
            o.readdir("r/ls");
            o.want("ok [in1,in2]");
            o.chmod("r/l3only", 0o600);
            o.append("r/all", "+");
            o.write("r/ls/new", "n");
            o.readdir("r");
            o.want("ok [all,l1only,l2only,l3only,ls,ms,uonly]");
            o.readdir("r/ls");
            o.want("ok [in1,in2,new]");
            o.readdir("");
            o.want("ok [r]");
        });
}

#[test]
fn readdir_hides_whiteouts_and_opaque_markers_in_all_layers() {
    // whiteouts in upper and in l1 (over l2), opaque xattrs on upper and l1
    // dirs, private trusted.overlay.* xattrs: none of it shows as a name.
    Scenario::new("readdir_hides_whiteouts_and_opaque_markers_in_all_layers")
        .lower(
            Tree::new()
                .whiteout("top/gone_l1")
                .opaque("top/op")
                .file("top/op/kept", 0o644, "k")
                .file("top/l1", 0o644, "1"),
        )
        .lower(
            Tree::new()
                .file("top/gone_l1", 0o644, "x")
                .file("top/gone_u", 0o644, "x")
                .file("top/op/hidden", 0o644, "h")
                .file("top/l2", 0o644, "2"),
        )
        .upper(
            Tree::new()
                .whiteout("top/gone_u")
                .whiteout("top/never_existed")
                .opaque("top/uop")
                .xattr("top", "trusted.overlay.impure", "y"),
        )
        .run(|o| {
            o.readdir("top");
            o.want("ok [l1,l2,op,uop]");
            o.readdir("top/op");
            o.want("ok [kept]");
            o.readdir("top/uop");
            o.want("ok []");
            o.stat("top/never_existed");
            o.want("ENOENT");
            o.unlink("top/l2");
            o.readdir("top");
            o.want("ok [l1,op,uop]");
        });
}

#[test]
fn readdir_seek_telldir_three_lowers() {
    // telldir/seekdir over a big directory merged from upper + 3 lowers
    // with duplicates and whiteouts in between.
    let (mut l1, mut l2, mut l3, mut u) = (Tree::new(), Tree::new(), Tree::new(), Tree::new());
    for i in 0..120 {
        let n = format!("big/e{i:03}");
        match i % 4 {
            0 => l1 = l1.file(&n, 0o644, ""),
            1 => l2 = l2.file(&n, 0o644, ""),
            2 => l3 = l3.file(&n, 0o644, ""),
            _ => u = u.file(&n, 0o644, ""),
        }
        if i % 7 == 0 {
            l3 = l3.file(&n, 0o644, "dup");
        }
        if i % 11 == 5 && (i + 1) % 4 != 0 {
            l1 = l1.whiteout(format!("big/e{:03}", i + 1));
        }
    }
    Scenario::new("readdir_seek_telldir_three_lowers")
        .lower(l1)
        .lower(l2)
        .lower(l3)
        .upper(u)
        .run(|o| {
            o.readdir("big");
            clean_readdir(o);
            o.unlink("big/e000");
            o.write("big/zz", "");
            o.readdir("big");
            clean_readdir(o);
        });
}

// ---- copy-up -----------------------------------------------------------------------------

#[test]
fn copyup_deep_parents_keep_mode_owner_xattr_mtime() {
    // a setxattr at the bottom of 5 lower dirs, each with its own mode,
    // owner, xattr and mtime: the copied-up parents keep all of them (mtimes
    // compared in both the merged tree and the upper dir), and so does the file.
    let mut t = Tree::new();
    let mut p = String::new();
    let mut paths = Vec::new();
    for i in 0..5u32 {
        if !p.is_empty() {
            p.push('/');
        }
        p += &format!("p{i}");
        t = t
            .dir(&p, [0o755, 0o750, 0o711, 0o775, 0o700][i as usize])
            .owner(&p, 1000 + i, 2000 + i)
            .xattr(&p, "user.level", format!("{i}"))
            .xattr(&p, "trusted.level", format!("t{i}"))
            .mtime(&p, 100_000 * (i as i64 + 1));
        paths.push(p.clone());
    }
    let file = format!("{p}/leaf");
    t = t
        .file(&file, 0o604, "leaf data")
        .owner(&file, 1234, 2345)
        .xattr(&file, "user.leaf", "L")
        .mtime(&file, 777_777);
    let mut s = Scenario::new("copyup_deep_parents_keep_mode_owner_xattr_mtime")
        .lower(t)
        .mtime_of(&file);
    for q in &paths {
        s = s.mtime_of(q);
    }
    let f2 = file.clone();
    s.run(move |o| {
        o.setxattr(&f2, "user.new", "v");
        o.want("ok");
        o.stat("p0/p1/p2");
        o.want("ok d mode=0711 uid=1002 gid=2002");
        o.stat_times("p0/p1/p2/p3");
        o.want("ok mtime=400000.000000000 atime=400000.000000000");
        o.stat_times(&f2);
        o.want("ok mtime=777777.000000000 atime=777777.000000000");
        o.listxattr("p0/p1/p2/p3/p4");
        o.want("ok [trusted.level,user.level]");
    });
}

#[test]
fn copyup_each_trigger_keeps_file_metadata() {
    // every copy-up trigger that does not itself change times, on a file with
    // a distinctive mode/owner/xattrs/mtime: the copy keeps them all
    let mut t = Tree::new().dir("c", 0o755);
    let names = ["open", "chmod", "chown", "setx", "rmx", "link", "rename"];
    for n in names {
        let p = format!("c/{n}");
        t = t
            .file(&p, 0o604, format!("data of {n}"))
            .owner(&p, 1234, 2345)
            .xattr(&p, "user.k", "uv")
            .xattr(&p, "trusted.k", "tv")
            .mtime(&p, 555_555);
    }
    let mut s = Scenario::new("copyup_each_trigger_keeps_file_metadata").lower(t);
    for n in [
        "open", "chmod", "chown", "setx", "rmx", "link", "linked", "renamed",
    ] {
        s = s.mtime_of(format!("c/{n}"));
    }
    s.run(|o| {
        o.open("c/open", WR, 0);
        o.want("ok");
        o.chmod("c/chmod", 0o640);
        o.want("ok");
        o.chown("c/chown", u32::MAX, 3456);
        o.want("ok");
        o.setxattr("c/setx", "user.added", "a");
        o.want("ok");
        o.removexattr("c/rmx", "user.k");
        o.want("ok");
        o.link("c/link", "c/linked");
        o.want("ok");
        o.rename("c/rename", "c/renamed");
        o.want("ok");
        o.stat("c/open");
        o.want("ok f mode=0604 uid=1234 gid=2345 size=12 nlink=1");
        o.stat("c/linked");
        o.want("ok f mode=0604 uid=1234 gid=2345 size=12 nlink=2");
        o.stat_times("c/renamed");
        o.want("ok mtime=555555.000000000 atime=555555.000000000");
        o.listxattr("c/renamed");
        o.want("ok [trusted.k,user.k]");
    });
}

#[test]
fn copyup_sparse_by_chmod_stays_sparse() {
    // a metadata-only copy-up (chmod) of a sparse file keeps the holes
    let lower = Tree::new()
        .sparse("s", 0o644, 32 << 20, 16 << 20, "middle")
        .sparse("t", 0o600, 16 << 20, (16 << 20) - 4, "tail");
    Scenario::new("copyup_sparse_by_chmod_stays_sparse")
        .lower(lower)
        .run(|o| {
            o.chmod("s", 0o640);
            o.want("ok");
            o.sparse("s");
            o.want("ok sparse");
            o.seek_data("s", 0);
            o.want("ok 16777216");
            o.setxattr("t", "user.x", "1");
            o.sparse("t");
            o.want("ok sparse");
            o.read("t");
        });
}

// ---- delete ------------------------------------------------------------------------------

#[test]
fn unlink_name_in_three_lowers_makes_one_whiteout() {
    // a name present in every lower: unlink writes one whiteout in the
    // (copied-up) parent and never a copy of any of the files
    Scenario::new("unlink_name_in_three_lowers_makes_one_whiteout")
        .lower(Tree::new().file("d/x", 0o644, vec![1u8; 200_000]))
        .lower(Tree::new().file("d/x", 0o644, "l2").file("d/y", 0o644, "y"))
        .lower(Tree::new().file("d/x", 0o644, "l3").file("top", 0o644, "t"))
        .run(|o| {
            o.unlink("d/x");
            o.want("ok");
            o.stat("d/x");
            o.want("ENOENT");
            o.readdir("d");
            o.want("ok [y]");
            o.unlink("top");
            o.want("ok");
            o.unlink("d/x");
            o.want("ENOENT");
        });
}

#[test]
fn unlink_lower_special_files_make_whiteouts() {
    // fifo, char device, symlink and a hard-linked file in a lower layer
    let lower = Tree::new()
        .fifo("p", 0o644)
        .chardev("c", 0o600, 1, 3)
        .symlink("s", "nowhere")
        .file("h1", 0o644, "hh")
        .hardlink("h2", "h1");
    Scenario::new("unlink_lower_special_files_make_whiteouts")
        .lower(lower)
        .run(|o| {
            for n in ["p", "c", "s", "h1"] {
                o.unlink(n);
                o.want("ok");
            }
            o.readdir("");
            o.want("ok [h2]");
            o.stat("h2");
            o.want("ok f mode=0644 uid=0 gid=0 size=2 nlink=2");
        });
}

#[test]
fn rmdir_merged_three_lowers_then_mkdir_opaque() {
    // a dir merged from 3 lowers emptied by unlinks, removed (whiteout),
    // then recreated: the new dir is opaque and shows none of the lower names
    Scenario::new("rmdir_merged_three_lowers_then_mkdir_opaque")
        .lower(Tree::new().file("m/a", 0o644, "a"))
        .lower(
            Tree::new()
                .file("m/b", 0o644, "b")
                .file("m/sub/x", 0o644, "x"),
        )
        .lower(Tree::new().file("m/c", 0o644, "c"))
        .run(|o| {
            o.rmdir("m");
            o.want("ENOTEMPTY");
            for n in ["m/a", "m/b", "m/c", "m/sub/x"] {
                o.unlink(n);
                o.want("ok");
            }
            o.rmdir("m/sub");
            o.want("ok");
            o.readdir("m");
            o.want("ok []");
            o.rmdir("m");
            o.want("ok");
            o.readdir("");
            o.want("ok []");
            o.mkdir("m", 0o750);
            o.want("ok");
            o.readdir("m");
            o.want("ok []");
            o.stat("m/a");
            o.want("ENOENT");
            o.stat("m");
            o.want("ok d mode=0750 uid=0 gid=0");
        });
}

// ---- rename ------------------------------------------------------------------------------

#[test]
fn rename_whiteout_flag_einval() {
    // overlay accepts only RENAME_NOREPLACE and RENAME_EXCHANGE
    sc("rename_whiteout_flag_einval").run(|o| {
        o.write("u1", "x");
        o.rename2("u1", "u2", RENAME_WHITEOUT);
        o.want("EINVAL");
        o.rename2("f", "g", RENAME_WHITEOUT);
        o.want("EINVAL");
        o.rename2("f", "g", RENAME_WHITEOUT | RENAME_NOREPLACE);
        o.want("EINVAL");
        o.rename2("f", "g", 1 << 20);
        o.want("EINVAL");
        o.stat("u2");
        o.want("ENOENT");
        o.read("f");
        o.want("ok \"lower f\\n\"");
    });
}

#[test]
fn rename_exchange_upper_file_with_lower_file() {
    sc("rename_exchange_upper_file_with_lower_file").run(|o| {
        o.write("u", "upper u");
        o.rename2("u", "f", RENAME_EXCHANGE);
        o.want("ok");
        o.read("f");
        o.want("ok \"upper u\"");
        o.read("u");
        o.want("ok \"lower f\\n\"");
        o.getxattr("u", "user.color");
        o.want("ok \"blue\"");
        o.rename2("d/a", "u", RENAME_EXCHANGE);
        o.want("ok");
        o.read("d/a");
        o.want("ok \"lower f\\n\"");
        o.read("u");
        o.want("ok \"a in d\\n\"");
    });
}

#[test]
fn rename_exchange_upper_dir_with_lower_file() {
    sc("rename_exchange_upper_dir_with_lower_file").run(|o| {
        o.mkdir("nd", 0o700);
        o.write("nd/in", "in");
        o.rename2("nd", "f", RENAME_EXCHANGE);
        o.want("ok");
        o.read("f/in");
        o.want("ok \"in\"");
        o.read("nd");
        o.want("ok \"lower f\\n\"");
        o.stat("f");
        o.want("ok d mode=0700 uid=0 gid=0");
        o.rename2("f", "empty", RENAME_EXCHANGE);
        o.want("EXDEV");
    });
}

#[test]
fn rename_opaque_dir_ok() {
    // a dir recreated over a whiteout is opaque (pure upper): it may move
    sc("rename_opaque_dir_ok").run(|o| {
        o.rmdir("empty");
        o.mkdir("empty", 0o755);
        o.write("empty/x", "x");
        o.rename("empty", "moved");
        o.want("ok");
        o.readdir("moved");
        o.want("ok [x]");
        o.stat("empty");
        o.want("ENOENT");
        o.rename("moved", "empty");
        o.want("ok");
        o.readdir("empty");
        o.want("ok [x]");
    });
}

#[test]
fn rename_copied_up_dir_exdev() {
    // a dir with lower content stays unmovable after copy-up (redirect_dir off)
    sc("rename_copied_up_dir_exdev").run(|o| {
        o.write("d/new", "n");
        o.rename("d", "d2");
        o.want("EXDEV");
        o.rename("empty", "empty2");
        o.want("EXDEV");
        o.rename2("d", "nonexistent", RENAME_NOREPLACE);
        o.want("EXDEV");
        o.readdir("d");
        o.want("ok [a,b,new,sub]");
    });
}

#[test]
fn rename_noreplace_over_whiteout_ok() {
    sc("rename_noreplace_over_whiteout_ok").run(|o| {
        o.unlink("f");
        o.write("g", "g");
        o.rename2("g", "f", RENAME_NOREPLACE);
        o.want("ok");
        o.read("f");
        o.want("ok \"g\"");
        o.rename2("d/a", "link", RENAME_NOREPLACE);
        o.want("EEXIST");
        o.rename2("d/a", "d/b", RENAME_NOREPLACE);
        o.want("EEXIST");
        o.rename2("d/a", "d/sub/a", RENAME_NOREPLACE);
        o.want("ok");
    });
}

// ---- links, special files, xattrs -----------------------------------------------------------

#[test]
fn hardlink_lower_and_upper_nlink() {
    sc("hardlink_lower_and_upper_nlink").run(|o| {
        o.link("f", "f2");
        o.want("ok");
        o.stat("f");
        o.want("ok f mode=0644 uid=0 gid=0 size=8 nlink=2");
        o.link("f2", "d/f3");
        o.want("ok");
        o.stat("f2");
        o.want("ok f mode=0644 uid=0 gid=0 size=8 nlink=3");
        o.same_ino("f", "d/f3");
        o.want("ok same");
        o.unlink("f");
        o.stat("d/f3");
        o.want("ok f mode=0644 uid=0 gid=0 size=8 nlink=2");
        o.append("f2", "+");
        o.read("d/f3");
        o.want("ok \"lower f\\n+\"");
    });
}

#[test]
fn symlink_relative_dangling_and_to_dir() {
    let lower = base().symlink("ld", "d").symlink("d/up", "../f");
    Scenario::new("symlink_relative_dangling_and_to_dir")
        .lower(lower)
        .run(|o| {
            o.read("d/up");
            o.want("ok \"lower f\\n\"");
            o.readdir("ld");
            o.want("ok [a,b,sub,up]");
            o.write("ld/via_link", "v");
            o.want("ok");
            o.read("d/via_link");
            o.want("ok \"v\"");
            o.symlink("sub/deep", "d/rel");
            o.want("ok");
            o.read("d/rel");
            o.want("ok \"deep\\n\"");
            o.symlink("../../nowhere", "d/dangling");
            o.stat_follow("d/dangling");
            o.want("ENOENT");
            o.symlink("d/sub", "todir");
            o.stat_follow("todir");
            o.readdir("todir");
            o.want("ok [deep]");
            o.stat("todir");
            o.want("ok l mode=0777 uid=0 gid=0 size=5 nlink=1 -> d/sub");
        });
}

#[test]
fn socket_bind_and_mknod_sock() {
    sc("socket_bind_and_mknod_sock").run(|o| {
        o.bind_unix("sk");
        o.want("ok");
        o.stat("sk");
        o.want("ok s mode=0755 uid=0 gid=0 size=0 nlink=1");
        o.bind_unix("sk");
        o.want("EADDRINUSE");
        o.mknod_sock("d/s2", 0o600);
        o.want("ok");
        o.stat("d/s2");
        o.want("ok s mode=0600 uid=0 gid=0 size=0 nlink=1");
        o.rename("d/s2", "s3");
        o.want("ok");
        o.unlink("sk");
        o.want("ok");
    });
}

#[test]
fn mknod_block_and_char_devices() {
    let lower = Tree::new().chardev("lc", 0o620, 1, 5).dir("pub", 0o777);
    Scenario::new("mknod_block_and_char_devices")
        .lower(lower)
        .run(|o| {
            o.mknod_block("b", 0o660, 7, 0);
            o.want("ok");
            o.stat("b");
            o.want("ok b mode=0640 uid=0 gid=0 size=0 nlink=1 rdev=7:0");
            o.mknod_char("c", 0o600, 10, 200);
            o.want("ok");
            o.stat("c");
            o.want("ok c mode=0600 uid=0 gid=0 size=0 nlink=1 rdev=10:200");
            o.chown("lc", 0, 5);
            o.want("ok");
            o.stat("lc");
            o.want("ok c mode=0620 uid=0 gid=5 size=0 nlink=1 rdev=1:5");
            o.as_user(1000, 1000, |o| {
                o.mknod_block("pub/b", 0o600, 7, 1);
                o.want("EPERM");
            });
            o.mknod_char("c", 0o600, 1, 3);
            o.want("EEXIST");
        });
}

#[test]
fn xattr_user_trusted_roundtrip_upper_and_lower() {
    sc("xattr_user_trusted_roundtrip_upper_and_lower").run(|o| {
        o.write("n", "n");
        o.setxattr("n", "user.a", "1");
        o.want("ok");
        o.setxattr("n", "trusted.b", "2");
        o.want("ok");
        o.listxattr("n");
        o.want("ok [trusted.b,user.a]");
        o.getxattr("n", "trusted.b");
        o.want("ok \"2\"");
        o.removexattr("n", "user.a");
        o.want("ok");
        o.removexattr("n", "user.a");
        o.want("ENODATA");
        o.listxattr("n");
        o.want("ok [trusted.b]");
        o.setxattr("d", "trusted.dir", "x");
        o.want("ok");
        o.listxattr("d");
        o.want("ok [trusted.dir]");
        o.getxattr("f", "user.color");
        o.want("ok \"blue\"");
        o.removexattr("d/a", "user.none");
        o.want("ENODATA");
    });
}

#[test]
fn xattr_overlay_origin_impure_not_listed() {
    // trusted.overlay.* on lower objects and those the overlay writes itself
    // (origin on copy-up, impure on a dir that receives a copied-up file by
    // rename) are never listed
    Scenario::new("xattr_overlay_origin_impure_not_listed")
        .lower(
            base()
                .xattr("d/a", "trusted.overlay.origin", "garbage")
                .xattr("d/a", "user.keep", "k")
                .xattr("d", "trusted.overlay.impure", "y"),
        )
        .run(|o| {
            o.listxattr("d/a");
            o.want("ok [user.keep]");
            o.listxattr("d");
            o.want("ok []");
            o.getxattr("d/a", "trusted.overlay.origin");
            o.want("ENODATA");
            o.chmod("d/b", 0o640);
            o.listxattr("d/b");
            o.want("ok []");
            o.listxattr("d");
            o.want("ok []");
            o.mkdir("nd", 0o755);
            o.rename("f", "nd/f");
            o.want("ok");
            o.listxattr("nd");
            o.want("ok []");
            o.listxattr("nd/f");
            o.want("ok [user.color]");
            o.setxattr("d/a", "user.more", "m");
            o.listxattr("d/a");
            o.want("ok [user.keep,user.more]");
        });
}

#[test]
fn xattr_upper_dir_impure_not_listed() {
    // an upper dir carrying trusted.overlay.impure does not list it. The
    // kernel also drops an impure flag that no entry justifies when it reads
    // the dir (compared in the upper dir after unmount).
    Scenario::new("xattr_upper_dir_impure_not_listed")
        .lower(base())
        .upper(
            Tree::new()
                .dir("ud", 0o755)
                .xattr("ud", "trusted.overlay.impure", "y")
                .xattr("ud", "user.ud", "1")
                .file("ud/x", 0o644, "x"),
        )
        .run(|o| {
            o.listxattr("ud");
            o.want("ok [user.ud]");
            o.getxattr("ud", "user.ud");
            o.want("ok \"1\"");
            o.readdir("ud");
            o.want("ok [x]");
            o.listxattr("ud/x");
            o.want("ok []");
        });
}

// ---- permissions ---------------------------------------------------------------------------

#[test]
fn perm_user_unlink_in_0777_dir_ok_root_file_eacces() {
    let lower = Tree::new()
        .dir("pub", 0o777)
        .file("pub/rootfile", 0o644, "r")
        .file("pub/rootfile2", 0o644, "r2");
    Scenario::new("perm_user_unlink_in_0777_dir_ok_root_file_eacces")
        .lower(lower)
        .run(|o| {
            o.as_user(1000, 1000, |o| {
                o.write("pub/rootfile2", "mine?");
                o.want("open:EACCES");
                o.truncate("pub/rootfile2", 0);
                o.want("EACCES");
                o.unlink("pub/rootfile");
                o.want("ok");
                o.rename("pub/rootfile2", "pub/moved");
                o.want("ok");
            });
            o.readdir("pub");
            o.want("ok [moved]");
            o.stat("pub/moved");
            o.want("ok f mode=0644 uid=0 gid=0 size=2 nlink=1");
        });
}

#[test]
fn perm_sticky_dir_unlink_other_users_file_eperm() {
    let lower = Tree::new()
        .dir("t", 0o1777)
        .file("t/other", 0o666, "o")
        .owner("t/other", 1001, 1001)
        .file("t/mine", 0o644, "m")
        .owner("t/mine", 1000, 1000);
    Scenario::new("perm_sticky_dir_unlink_other_users_file_eperm")
        .lower(lower)
        .run(|o| {
            o.as_user(1000, 1000, |o| {
                o.unlink("t/other");
                o.want("EPERM");
                o.rename("t/other", "t/taken");
                o.want("EPERM");
                o.append("t/other", "+");
                o.want("ok");
                o.unlink("t/mine");
                o.want("ok");
                o.write("t/new", "n");
                o.want("ok");
            });
            o.as_user(1001, 1001, |o| {
                o.unlink("t/new");
                o.want("EPERM");
                o.unlink("t/other");
                o.want("ok");
            });
            o.readdir("t");
            o.want("ok [new]");
        });
}

#[test]
fn perm_new_objects_owned_by_caller_uid_gid() {
    let lower = Tree::new().dir("pub", 0o777);
    Scenario::new("perm_new_objects_owned_by_caller_uid_gid")
        .lower(lower)
        .run(|o| {
            o.as_user(1000, 2000, |o| {
                o.write("pub/file", "f");
                o.want("ok");
                o.stat("pub/file");
                o.want("ok f mode=0644 uid=1000 gid=2000 size=1 nlink=1");
                o.mkdir("pub/dir", 0o777);
                o.stat("pub/dir");
                o.want("ok d mode=0755 uid=1000 gid=2000");
                o.mknod_fifo("pub/fifo", 0o666);
                o.stat("pub/fifo");
                o.want("ok p mode=0644 uid=1000 gid=2000 size=0 nlink=1");
                o.symlink("file", "pub/sym");
                o.stat("pub/sym");
                o.want("ok l mode=0777 uid=1000 gid=2000 size=4 nlink=1 -> file");
                o.bind_unix("pub/sock");
                o.stat("pub/sock");
                o.want("ok s mode=0755 uid=1000 gid=2000 size=0 nlink=1");
                o.mknod_char("pub/dev", 0o600, 1, 3);
                o.want("EPERM");
                o.link("pub/file", "pub/hl");
                o.want("ok");
                o.chown("pub/file", 1001, u32::MAX);
                o.want("EPERM");
            });
        });
}

#[test]
fn setgid_dir_new_file_gets_group_subdir_setgid() {
    let lower = Tree::new()
        .dir("sg", 0o2777)
        .owner("sg", 0, 1234)
        .dir("sg", 0o2777);
    Scenario::new("setgid_dir_new_file_gets_group_subdir_setgid")
        .lower(lower)
        .run(|o| {
            o.as_user(1000, 1000, |o| {
                o.write("sg/f", "x");
                o.want("ok");
                o.stat("sg/f");
                o.want("ok f mode=0644 uid=1000 gid=1234 size=1 nlink=1");
                o.mkdir("sg/sub", 0o775);
                o.stat("sg/sub");
                o.want("ok d mode=2755 uid=1000 gid=1234");
                o.write("sg/sub/g", "y");
                o.stat("sg/sub/g");
                o.want("ok f mode=0644 uid=1000 gid=1234 size=1 nlink=1");
                o.mknod_fifo("sg/p", 0o644);
                o.stat("sg/p");
                o.want("ok p mode=0644 uid=1000 gid=1234 size=0 nlink=1");
                o.symlink("f", "sg/l");
                o.stat("sg/l");
                o.want("ok l mode=0777 uid=1000 gid=1234 size=1 nlink=1 -> f");
                // a setgid file created by a non-member loses S_ISGID
                o.write_flags("sg/sgf", WR | OFlag::O_CREAT, 0o2755, "z");
                o.stat("sg/sgf");
                o.want("ok f mode=0755 uid=1000 gid=1234 size=1 nlink=1");
            });
            // same rules in a setgid dir that exists only in the upper layer
            o.mkdir("usg", 0o755);
            o.chown("usg", 0, 4321);
            o.chmod("usg", 0o2777);
            o.as_user(1000, 1000, |o| {
                o.mkdir("usg/s", 0o700);
                o.stat("usg/s");
                o.want("ok d mode=2700 uid=1000 gid=4321");
            });
        });
}

#[test]
fn umask_027_077_0_applied_once() {
    sc("umask_027_077_0_applied_once").umask(0o027).run(|o| {
        o.write_flags("a", WR | OFlag::O_CREAT, 0o666, "a");
        o.stat("a");
        o.want("ok f mode=0640 uid=0 gid=0 size=1 nlink=1");
        o.umask(0o077);
        o.mkdir("b", 0o777);
        o.stat("b");
        o.want("ok d mode=0700 uid=0 gid=0");
        o.write_flags("d/c", WR | OFlag::O_CREAT, 0o666, "c");
        o.stat("d/c");
        o.want("ok f mode=0600 uid=0 gid=0 size=1 nlink=1");
        o.mknod_char("cdev", 0o666, 1, 3);
        o.stat("cdev");
        o.want("ok c mode=0600 uid=0 gid=0 size=0 nlink=1 rdev=1:3");
        o.umask(0);
        o.mkdir("e", 0o777);
        o.stat("e");
        o.want("ok d mode=0777 uid=0 gid=0");
        o.write_flags("d/sub/g", WR | OFlag::O_CREAT, 0o666, "g");
        o.stat("d/sub/g");
        o.want("ok f mode=0666 uid=0 gid=0 size=1 nlink=1");
        o.mknod_fifo("p", 0o606);
        o.stat("p");
        o.want("ok p mode=0606 uid=0 gid=0 size=0 nlink=1");
        o.umask(0o027);
        o.as_user(1000, 1000, |o| {
            o.mkdir("e/u", 0o777);
            o.stat("e/u");
            o.want("ok d mode=0750 uid=1000 gid=1000");
        });
    });
}

// ---- inode numbers ---------------------------------------------------------------------------

#[test]
fn ino_copied_up_file_equals_lower_file() {
    sc("ino_copied_up_file_equals_lower_file").run(|o| {
        o.ino_as_layer("f", "l1", "f");
        o.want("ok same");
        o.ino_stable("f", |o| {
            o.append("f", "+");
        });
        o.want("ok same");
        o.ino_as_layer("f", "l1", "f");
        o.want("ok same");
        o.ino_stable("d/sub/deep", |o| {
            o.setxattr("d/sub/deep", "user.x", "1");
        });
        o.want("ok same");
        o.ino_as_layer("d/sub/deep", "l1", "d/sub/deep");
        o.want("ok same");
        o.ino_stable("d/b", |o| {
            o.rename("d/b", "d/b2");
            o.rename("d/b2", "d/b");
        });
        o.want("ok same");
    });
}

#[test]
fn ino_merged_dir_equals_lower_dir() {
    Scenario::new("ino_merged_dir_equals_lower_dir")
        .lower(Tree::new().file("m/a", 0o644, "a"))
        .lower(
            Tree::new()
                .file("m/b", 0o644, "b")
                .file("only2/x", 0o644, "x"),
        )
        .lower(Tree::new().file("m/c", 0o644, "c"))
        .run(|o| {
            o.ino_as_layer("m", "l1", "m");
            o.want("ok same");
            o.ino_as_layer("only2", "l2", "only2");
            o.want("ok same");
            o.write("m/new", "n");
            o.ino_as_layer("m", "l1", "m");
            o.want("ok same");
            o.write("only2/new", "n");
            o.ino_as_layer("only2", "l2", "only2");
            o.want("ok same");
            o.readdir("");
            clean_readdir(o);
        });
}

// ---- data ------------------------------------------------------------------------------------

#[test]
fn utimensat_now_and_omit() {
    // Every file starts with old times, so that only a union that did set them to now
    // shows `now` (a file made by the test would show it anyway).
    let lower = base()
        .file("g", 0o644, "g")
        .mtime("g", 2_000_000)
        .mtime("d/a", 1_000_000)
        .mtime("d/b", 1_000_000)
        .mtime("d/sub/deep", 1_000_000);
    Scenario::new("utimensat_now_and_omit")
        .lower(lower)
        .mtime_of("f")
        .mtime_of("g")
        .run(|o| {
            o.utimens("f", (0, libc::UTIME_OMIT), (3_000_000, 5));
            o.want("ok");
            o.stat_times("f");
            o.want("ok mtime=3000000.000000005 atime=1000000.000000000");
            o.stat_times_now("d/a");
            o.want("ok mtime=1000000.000000000 atime=1000000.000000000");
            o.utimens("d/a", (0, libc::UTIME_OMIT), (0, libc::UTIME_NOW));
            o.want("ok");
            o.stat_times_now("d/a");
            o.want("ok mtime=now atime=1000000.000000000");
            o.utimens("d/b", (4_000_000, 0), (0, libc::UTIME_OMIT));
            o.want("ok");
            o.stat_times_now("d/b");
            o.want("ok mtime=1000000.000000000 atime=4000000.000000000");
            o.utimens("g", (0, libc::UTIME_OMIT), (0, libc::UTIME_OMIT));
            o.want("ok");
            o.stat_times("g");
            o.want("ok mtime=2000000.000000000 atime=2000000.000000000");
            o.stat_times_now("d/sub/deep");
            o.want("ok mtime=1000000.000000000 atime=1000000.000000000");
            o.utimens("d/sub/deep", (0, libc::UTIME_NOW), (0, libc::UTIME_NOW));
            o.want("ok");
            o.stat_times_now("d/sub/deep");
            o.want("ok mtime=now atime=now");
            // An upper file set old first, then to now.
            o.write("n", "n");
            o.utimens("n", (1_000_000, 0), (1_000_000, 0));
            o.want("ok");
            o.stat_times_now("n");
            o.want("ok mtime=1000000.000000000 atime=1000000.000000000");
            o.utimens("n", (0, libc::UTIME_NOW), (0, libc::UTIME_OMIT));
            o.want("ok");
            o.stat_times_now("n");
            o.want("ok mtime=1000000.000000000 atime=now");
            o.utimens("n", (0, libc::UTIME_OMIT), (0, libc::UTIME_NOW));
            o.want("ok");
            o.stat_times_now("n");
            o.want("ok mtime=now atime=now");
        });
}

#[test]
fn copy_file_range_within_one_file() {
    if !difftests::scenario::require_one_fs("copy_file_range_within_one_file", CROSS_FS_COPY) {
        return;
    }
    sc("copy_file_range_within_one_file").run(|o| {
        // lower file: opening the destination for write copies it up
        o.copy_range_at("f", 0, "f", 8, 8);
        o.want("ok 8");
        o.read("f");
        o.want("ok \"lower f\\nlower f\\n\"");
        o.copy_range_at("f", 0, "f", 4, 8);
        o.want("EINVAL");
        o.write("n", "0123456789");
        o.copy_range_at("n", 6, "n", 0, 4);
        o.want("ok 4");
        o.read("n");
        o.want("ok \"6789456789\"");
        o.copy_range_at("d/a", 2, "n", 8, 100);
        o.want("ok 5");
        o.read("n");
        o.want("ok \"67894567in d\\n\"");
    });
}

#[test]
fn fallocate_punch_hole_and_seek_on_lower_file() {
    let lower = Tree::new().file("dense", 0o644, vec![0xabu8; 256 << 10]);
    Scenario::new("fallocate_punch_hole_and_seek_on_lower_file")
        .lower(lower)
        .run(|o| {
            o.fallocate(
                "dense",
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                64 << 10,
                128 << 10,
            );
            o.want("ok");
            o.stat("dense");
            o.seek_hole("dense", 0);
            o.want("ok 65536");
            o.seek_data("dense", 65536);
            o.want("ok 196608");
            o.read("dense");
            o.fallocate("dense", libc::FALLOC_FL_KEEP_SIZE, 1 << 20, 4096);
            o.want("ok");
            o.stat("dense");
            o.want("ok f mode=0644 uid=0 gid=0 size=262144 nlink=1");
            o.fallocate("dense", 0, 1 << 20, 4096);
            o.stat("dense");
            o.want("ok f mode=0644 uid=0 gid=0 size=1052672 nlink=1");
            o.fsync("dense");
            o.want("ok");
        });
}

#[test]
fn fsync_lower_file_and_dirs_no_copyup() {
    sc("fsync_lower_file_and_dirs_no_copyup").run(|o| {
        o.fsync("f");
        o.want("ok");
        o.fsync("d");
        o.want("ok");
        o.fsync("");
        o.want("ok");
        o.fsync("d/sub/deep");
        o.want("ok");
        o.write("n", "n");
        o.fsync("n");
        o.want("ok");
    });
}

// ---- names -------------------------------------------------------------------------------------

#[test]
fn name_255_bytes_lower_rename_unlink() {
    let a = "a".repeat(255);
    let b = "b".repeat(255);
    let c = "c".repeat(255);
    let lower = Tree::new()
        .file(format!("d/{a}"), 0o644, "A")
        .file(format!("d/{b}"), 0o644, "B")
        .dir(&c, 0o755)
        .file(format!("{c}/{a}"), 0o644, "CA");
    Scenario::new("name_255_bytes_lower_rename_unlink")
        .lower(lower)
        .run(move |o| {
            o.readdir("d");
            o.want(&format!("ok [{a},{b}]"));
            o.rename(format!("d/{a}"), format!("d/{c}"));
            o.want("ok");
            o.unlink(format!("d/{b}"));
            o.want("ok");
            o.readdir("d");
            o.want(&format!("ok [{c}]"));
            o.read(format!("{c}/{a}"));
            o.want("ok \"CA\"");
            o.rename(format!("d/{c}"), format!("d/{c}x"));
            o.want("ENAMETOOLONG");
            o.link(format!("d/{c}"), format!("{c}x"));
            o.want("ENAMETOOLONG");
            o.symlink("t", format!("{c}/{c}x"));
            o.want("ENAMETOOLONG");
        });
}

#[test]
fn non_utf8_lower_names_unlink_rename_whiteout() {
    let lower = Tree::new()
        .file(b"dir/\xff\xfe", 0o644, "ff")
        .file(b"dir/caf\xe9", 0o644, "cafe")
        .file(b"dir/\x80x\x81", 0o644, "80")
        .dir(b"\xc0\xc1", 0o755)
        .file(b"\xc0\xc1/in", 0o644, "in");
    Scenario::new("non_utf8_lower_names_unlink_rename_whiteout")
        .lower(lower)
        .run(|o| {
            o.readdir("dir");
            o.want("ok [caf\\xe9,\\x80x\\x81,\\xff\\xfe]");
            o.unlink(b"dir/\xff\xfe");
            o.want("ok");
            o.rename(b"dir/caf\xe9", b"dir/\xfd\xfc");
            o.want("ok");
            o.write(b"dir/\xff\xfe", "new");
            o.want("ok");
            o.readdir("dir");
            o.want("ok [\\x80x\\x81,\\xfd\\xfc,\\xff\\xfe]");
            o.rename(b"\xc0\xc1", b"x");
            o.want("EXDEV");
            o.mkdir(b"\xc0\xc1/\xee", 0o755);
            o.want("ok");
            o.readdir(b"\xc0\xc1");
            o.want("ok [in,\\xee]");
        });
}

// ---- read-only union -------------------------------------------------------------------------

#[test]
fn ro_union_every_write_op_erofs() {
    // (the kernel needs two lower layers without an upper)
    sc("ro_union_every_write_op_erofs")
        .readonly()
        .lower(Tree::new().file("g2", 0o644, "g2"))
        .run(|o| {
            o.open("new", WR | OFlag::O_CREAT, 0o644);
            o.want("EROFS");
            o.open("f", OFlag::O_RDWR, 0);
            o.want("EROFS");
            o.open("f", OFlag::O_RDONLY | OFlag::O_TRUNC, 0);
            o.want("EROFS");
            o.rename("f", "g");
            o.want("EROFS");
            o.rename("d/a", "d/b");
            o.want("EROFS");
            o.chmod("f", 0o600);
            o.want("EROFS");
            o.chown("f", 1, 1);
            o.want("EROFS");
            o.truncate("f", 0);
            o.want("EROFS");
            o.utimes("f", 1, 1);
            o.want("EROFS");
            o.symlink("f", "s");
            o.want("EROFS");
            o.link("f", "h");
            o.want("EROFS");
            o.mknod_fifo("p", 0o644);
            o.want("EROFS");
            o.rmdir("empty");
            o.want("EROFS");
            o.removexattr("f", "user.color");
            o.want("EROFS");
            o.setxattr("d", "user.x", "1");
            o.want("EROFS");
            o.read("f");
            o.want("ok \"lower f\\n\"");
        });
}

// ---- open files / lifetime ------------------------------------------------------------------

#[test]
fn rename_over_open_file_keeps_old_data() {
    sc("rename_over_open_file_keeps_old_data").run(|o| {
        let lo = o.open_keep("d/a", OFlag::O_RDONLY);
        o.rename("f", "d/a");
        o.want("ok");
        o.fd_read(lo);
        o.want("ok \"a in d\\n\"");
        o.read("d/a");
        o.want("ok \"lower f\\n\"");
        o.write("u", "upper old");
        let up = o.open_keep("u", OFlag::O_RDWR);
        o.write("u2", "upper new");
        o.rename("u2", "u");
        o.want("ok");
        o.fd_read(up);
        o.want("ok \"upper old\"");
        o.fd_write(up, "X");
        o.fd_stat(up);
        o.want("ok mode=100644 size=9 nlink=0");
        o.read("u");
        o.want("ok \"upper new\"");
        o.close(lo);
        o.close(up);
    });
}

#[test]
fn rdonly_fd_before_copyup_sees_new_data() {
    sc("rdonly_fd_before_copyup_sees_new_data").run(|o| {
        let fd = o.open_keep("d/a", OFlag::O_RDONLY);
        o.fd_read(fd);
        o.want("ok \"a in d\\n\"");
        o.append("d/a", "appended");
        o.want("ok");
        o.fd_read(fd);
        o.want("ok \"a in d\\nappended\"");
        o.truncate("d/a", 2);
        o.fd_read(fd);
        o.want("ok \"a \"");
        o.fd_stat(fd);
        o.want("ok mode=100644 size=2 nlink=1");
        o.close(fd);
    });
}

#[test]
fn unlink_open_upper_file_keeps_data() {
    sc("unlink_open_upper_file_keeps_data").run(|o| {
        o.write("u", "upper data");
        let fd = o.open_keep("u", OFlag::O_RDWR);
        o.unlink("u");
        o.want("ok");
        o.fd_read(fd);
        o.want("ok \"upper data\"");
        o.fd_write(fd, "Z");
        o.fd_read(fd);
        o.want("ok \"Zpper data\"");
        o.fd_stat(fd);
        o.want("ok mode=100644 size=10 nlink=0");
        o.write("u", "again");
        o.read("u");
        o.want("ok \"again\"");
        o.fd_read(fd);
        o.want("ok \"Zpper data\"");
        o.close(fd);
    });
}

#[test]
fn userxattr_as_root_keeps_markers_in_user_namespace() {
    // `-o userxattr`: opaque, origin and impure markers go to user.overlay.*, also as
    // root; copy-up of a FIFO (which cannot carry user.* xattrs) still works.
    let lower = Tree::new()
        .file("d/a", 0o644, "a")
        .file("d/b", 0o644, "b")
        .dir("e", 0o755)
        .file("e/x", 0o644, "x")
        .fifo("p", 0o644);
    Scenario::new("userxattr_as_root_keeps_markers_in_user_namespace")
        .lower(lower)
        .mount_opts("userxattr")
        .run(|o| {
            o.write("d/a", "changed");
            o.unlink("d/b");
            o.want("ok");
            o.unlink("e/x");
            o.rmdir("e");
            o.want("ok");
            o.mkdir("e", 0o755);
            o.want("ok");
            o.readdir("e");
            o.chmod("p", 0o600);
            o.want("ok");
            o.readdir("d");
        });
}

#[test]
fn device_node_in_union_is_usable() {
    // A root filesystem needs working device nodes: as root the union is mounted without
    // nodev, like the kernel's overlay (writing to a copy of /dev/null works; reading it
    // gives nothing).
    Scenario::new("device_node_in_union_is_usable")
        .lower(Tree::new().chardev("lnull", 0o666, 1, 3))
        .run(|o| {
            o.mknod_char("null", 0o666, 1, 3);
            o.want("ok");
            o.write("null", "discarded");
            o.want("ok");
            o.read("null");
            o.write("lnull", "discarded");
            o.want("ok");
            o.read("lnull");
        });
}
