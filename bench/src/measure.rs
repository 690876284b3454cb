//! The schedule and the statistics: rounds, each running every workload on every target in
//! turn (A, B, C, B, C, A ...) so that a drift of the machine hits all targets alike; warm-up
//! rounds discarded; medians, spreads and per-round ratios to the baseline.

use std::time::Instant;

use serde::Serialize;

use crate::cache::Cache;
use crate::mount::{self, CpuMark};
use crate::scratch::{self, Scratch};
use crate::signals;
use crate::targets::Target;
use crate::trees::{Lowers, Sizes, Tree};
use crate::workloads::{Ctx, Prep, Workload};

pub struct Plan<'a> {
    pub targets: Vec<&'a Target>,
    pub workloads: Vec<&'static Workload>,
    pub rounds: usize,
    pub warmup: usize,
    pub sizes: &'a Sizes,
    pub lowers: &'a Lowers,
    pub workers: usize,
}

/// One timed run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    pub wall_s: f64,
    /// The FUSE daemon's user + system time during the run; None for kernel targets.
    pub cpu_s: Option<f64>,
}

/// One workload on one target: a sample per timed round (None where it failed).
#[derive(Debug, Default, Clone)]
pub struct Cell {
    pub samples: Vec<Option<Sample>>,
    pub error: Option<String>,
}

/// `cells[workload][target]`, in the plan's orders.
pub struct Results {
    pub cells: Vec<Vec<Cell>>,
}

/// Runs the plan. Fails only when the run cannot go on (a signal, caches that cannot be
/// dropped); a workload failing on one target is recorded in its cell.
pub fn run(plan: &Plan, scratch: &mut Scratch, cache: &mut Cache) -> Result<Results, String> {
    let mut cells = vec![vec![Cell::default(); plan.targets.len()]; plan.workloads.len()];
    let total = plan.warmup + plan.rounds;
    let start = Instant::now();
    for round in 0..total {
        let timed = round.checked_sub(plan.warmup);
        for (wi, w) in plan.workloads.iter().enumerate() {
            eprint!(
                "[{:>5.0}s] round {}/{}{} {}:",
                start.elapsed().as_secs_f64(),
                round + 1,
                total,
                if timed.is_none() { " (warm-up)" } else { "" },
                w.name
            );
            // Each round starts one target further on (A, B, C; B, C, A; ...): what one
            // run leaves behind (writeback, freed blocks) then does not always fall on the
            // same next target.
            let n = plan.targets.len();
            for ti in (0..n).map(|k| (k + round) % n) {
                let t = plan.targets[ti];
                if signals::stop_requested() {
                    eprintln!();
                    return Err("interrupted; every mount was unmounted".into());
                }
                let outcome = measure_one(plan, w, t, scratch, cache);
                match &outcome {
                    Ok(s) => eprint!(" {} {}", t.name, crate::report::duration(s.wall_s)),
                    Err(_) => eprint!(" {} FAILED", t.name),
                }
                let cell = &mut cells[wi][ti];
                match (outcome, timed) {
                    (Ok(s), Some(_)) => cell.samples.push(Some(s)),
                    (Err(e), Some(_)) => {
                        cell.samples.push(None);
                        cell.error.get_or_insert(e);
                    }
                    // A warm-up failure is kept too: it explains a cell without samples.
                    (Err(e), None) => {
                        cell.error.get_or_insert(e);
                    }
                    (Ok(_), None) => {}
                }
            }
            eprintln!();
        }
    }
    Ok(Results { cells })
}

/// Sets up a fresh upper (or plain copy), brings the caches to the workload's state, times
/// the workload, unmounts, removes the directory.
fn measure_one(
    plan: &Plan,
    w: &Workload,
    t: &Target,
    scratch: &mut Scratch,
    cache: &mut Cache,
) -> Result<Sample, String> {
    let dir = scratch
        .fresh_dir()
        .map_err(|e| format!("cannot make a scratch directory: {e}"))?;
    let result = (|| {
        let lower = plan.lowers.path(w.lower);
        if w.prep != Prep::Cold {
            cache.warm(&lower)?;
            if w.lower == Tree::Empty {
                cache.warm(&plan.lowers.tarball)?;
            }
        }
        let (guard, root) = if !t.is_plain() {
            let (m, mnt) = t.mount(&lower, &dir)?;
            (Some(m), mnt)
        } else if w.writes {
            let copy = dir.join("plain");
            scratch::copy_tree(&lower, &copy)
                .map_err(|e| format!("cannot copy {}: {e}", lower.display()))?;
            (None, copy)
        } else {
            // A read-only workload: the lower tree is itself a plain directory of the upper
            // filesystem, and copying the 1 GiB file for every read would only cost time.
            (None, lower.clone())
        };
        let ctx = Ctx {
            root: &root,
            sizes: plan.sizes,
            tarball: &plan.lowers.tarball,
            workers: plan.workers,
        };
        match w.prep {
            Prep::Cold => cache.drop_all()?,
            Prep::Twice => {
                w.run(&ctx).map_err(|e| format!("first pass: {e}"))?;
                nix::unistd::sync();
            }
            // The previous run's dirty pages are not this run's writeback.
            Prep::Warm => nix::unistd::sync(),
        }
        let pid = guard.as_ref().and_then(mount::Mount::daemon_pid);
        let cpu0 = pid.map(CpuMark::read).transpose()?;
        let t0 = Instant::now();
        w.run(&ctx)?;
        let wall = t0.elapsed();
        let cpu1 = pid.map(CpuMark::read).transpose()?;
        if let Some(m) = guard {
            m.unmount()?;
        }
        let cpu_s = match (cpu0, cpu1) {
            (Some(a), Some(b)) => Some(b.since(&a).as_secs_f64()),
            _ => None,
        };
        Ok(Sample {
            wall_s: wall.as_secs_f64(),
            cpu_s,
        })
    })();
    // The big file's copies go now (disk space, and only one inode each); the rest stays to
    // the end, as deletions would slow the creates that follow (`Cache::forget_deleted`).
    let cleaned = if w.lower == Tree::Big {
        let removed = scratch.remove(&dir);
        // Freeing a gigabyte (and discarding its blocks, on a `discard` mount) is work the
        // filesystem does at its next commit: let it happen here, not in the next run.
        nix::unistd::sync();
        removed
    } else {
        scratch.keep(&dir)
    };
    if w.deletes && t.is_plain() {
        cache.forget_deleted()?;
    }
    match (result, cleaned) {
        (Ok(s), Ok(())) => Ok(s),
        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
    }
}

/// Median, min and max of some values.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }
}

/// A cell summed up.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub wall_s: Option<Spread>,
    /// The per-round ratios to the baseline, where both ran in that round.
    pub ratios: Vec<f64>,
    pub ratio: Option<Spread>,
    pub cpu_s: Option<Spread>,
}

pub fn stats(cell: &Cell, baseline: Option<&Cell>) -> Stats {
    let walls: Vec<f64> = cell.samples.iter().flatten().map(|s| s.wall_s).collect();
    let cpus: Vec<f64> = cell
        .samples
        .iter()
        .flatten()
        .filter_map(|s| s.cpu_s)
        .collect();
    let ratios: Vec<f64> = match baseline {
        Some(b) => cell
            .samples
            .iter()
            .zip(&b.samples)
            .filter_map(|(s, b)| match (s, b) {
                (Some(s), Some(b)) if b.wall_s > 0.0 => Some(s.wall_s / b.wall_s),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    Stats {
        wall_s: Spread::of(&walls),
        ratio: Spread::of(&ratios),
        ratios,
        cpu_s: Spread::of(&cpus),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(walls: &[Option<f64>]) -> Cell {
        Cell {
            samples: walls
                .iter()
                .map(|w| {
                    w.map(|wall_s| Sample {
                        wall_s,
                        cpu_s: None,
                    })
                })
                .collect(),
            error: None,
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).map(|s| (s.median, s.min, s.max));
        assert_eq!(s, Some((2.0, 1.0, 3.0)));
        assert_eq!(
            Spread::of(&[4.0, 1.0, 2.0, 3.0]).map(|s| s.median),
            Some(2.5)
        );
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn ratios_pair_rounds_and_skip_failed_ones() {
        let base = cell(&[Some(1.0), Some(2.0), None]);
        let this = cell(&[Some(3.0), Some(2.0), Some(9.0)]);
        let s = stats(&this, Some(&base));
        assert_eq!(s.ratios, vec![3.0, 1.0]);
        assert_eq!(s.ratio.map(|r| r.median), Some(2.0));
        assert_eq!(s.wall_s.map(|w| w.median), Some(3.0));
    }
}
