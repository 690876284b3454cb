//! The two FUSE front ends side by side (`-o frontend=wire`, our own, the default; and
//! `-o frontend=fuser`) against the kernel's overlay on what differs between them: the
//! set-id kill flags, which only `wire` reads from the request (issue 14). A root caller
//! without CAP_FSETID (dropped with `setpriv`) truncating, `O_TRUNC`-opening and appending
//! to set-id files loses the bits; root with it keeps them.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

const FILES: [&str; 4] = ["trunc", "otrunc", "append", "keep"];

/// Runs `sh -c script` in `dir`, without CAP_FSETID when `drop` (setpriv, from the
/// bounding set: root's effective set after exec).
fn sh(dir: &Path, script: &str, drop: bool) {
    let mut cmd = if drop {
        let mut c = Command::new("setpriv");
        c.args(["--bounding-set=-fsetid", "sh", "-c", script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    };
    let out = cmd
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The modes the four files end with after the changes, on the union mounted by `mount`.
fn modes_after(tag: &str, mount: impl FnOnce(&str, &Path, &Path, &Path) -> Mounted) -> Vec<u32> {
    let s = Scratch::new(tag);
    s.mkdirs(&["l", "u", "w", "m"]);
    for f in FILES {
        let p = s.path(&format!("l/{f}"));
        fs::write(&p, "data\n").unwrap_or_else(|e| panic!("write {f}: {e}"));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o6755))
            .unwrap_or_else(|e| panic!("chmod {f}: {e}"));
    }
    let mnt = s.path("m");
    let lower = s.path("l").display().to_string();
    let mut m = mount(&lower, &s.path("u"), &s.path("w"), &mnt);
    sh(
        &mnt,
        "truncate -s 2 trunc && : > otrunc && echo x >> append",
        true,
    );
    sh(&mnt, "truncate -s 2 keep", false);
    let modes = FILES
        .iter()
        .map(|f| {
            fs::metadata(mnt.join(f))
                .unwrap_or_else(|e| panic!("stat {f}: {e}"))
                .permissions()
                .mode()
                & 0o7777
        })
        .collect();
    m.unmount();
    modes
}

#[test]
fn setid_kill_flags_agree_with_the_kernel_on_both_front_ends() {
    if !require_root(
        "setid_kill_flags_agree_with_the_kernel_on_both_front_ends",
        "needs root to mount and to drop CAP_FSETID",
    ) {
        return;
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        skip(
            "setid_kill_flags_agree_with_the_kernel_on_both_front_ends",
            Skip::Missing,
            "no setpriv (util-linux) to drop CAP_FSETID",
        );
        return;
    }
    let kernel = modes_after("fe-kernel", |l, u, w, m| mount_kernel(l, u, w, m, ""));
    assert_eq!(
        kernel,
        vec![0o755, 0o755, 0o755, 0o6755],
        "the kernel's rule"
    );
    let runs = [
        ("fe-wire", "frontend=wire"),
        ("fe-fuser", "frontend=fuser"),
        ("fe-wire-nopt", "frontend=wire,nopassthrough"),
    ];
    for (tag, opts) in runs {
        let got = modes_after(tag, |l, u, w, m| mount_unionfs(l, u, w, m, opts));
        assert_eq!(got, kernel, "-o {opts}: modes of {FILES:?}");
    }
}
