//! Owner translation (`uidmapping=`, `gidmapping=`, `squash_to_*`, fuse-overlayfs's
//! options): what the merged view shows for the owners stored in the layers, and what
//! chown and creation store back. The expected ids are computed here from the mapping's
//! definition (stored C+i shows as H+i), not by the daemon's code.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;

fn require_root(name: &str) -> bool {
    if is_root() {
        return true;
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {name}: needs root to mount and chown"
    );
    false
}

/// A lower layer with files owned 0:0, 1000:1000 and 70000:70000.
fn setup(tag: &str) -> Scratch {
    let s = Scratch::new(tag);
    s.mkdirs(&["l/dir", "u", "w", "m"]);
    for (name, id) in [
        ("root-file", 0),
        ("user-file", 1000),
        ("far-file", 70000),
        ("dir", 0),
    ] {
        let p = s.path(&format!("l/{name}"));
        if name != "dir" {
            std::fs::write(&p, name).unwrap_or_else(|e| panic!("{e}"));
        }
        std::os::unix::fs::lchown(&p, Some(id), Some(id)).unwrap_or_else(|e| panic!("{e}"));
    }
    // Room for a mapped user to create files through the union.
    std::fs::set_permissions(
        s.path("l/dir"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    s
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    (m.uid(), m.gid())
}

const MAP: &str = "uidmapping=0:100000:65536,gidmapping=0:200000:65536";

#[test]
fn mapped_ids_show_and_are_stored_back() {
    if !require_root("mapped_ids_show_and_are_stored_back") {
        return;
    }
    let s = setup("idmap");
    let mut m = mount_unionfs(
        &s.path("l").display().to_string(),
        &s.path("u"),
        &s.path("w"),
        &s.path("m"),
        MAP,
    );
    // Shown: stored C+i as H+i; no range covers 70000.
    assert_eq!(owner(&s.path("m/root-file")), (100000, 200000));
    assert_eq!(owner(&s.path("m/user-file")), (101000, 201000));
    assert_eq!(owner(&s.path("m/far-file")), (65534, 65534));
    assert_eq!(owner(&s.path("m/dir")), (100000, 200000));
    // chown stores the reverse mapping.
    std::os::unix::fs::lchown(s.path("m/root-file"), Some(100500), Some(200600))
        .unwrap_or_else(|e| panic!("chown: {e}"));
    assert_eq!(owner(&s.path("m/root-file")), (100500, 200600));
    assert_eq!(owner(&s.path("u/root-file")), (500, 600));
    // An id no range covers cannot be stored; nothing is copied up for it.
    let e = std::os::unix::fs::lchown(s.path("m/user-file"), Some(5), None)
        .expect_err("chown to an unmapped id must fail");
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    assert!(!s.path("u/user-file").exists(), "a refused chown copied up");
    // A mapped user's new file is stored with the user's stored ids.
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "101000",
            "--regid",
            "201000",
            "--clear-groups",
            "--",
        ])
        .arg("sh")
        .arg("-c")
        .arg(format!("echo new > {}", s.path("m/dir/new").display()))
        .output()
        .unwrap_or_else(|e| panic!("setpriv: {e}"));
    assert!(
        out.status.success(),
        "create as 101000: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(owner(&s.path("m/dir/new")), (101000, 201000));
    assert_eq!(owner(&s.path("u/dir/new")), (1000, 1000));
    // Root here (uid 0) is outside every range: it cannot own a new file.
    let e = std::fs::write(s.path("m/dir/by-root"), "x").expect_err("root is not mapped");
    assert_eq!(e.raw_os_error(), Some(libc::EOVERFLOW), "{e}");
    m.unmount();
    // The layers keep what was stored; the lower is unchanged.
    assert_eq!(owner(&s.path("l/root-file")), (0, 0));
    assert!(!s.path("u/dir/by-root").exists());
}

#[test]
fn squash_options_show_one_owner() {
    if !require_root("squash_options_show_one_owner") {
        return;
    }
    for (opts, want) in [
        ("squash_to_root", (0, 0)),
        ("squash_to_uid=7,squash_to_gid=8", (7, 8)),
        ("squash_to_root,squash_to_uid=9", (9, 0)),
        (&*format!("{MAP},squash_to_gid=3"), (101000, 3)),
    ] {
        let s = setup("squash");
        let mut m = mount_unionfs(
            &s.path("l").display().to_string(),
            &s.path("u"),
            &s.path("w"),
            &s.path("m"),
            opts,
        );
        let user = owner(&s.path("m/user-file"));
        let far = owner(&s.path("m/far-file"));
        m.unmount();
        if opts.starts_with("uidmapping") {
            assert_eq!(user, want, "{opts}");
            assert_eq!(far, (65534, 3), "{opts}");
        } else {
            assert_eq!((user, far), (want, want), "{opts}");
        }
    }
}

#[test]
fn bad_mappings_are_refused_in_one_line_and_mount_nothing() {
    if !require_root("bad_mappings_are_refused_in_one_line_and_mount_nothing") {
        return;
    }
    let s = setup("idmap-bad");
    for bad in [
        "uidmapping=0:1000",
        "uidmapping=0:1000:10:5:2000:10",
        "gidmapping=0:1000:10:20:1005:10",
        "gidmapping=x:1:1",
        "squash_to_uid=-1",
    ] {
        let o = union_opts(
            &s.path("l").display().to_string(),
            &s.path("u"),
            &s.path("w"),
            bad,
        );
        let out = Command::new(bin())
            .arg("-o")
            .arg(&o)
            .arg(s.path("m"))
            .output()
            .unwrap_or_else(|e| panic!("run unionfs: {e}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} accepted");
        assert_eq!(err.trim_end().lines().count(), 1, "{bad}: {err}");
        assert!(
            mount_entry(&s.path("m")).is_none(),
            "{bad} mounted something"
        );
    }
}
