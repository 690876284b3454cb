//! The results for people (a Markdown table: workload x target) and for machines (JSON),
//! both with what is needed to reproduce them: the command and the machine.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::machine::Machine;
use crate::measure::{self, Results, Sample, Stats};
use crate::targets::{Target, BASELINE};
use crate::trees::Sizes;
use crate::workloads::Workload;

pub struct Report<'a> {
    /// The command line that reproduces the run.
    pub command: String,
    pub machine: Machine,
    pub rounds: usize,
    pub warmup: usize,
    pub quick: bool,
    pub sizes: &'a Sizes,
    pub elapsed: Duration,
    /// Every target asked for, skipped ones included (with the reason).
    pub targets: &'a [&'a Target],
    /// The targets measured: the columns of `results`.
    pub measured: Vec<&'a Target>,
    pub workloads: Vec<&'static Workload>,
    pub results: Results,
    /// What the run changed on the machine and put back (e.g. enable_uring).
    pub notes: Vec<String>,
}

impl Report<'_> {
    fn baseline(&self) -> Option<usize> {
        self.measured.iter().position(|t| t.name == BASELINE)
    }

    pub fn stats(&self, wi: usize, ti: usize) -> Stats {
        let row = &self.results.cells[wi];
        measure::stats(&row[ti], self.baseline().map(|b| &row[b]))
    }
}

/// Three significant digits in the unit that suits `secs` (µs, ms or s).
pub fn duration(secs: f64) -> String {
    let (v, unit) = unit_of(secs);
    format!("{} {unit}", sig3(secs * v))
}

fn unit_of(secs: f64) -> (f64, &'static str) {
    // Thresholds a rounding below the unit: 0.99996 s shows as 1.00 s, not 1000 ms.
    if secs >= 0.9995 {
        (1.0, "s")
    } else if secs >= 0.9995e-3 {
        (1e3, "ms")
    } else {
        (1e6, "µs")
    }
}

fn sig3(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

pub fn ratio(r: f64) -> String {
    if r < 0.01 {
        "<0.01×".into()
    } else {
        format!("{}×", sig3(r))
    }
}

/// `412 (398–430) ms · 1.52× · cpu 210 ms`: median wall time, its min–max over the rounds,
/// the median of the per-round ratios to the baseline, the daemon's median CPU time.
fn cell_text(t: &Target, s: &Stats) -> String {
    let Some(w) = s.wall_s else {
        return "-".into();
    };
    let (k, unit) = unit_of(w.median);
    let mut out = if w.min == w.max {
        format!("{} {unit}", sig3(w.median * k))
    } else {
        format!(
            "{} ({}–{}) {unit}",
            sig3(w.median * k),
            sig3(w.min * k),
            sig3(w.max * k)
        )
    };
    match s.ratio {
        Some(r) => write!(out, " · {}", ratio(r.median)),
        None => write!(out, " · -"),
    }
    .ok();
    match (t.is_fuse(), s.cpu_s) {
        (true, Some(c)) => write!(out, " · cpu {}", duration(c.median)),
        _ => write!(out, " · cpu -"),
    }
    .ok();
    out
}

pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let m = &r.machine;
    let _ = writeln!(o, "# unionfs bench: union mounts against kernel overlay\n");
    let _ = writeln!(
        o,
        "Reproduce (as root, from the workspace): `{}`\n",
        r.command
    );
    let _ = writeln!(
        o,
        "Machine: {} · {} cores · {:.1} GiB RAM · {} · scratch on {}\n",
        m.cpu, m.cores, m.ram_gib, m.kernel, m.scratch_fs
    );
    let _ = writeln!(
        o,
        "Method: {} timed round{} after {} warm-up round{} (discarded){}; in each round every \
         workload runs on every target in turn, each on a fresh upper over a shared lower; \
         run time {}.\n",
        r.rounds,
        if r.rounds == 1 { "" } else { "s" },
        r.warmup,
        if r.warmup == 1 { "" } else { "s" },
        if r.quick { ", quick sizes" } else { "" },
        clock(r.elapsed)
    );
    let _ = writeln!(o, "Targets:");
    for t in r.targets {
        let version = t
            .version
            .as_deref()
            .map(|v| format!(" [{v}]"))
            .unwrap_or_default();
        match &t.skipped {
            None => {
                let _ = writeln!(o, "- `{}`{version}: {}", t.name, t.what);
            }
            Some(why) => {
                let _ = writeln!(o, "- `{}`: {} — **skipped**: {why}", t.name, t.what);
            }
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(o, "\nNotes:");
        for n in &r.notes {
            let _ = writeln!(o, "- {n}");
        }
    }
    let _ = writeln!(
        o,
        "\nEach cell: median wall time (min–max over the rounds) · median of the per-round \
         ratios to `{BASELINE}` (below 1 is faster) · median CPU time of the FUSE daemon \
         (user + system; - for kernel targets).\n"
    );
    let _ = write!(o, "| workload |");
    for t in &r.measured {
        let _ = write!(o, " {} |", t.name);
    }
    let _ = write!(o, "\n|---|");
    for _ in &r.measured {
        let _ = write!(o, "---|");
    }
    let _ = writeln!(o);
    let mut errors = Vec::new();
    for (wi, w) in r.workloads.iter().enumerate() {
        let _ = write!(o, "| {} |", w.name);
        for (ti, t) in r.measured.iter().enumerate() {
            let mut text = cell_text(t, &r.stats(wi, ti));
            if let Some(e) = &r.results.cells[wi][ti].error {
                errors.push(format!("{} on {}: {e}", w.name, t.name));
                let _ = write!(text, " (error {})", errors.len());
            }
            let _ = write!(o, " {text} |");
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "\nWorkloads:");
    for w in &r.workloads {
        let _ = writeln!(o, "- `{}`: {}", w.name, w.describe(r.sizes));
    }
    if !errors.is_empty() {
        let _ = writeln!(o, "\nErrors:");
        for (i, e) in errors.iter().enumerate() {
            let _ = writeln!(o, "{}. {e}", i + 1);
        }
    }
    o
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

#[derive(Serialize)]
struct JsonReport<'a> {
    command: &'a str,
    machine: &'a Machine,
    rounds: usize,
    warmup: usize,
    quick: bool,
    elapsed_s: f64,
    baseline: &'static str,
    sizes: &'a Sizes,
    targets: Vec<JsonTarget<'a>>,
    workloads: Vec<JsonWorkload>,
    results: Vec<JsonResult<'a>>,
    notes: &'a [String],
}

#[derive(Serialize)]
struct JsonTarget<'a> {
    name: &'a str,
    description: &'a str,
    program: Option<String>,
    version: Option<&'a str>,
    skipped: Option<&'a str>,
}

#[derive(Serialize)]
struct JsonWorkload {
    name: &'static str,
    description: String,
}

#[derive(Serialize)]
struct JsonResult<'a> {
    workload: &'static str,
    target: &'a str,
    /// One per timed round; null where the run failed.
    samples: &'a [Option<Sample>],
    stats: Stats,
    error: Option<&'a str>,
}

pub fn json(r: &Report) -> Result<String, String> {
    let mut results = Vec::new();
    for (wi, w) in r.workloads.iter().enumerate() {
        for (ti, t) in r.measured.iter().enumerate() {
            let cell = &r.results.cells[wi][ti];
            results.push(JsonResult {
                workload: w.name,
                target: t.name,
                samples: &cell.samples,
                stats: r.stats(wi, ti),
                error: cell.error.as_deref(),
            });
        }
    }
    let doc = JsonReport {
        command: &r.command,
        machine: &r.machine,
        rounds: r.rounds,
        warmup: r.warmup,
        quick: r.quick,
        elapsed_s: r.elapsed.as_secs_f64(),
        baseline: BASELINE,
        notes: &r.notes,
        sizes: r.sizes,
        targets: r
            .targets
            .iter()
            .map(|t| JsonTarget {
                name: t.name,
                description: t.what,
                program: t.program.as_ref().map(|p| p.display().to_string()),
                version: t.version.as_deref(),
                skipped: t.skipped.as_deref(),
            })
            .collect(),
        workloads: r
            .workloads
            .iter()
            .map(|w| JsonWorkload {
                name: w.name,
                description: w.describe(r.sizes),
            })
            .collect(),
        results,
    };
    serde_json::to_string_pretty(&doc).map_err(|e| format!("cannot encode the JSON: {e}"))
}
