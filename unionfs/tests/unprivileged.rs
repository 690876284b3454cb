//! A user without privileges mounts through the setuid `fusermount3`, writes, deletes and
//! unmounts; the upper it leaves is then read by the kernel's overlay with `userxattr`, and
//! must show what the unprivileged mount showed.
//!
//! This machine's `/dev/fuse` is mode 0600 and Debian's fusermount3 (3.14) opens it with the
//! caller's fsuid, so no unprivileged user can mount FUSE here at all (checked: the open
//! fails with EACCES under strace). The test therefore runs in a private mount namespace in
//! which a 0666 node for the FUSE device is bound over `/dev/fuse`, as on hosts where it is
//! 0666; nothing outside that namespace changes, and its mounts end with it.

mod common;

use std::process::Command;

use common::*;

const USER: &str = "unionfs-test";

/// Creates the test user once per test binary: two tests calling `useradd` at the same
/// time made one of them find no user (fusermount3: "could not determine username").
fn ensure_user() -> u32 {
    static UID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UID.get_or_init(create_user)
}

fn create_user() -> u32 {
    let id = |_: ()| {
        Command::new("id")
            .args(["-u", USER])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .ok()
            })
    };
    if let Some(uid) = id(()) {
        return uid;
    }
    let st = Command::new("useradd")
        .args(["--no-create-home", "--shell", "/bin/sh", USER])
        .status()
        .unwrap_or_else(|e| panic!("useradd: {e}"));
    // Another test binary may have raced us to it: then the user exists all the same.
    let _ = st;
    id(()).unwrap_or_else(|| panic!("cannot create user {USER}"))
}

#[test]
fn unprivileged_mount_write_delete_unmount() {
    if !require_root(
        "unprivileged_mount_write_delete_unmount",
        "needs root to create the test user and the private mount namespace",
    ) {
        return;
    }
    let uid = ensure_user();
    let s = Scratch::new("unpriv");
    s.mkdirs(&["l/dir", "l/gone", "u", "w", "m", "k", "dev"]);
    std::fs::write(s.path("l/file"), "lower\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(s.path("l/dir/inner"), "inner\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(s.path("l/gone/x"), "x\n").unwrap_or_else(|e| panic!("{e}"));
    copy_bin(&s.path("unionfs"));
    for p in [
        "",
        "l",
        "l/dir",
        "l/gone",
        "l/file",
        "l/dir/inner",
        "l/gone/x",
        "u",
        "w",
        "m",
    ] {
        nix::unistd::chown(&s.path(p), Some(nix::unistd::Uid::from_raw(uid)), None)
            .unwrap_or_else(|e| panic!("chown {p}: {e}"));
    }
    let root = s.0.display().to_string();
    // Runs as the user, inside the namespace. The mountinfo line shows who mounted.
    let user_script = format!(
        r#"set -e
cd {root}
./unionfs -o lowerdir=l,upperdir=u,workdir=w m
grep " {root}/m " /proc/self/mountinfo > mountinfo
echo appended >> m/file
rm m/dir/inner
rm -r m/gone
mkdir m/gone
echo new > m/gone/fresh
mv m/file m/renamed
find m -printf '%P %y %m\n' | sort > view
cat m/renamed m/gone/fresh > contents
fusermount3 -u m
"#
    );
    let outer = format!(
        "set -e\nmknod -m 0666 {root}/dev/fuse c 10 229\nmount --bind {root}/dev/fuse /dev/fuse\n\
         exec setpriv --reuid {uid} --regid {uid} --clear-groups -- sh -c '{}'",
        user_script.replace('\'', "'\\''")
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &outer])
        .output()
        .unwrap_or_else(|e| panic!("unshare: {e}"));
    assert!(
        out.status.success(),
        "unprivileged run failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mi = std::fs::read_to_string(s.path("mountinfo")).unwrap_or_default();
    assert!(mi.contains("fuse.unionfs"), "not a unionfs mount: {mi}");
    assert!(
        mi.contains(&format!("user_id={uid}")),
        "not mounted by the user: {mi}"
    );
    assert_eq!(
        std::fs::read_to_string(s.path("contents")).unwrap_or_default(),
        "lower\nappended\nnew\n"
    );
    // The user's files are the user's, markers in the user namespace of xattrs.
    let upper_file = s.path("u/renamed");
    let md = std::fs::metadata(&upper_file).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&md), uid);
    let opaque = Command::new("getfattr")
        .args(["--only-values", "-n", "user.overlay.opaque"])
        .arg(s.path("u/gone"))
        .output()
        .unwrap_or_else(|e| panic!("getfattr: {e}"));
    assert_eq!(String::from_utf8_lossy(&opaque.stdout), "y");
    // The kernel's overlay, reading the same upper with userxattr, shows the same tree.
    let kwork = s.path("k");
    let mut k = mount_kernel(
        &s.path("l").display().to_string(),
        &s.path("u"),
        &kwork,
        &s.path("m"),
        "userxattr",
    );
    let kview = Command::new("sh")
        .arg("-c")
        .arg(format!("cd {root} && find m -printf '%P %y %m\\n' | sort"))
        .output()
        .unwrap_or_else(|e| panic!("find: {e}"));
    k.unmount();
    let view = std::fs::read_to_string(s.path("view")).unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&kview.stdout), view);
    assert!(view.contains("gone/fresh f"), "{view}");
    assert!(!view.contains("inner"), "{view}");
    // Work directory left clean by the daemon.
    let leftovers: Vec<_> = std::fs::read_dir(s.path("w/work"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "work dir not clean: {leftovers:?}");
}

/// With `/dev/fuse` at mode 0600 (as on this machine) the daemon cannot open it as a
/// user and turns to `fusermount3` rather than giving up (fuser's own mount would). Here
/// Debian's fusermount3 then fails too, opening the device with the user's rights; the
/// daemon must report that in one line and leave nothing mounted.
#[test]
fn unprivileged_without_device_access_falls_back_to_fusermount3() {
    if !require_root(
        "unprivileged_without_device_access_falls_back_to_fusermount3",
        "needs root to create the test user",
    ) {
        return;
    }
    let dev_mode = std::fs::metadata("/dev/fuse")
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap_or(0);
    if dev_mode & 0o006 == 0o006 {
        // unprivileged_mount_write_delete_unmount covers this machine's case.
        skip(
            "unprivileged_without_device_access_falls_back_to_fusermount3",
            Skip::Expected,
            &format!("/dev/fuse is open to every user here (mode {dev_mode:o})"),
        );
        return;
    }
    let uid = ensure_user();
    let s = Scratch::new("unpriv-nodev");
    s.mkdirs(&["l", "u", "w", "m"]);
    copy_bin(&s.path("unionfs"));
    for p in ["", "l", "u", "w", "m"] {
        nix::unistd::chown(&s.path(p), Some(nix::unistd::Uid::from_raw(uid)), None)
            .unwrap_or_else(|e| panic!("chown {p}: {e}"));
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &uid.to_string(),
            "--clear-groups",
            "--",
        ])
        .arg(s.path("unionfs"))
        .arg("-o")
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            s.path("l").display(),
            s.path("u").display(),
            s.path("w").display()
        ))
        .arg(s.path("m"))
        .output()
        .unwrap_or_else(|e| panic!("setpriv: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .contains(&format!(" {} ", s.path("m").display()));
    if mounted {
        let _ = nix::mount::umount2(&s.path("m"), nix::mount::MntFlags::MNT_DETACH);
    }
    // Mounted after all (a fusermount3 that opens the device with its own rights): fine.
    if out.status.success() {
        assert!(mounted, "exit 0 without a mount");
        return;
    }
    assert!(!mounted, "failed but left a mount");
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(
        lines[0].starts_with("unionfs: ") && lines[0].contains("fusermount3"),
        "the error should come from the fusermount3 fallback: {err}"
    );
}

/// Copies the daemon for a user to run. Through `cp`, not `std::fs::copy`: a descriptor open
/// for writing in this process is inherited by whatever another test thread forks at that
/// moment, and the copy's exec then fails with ETXTBSY until that child has exec'd.
fn copy_bin(dst: &std::path::Path) {
    let st = Command::new("cp")
        .arg(bin())
        .arg(dst)
        .status()
        .unwrap_or_else(|e| panic!("cp: {e}"));
    assert!(
        st.success(),
        "cp {} {}: {st}",
        bin().display(),
        dst.display()
    );
}
