//! Rootless runs: a user without privileges imports and runs an image. The container maps
//! the user to root in a new user namespace, mounts the kernel's overlay inside it with
//! `userxattr` (`auto` falls back to it here, where /dev/fuse is 0600, and says why), and
//! refuses a memory limit it cannot apply (no delegated cgroup) in one line.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

use common::*;

const USER: &str = "runbox-test";

fn user_ids() -> (u32, u32) {
    static IDS: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *IDS.get_or_init(|| {
        let id = |flag: &str| {
            Command::new("id")
                .args([flag, USER])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| text(&o.stdout).trim().parse::<u32>().ok())
        };
        if id("-u").is_none() {
            // Another test binary may create it at the same time; then it exists anyway.
            let _ = Command::new("useradd")
                .args(["--no-create-home", "--shell", "/bin/sh", USER])
                .status();
        }
        match (id("-u"), id("-g")) {
            (Some(u), Some(g)) => (u, g),
            _ => panic!("cannot create the test user {USER}"),
        }
    })
}

/// runbox as the test user, with a clean environment.
fn as_user(root: &Root, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let (uid, gid) = user_ids();
    let mut c = Command::new(runbox());
    c.arg("--root").arg(&root.path).args(args);
    c.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &root.path)
        .env("RUNBOX_UNIONFS", unionfs())
        .uid(uid)
        .gid(gid)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = c
        .spawn()
        .unwrap_or_else(|e| panic!("spawn runbox as {USER}: {e}"));
    if let (Some(data), Some(mut si)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        let _ = si.write_all(data);
    }
    child.wait_with_output().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn rootless_kernel_run() {
    if !need_root("rootless_kernel_run (root creates the test user)") {
        return;
    }
    let (uid, gid) = user_ids();
    let mut root = Root::new("rootless");
    nix::unistd::chown(
        &root.path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let name = root.name("rootless");
    let image = busybox_tar(&[
        E::Dir("etc"),
        E::File("etc/motd", b"image\n"),
        E::File("etc/.wh.passwd", b""),
    ]);
    let out = as_user(&root, &["import", "bb", "-"], Some(&image));
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    let layer = root.layer("bb", 0);
    let before = snapshot(&layer);

    let out = as_user(
        &root,
        &[
            "run", "--verbose", "--name", &name, "bb", "sh", "-c",
            "echo $$; id -u; hostname; grep -c : /proc/net/dev; ls -a /etc; rm /etc/motd; echo n > /new",
        ],
        None,
    );
    let s = text(&out.stdout);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(
        s,
        format!("1\n0\n{name}\n1\n.\n..\nhostname\nhosts\nmotd\nresolv.conf\n"),
        "{err}"
    );
    let fuse_closed = std::fs::metadata("/dev/fuse").is_ok_and(|m| m.mode() & 0o006 == 0);
    if fuse_closed {
        let line: Vec<&str> = err.lines().filter(|l| l.contains("backend")).collect();
        assert_eq!(line.len(), 1, "{err}");
        assert!(
            line[0].contains("kernel overlay") && line[0].contains("/dev/fuse"),
            "{err}"
        );
    }
    assert_eq!(snapshot(&layer), before, "the image layer changed");
    let up = root.upper(&name);
    let wh = std::fs::symlink_metadata(up.join("etc/motd")).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout in upper"
    );
    assert_eq!(std::fs::read(up.join("new")).unwrap_or_default(), b"n\n");
    assert_eq!(up.join("new").metadata().map(|m| m.uid()).ok(), Some(uid));

    let out = as_user(
        &root,
        &["run", "--rm", "--memory", "32m", "bb", "true"],
        None,
    );
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cgroup"), "{err}");
    let ps = as_user(&root, &["ps"], None);
    assert_eq!(
        text(&ps.stdout).lines().count(),
        2,
        "the failed run kept no container"
    );
    let out = as_user(&root, &["rm", &name], None);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // With newuidmap and a /etc/subuid range, other ids exist in the container: --user
    // works, its files belong to the range on the host, and rm can still remove them.
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    let start: Option<u32> = subuid
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{USER}:")))
        .and_then(|r| r.split(':').next())
        .and_then(|s| s.parse().ok());
    let (true, Some(start)) = (std::path::Path::new("/usr/bin/newuidmap").exists(), start) else {
        eprintln!("SKIPPED rootless --user part: no newuidmap (Debian's uidmap) or /etc/subuid range for {USER}");
        return;
    };
    let out = as_user(
        &root,
        &[
            "run",
            "--name",
            &name,
            "bb",
            "sh",
            "-c",
            "mkdir /w && chown 1000:1000 /w",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = as_user(
        &root,
        &[
            "run",
            "--name",
            &name,
            "--user",
            "1000:1000",
            "bb",
            "sh",
            "-c",
            "mkdir -m 700 /w/d; touch /w/d/f; id -u; id -g",
        ],
        None,
    );
    assert_eq!(text(&out.stdout), "1000\n1000\n", "{}", text(&out.stderr));
    let d = root.upper(&name).join("w/d/f");
    assert_eq!(d.metadata().map(|m| m.uid()).ok(), Some(start + 999));
    let out = as_user(&root, &["rm", &name], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!root.path.join("containers").join(&name).exists());
}

/// FUSE without privileges: unionfs mounts through fusermount3. This machine's /dev/fuse is
/// 0600, so (as unionfs's own unprivileged test does) the run happens in a private mount
/// namespace where a 0666 node for the FUSE device is bound over /dev/fuse; nothing outside
/// that namespace changes, and its mounts end with it.
#[test]
fn rootless_fuse_run() {
    if !need_root("rootless_fuse_run (root creates the test user and the private /dev/fuse)") {
        return;
    }
    let (uid, gid) = user_ids();
    let mut root = Root::new("rootless-fuse");
    let name = root.name("rootless-fuse");
    let node = root.path.join("fuse-node");
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        libc::makedev(10, 229),
    )
    .unwrap_or_else(|e| panic!("mknod: {e}"));
    // mknod applied the umask.
    std::fs::set_permissions(&node, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .unwrap_or_else(|e| panic!("{e}"));
    let store = root.path.join("store");
    std::fs::create_dir(&store).unwrap_or_else(|e| panic!("{e}"));
    nix::unistd::chown(
        &store,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tarball = root.path.join("bb.tar");
    std::fs::write(
        &tarball,
        busybox_tar(&[E::Dir("etc"), E::File("etc/motd", b"image\n")]),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let script = format!(
        "set -e; mount --bind {node} /dev/fuse; \
         exec setpriv --reuid {uid} --regid {gid} --clear-groups \
         env -i PATH=/usr/bin:/bin HOME={store} RUNBOX_UNIONFS={unionfs} sh -c '\
           {runbox} --root {store} import bb {tarball}; \
           {runbox} --root {store} run --verbose --name {name} bb sh -c \"echo \\$\\$; id -u; cat /etc/motd; rm /etc/motd; echo n > /new\"; \
           {runbox} --root {store} diff {name}'",
        node = node.display(),
        store = store.display(),
        unionfs = unionfs().display(),
        runbox = runbox().display(),
        tarball = tarball.display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("unshare (util-linux): {e}"));
    let s = text(&out.stdout);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(s, "1\n0\nimage\nC /etc\nD /etc/motd\nA /new\n", "{err}");
    assert!(err.contains("backend: unionfs (FUSE)"), "{err}");
    let up = store.join(format!("containers/{name}/upper"));
    assert_eq!(up.join("new").metadata().map(|m| m.uid()).ok(), Some(uid));
}
