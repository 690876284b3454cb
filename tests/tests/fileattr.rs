//! File flags through the union (`chattr`, `lsattr`), against the kernel's overlay: flags
//! of lower and upper files and directories as `lsattr` shows them, `chattr +a`, `+i`, `+A`
//! on both (a copy-up for a lower one), what copy-up takes along (noatime on the copy,
//! append-only and immutable as the `protattr` xattr), and what append-only and immutable
//! then forbid. The upper walk shows the real inodes' flags, so a flag set on an upper
//! inode where the kernel keeps it in the xattr is a difference.

use difftests::{OFlag, Scenario, Tree};

/// Lower files and directories with and without flags.
fn flagged() -> Tree {
    Tree::new()
        .file("plain", 0o644, "plain\n")
        .file("app", 0o644, "app\n")
        .file("imm", 0o644, "imm\n")
        .file("noat", 0o644, "noat\n")
        .dir("dir", 0o755)
        .file("dir/x", 0o644, "x\n")
        .dir("idir", 0o755)
        .file("idir/y", 0o644, "y\n")
        // Old times, so that a union that ignored UTIME_NOW would show.
        .mtime("app", 1_000_000)
        .mtime("imm", 1_000_000)
        .chattr("app", "+a")
        .chattr("imm", "+i")
        .chattr("noat", "+A")
        .chattr("idir", "+i")
}

/// Why these run on one filesystem only.
const NO_FLAGS_ON_TMPFS: &str = "the other layouts put layers on tmpfs, which refuses \
append-only and immutable (EOPNOTSUPP) on the kernel's overlay too";

#[test]
fn lsattr_and_chattr_on_lower_and_upper() {
    if !difftests::scenario::require_one_fs(
        "lsattr_and_chattr_on_lower_and_upper",
        NO_FLAGS_ON_TMPFS,
    ) {
        return;
    }
    Scenario::new("lsattr_and_chattr_on_lower_and_upper")
        .lower(flagged())
        .upper(Tree::new().file("up", 0o644, "up\n").dir("udir", 0o755))
        .run(|o| {
            for p in ["plain", "app", "imm", "noat", "dir", "idir", "up", "udir"] {
                o.lsattr(p);
            }
            // lower objects: copied up, then flagged
            for (p, spec) in [("plain", "+a"), ("dir/x", "+A"), ("dir", "+i")] {
                o.chattr(p, spec);
                o.want("ok");
                o.lsattr(p);
            }
            o.chattr("plain", "+i");
            o.lsattr("plain");
            // upper objects
            for spec in ["+a", "+i", "+A", "-i", "-a"] {
                o.chattr("up", spec);
                o.want("ok");
                o.lsattr("up");
            }
            o.chattr("udir", "+a");
            o.lsattr("udir");
            // a lower file's own flag taken off: copied up with it first
            o.chattr("noat", "-A");
            o.lsattr("noat");
            o.chattr("app", "-a");
            o.want("ok");
            o.lsattr("app");
            o.write("app", "rewritten\n");
            o.want("ok");
            // clean up what would stay immutable
            o.chattr("plain", "-i");
            o.chattr("dir", "-i");
        });
}

/// The same through `FS_IOC_FSGETXATTR`/`FSSETXATTR` (xflags: append 0x10, immutable
/// 0x8, noatime 0x40), as `xfs_io` and `chattr -p` use them.
#[test]
fn fsxattr_get_and_set() {
    if !difftests::scenario::require_one_fs("fsxattr_get_and_set", NO_FLAGS_ON_TMPFS) {
        return;
    }
    Scenario::new("fsxattr_get_and_set")
        .lower(flagged())
        .upper(Tree::new().file("up", 0o644, "up\n"))
        .run(|o| {
            for p in ["plain", "app", "imm", "noat", "idir", "up"] {
                o.fsxattr(p);
            }
            for (p, set, clear) in [
                ("plain", 0x10, 0),
                ("up", 0x40 | 0x8, 0),
                ("up", 0, 0x8),
                ("noat", 0, 0x40),
                ("imm", 0, 0x8),
            ] {
                o.fsxattr_set(p, set, clear);
                o.want("ok");
                o.fsxattr(p);
                o.lsattr(p);
            }
            o.append("plain", "more\n");
            o.want("ok");
            o.write("plain", "over\n");
            o.want("open:EPERM");
            o.fsxattr_set("plain", 0, 0x10);
            o.write("imm", "over\n");
            o.want("ok");
        });
}

/// A lower file with noatime, append-only or immutable keeps it across copy-ups: of the
/// file itself (where allowed) and of its directory.
#[test]
fn copy_up_takes_file_flags_along() {
    if !difftests::scenario::require_one_fs("copy_up_takes_file_flags_along", NO_FLAGS_ON_TMPFS) {
        return;
    }
    let lower = Tree::new()
        .file("d/noat", 0o644, "n\n")
        .file("d/app", 0o644, "a\n")
        .file("d/imm", 0o644, "i\n")
        .file("d/other", 0o644, "o\n")
        .dir("id", 0o755)
        .file("id/f", 0o644, "f\n")
        .chattr("d/noat", "+A")
        .chattr("d/app", "+a")
        .chattr("d/imm", "+i")
        .chattr("id", "+i");
    Scenario::new("copy_up_takes_file_flags_along")
        .lower(lower)
        .run(|o| {
            o.append("d/noat", "more\n");
            o.want("ok");
            o.append("d/app", "more\n");
            o.want("ok");
            o.chmod("d/other", 0o600);
            // the immutable directory copied up as the parent of a changed child
            o.append("id/f", "more\n");
            o.want("ok");
            for p in ["d/noat", "d/app", "d/imm", "id", "id/f"] {
                o.lsattr(p);
            }
            o.chattr("d/app", "-a");
            o.chattr("id", "-i");
            o.lsattr("id");
        });
}

/// What append-only and immutable forbid, on lower objects and on upper ones flagged
/// through the union: each step states the kernel's errno.
#[test]
fn append_only_and_immutable_are_enforced() {
    if !difftests::scenario::require_one_fs(
        "append_only_and_immutable_are_enforced",
        NO_FLAGS_ON_TMPFS,
    ) {
        return;
    }
    Scenario::new("append_only_and_immutable_are_enforced")
        .lower(flagged())
        .run(|o| {
            o.write("u_app", "u\n");
            o.utimes("u_app", 1_000_000, 1_000_000);
            o.chattr("u_app", "+a");
            o.write("u_imm", "u\n");
            o.utimes("u_imm", 1_000_000, 1_000_000);
            o.chattr("u_imm", "+i");
            o.mkdir("u_idir", 0o755);
            o.write("u_idir/z", "z\n");
            o.chattr("u_idir", "+i");
            o.mkdir("u_adir", 0o755);
            o.write("u_adir/z", "z\n");
            o.chattr("u_adir", "+a");
            for p in ["app", "u_app"] {
                o.append(p, "more\n");
                o.want("ok");
                o.write(p, "over\n");
                o.want("open:EPERM");
                o.open(p, OFlag::O_WRONLY, 0);
                o.want("EPERM");
                o.truncate(p, 1);
                o.want("EPERM");
                o.chmod(p, 0o600);
                o.want("EPERM");
                o.utimes(p, 5, 5);
                o.want("EPERM");
                // to now: allowed on an append-only file
                o.utimens(p, (0, libc::UTIME_NOW), (0, libc::UTIME_NOW));
                o.want("ok");
                o.stat_times_now(p);
                o.want("ok mtime=now atime=now");
                o.setxattr(p, "user.k", "v");
                o.want("EPERM");
                o.unlink(p);
                o.want("EPERM");
                o.rename(p, "moved");
                o.want("EPERM");
                o.link(p, "hard");
                o.want("EPERM");
                o.read(p);
            }
            for p in ["imm", "u_imm"] {
                o.append(p, "more\n");
                o.want("open:EPERM");
                o.chmod(p, 0o600);
                o.want("EPERM");
                o.chown(p, 1000, 1000);
                o.want("EPERM");
                o.utimens(p, (0, libc::UTIME_NOW), (0, libc::UTIME_NOW));
                o.want("EPERM");
                o.stat_times_now(p);
                o.want("ok mtime=1000000.000000000 atime=1000000.000000000");
                o.removexattr(p, "user.k");
                o.unlink(p);
                o.want("EPERM");
                o.rename(p, "moved");
                o.want("EPERM");
                o.read(p);
            }
            for d in ["idir", "u_idir"] {
                o.write(format!("{d}/new"), "n");
                o.want("open:EPERM");
                o.mkdir(format!("{d}/sub"), 0o755);
                o.want("EPERM");
                o.unlink(format!("{d}/{}", if d == "idir" { "y" } else { "z" }));
                o.want("EPERM");
                o.rmdir(d);
                o.readdir(d);
            }
            // append-only directory: names may be added, not removed
            o.write("u_adir/new", "n");
            o.want("ok");
            o.unlink("u_adir/z");
            o.want("EPERM");
            o.rename("u_adir/new", "out");
            o.want("EPERM");
            o.readdir("u_adir");
            for (p, spec) in [
                ("u_app", "-a"),
                ("u_imm", "-i"),
                ("u_idir", "-i"),
                ("u_adir", "-a"),
            ] {
                o.chattr(p, spec);
                o.want("ok");
            }
            o.unlink("u_imm");
            o.want("ok");
        });
}
