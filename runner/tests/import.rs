//! `runbox import`: what it keeps (modes, owners, times, links, nodes, xattrs, layers and
//! run defaults of docker-save and OCI archives), and what it refuses (hostile or broken
//! archives) without writing anything outside the store or leaving half an image.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};

use common::*;

fn assert_refused(root: &Root, name: &str, data: &[u8], needle: &str) {
    let out = root.import_bytes(name, data);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "import {name} was accepted");
    assert_eq!(err.lines().count(), 1, "one error line expected: {err:?}");
    assert!(
        err.contains(needle),
        "error {err:?} does not say {needle:?}"
    );
    assert!(
        !root.path.join("images").join(name).exists(),
        "half an image left"
    );
    let tmp: Vec<_> = std::fs::read_dir(root.path.join("tmp"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
}

#[test]
fn plain_tar_keeps_metadata_links_and_nodes() {
    let root = Root::new("imp-meta");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o1777);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_500_000_000);
    h.set_size(0);
    b.append_data(&mut h, "tmp", std::io::empty())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o4750);
    h.set_uid(1234);
    h.set_gid(567);
    h.set_mtime(1_400_000_000);
    h.set_size(5);
    b.append_data(&mut h, "usr/bin/tool", &b"hello"[..])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    h.set_mode(0o644);
    b.append_link(&mut h, "usr/bin/tool2", "usr/bin/tool")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_mtime(1_300_000_000);
    b.append_link(&mut h, "abs", "/usr/bin/tool")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    h.set_entry_type(tar::EntryType::Char);
    h.set_size(0);
    h.set_mode(0o666);
    h.set_device_major(1).unwrap_or_else(|e| panic!("{e}"));
    h.set_device_minor(3).unwrap_or_else(|e| panic!("{e}"));
    b.append_data(&mut h, "dev/null", std::io::empty())
        .unwrap_or_else(|e| panic!("{e}"));
    // Owner and mtime beyond the header fields' range, as pax records.
    b.append_pax_extensions([
        ("uid", &b"3000000"[..]),
        ("gid", &b"3000001"[..]),
        ("mtime", &b"1700000000.123456"[..]),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o600);
    h.set_size(2);
    b.append_data(&mut h, "bigids", &b"ok"[..])
        .unwrap_or_else(|e| panic!("{e}"));
    // An xattr, as a pax extension before its member.
    b.append_pax_extensions([("SCHILY.xattr.user.test", &b"v1"[..])])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(1);
    b.append_data(&mut h, "x", &b"x"[..])
        .unwrap_or_else(|e| panic!("{e}"));
    let data = b.into_inner().unwrap_or_else(|e| panic!("{e}"));

    // Through a file and gzip-compressed, then plain through stdin.
    let f = root.path.join("in.tar.gz");
    std::fs::write(&f, gzip(&data)).unwrap_or_else(|e| panic!("{e}"));
    let out = root.run(&["import", "gz", f.to_str().unwrap_or_default()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let l = root.layer("gz", 0);
    let tool = std::fs::symlink_metadata(l.join("usr/bin/tool")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tool.mtime(), 1_400_000_000);
    assert_eq!(
        std::fs::read(l.join("usr/bin/tool")).unwrap_or_default(),
        b"hello"
    );
    if is_root() {
        assert_eq!(tool.mode() & 0o7777, 0o4750, "set-uid kept after chown");
        assert_eq!((tool.uid(), tool.gid()), (1234, 567));
        let null = std::fs::symlink_metadata(l.join("dev/null")).unwrap_or_else(|e| panic!("{e}"));
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), libc::makedev(1, 3));
        let big = std::fs::symlink_metadata(l.join("bigids")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (big.uid(), big.gid(), big.mtime()),
            (3_000_000, 3_000_001, 1_700_000_000)
        );
    } else {
        skip(
            std::thread::current().name().unwrap_or("import"),
            "needs-root",
            "owner and device-node checks need root",
        );
    }
    let tool2 =
        std::fs::symlink_metadata(l.join("usr/bin/tool2")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tool2.ino(), tool.ino(), "hard link kept");
    assert_eq!(
        std::fs::read_link(l.join("abs")).unwrap_or_default(),
        std::path::PathBuf::from("/usr/bin/tool")
    );
    let tmp = std::fs::symlink_metadata(l.join("tmp")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tmp.mode() & 0o7777, 0o1777);
    assert_eq!(tmp.mtime(), 1_500_000_000);
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", "user.test"])
        .arg(l.join("x"))
        .output();
    if let Ok(o) = out {
        assert_eq!(text(&o.stdout), "v1", "xattr kept: {}", text(&o.stderr));
    }

    root.import_ok("plain", &data);
    let out = root.run(&["images"]);
    let list = text(&out.stdout);
    assert!(list.contains("gz") && list.contains("plain"), "{list}");
    let out = root.import_bytes("plain", &data);
    assert!(
        !out.status.success(),
        "a second import under one name is refused"
    );
    let out = root.run(&["rmi", "plain"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!root.path.join("images/plain").exists());
}

#[test]
fn docker_save_and_oci_layers_and_defaults() {
    let root = Root::new("imp-layers");
    let base = tar_of(&[
        E::Dir("etc"),
        E::File("etc/a", b"base"),
        E::File("etc/gone", b"x"),
    ]);
    let top = tar_of(&[
        E::Dir("etc"),
        E::File("etc/a", b"top"),
        E::File("etc/.wh.gone", b""),
    ]);
    let cfg = image_config(&["PATH=/bin", "FOO=bar"], &["sh", "-c", "echo hi"], "/etc");
    root.import_ok("ds", &docker_save(&[base.clone(), top.clone()], &cfg));
    root.import_ok(
        "oci",
        &oci_archive(&[base.clone(), top.clone()], &cfg, true),
    );
    root.import_ok("ocigz", &gzip(&oci_archive(&[base, top], &cfg, false)));
    for img in ["ds", "oci", "ocigz"] {
        assert_eq!(
            std::fs::read(root.layer(img, 0).join("etc/a")).unwrap_or_default(),
            b"base",
            "{img}"
        );
        assert_eq!(
            std::fs::read(root.layer(img, 1).join("etc/a")).unwrap_or_default(),
            b"top",
            "{img}"
        );
        assert!(
            root.layer(img, 1).join("etc/.wh.gone").exists(),
            "marker kept as a file"
        );
        let c: serde_json::Value = serde_json::from_slice(
            &std::fs::read(root.path.join(format!("images/{img}/config.json"))).unwrap_or_default(),
        )
        .unwrap_or_default();
        assert_eq!(c["layers"], 2, "{img}");
        assert_eq!(c["env"][1], "FOO=bar", "{img}");
        assert_eq!(c["cmd"][2], "echo hi", "{img}");
        assert_eq!(c["working_dir"], "/etc", "{img}");
    }
    let out = root.run(&["images"]);
    assert!(
        text(&out.stdout)
            .lines()
            .any(|l| l.starts_with("ds ") && l.trim_end().ends_with('2')),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn verbose_import_reports_progress() {
    let root = Root::new("imp-progress");
    let big: Vec<u8> = (0..40u32 << 20).map(|i| (i % 251) as u8).collect();
    let data = tar_of(&[E::File("big", &big)]);
    let out = root
        .cmd(&["--verbose", "import", "big", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            if let Some(mut si) = c.stdin.take() {
                use std::io::Write;
                si.write_all(&data)?;
            }
            c.wait_with_output()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("import: read: 16 MiB"), "{err}");
    assert!(err.contains("import: unpacked: 32 MiB"), "{err}");
    // Without a terminal and without --verbose: quiet.
    let out = root.import_bytes("big2", &data);
    assert!(out.status.success());
    assert!(text(&out.stderr).is_empty(), "{}", text(&out.stderr));
}

#[test]
fn refuses_dot_dot_traversal() {
    let root = Root::new("imp-dotdot");
    let victim = format!("runbox-it-victim-{}", std::process::id());
    let data = tar_of(&[
        E::File("ok", b"fine"),
        E::RawFile(&format!("../../../../../../tmp/{victim}"), b"evil"),
    ]);
    assert_refused(&root, "bad", &data, "..");
    assert!(!std::path::Path::new("/tmp").join(&victim).exists());
}

#[test]
fn refuses_absolute_names() {
    let root = Root::new("imp-abs");
    let victim = format!("/tmp/runbox-it-abs-victim-{}", std::process::id());
    let data = tar_of(&[E::RawFile(&victim, b"evil")]);
    assert_refused(&root, "bad", &data, "absolute");
    assert!(!std::path::Path::new(&victim).exists());
}

#[test]
fn refuses_writing_through_a_symlink() {
    let root = Root::new("imp-symlink");
    let outside =
        std::path::PathBuf::from(format!("/tmp/runbox-it-outside-{}", std::process::id()));
    std::fs::create_dir_all(&outside).unwrap_or_else(|e| panic!("{e}"));
    let target = outside.display().to_string();
    let data = tar_of(&[E::Link("x", &target), E::File("x/evil", b"evil")]);
    assert_refused(&root, "bad", &data, "symlink");
    let relative = tar_of(&[
        E::Dir("d"),
        E::Link("d/up", "../../../../../.."),
        E::File("d/up/tmp/evil2", b"e"),
    ]);
    assert_refused(&root, "bad2", &relative, "symlink");
    // A hard link may not reach through a symlink either.
    let hard = tar_of(&[E::Link("x", &target), E::Hard("h", "x/secret")]);
    assert_refused(&root, "bad3", &hard, "symlink");
    // A member over a symlink replaces the link; it never writes where the link points.
    let over = tar_of(&[E::Link("y", &format!("{target}/f")), E::File("y", b"data")]);
    root.import_ok("over", &over);
    let y = root.layer("over", 0).join("y");
    assert!(std::fs::symlink_metadata(&y).is_ok_and(|m| m.is_file()));
    let left: Vec<_> = std::fs::read_dir(&outside)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&outside);
    assert!(left.is_empty(), "written outside the store: {left:?}");
    assert!(!std::path::Path::new("/tmp/evil2").exists());
}

#[test]
fn refuses_truncated_and_non_tar() {
    let root = Root::new("imp-broken");
    let good = busybox_tar(&[]);
    // Cut in the middle of busybox's data.
    assert_refused(&root, "cut", &good[..good.len() / 2], "truncated");
    // Cut right after a member's data: no end-of-archive blocks.
    let small = tar_of(&[E::File("a", &[7u8; 512])]);
    assert_refused(&root, "cut2", &small[..1024], "truncated");
    assert_refused(
        &root,
        "text",
        b"this is not a tar archive, just text\n",
        "not a tar",
    );
    assert_refused(&root, "gzcut", &gzip(&good)[..4000], "");
    // A docker-save archive whose layer is not a tar.
    let cfg = image_config(&[], &["sh"], "");
    let ds = docker_save(
        &[
            tar_of(&[E::File("a", b"a")]),
            b"garbage, not a layer".repeat(40),
        ],
        &cfg,
    );
    assert_refused(&root, "badlayer", &ds, "layer 1");
    // ... and one whose manifest names a layer that is not there.
    let mut files = vec![(
        "manifest.json".to_string(),
        br#"[{"Config":"c.json","Layers":["nope/layer.tar"]}]"#.to_vec(),
    )];
    files.push(("c.json".to_string(), cfg));
    assert_refused(&root, "missing", &archive_of(&files), "missing");
    let out = root.run(&["images"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "only the header: {}",
        text(&out.stdout)
    );
}

#[test]
fn docker_save_with_a_linked_layer() {
    // docker save writes a layer identical to an earlier one as a symlink to it.
    let root = Root::new("imp-linked");
    let l0 = tar_of(&[E::File("a", b"one")]);
    let l1 = tar_of(&[E::File("b", b"two")]);
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1);
        b.append_data(&mut h, name, data)
            .unwrap_or_else(|e| panic!("{e}"));
    };
    add("l0/layer.tar", &l0);
    add("l1/layer.tar", &l1);
    add("c.json", &image_config(&[], &["sh"], ""));
    add(
        "manifest.json",
        br#"[{"Config":"c.json","Layers":["l0/layer.tar","l1/layer.tar","l2/layer.tar"]}]"#,
    );
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    h.set_mtime(1);
    b.append_link(&mut h, "l2/layer.tar", "../l0/layer.tar")
        .unwrap_or_else(|e| panic!("{e}"));
    let data = b.into_inner().unwrap_or_else(|e| panic!("{e}"));
    root.import_ok("linked", &data);
    assert_eq!(
        std::fs::read(root.layer("linked", 2).join("a")).unwrap_or_default(),
        b"one"
    );
    assert_eq!(
        std::fs::read(root.layer("linked", 1).join("b")).unwrap_or_default(),
        b"two"
    );
}

#[test]
fn gnu_pax_sparse_files() {
    // What `tar -S --format=posix` writes: pax keys naming the real file and size, and a
    // map (count, offset/size pairs) before the data chunks.
    let root = Root::new("imp-sparse");
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([
        ("GNU.sparse.major", &b"1"[..]),
        ("GNU.sparse.minor", &b"0"[..]),
        ("GNU.sparse.name", &b"./big"[..]),
        ("GNU.sparse.realsize", &b"3000000"[..]),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let mut data = b"2\n0\n4\n2999995\n5\n".to_vec();
    data.resize(512, 0);
    data.extend_from_slice(b"headtail\n");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, "./GNUSparseFile.0/big", data.as_slice())
        .unwrap_or_else(|e| panic!("{e}"));
    let archive = b.into_inner().unwrap_or_else(|e| panic!("{e}"));
    root.import_ok("sparse", &archive);
    let l = root.layer("sparse", 0);
    assert!(
        !l.join("GNUSparseFile.0").exists(),
        "stored under its real name"
    );
    let got = std::fs::read(l.join("big")).unwrap_or_default();
    assert_eq!(got.len(), 3_000_000);
    assert_eq!(&got[..4], b"head");
    assert_eq!(&got[2_999_995..], b"tail\n");
    assert!(got[4..2_999_995].iter().all(|b| *b == 0));
    let blocks = std::fs::metadata(l.join("big"))
        .map(|m| m.blocks())
        .unwrap_or(u64::MAX);
    assert!(blocks < 100, "holes kept: {blocks} blocks");
}
