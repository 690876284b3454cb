//! Differential scenario runner: the same initial layers and the same
//! script on side A (kernel overlay, the reference) and side B (the target
//! under test), then comparison of op logs, merged trees, upper dirs and
//! (for unionfs) the workdir.

use std::fmt::Write as _;

use crate::fixture::{workdir_leftovers, Layout};
use crate::ops::{private_umask, Ops};
use crate::snapshot::{diff, walk_ctx, Snapshot, WalkCtx, WalkKind};
use crate::tree::Tree;
use crate::{target, Target};

const MAX_DIFF: usize = 20;

/// Why a test did not run, as `skip` records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not run as root (`scripts/test.sh` refuses to run without root).
    NeedsRoot,
    /// Does not apply here by design: a layout-specific difference documented as
    /// inherent (README.md), listed but allowed in CI.
    Expected,
    /// A check that should have run here and could not: fails CI.
    Missing,
}

impl Skip {
    pub fn word(self) -> &'static str {
        match self {
            Skip::NeedsRoot => "needs-root",
            Skip::Expected => "expected",
            Skip::Missing => "missing",
        }
    }
}

/// Reports a test that returns without checking anything: on the real stderr (libtest's
/// capture, which hides the output of passing tests, only intercepts print!/eprint!)
/// and as a line `KIND<TAB>TEST<TAB>LAYOUT/OPTIONS<TAB>REASON` appended to the file named
/// by `UNIONFS_SKIP_LOG` (set by `scripts/test.sh`, which lists the skips at the end and
/// fails CI on a `missing` one).
pub fn skip(name: &str, kind: Skip, reason: &str) {
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED ({}): {name}: {reason}",
        kind.word()
    );
    let Some(log) = std::env::var_os("UNIONFS_SKIP_LOG") else {
        return;
    };
    let env = |k: &str, d: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| d.to_string())
    };
    let line = format!(
        "{}\t{name}\tlayout={} opts={}\t{reason}\n",
        kind.word(),
        env("DIFFTEST_LAYOUT", "onefs"),
        env("DIFFTEST_UNIONFS_OPTS", "defaults")
    );
    // One write in append mode: lines from tests running at once do not mix.
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .unwrap_or_else(|e| panic!("recording a skip in {log:?}: {e}"));
}

/// Returns false (after reporting the skip) if not running as root.
pub fn require_root(name: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        skip(
            name,
            Skip::NeedsRoot,
            "needs root (mounts overlay/FUSE filesystems)",
        );
        false
    }
}

/// Whether the layers are on one filesystem (`DIFFTEST_LAYOUT`); a scenario that only
/// means something there reports an expected skip when it does not run.
pub fn require_one_fs(name: &str, why: &str) -> bool {
    if crate::fixture::Placement::from_env() == crate::fixture::Placement::OneFs {
        return true;
    }
    skip(name, Skip::Expected, &format!("on this layout: {why}"));
    false
}

/// Everything observed on one side.
#[derive(Debug, Default)]
pub struct SideResult {
    pub target: Option<Target>,
    pub log: Vec<String>,
    pub merged: Snapshot,
    pub upper: Option<Snapshot>,
    pub workdir_leftovers: Vec<String>,
    pub errors: Vec<String>,
}

/// Initial state and options of a scenario.
#[derive(Clone)]
pub struct Scenario {
    pub name: String,
    /// Lower layers, topmost first (`lowerdir=l1:l2:...`).
    pub lowers: Vec<Tree>,
    pub upper: Option<Tree>,
    pub readonly: bool,
    pub umask: u32,
    /// Paths whose mtime is compared in the tree walks.
    pub mtime_paths: Vec<Vec<u8>>,
    /// The same lower layers in the kernel's own format, for the kernel side, when the
    /// scenario's lowers use a format only unionfs reads (the OCI/AUFS `.wh.` markers).
    pub kernel_lowers: Option<Vec<Tree>>,
    /// Extra mount options for both sides.
    pub mount_opts: String,
    /// Built into the workdir before mounting (e.g. a default ACL on it).
    pub workdir: Option<Tree>,
}

impl Scenario {
    pub fn new(name: &str) -> Scenario {
        Scenario {
            name: name.to_string(),
            lowers: Vec::new(),
            upper: None,
            readonly: false,
            umask: 0o022,
            mtime_paths: Vec::new(),
            kernel_lowers: None,
            mount_opts: String::new(),
            workdir: None,
        }
    }
    /// Builds `t` into the workdir of both sides before mounting.
    pub fn workdir(mut self, t: Tree) -> Self {
        self.workdir = Some(t);
        self
    }
    /// Gives the kernel side these lower layers instead: the scenario's layers converted
    /// to the kernel's format (whiteouts as 0/0 devices, opaque as an xattr).
    /// Mounts both sides with these extra `-o` items.
    pub fn mount_opts(mut self, o: &str) -> Self {
        self.mount_opts = o.to_string();
        self
    }
    pub fn kernel_lowers(mut self, t: Vec<Tree>) -> Self {
        self.kernel_lowers = Some(t);
        self
    }
    /// Adds a lower layer below the ones already added.
    pub fn lower(mut self, t: Tree) -> Self {
        self.lowers.push(t);
        self
    }
    /// Pre-populated upper layer.
    pub fn upper(mut self, t: Tree) -> Self {
        self.upper = Some(t);
        self
    }
    /// No upperdir: a read-only union.
    pub fn readonly(mut self) -> Self {
        self.readonly = true;
        self
    }
    pub fn umask(mut self, m: u32) -> Self {
        self.umask = m;
        self
    }
    /// Also compare the mtime of `p` in the tree walks.
    pub fn mtime_of(mut self, p: impl AsRef<[u8]>) -> Self {
        self.mtime_paths.push(p.as_ref().to_vec());
        self
    }

    fn layers(&self) -> Vec<Tree> {
        if self.lowers.is_empty() {
            vec![Tree::new()]
        } else {
            self.lowers.clone()
        }
    }

    /// Builds a layout, mounts it with `target`, runs the script, snapshots,
    /// unmounts, and snapshots the upper dir.
    pub fn run_side<F>(
        &self,
        target: Target,
        label: &str,
        reference: bool,
        script: &F,
    ) -> SideResult
    where
        F: Fn(&mut Ops) + Sync,
    {
        let layers = match (&self.kernel_lowers, target) {
            (Some(k), Target::Kernel) => k.clone(),
            _ => self.layers(),
        };
        let layout = Layout::build(
            &format!("{}-{label}", self.name),
            &layers,
            self.upper.as_ref(),
            !self.readonly,
        );
        if let (Some(t), Some(w)) = (&self.workdir, &layout.work) {
            t.build(w)
                .unwrap_or_else(|e| panic!("[{}] building workdir: {e}", self.name));
        }
        let mut res = SideResult {
            target: Some(target),
            ..Default::default()
        };
        let mut guard = layout
            .mount_with(target, &self.mount_opts)
            .unwrap_or_else(|e| panic!("[{}] side {label}: {e}", self.name));
        let ctx = WalkCtx::new(&self.mount_opts, &layout.lowers);
        let dog = Watchdog::start(&layout.mnt, target, &self.name);
        res.log = run_script(&layout.mnt, reference, self.umask, script);
        res.merged = walk_ctx(guard.path(), WalkKind::Merged, &self.mtime_paths, &ctx);
        if let Some(e) = dog.stop() {
            res.errors.push(e);
        }
        if let Err(e) = guard.unmount() {
            res.errors.push(e);
        }
        if let Some(u) = &layout.upper {
            res.upper = Some(walk_ctx(u, WalkKind::Upper, &self.mtime_paths, &ctx));
        }
        if target == Target::Kernel {
            // `unionfs explain` on the bare layers must agree with what the kernel showed.
            res.errors.extend(crate::explain_check::check(
                &layout.lowers,
                layout.upper.as_deref(),
                &self.mount_opts,
                &res.merged,
            ));
        }
        if target == Target::Unionfs {
            if let Some(w) = &layout.work {
                res.workdir_leftovers = workdir_leftovers(w);
            }
        }
        res
    }

    /// Runs the scenario on the kernel (A) and on `target()` (B) and panics
    /// with a readable report if anything differs. Returns both results.
    pub fn run<F>(&self, script: F) -> Option<(SideResult, SideResult)>
    where
        F: Fn(&mut Ops) + Sync,
    {
        if !require_root(&self.name) {
            return None;
        }
        let a = self.run_side(Target::Kernel, "A", true, &script);
        let b = self.run_side(target(), "B", false, &script);
        if std::env::var_os("DIFFTEST_VERBOSE").is_some() {
            println!(
                "== {} (A = kernel) log:\n  {}",
                self.name,
                a.log.join("\n  ")
            );
            if std::env::var_os("DIFFTEST_VERBOSE").is_some_and(|v| v == "2") {
                for (what, snap) in [("merged", Some(&a.merged)), ("upper", a.upper.as_ref())] {
                    for e in snap.into_iter().flatten() {
                        println!("  {what} {}: {}", crate::ops::esc(&e.path), e.line);
                    }
                }
            }
        }
        if let Some(report) = compare(&a, &b) {
            panic!(
                "scenario {} differs (A = kernel overlay, B = {:?}):\n{report}",
                self.name,
                target()
            );
        }
        Some((a, b))
    }
}

/// Aborts the FUSE connection of a unionfs mount if the script and walk
/// take longer than `DIFFTEST_TIMEOUT` seconds (default 60), so that a hung
/// daemon fails the test instead of hanging the suite.
pub struct Watchdog {
    tx: Option<std::sync::mpsc::Sender<()>>,
    handle: Option<std::thread::JoinHandle<Option<String>>>,
}

impl Watchdog {
    pub fn start(mnt: &std::path::Path, target: Target, name: &str) -> Watchdog {
        use std::os::unix::fs::MetadataExt;
        if target != Target::Unionfs {
            return Watchdog {
                tx: None,
                handle: None,
            };
        }
        let secs: u64 = std::env::var("DIFFTEST_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60);
        let dev = std::fs::metadata(mnt).map(|m| m.dev()).unwrap_or(0);
        let minor = nix::sys::stat::minor(dev);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let name = name.to_string();
        let handle = std::thread::spawn(move || {
            match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let ctl = format!("/sys/fs/fuse/connections/{minor}/abort");
                    let r = std::fs::write(&ctl, "1");
                    let msg = format!(
                        "[{name}] unionfs did not answer within {secs}s: aborted FUSE connection ({ctl}: {r:?})"
                    );
                    eprintln!("{msg}");
                    Some(msg)
                }
                _ => None,
            }
        });
        Watchdog {
            tx: Some(tx),
            handle: Some(handle),
        }
    }

    /// Stops the watchdog; returns its message if it fired.
    pub fn stop(mut self) -> Option<String> {
        drop(self.tx.take());
        self.handle.take().and_then(|h| h.join().ok().flatten())
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.tx.take());
    }
}

/// Runs a script in a fresh thread with a private umask; returns its log.
pub fn run_script<F>(root: &std::path::Path, reference: bool, umask: u32, script: &F) -> Vec<String>
where
    F: Fn(&mut Ops) + Sync,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            private_umask(umask);
            let mut o = Ops::new(root, reference, umask);
            script(&mut o);
            std::mem::take(&mut o.log)
            // `o` (and any fd it kept open) is dropped here, before unmount
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Side-by-side rendering of two logs, marking differing lines.
pub fn log_diff(a: &[String], b: &[String]) -> Option<String> {
    if a == b {
        return None;
    }
    let w = a.iter().map(|l| l.len()).max().unwrap_or(0).min(70);
    let mut out = String::new();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).map(String::as_str).unwrap_or("<none>");
        let y = b.get(i).map(String::as_str).unwrap_or("<none>");
        let mark = if x == y { ' ' } else { '!' };
        let _ = writeln!(out, "  {mark} {i:>2} {x:<w$} | {y}");
    }
    Some(out)
}

/// Compares two sides; `None` if they agree.
pub fn compare(a: &SideResult, b: &SideResult) -> Option<String> {
    let mut r = String::new();
    if let Some(d) = log_diff(&a.log, &b.log) {
        let first = a
            .log
            .iter()
            .zip(b.log.iter().chain(std::iter::repeat(&String::new())))
            .find(|(x, y)| x != y)
            .map(|(x, y)| format!("A `{x}` vs B `{y}`"))
            .unwrap_or_else(|| "log length differs".into());
        let _ = write!(r, "op logs differ: {first}\n{d}");
    }
    if let Some(d) = diff(&a.merged, &b.merged, "A", "B", MAX_DIFF) {
        let _ = write!(r, "merged trees differ:\n{d}");
    }
    match (&a.upper, &b.upper) {
        (Some(ua), Some(ub)) => {
            if let Some(d) = diff(ua, ub, "A", "B", MAX_DIFF) {
                let _ = write!(r, "upper dirs differ (after unmount):\n{d}");
            }
        }
        (None, None) => {}
        _ => r += "only one side has an upper dir\n",
    }
    if !b.workdir_leftovers.is_empty() {
        let _ = writeln!(r, "B left files in workdir: {:?}", b.workdir_leftovers);
    }
    for (side, s) in [("A", a), ("B", b)] {
        for e in &s.errors {
            let _ = writeln!(r, "side {side}: {e}");
        }
    }
    (!r.is_empty()).then_some(r)
}

/// On-disk format check: run `script` mounted with `first`, snapshot the
/// merged tree, unmount, remount the same lower+upper with `second` (fresh
/// workdir) and compare the merged trees. When `first` is not the kernel, the kernel's
/// overlay also runs `script` on a layout of its own, and the first mount's op log,
/// merged tree and upper dir must equal the kernel's (a union that refused every
/// operation would otherwise write nothing, and read nothing back wrong).
pub fn remount_check<F>(sc: &Scenario, first: Target, second: Target, script: F)
where
    F: Fn(&mut Ops) + Sync,
{
    if !require_root(&sc.name) {
        return;
    }
    assert!(!sc.readonly, "remount_check needs an upper dir");
    // Times the script sets to now differ between the two runs: the comparison with the
    // kernel's run leaves mtimes out (the remount comparison keeps them).
    let untimed = Scenario {
        mtime_paths: Vec::new(),
        ..sc.clone()
    };
    let reference =
        (first != Target::Kernel).then(|| untimed.run_side(Target::Kernel, "ref", true, &script));
    let mut layout = Layout::build(&sc.name, &sc.layers(), sc.upper.as_ref(), true);
    let ctx = WalkCtx::new(&sc.mount_opts, &layout.lowers);
    let mut errors = Vec::new();
    let mut written = SideResult {
        target: Some(first),
        ..Default::default()
    };
    let before = {
        let mut g = layout
            .mount_with(first, &sc.mount_opts)
            .unwrap_or_else(|e| panic!("[{}] mount {first:?}: {e}", sc.name));
        let dog = Watchdog::start(&layout.mnt, first, &sc.name);
        written.log = run_script(&layout.mnt, first == Target::Kernel, sc.umask, &script);
        let s = walk_ctx(g.path(), WalkKind::Merged, &sc.mtime_paths, &ctx);
        written.merged = walk_ctx(g.path(), WalkKind::Merged, &[], &ctx);
        errors.extend(dog.stop());
        if let Err(e) = g.unmount() {
            errors.push(e);
        }
        s
    };
    if let Some(u) = &layout.upper {
        written.upper = Some(walk_ctx(u, WalkKind::Upper, &[], &ctx));
    }
    if first == Target::Unionfs {
        let left = workdir_leftovers(layout.work.as_ref().unwrap());
        if !left.is_empty() {
            errors.push(format!("unionfs left files in workdir: {left:?}"));
        }
    }
    layout.fresh_workdir();
    let after = {
        let mut g = layout
            .mount_with(second, &sc.mount_opts)
            .unwrap_or_else(|e| panic!("[{}] remount {second:?}: {e}", sc.name));
        let dog = Watchdog::start(&layout.mnt, second, &sc.name);
        let s = walk_ctx(g.path(), WalkKind::Merged, &sc.mtime_paths, &ctx);
        errors.extend(dog.stop());
        if let Err(e) = g.unmount() {
            errors.push(e);
        }
        s
    };
    let mut r = String::new();
    if let Some(k) = &reference {
        if let Some(d) = compare(k, &written) {
            let _ = write!(
                r,
                "the first mount ({first:?}) differs from the kernel's overlay running the same script (A = kernel, B = {first:?}):\n{d}"
            );
        }
    }
    if let Some(d) = diff(
        &before,
        &after,
        &format!("{first:?}"),
        &format!("{second:?}"),
        MAX_DIFF,
    ) {
        let _ = write!(
            r,
            "merged tree written by {first:?} differs when read back by {second:?}:\n{d}"
        );
    }
    for e in errors {
        let _ = writeln!(r, "{e}");
    }
    if !r.is_empty() {
        panic!("format check {}:\n{r}", sc.name);
    }
}
