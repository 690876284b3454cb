//! Shared by runbox's integration tests: a scratch store under /tmp/runbox-it-*, images
//! built from the static busybox (plain, docker-save and OCI archives made here with the
//! tar crate), running the runbox binary by its path, and a guard that checks (and cleans)
//! mounts, processes and cgroups left behind.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BUSYBOX: &str = "/bin/busybox";
pub const APPLETS: &[&str] = &[
    "sh", "ls", "cat", "echo", "hostname", "ip", "mkdir", "rm", "id", "sleep", "kill", "head",
    "tr", "seq", "grep", "wc", "touch", "stat", "true", "false", "env", "pwd", "dd", "test",
    "chown",
];

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Tests that need root say so on stderr when they cannot run; they never pass silently.
pub fn need_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(
        test,
        "needs-root",
        "needs root (namespaces, mounts, cgroups)",
    );
    false
}

/// Reports a test (or part of one) that does not run: on the real stderr (libtest's
/// capture only intercepts print!/eprint!) and as a line `KIND<TAB>TEST<TAB>-<TAB>REASON`
/// appended to the file named by `UNIONFS_SKIP_LOG` (see scripts/test.sh); KIND is
/// `needs-root`, `expected` or `missing`.
pub fn skip(test: &str, kind: &str, reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "SKIPPED ({kind}): {test}: {reason}");
    let Some(log) = std::env::var_os("UNIONFS_SKIP_LOG") else {
        return;
    };
    let line = format!("{kind}\t{test}\t-\t{reason}\n");
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .unwrap_or_else(|e| panic!("recording a skip in {log:?}: {e}"));
}

/// The runbox binary of this build (never through PATH).
pub fn runbox() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_runbox"))
}

/// The unionfs daemon beside it, built by `cargo build -p unionfs` (scripts/test.sh does).
pub fn unionfs() -> PathBuf {
    let p = runbox().with_file_name("unionfs");
    assert!(
        p.exists(),
        "{} is missing: build the daemon first (cargo build -p unionfs --bins)",
        p.display()
    );
    p
}

/// A store root, removed on drop after checking nothing is left mounted or running.
pub struct Root {
    pub path: PathBuf,
    pub containers: Vec<String>,
}

impl Root {
    pub fn new(tag: &str) -> Root {
        let mut n = 0u32;
        loop {
            let p = PathBuf::from(format!("/tmp/runbox-it-{tag}-{}-{n}", std::process::id()));
            if std::fs::create_dir(&p).is_ok() {
                return Root {
                    path: p,
                    containers: Vec::new(),
                };
            }
            n += 1;
        }
    }

    /// A container name unique to this test run (cgroups are named after it).
    pub fn name(&mut self, tag: &str) -> String {
        let n = format!("it-{tag}-{}", std::process::id());
        self.containers.push(n.clone());
        n
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(runbox());
        c.arg("--root").arg(&self.path).args(args);
        c.env("RUNBOX_UNIONFS", unionfs());
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args)
            .output()
            .unwrap_or_else(|e| panic!("run runbox: {e}"))
    }

    /// Imports archive bytes through stdin.
    pub fn import_bytes(&self, name: &str, data: &[u8]) -> Output {
        let mut child = self
            .cmd(&["import", name, "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn runbox: {e}"));
        if let Some(mut si) = child.stdin.take() {
            let _ = si.write_all(data);
        }
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("wait runbox: {e}"))
    }

    pub fn import_ok(&self, name: &str, data: &[u8]) {
        let out = self.import_bytes(name, data);
        assert!(out.status.success(), "import {name}: {}", text(&out.stderr));
    }

    pub fn layer(&self, image: &str, i: usize) -> PathBuf {
        self.path.join(format!("images/{image}/layers/{i}"))
    }

    pub fn upper(&self, container: &str) -> PathBuf {
        self.path.join(format!("containers/{container}/upper"))
    }

    /// What the tests leave behind is a failure: mounts under the root, processes naming
    /// it, cgroups of its containers. Each is reported, then cleaned up.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        let root = self.path.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<String> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .map(str::to_string)
            .collect();
        points.sort();
        for m in points.iter().rev() {
            found.push(format!("mount {m}"));
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        let me = std::process::id();
        // runbox waits for its FUSE daemon; give anything else that is exiting a moment.
        let named = |root: &str| {
            std::fs::read_dir("/proc")
                .map(|rd| {
                    rd.flatten().any(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .parse::<u32>()
                            .is_ok_and(|p| p != me)
                            && String::from_utf8_lossy(
                                &std::fs::read(e.path().join("cmdline")).unwrap_or_default(),
                            )
                            .contains(root)
                    })
                })
                .unwrap_or(false)
        };
        for _ in 0..40 {
            if !named(&root) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                if pid == me {
                    continue;
                }
                let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&root) {
                    found.push(format!(
                        "process {pid}: {}",
                        String::from_utf8_lossy(&cmdline)
                    ));
                    // Started by this test (its command line names this test's root).
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        for c in &self.containers {
            for h in ["memory", "pids", ""] {
                let p = Path::new("/sys/fs/cgroup").join(h).join("runbox").join(c);
                if p.exists() {
                    found.push(format!("cgroup {}", p.display()));
                    let _ = std::fs::remove_dir(&p);
                }
            }
        }
        found
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let left = self.leftovers();
        let _ = std::fs::remove_dir_all(&self.path);
        if !left.is_empty() && !std::thread::panicking() {
            panic!("left behind: {left:?}");
        }
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One member of a test archive.
pub enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a [u8]),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
    /// A member whose name is written raw into the header (to bypass the builder's checks).
    RawFile(&'a str, &'a [u8]),
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h
}

/// Sets a name in the header's raw bytes, bypassing the tar crate's refusal of `..`.
fn raw_name(h: &mut tar::Header, name: &str) {
    let bytes = name.as_bytes();
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    for (d, s) in field.iter_mut().zip(bytes) {
        *d = *s;
    }
    h.set_cksum();
}

pub fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p) => {
                let mut h = header(tar::EntryType::Directory, 0, 0o755);
                b.append_data(&mut h, p, std::io::empty())
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            E::File(p, data) => {
                let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o644);
                b.append_data(&mut h, p, *data)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            E::Link(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0, 0o777);
                b.append_link(&mut h, p, target)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            E::Hard(p, target) => {
                let mut h = header(tar::EntryType::Link, 0, 0o644);
                b.append_link(&mut h, p, target)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            E::RawFile(p, data) => {
                let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o644);
                raw_name(&mut h, p);
                b.append(&h, *data).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
    b.into_inner().unwrap_or_else(|e| panic!("{e}"))
}

/// A root filesystem with the static busybox and its applet links, plus `extra`.
pub fn busybox_tar(extra: &[E]) -> Vec<u8> {
    let bb = std::fs::read(BUSYBOX).unwrap_or_else(|e| {
        panic!("{BUSYBOX}: {e} (install Debian's busybox-static: scripts/setup.sh)")
    });
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::Directory, 0, 0o755);
    b.append_data(&mut h, "bin", std::io::empty())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut h = header(tar::EntryType::Regular, bb.len() as u64, 0o755);
    b.append_data(&mut h, "bin/busybox", bb.as_slice())
        .unwrap_or_else(|e| panic!("{e}"));
    for a in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0, 0o777);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let mut out = b.into_inner().unwrap_or_else(|e| panic!("{e}"));
    // Append the extra members: drop the end-of-archive blocks and add theirs.
    let more = tar_of(extra);
    out.truncate(out.len() - 1024);
    out.extend_from_slice(&more);
    out
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap_or_else(|e| panic!("{e}"));
    e.finish().unwrap_or_else(|e| panic!("{e}"))
}

/// A tar of named blobs (an outer image archive).
pub fn archive_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o644);
        b.append_data(&mut h, name, data.as_slice())
            .unwrap_or_else(|e| panic!("{e}"));
    }
    b.into_inner().unwrap_or_else(|e| panic!("{e}"))
}

pub fn image_config(env: &[&str], cmd: &[&str], workdir: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": env, "Cmd": cmd, "WorkingDir": workdir},
        "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A `docker save` archive: manifest.json, one directory per layer, the config.
pub fn docker_save(layers: &[Vec<u8>], config: &[u8]) -> Vec<u8> {
    let mut files = Vec::new();
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let n = format!("layer{i:02}/layer.tar");
        files.push((n.clone(), l.clone()));
        names.push(n);
    }
    files.push(("cfg0123.json".to_string(), config.to_vec()));
    let manifest = serde_json::json!([{"Config": "cfg0123.json", "RepoTags": ["test:latest"], "Layers": names}]);
    files.push((
        "manifest.json".to_string(),
        serde_json::to_vec(&manifest).unwrap_or_default(),
    ));
    archive_of(&files)
}

/// An OCI image layout archive; layers gzip-compressed when `gz`. Digests are names here
/// (runbox does not verify them), made unique and hex.
pub fn oci_archive(layers: &[Vec<u8>], config: &[u8], gz: bool) -> Vec<u8> {
    let mut files = Vec::new();
    let mut descs = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let hex = format!("{:064x}", 0xa000 + i);
        let data = if gz { gzip(l) } else { l.clone() };
        let mt = if gz {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        descs.push(serde_json::json!({"mediaType": mt, "digest": format!("sha256:{hex}"), "size": data.len()}));
        files.push((format!("blobs/sha256/{hex}"), data));
    }
    let cfg_hex = format!("{:064x}", 0xc0);
    files.push((format!("blobs/sha256/{cfg_hex}"), config.to_vec()));
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{cfg_hex}"), "size": config.len()},
        "layers": descs
    });
    let man_hex = format!("{:064x}", 0xd0);
    let man = serde_json::to_vec(&manifest).unwrap_or_default();
    files.push((format!("blobs/sha256/{man_hex}"), man.clone()));
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{man_hex}"), "size": man.len(),
         "platform": {"os": "linux", "architecture": "amd64"}}]});
    files.push((
        "index.json".to_string(),
        serde_json::to_vec(&index).unwrap_or_default(),
    ));
    files.push((
        "oci-layout".to_string(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ));
    archive_of(&files)
}

/// A sorted listing of a tree: path, type and mode, owner, size, content or link target.
pub fn snapshot(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = match std::fs::read_dir(dir) {
            Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
            Err(e) => {
                out.push(format!("{}: {e}", dir.display()));
                return;
            }
        };
        names.sort();
        for p in names {
            use std::os::unix::fs::MetadataExt;
            let rel = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            let Ok(md) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let ft = md.file_type();
            let content = if ft.is_file() {
                format!("{:x}", md5ish(&std::fs::read(&p).unwrap_or_default()))
            } else if ft.is_symlink() {
                std::fs::read_link(&p)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let size = if ft.is_dir() { 0 } else { md.size() };
            out.push(format!(
                "{rel} {:o} {}:{} {size} {} {content}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.mtime()
            ));
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// A cheap content fingerprint (FNV-1a), enough to see a file change.
fn md5ish(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}
