//! The bench's exit status, which is what makes `bench --quick` in CI a check: a run that
//! could not measure one of the required targets must fail, one that measured all must not.

use std::process::Command;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_bench"))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn our_daemon_that_cannot_run_fails_the_run() {
    if !is_root() {
        println!("SKIPPED: the bench mounts, so it runs as root only");
        return;
    }
    let out = bench()
        .args([
            "--quick",
            "--targets",
            "unionfs",
            "--workloads",
            "stat-warm",
            "--unionfs",
            "/bin/true",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run the bench: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "exit status {:?}: {err}", out.status);
    assert!(
        err.contains("unionfs cannot be measured"),
        "no reason given: {err}"
    );
}

#[test]
fn a_run_of_required_targets_succeeds_and_prints_each_workload() {
    if !is_root() {
        println!("SKIPPED: the bench mounts, so it runs as root only");
        return;
    }
    let out = bench()
        .args([
            "--quick",
            "--targets",
            "plain,overlay",
            "--workloads",
            "stat-warm,write-4k",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run the bench: {e}"));
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
