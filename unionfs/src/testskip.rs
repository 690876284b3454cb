//! For the unit tests: a test that cannot run here says so on the real stderr and in
//! `$UNIONFS_SKIP_LOG`, as the integration tests do (`tests/common/mod.rs`), which
//! `scripts/test.sh` lists at the end and fails CI on (`missing`).

/// Why a test did not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// Not run as root.
    NeedsRoot,
    /// A check that should have run here and could not: fails CI.
    Missing,
}

/// Reports a skipped unit test: to the real stderr (libtest only captures
/// print!/eprint!) and as a `KIND<TAB>TEST<TAB>-<TAB>REASON` line in `$UNIONFS_SKIP_LOG`.
pub fn skip(name: &str, kind: Skip, reason: &str) {
    use std::io::Write as _;
    let word = match kind {
        Skip::NeedsRoot => "needs-root",
        Skip::Missing => "missing",
    };
    let _ = writeln!(std::io::stderr(), "SKIPPED ({word}): {name}: {reason}");
    let Some(log) = std::env::var_os("UNIONFS_SKIP_LOG") else {
        return;
    };
    let line = format!("{word}\t{name}\t-\t{reason}\n");
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .unwrap_or_else(|e| panic!("recording a skip in {log:?}: {e}"));
}

/// `NeedsRoot` when not run as root, else `Missing` (root, and still unable to run).
pub fn root_or_missing() -> Skip {
    if nix::unistd::geteuid().is_root() {
        Skip::Missing
    } else {
        Skip::NeedsRoot
    }
}
