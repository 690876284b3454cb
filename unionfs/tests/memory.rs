//! The daemon's memory for a large cached tree (issue 13): a walk over 100,000 lower files
//! must cost at most about what fuse-overlayfs 1.10 spends per cached inode, and once the
//! kernel forgets the inodes (`drop_caches`) the daemon must give nearly all of it back.
//!
//! Run it alone (`cargo test -p unionfs --test memory`): it drops the machine's caches,
//! and other mounts' daemons do not share its process, so their load does not skew it.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// 100,000 files: what the daemon keeps after giving memory back is about 1 MB whatever
/// the tree (code pages of libc touched meanwhile, heap pages pinned by a live allocation
/// each), so a tree much smaller would measure that rather than the give-back.
const DIRS: usize = 400;
const FILES_PER_DIR: usize = 250;

/// fuse-overlayfs 1.10 (Debian's) grows by 59 MB in a `find -ls` over 200,000 lower files
/// on this machine: 303 bytes per cached inode, with its node, its hash tables, its names
/// and its descriptors (the bench's `walk-200k` says 301-307 from run to run). The bound
/// is that figure: issue 13 asks for no more than 1.10 spends. unionfs needs about 273
/// here (270 at 200,000, the hash tables' fill differing with the count); the starting
/// code needed 1,258.
const MAX_BYTES_PER_NODE: u64 = 303;

/// What is left above the idle daemon a few seconds after the kernel forgot the tree, as
/// a fraction of what the walk added (issue 13: at most a tenth). Counted in anonymous
/// memory (`RssAnon`, the heap): the code pages the walk touched (`RssFile`, 1-2 MB of a
/// debug build) stay mapped whatever the daemon frees, and would make the check hang on
/// the size of the binary rather than on what is given back.
const MAX_LEFT_DIVISOR: u64 = 10;

/// A `/proc/PID/status` field in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:")
}

fn anon_kb(pid: u32) -> u64 {
    status_kb(pid, "RssAnon:")
}

fn drop_caches() {
    // Dirty pages are not dropped: write them first.
    nix::unistd::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap_or_else(|e| panic!("drop_caches: {e}"));
}

/// `lstat`s every entry under `dir`, as `find -ls` does: one LOOKUP and one cached node
/// per entry. Returns how many entries it saw.
fn walk(dir: &Path) -> u64 {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display())) {
        let e = e.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
        let p = e.path();
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        n += 1;
        if md.is_dir() {
            n += walk(&p);
        }
    }
    n
}

/// The daemon in the foreground (so that its PID is ours to read), unmounted and reaped
/// on drop.
struct Daemon {
    child: Child,
    mounted: Mounted,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.mounted.unmount();
        if !wait_until(Duration::from_secs(10), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        }) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start(s: &Scratch) -> Daemon {
    // `UNIONFS_MEMORY_BIN` runs the test on another build of the daemon (to show that
    // it fails on one that keeps too much).
    let bin = std::env::var_os("UNIONFS_MEMORY_BIN").map_or_else(bin, Into::into);
    let opts = union_opts(
        &s.path("l").display().to_string(),
        &s.path("u"),
        &s.path("w"),
        "",
    );
    let child = Command::new(bin)
        .arg("-f")
        .arg("-o")
        .arg(opts)
        .arg(s.path("m"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("run unionfs: {e}"));
    let mnt = s.path("m");
    let mut d = Daemon {
        child,
        mounted: Mounted(Default::default()),
    };
    assert!(
        wait_until(Duration::from_secs(10), || mount_entry(&mnt)
            .is_some_and(|e| e.fstype.starts_with("fuse"))),
        "unionfs did not mount"
    );
    d.mounted = Mounted(mnt);
    d
}

#[test]
fn walk_costs_little_and_drop_caches_gives_it_back() {
    if !require_root(
        "walk_costs_little_and_drop_caches_gives_it_back",
        "needs root to mount and to drop the kernel's caches",
    ) {
        return;
    }
    let s = Scratch::new("memory");
    s.mkdirs(&["u", "w", "m"]);
    for d in 0..DIRS {
        let dir = s.path(&format!("l/d{:02}/s{d:03}", d % 20));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir: {e}"));
        for f in 0..FILES_PER_DIR {
            fs::File::create(dir.join(format!("file-{f:04}")))
                .unwrap_or_else(|e| panic!("create: {e}"));
        }
    }
    let daemon = start(&s);
    let pid = daemon.child.id();
    drop_caches();
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kb(pid);
    let idle_anon = anon_kb(pid);

    let nodes = walk(&s.path("m"));
    assert_eq!(nodes as usize, DIRS * FILES_PER_DIR + DIRS + 20);
    let walked = rss_kb(pid);
    let grown_anon = anon_kb(pid).saturating_sub(idle_anon);
    let grown = walked.saturating_sub(idle);
    let per_node = grown * 1024 / nodes;
    eprintln!(
        "idle {idle} kB, after walking {nodes} entries {walked} kB: {per_node} bytes per node"
    );

    drop_caches();
    let mut left = walked;
    let given_back = wait_until(Duration::from_secs(10), || {
        left = anon_kb(pid);
        left.saturating_sub(idle_anon) * MAX_LEFT_DIVISOR <= grown_anon
    });
    eprintln!(
        "anonymous memory: idle {idle_anon} kB, the walk added {grown_anon} kB, \
         after drop_caches {left} kB (VmRSS {} kB)",
        rss_kb(pid)
    );
    // Both measured before either fails, so that a failure reports both.
    let mut failures = Vec::new();
    if per_node > MAX_BYTES_PER_NODE {
        failures.push(format!(
            "{per_node} bytes per cached node (idle {idle} kB, after the walk {walked} kB), \
             more than {MAX_BYTES_PER_NODE}"
        ));
    }
    if !given_back {
        failures.push(format!(
            "10 s after drop_caches the daemon holds {left} kB of anonymous memory: {} kB \
             above idle ({idle_anon} kB), more than a tenth of the walk's {grown_anon} kB",
            left.saturating_sub(idle_anon)
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));
    drop(daemon);
}
