//! POSIX ACLs through the union (issue 15), against the kernel's overlay: an ACL that
//! denies or grants a user access to a lower or upper file or directory, default ACLs on
//! what is created (with a umask that they override), `chmod` after an ACL is set (the
//! mask follows), copy-up keeping ACLs, setting an ACL on a lower object (a copy-up), the
//! set-group-id rule of setting an ACL, and a default ACL on the workdir.

use difftests::acl::{ACCESS, DEFAULT};
use difftests::{OFlag, Ops, Scenario, Tree};
use nix::unistd::AccessFlags;

/// The user the ACLs name, and one they do not.
const U: u32 = 1000;
const OTHER: u32 = 1001;

/// `f`: 0644 but `u:1000:---`; `d`: 0700 but `u:1000:r-x`; `shared`: a default ACL that
/// gives user 1000 everything.
fn acl_tree() -> Tree {
    let a = |t: &str| difftests::acl::encode(t);
    Tree::new()
        .file("f", 0o644, "secret\n")
        .xattr("f", ACCESS, a("u::rw-,u:1000:---,g::r--,m::r--,o::r--"))
        .file("g", 0o600, "granted\n")
        .xattr("g", ACCESS, a("u::rw-,u:1000:rw-,g::---,m::rw-,o::---"))
        .dir("d", 0o700)
        .file("d/x", 0o644, "x in d\n")
        .xattr("d", ACCESS, a("u::rwx,u:1000:r-x,g::---,m::r-x,o::---"))
        .dir("shared", 0o755)
        .file("shared/old", 0o644, "old\n")
        .xattr(
            "shared",
            DEFAULT,
            a("u::rwx,u:1000:rwx,g::r-x,m::rwx,o::r-x"),
        )
}

/// What user 1000 and another user may do with `f`, `g` and `d`.
fn check_access(o: &mut Ops) {
    o.as_user(U, U, |o| {
        o.read("f");
        o.want("EACCES");
        o.access("f", AccessFlags::R_OK);
        o.want("EACCES");
        o.read("g");
        o.want("ok \"granted\\n\"");
        o.append("g", "by 1000\n");
        o.want("ok");
        o.readdir("d");
        o.want("ok [x]");
        o.read("d/x");
        o.want("ok \"x in d\\n\"");
        o.write("d/new", "no");
        o.want("open:EACCES");
    });
    o.as_user(OTHER, OTHER, |o| {
        o.read("f");
        o.want("ok \"secret\\n\"");
        o.read("g");
        o.want("EACCES");
        o.readdir("d");
        o.want("EACCES");
        o.read("d/x");
        o.want("EACCES");
    });
    o.getacl("f", ACCESS);
    o.want("ok u::rw-,u:1000:---,g::r--,m::r--,o::r--");
    o.getacl("d", DEFAULT);
    o.want("ENODATA");
    o.listxattr("d");
}

#[test]
fn acl_deny_and_grant_on_lower_objects() {
    Scenario::new("acl_deny_and_grant_on_lower_objects")
        .lower(acl_tree())
        .run(check_access);
}

#[test]
fn acl_deny_and_grant_on_upper_objects() {
    Scenario::new("acl_deny_and_grant_on_upper_objects")
        .lower(Tree::new().file("f", 0o644, "lower f\n"))
        .upper(acl_tree())
        .run(check_access);
}

/// Deny and grant after the objects were copied up (by root touching them), the ACL
/// going with them.
#[test]
fn acl_survives_copy_up() {
    Scenario::new("acl_survives_copy_up")
        .lower(acl_tree())
        .run(|o| {
            o.chmod("f", 0o644);
            o.utimes("g", 5, 5);
            o.utimes("d", 5, 5);
            o.append("d/x", "");
            check_access(o);
        });
}

/// A default ACL decides the new object's mode (the umask does not) and gives it an
/// access ACL, and a directory the default too; where there is none, the umask applies.
/// Also for a name that was a whiteout (built in the work directory), and a fifo.
#[test]
fn acl_default_applied_on_create() {
    Scenario::new("acl_default_applied_on_create")
        .lower(acl_tree())
        .umask(0o077)
        .run(|o| {
            o.open("shared/new", OFlag::O_CREAT | OFlag::O_WRONLY, 0o666);
            o.want("ok");
            o.stat("shared/new");
            o.getacl("shared/new", ACCESS);
            o.want("ok u::rw-,u:1000:rwx,g::r-x,m::rw-,o::r--");
            o.mkdir("shared/sub", 0o777);
            o.stat("shared/sub");
            o.getacl("shared/sub", DEFAULT);
            o.want("ok u::rwx,u:1000:rwx,g::r-x,m::rwx,o::r-x");
            o.mkfifo("shared/sub/fifo", 0o640);
            o.stat("shared/sub/fifo");
            o.symlink("old", "shared/sym");
            o.stat("shared/sym");
            // over a whiteout: built in the work directory, renamed into place
            o.unlink("shared/old");
            o.open("shared/old", OFlag::O_CREAT | OFlag::O_WRONLY, 0o644);
            o.stat("shared/old");
            o.getacl("shared/old", ACCESS);
            o.unlink("shared/sub/fifo");
            o.rmdir("shared/sub");
            o.mkdir("shared/sub", 0o700);
            o.stat("shared/sub");
            o.getacl("shared/sub", ACCESS);
            o.getacl("shared/sub", DEFAULT);
            // no default ACL: the umask
            o.open("plain", OFlag::O_CREAT | OFlag::O_WRONLY, 0o666);
            o.stat("plain");
            o.mkdir("plaindir", 0o777);
            o.stat("plaindir");
            o.as_user(U, U, |o| {
                o.append("shared/new", "by 1000\n");
                o.want("ok");
                // made with 0700: the mask (group bits) grants the named user nothing
                o.write("shared/sub/mine", "mine");
                o.want("open:EACCES");
            });
        });
}

/// `chmod` after `setfacl`: the mask follows the group bits, and what it no longer grants
/// is denied. On an upper file and on a lower one (copied up by the chmod).
#[test]
fn acl_chmod_after_setfacl() {
    Scenario::new("acl_chmod_after_setfacl")
        .lower(acl_tree())
        .run(|o| {
            o.write("up", "upper\n");
            o.setacl("up", ACCESS, "u::rw-,u:1000:rw-,g::r--,m::rw-,o::---");
            o.want("ok");
            o.stat("up");
            o.as_user(U, U, |o| {
                o.append("up", "1\n");
                o.want("ok");
            });
            o.chmod("up", 0o640);
            o.getacl("up", ACCESS);
            o.want("ok u::rw-,u:1000:rw-,g::r--,m::r--,o::---");
            o.as_user(U, U, |o| {
                o.append("up", "2\n");
                o.want("open:EACCES");
                o.read("up");
                o.want("ok \"upper\\n1\\n\"");
            });
            o.chmod("g", 0o640);
            o.getacl("g", ACCESS);
            o.want("ok u::rw-,u:1000:rw-,g::---,m::r--,o::---");
            o.as_user(U, U, |o| {
                o.append("g", "x");
                o.want("open:EACCES");
            });
            o.chmod("d", 0o750);
            o.getacl("d", ACCESS);
        });
}

/// Setting and removing ACLs on lower objects copies them up first; an access ACL the
/// mode can say alone is stored as the mode.
#[test]
fn acl_setfacl_on_lower_copies_up() {
    let lower = Tree::new()
        .file("plain", 0o644, "plain\n")
        .dir("dir", 0o755)
        .file("dir/inner", 0o644, "inner\n");
    Scenario::new("acl_setfacl_on_lower_copies_up")
        .lower(lower)
        .lower(acl_tree())
        .run(|o| {
            o.setacl("plain", ACCESS, "u::rw-,u:1000:---,g::r--,m::r--,o::r--");
            o.want("ok");
            o.as_user(U, U, |o| {
                o.read("plain");
                o.want("EACCES");
            });
            o.setacl("dir", DEFAULT, "u::rwx,g::---,o::---");
            o.want("ok");
            o.write("dir/new", "n");
            o.stat("dir/new");
            o.setacl("d/x", ACCESS, "u::rw-,g::r--,o::---");
            o.stat("d/x");
            o.listxattr("d/x");
            o.removexattr("f", ACCESS);
            o.want("ok");
            o.stat("f");
            o.as_user(U, U, |o| {
                o.read("f");
                o.want("ok \"secret\\n\"");
            });
            o.removexattr("shared", DEFAULT);
            o.getacl("shared", DEFAULT);
            o.want("ENODATA");
        });
}

/// Setting an access ACL clears set-group-id for an owner outside the file's group, as
/// the kernel's `posix_acl_update_mode` does, and keeps it for one in the group.
#[test]
fn acl_set_by_owner_outside_group_clears_setgid() {
    // The mode again after the owner: chown clears set-group-id.
    let lower = Tree::new()
        .file("out", 0o2775, "o\n")
        .owner("out", U, 0)
        .file("out", 0o2775, "o\n")
        .file("in", 0o2775, "i\n")
        .owner("in", U, U)
        .file("in", 0o2775, "i\n")
        .dir("sgdir", 0o2775)
        .owner("sgdir", U, 0)
        .dir("sgdir", 0o2775);
    Scenario::new("acl_set_by_owner_outside_group_clears_setgid")
        .lower(lower)
        .run(|o| {
            o.mode("in");
            o.want("ok 0o2775");
            o.as_user(U, U, |o| {
                for p in ["out", "in", "sgdir"] {
                    o.setacl(p, ACCESS, "u::rwx,u:1001:r--,g::r-x,m::r-x,o::r-x");
                    o.want("ok");
                }
            });
            o.mode("out");
            o.want("ok 0o755");
            o.mode("in");
            o.want("ok 0o2755");
            o.mode("sgdir");
            o.want("ok 0o755");
        });
}

/// A default ACL on the workdir must not reach the upper layer: the kernel removes it
/// from `work` at mount, so copies and new objects built there do not inherit it.
#[test]
fn acl_default_on_workdir_not_inherited() {
    let w = Tree::new().xattr(
        "",
        DEFAULT,
        difftests::acl::encode("u::rwx,u:1000:rwx,g::r-x,m::rwx,o::---"),
    );
    Scenario::new("acl_default_on_workdir_not_inherited")
        .lower(acl_tree())
        .lower(
            Tree::new()
                .file("plain", 0o644, "p\n")
                .dir("pdir", 0o755)
                .file("pdir/q", 0o644, "q\n"),
        )
        .workdir(w)
        .umask(0o022)
        .run(|o| {
            o.append("plain", "more\n");
            o.chmod("pdir", 0o750);
            o.append("pdir/q", "more\n");
            o.append("f", "more\n");
            o.unlink("plain");
            o.write("plain", "new\n");
            o.unlink("pdir/q");
            o.rmdir("pdir");
            o.mkdir("pdir", 0o755);
            for p in ["plain", "pdir", "f"] {
                o.stat(p);
                o.listxattr(p);
            }
        });
}
