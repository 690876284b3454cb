//! The bench's exit status, which is what makes `bench --quick` in CI a check: a run that
//! could not measure one of the required targets must fail, one that measured all must not.

use std::process::Command;

/// Runs the bench with `args`; None (with a note) when not root, as the bench mounts.
fn run_bench(args: &[&str]) -> Option<std::process::Output> {
    if !nix::unistd::geteuid().is_root() {
        use std::io::Write as _;
        let test = std::thread::current()
            .name()
            .unwrap_or("bench cli")
            .to_string();
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED (needs-root): {test}: the bench mounts, so it runs as root only"
        );
        if let Some(log) = std::env::var_os("UNIONFS_SKIP_LOG") {
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(&log)
                .and_then(|mut f| {
                    f.write_all(
                        format!(
                            "needs-root\t{test}\t-\tthe bench mounts, so it runs as root only\n"
                        )
                        .as_bytes(),
                    )
                })
                .unwrap_or_else(|e| panic!("recording a skip in {log:?}: {e}"));
        }
        return None;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the bench: {e}"));
    Some(out)
}

#[test]
fn our_daemon_that_cannot_run_fails_the_run() {
    let Some(out) = run_bench(&[
        "--quick",
        "--targets",
        "unionfs",
        "--workloads",
        "stat-warm",
        "--unionfs",
        "/bin/true",
    ]) else {
        return;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {:?}: {err}", out.status);
    assert!(
        err.contains("unionfs cannot be measured"),
        "no reason given: {err}"
    );
}

#[test]
fn a_run_of_required_targets_succeeds_and_prints_each_workload() {
    let Some(out) = run_bench(&[
        "--quick",
        "--targets",
        "plain,overlay",
        "--workloads",
        "stat-warm,write-4k",
    ]) else {
        return;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit status {:?}: {err}", out.status);
    let table = String::from_utf8_lossy(&out.stdout);
    for w in ["| stat-warm |", "| write-4k |"] {
        let row = table
            .lines()
            .find(|l| l.starts_with(w))
            .unwrap_or_else(|| panic!("no row {w} in:\n{table}"));
        // plain and overlay: two measured cells.
        assert_eq!(row.matches('×').count(), 2, "{row}");
    }
}
