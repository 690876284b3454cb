//! `bench`: measures union mounts (unionfs in its configurations, fuse-overlayfs 1.x and 2.0,
//! unionfs-fuse) side by side with kernel overlay and the plain upper filesystem, in one run.
//! This file is the command line and the order of the steps; `bench --help` explains all.

#![deny(unsafe_code)]

mod cache;
mod machine;
mod measure;
mod memory;
mod mount;
mod report;
mod scratch;
mod signals;
mod start;
mod svg;
mod targets;
mod trees;
mod uring_param;
mod workloads;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::cache::Cache;
use crate::machine::Machine;
use crate::measure::Plan;
use crate::report::Report;
use crate::scratch::Scratch;
use crate::targets::{Locations, Target, BASELINE};
use crate::trees::{Lowers, Sizes, Tree};

/// Measures union mounts side by side with kernel overlay, in one run (as root).
///
/// Every workload runs on every target on a fresh upper directory over the same
/// generated lower tree; prints a Markdown table (workload x target) on stdout and
/// progress on stderr.
#[derive(Parser, Debug)]
#[command(name = "bench", version)]
struct Cli {
    /// Tiny sizes (200 files, a 4 MiB big file), 1 round, no warm-up: shows in seconds that
    /// every workload runs on every installed target. Not for conclusions.
    #[arg(long)]
    quick: bool,

    /// Timed rounds; the reported values are medians over them [default: 5, 1 with --quick].
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,

    /// Rounds run first and discarded (caches, page allocation, CPU frequency settle)
    /// [default: 1, 0 with --quick].
    #[arg(long, value_name = "N")]
    warmup: Option<usize>,

    /// Only these targets, comma-separated (see the list below). `overlay` is added when
    /// missing: every ratio is relative to it.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    targets: Vec<String>,

    /// Only these workloads, comma-separated (see the list below).
    #[arg(long, value_delimiter = ',', value_name = "X,Y")]
    workloads: Vec<String>,

    /// Where to generate the lower trees and make the uppers (a directory
    /// unionfs-bench.PID is made in it and removed at the end). Its filesystem is the one
    /// measured: the upper filesystem. Needs about 3 GiB free for the full run.
    #[arg(long, value_name = "DIR", default_value = "/tmp")]
    scratch: PathBuf,

    /// Keep the scratch directory (the generated trees) at the end.
    #[arg(long)]
    keep_scratch: bool,

    /// Our daemon [default: `unionfs` beside this binary, i.e. target/release/unionfs;
    /// never looked up in PATH, where Debian's unionfs-fuse is also called unionfs].
    #[arg(long, value_name = "PATH")]
    unionfs: Option<PathBuf>,

    /// Where the peers installed by bench/install-peers.sh are: DIR/bin/fuse-overlayfs is
    /// fuse-overlayfs 2.0 [default: bench/.peers of this workspace].
    #[arg(long, value_name = "DIR")]
    peers: Option<PathBuf>,

    /// Also write every sample and statistic as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,

    /// Also draw the ratios to kernel overlay as an SVG chart in FILE.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,

    /// List the targets (with what is installed) and the workloads, and exit.
    #[arg(long)]
    list: bool,
}

fn help_tail() -> String {
    let mut h = String::from("Targets (--targets; a peer not installed is reported as skipped; any other target\nthat cannot run, or a workload that fails, makes the run exit non-zero):\n");
    for (name, what) in targets::catalog() {
        let _ = writeln!(h, "  {name:<18}{what}");
    }
    h.push_str("\nWorkloads (--workloads; sizes of the full run):\n");
    let full = Sizes::full();
    for w in &workloads::ALL {
        let _ = writeln!(h, "  {:<18}{}", w.name, w.describe(&full));
    }
    let _ = writeln!(
        h,
        "  {:<18}runbox run --rm IMAGE /bin/true on each backend (kernel overlay, unionfs by FUSE):\n  {:<18}container start-up, a table of its own (needs target/release/runbox)",
        START, ""
    );
    let _ = writeln!(
        h,
        "  {:<18}each FUSE daemon's VmRSS after an lstat walk over 200,000 lower files and 5 s\n  {:<18}after drop_caches (issue 13), a table of its own",
        memory::NAME, ""
    );
    h.push_str(
        "\nMethod:
  The lower trees are generated once per run (the same bytes every run) and shared read-only
  by all targets; each measurement mounts a fresh upper over one of them. In every round each
  workload runs on all targets in turn, each round starting one target further on (A, B, C;
  B, C, A; ...). Cold workloads start after sync and drop_caches; the others after sync, with
  their lower tree in the page cache. Reported per cell: the
  median wall time and its min-max over the timed rounds, the median of the per-round ratios
  to `overlay` (the same round's kernel overlay), and the FUSE daemon's CPU time (user +
  system from /proc/PID/stat; daemons run in the foreground as children of the bench).
  Ctrl-C stops after the current measurement and unmounts everything; a second one detaches
  the mounts at once.

Output:
  stdout   Markdown: the command that reproduces the run, the machine, the table, errors
  stderr   progress: one line per workload and round
  --json   every sample, statistic, target and size
  --plot   SVG bar chart of the ratios (log scale, a line at 1)

Examples (as root, from the workspace):
  cargo build --release -p unionfs -p bench
  cargo run --release -p bench -- --quick
  cargo run --release -p bench -- --json /tmp/bench.json --plot /tmp/bench.svg > /tmp/bench.md
  cargo run --release -p bench -- --targets unionfs,fuse-overlayfs --workloads stat-cold,untar
  bash bench/install-peers.sh    # fuse-overlayfs 1.x and 2.0, unionfs-fuse
",
    );
    h
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let matches = Cli::command().after_help(help_tail()).get_matches();
    let cli = Cli::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    // Before any other thread exists, so that every thread inherits the blocked mask.
    signals::install()?;

    let here =
        std::env::current_exe().map_err(|e| format!("cannot find the bench's own path: {e}"))?;
    let loc = Locations {
        unionfs: match &cli.unionfs {
            Some(p) => p.clone(),
            None => here
                .parent()
                .map(|d| d.join("unionfs"))
                .ok_or("the bench binary has no directory")?,
        },
        peers: cli
            .peers
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".peers")),
    };
    let mut all = targets::discover(&loc);
    if cli.list {
        print_list(&all);
        return Ok(ExitCode::SUCCESS);
    }
    if !nix::unistd::geteuid().is_root() {
        return Err("must run as root: it mounts, and drops the page cache".into());
    }
    let chosen_targets = select_targets(&mut all, &cli.targets)?;
    // `start` is measured apart from the table (see `start.rs`).
    let with_start = cli.workloads.is_empty() || cli.workloads.iter().any(|w| w == START);
    // So is the memory of a large walk (see `memory.rs`).
    let with_memory = cli.workloads.is_empty() || cli.workloads.iter().any(|w| w == memory::NAME);
    let table_names: Vec<String> = cli
        .workloads
        .iter()
        .filter(|w| *w != START && *w != memory::NAME)
        .cloned()
        .collect();
    let chosen_workloads = if !cli.workloads.is_empty() && table_names.is_empty() {
        Vec::new()
    } else {
        select_workloads(&table_names)?
    };
    let sizes = if cli.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let rounds = cli.rounds.unwrap_or(if cli.quick { 1 } else { 5 });
    let warmup = cli.warmup.unwrap_or(if cli.quick { 0 } else { 1 });
    if rounds == 0 {
        return Err("--rounds must be at least 1".into());
    }

    // unionfs-uring needs the fuse module's enable_uring at Y for the whole run, probe
    // included; the guard puts the value found back when `run` returns.
    let mut notes = Vec::new();
    let wants_uring = chosen_targets
        .iter()
        .any(|&i| all[i].needs_uring() && all[i].skipped.is_none());
    let uring_param = if wants_uring {
        match uring_param::EnableUring::acquire() {
            Ok(g) => {
                eprintln!(
                    "bench: {} set to Y for unionfs-uring (was {})",
                    uring_param::PARAM,
                    g.found
                );
                notes.push(format!(
                    "`unionfs-uring`: the fuse module's enable_uring was {found}; the bench set \
                     it to Y for this run and restored it to {found} afterwards.",
                    found = g.found
                ));
                Some(g)
            }
            Err(e) => {
                for &i in &chosen_targets {
                    if all[i].needs_uring() {
                        all[i].skipped = Some(format!("unavailable: {e}"));
                    }
                }
                None
            }
        }
    } else {
        None
    };

    let start = Instant::now();
    let mut scratch = Scratch::create(&cli.scratch, cli.keep_scratch)?;
    let machine = Machine::describe(&scratch.root);
    eprintln!(
        "bench: generating the lower trees in {}",
        scratch.root.display()
    );
    let lowers = Lowers::generate(&scratch.root, &sizes)
        .map_err(|e| format!("cannot generate the lower trees: {e}"))?;
    eprintln!(
        "bench: generated in {:.1}s; checking that every target mounts",
        start.elapsed().as_secs_f64()
    );
    for &i in &chosen_targets {
        let dir = scratch
            .fresh_dir()
            .map_err(|e| format!("cannot make a scratch directory: {e}"))?;
        all[i].probe(&lowers.path(Tree::Empty), &dir);
        scratch.remove(&dir)?;
        if let Some(why) = &all[i].skipped {
            eprintln!("bench: skipping {}: {why}", all[i].name);
        }
    }
    let asked: Vec<&Target> = chosen_targets.iter().map(|&i| &all[i]).collect();
    if let Some((t, why)) = asked
        .iter()
        .filter(|t| t.is_required())
        .find_map(|t| t.skipped.as_ref().map(|why| (t, why)))
    {
        return Err(format!(
            "{} cannot be measured: {why} (only peers may be missing)",
            t.name
        ));
    }
    let measured: Vec<&Target> = asked
        .iter()
        .copied()
        .filter(|t| t.skipped.is_none())
        .collect();
    if measured.is_empty() {
        return Err("no target can be measured on this machine".into());
    }
    let plan = Plan {
        targets: measured.clone(),
        workloads: chosen_workloads.clone(),
        rounds,
        warmup,
        sizes: &sizes,
        lowers: &lowers,
        workers: machine.cores,
    };
    let mut cache = Cache::default();
    // Deletions made just before the run (a previous run's clean-up, say) would slow its
    // creates: see `Cache::forget_deleted`.
    cache.forget_deleted()?;
    let results = match measure::run(&plan, &mut scratch, &mut cache) {
        Ok(r) => r,
        Err(e) if signals::stop_requested() => {
            eprintln!("bench: {e}");
            return Ok(ExitCode::from(130));
        }
        Err(e) => return Err(e),
    };
    let report = Report {
        command: reproduce(),
        machine,
        rounds,
        warmup,
        quick: cli.quick,
        sizes: &sizes,
        elapsed: start.elapsed(),
        targets: &asked,
        measured,
        workloads: chosen_workloads,
        results,
        notes,
    };
    print!("{}", report::markdown(&report));
    let start_rows = if with_start {
        let runbox = loc
            .unionfs
            .parent()
            .map(|d| d.join("runbox"))
            .ok_or("the unionfs path has no directory")?;
        let dir = scratch
            .fresh_dir()
            .map_err(|e| format!("cannot make a scratch directory: {e}"))?;
        // runbox's daemon takes the ring whenever enable_uring is Y (`uring=auto`): start-up
        // is measured with the value the machine had.
        let measure = || {
            start::Start::prepare(&runbox, &loc.unionfs, &dir)
                .and_then(|s| s.measure(rounds.max(3), warmup.max(1)))
        };
        let rows = match &uring_param {
            Some(g) => g.as_found(measure),
            None => measure(),
        };
        match rows {
            Ok(rows) => {
                print!("{}", start::markdown(&rows));
                Some(rows)
            }
            Err(e) => {
                println!("\nContainer start-up: failed: {e}");
                None
            }
        }
    } else {
        Some(Vec::new())
    };
    let memory_ok = if with_memory {
        measure_memory(&report.measured, &mut scratch, cli.quick)
    } else {
        true
    };
    if let Some(path) = &cli.json {
        std::fs::write(path, report::json(&report)?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &cli.plot {
        std::fs::write(path, svg::chart(&report))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    eprintln!("bench: done in {:.0}s", start.elapsed().as_secs_f64());
    // A cell that failed is a workload that did not run on a target: the run did not do
    // what it was asked, whatever it printed (CI relies on this).
    let failed = report
        .results
        .cells
        .iter()
        .flatten()
        .filter(|c| c.error.is_some())
        .count();
    if failed > 0 {
        eprintln!("bench: {failed} workload-target cells failed (see Errors in the report)");
        return Ok(ExitCode::FAILURE);
    }
    if !memory_ok {
        eprintln!(
            "bench: the walk's memory could not be measured on every target (see the report)"
        );
        return Ok(ExitCode::FAILURE);
    }
    if start_rows.is_none() {
        eprintln!("bench: the container start-up could not be measured (see the report)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// The `walk-200k` table (see `memory.rs`) for the FUSE targets among `targets`, printed;
/// false when a target could not be measured (the table says why).
fn measure_memory(targets: &[&Target], scratch: &mut Scratch, quick: bool) -> bool {
    let made = scratch
        .fresh_dir()
        .map_err(|e| format!("cannot make a scratch directory: {e}"))
        .and_then(|lower| {
            eprintln!("bench: {}: generating its lower tree", memory::NAME);
            let files = memory::generate(&lower, quick)
                .map_err(|e| format!("cannot generate the tree: {e}"))?;
            Ok((lower, files))
        });
    let (lower, files) = match made {
        Ok(m) => m,
        Err(e) => {
            println!("\nDaemon memory ({}): failed: {e}", memory::NAME);
            return false;
        }
    };
    let mut rows = Vec::new();
    let mut ok = true;
    for t in targets.iter().filter(|t| t.is_fuse()) {
        if signals::stop_requested() {
            return false;
        }
        eprintln!("bench: {} on {}", memory::NAME, t.name);
        let row = scratch
            .fresh_dir()
            .map_err(|e| format!("cannot make a scratch directory: {e}"))
            .and_then(|dir| {
                let row = memory::measure(t, &lower, &dir);
                scratch.remove(&dir)?;
                row
            });
        match row {
            Ok(r) => rows.push(r),
            Err(e) => {
                println!(
                    "\nDaemon memory ({}) on {}: failed: {e}",
                    memory::NAME,
                    t.name
                );
                ok = false;
            }
        }
    }
    print!("{}", memory::markdown(&rows, files));
    if let Err(e) = scratch.remove(&lower) {
        eprintln!("bench: {e}");
    }
    ok
}

/// Indices into `all` of the targets asked for, in the catalog's order (the table's columns),
/// with the baseline added.
fn select_targets(all: &mut [Target], names: &[String]) -> Result<Vec<usize>, String> {
    for n in names {
        if !all.iter().any(|t| t.name == n) {
            let known: Vec<&str> = all.iter().map(|t| t.name).collect();
            return Err(format!(
                "unknown target {n:?}; the targets are: {}",
                known.join(", ")
            ));
        }
    }
    if !names.is_empty() && !names.iter().any(|n| n == BASELINE) {
        eprintln!("bench: adding {BASELINE}: every ratio is relative to it");
    }
    Ok((0..all.len())
        .filter(|&i| {
            names.is_empty() || all[i].name == BASELINE || names.iter().any(|n| n == all[i].name)
        })
        .collect())
}

/// The container start-up measurement's name in `--workloads`.
const START: &str = "start";

fn select_workloads(names: &[String]) -> Result<Vec<&'static workloads::Workload>, String> {
    for n in names {
        if !workloads::ALL.iter().any(|w| w.name == n) {
            let known: Vec<&str> = workloads::ALL.iter().map(|w| w.name).collect();
            return Err(format!(
                "unknown workload {n:?}; the workloads are: {}",
                known.join(", ")
            ));
        }
    }
    Ok(workloads::ALL
        .iter()
        .filter(|w| names.is_empty() || names.iter().any(|n| n == w.name))
        .collect())
}

fn print_list(all: &[Target]) {
    println!("Targets:");
    for t in all {
        let state = match (&t.skipped, &t.version) {
            (Some(why), _) => format!("skipped: {why}"),
            (None, Some(v)) => v.clone(),
            (None, None) => "available".into(),
        };
        println!("  {:<18}{}  [{state}]", t.name, t.what);
    }
    println!("Workloads:");
    let full = Sizes::full();
    for w in &workloads::ALL {
        println!("  {:<18}{}", w.name, w.describe(&full));
    }
}

/// The command line that reproduces this run, through cargo from the workspace.
fn reproduce() -> String {
    let mut cmd = String::from("cargo run --release -p bench --");
    for a in std::env::args().skip(1) {
        cmd.push(' ');
        cmd.push_str(&shell_quote(&a));
    }
    cmd
}

fn shell_quote(a: &str) -> String {
    let safe = !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=,:+@%".contains(c));
    if safe {
        a.to_string()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("--json=/tmp/b.json"), "--json=/tmp/b.json");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
