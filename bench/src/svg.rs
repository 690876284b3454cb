//! The chart, as hand-written SVG: one group of horizontal bars per workload, one bar per
//! target, the length being the ratio to kernel overlay on a log scale (so that 2x slower and
//! 2x faster look alike), with a line at 1.

use std::fmt::Write as _;

use crate::report::{ratio, Report};
use crate::targets::BASELINE;

const WIDTH: f64 = 1100.0;
const LEFT: f64 = 130.0;
const RIGHT: f64 = 60.0;
const BAR: f64 = 10.0;
const GROUP_PAD: f64 = 14.0;
const COLORS: [&str; 10] = [
    "#7f7f7f", "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
    "#ff9da7", "#9c755f",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn chart(r: &Report) -> String {
    // Every measured target but the baseline, which is the line at 1.
    let series: Vec<usize> = (0..r.measured.len())
        .filter(|&i| r.measured[i].name != BASELINE)
        .collect();
    let values: Vec<Vec<Option<f64>>> = (0..r.workloads.len())
        .map(|wi| {
            series
                .iter()
                .map(|&ti| r.stats(wi, ti).ratio.map(|s| s.median))
                .collect()
        })
        .collect();
    let all: Vec<f64> = values.iter().flatten().flatten().copied().collect();
    // Whole powers of two around the data, at least 1/2 to 2, at most 1/16 to 128: a ratio
    // near 0 (plain's copy-up is no copy) would squeeze all others; its bar ends at the edge
    // and its label tells.
    let lo = all
        .iter()
        .fold(-1.0f64, |a, &v| a.min(v.log2().floor()))
        .max(-4.0);
    let hi = all
        .iter()
        .fold(1.0f64, |a, &v| a.max(v.log2().ceil()))
        .min(7.0);
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |v: f64| LEFT + (v.log2().clamp(lo, hi) - lo) / (hi - lo) * plot_w;

    let mut o = String::new();
    // Legend: as many entries on a row as fit.
    let per_row = 6usize;
    let legend_rows = series.len().div_ceil(per_row).max(1);
    let legend_top = 58.0;
    let plot_top = legend_top + legend_rows as f64 * 20.0 + 30.0;
    let group_h = series.len().max(1) as f64 * (BAR + 2.0) + GROUP_PAD;
    let plot_h = group_h * r.workloads.len() as f64;
    let height = plot_top + plot_h + 40.0;
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="DejaVu Sans, Arial, sans-serif">"#
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="24" font-size="17" font-weight="bold">Wall time relative to kernel overlay (median of per-round ratios)</text>"#,
        LEFT - 110.0
    );
    let _ = writeln!(
        o,
        r##"<text x="{}" y="44" font-size="12" fill="#444">log scale; left of the line = faster than overlay, right = slower. {} · {} cores · {}</text>"##,
        LEFT - 110.0,
        esc(&r.machine.cpu),
        r.machine.cores,
        esc(&r.machine.kernel)
    );
    for (k, &ti) in series.iter().enumerate() {
        let lx = 20.0 + (k % per_row) as f64 * 175.0;
        let ly = legend_top + (k / per_row) as f64 * 20.0;
        let _ = writeln!(
            o,
            r#"<rect x="{lx}" y="{ly}" width="14" height="14" fill="{}"/><text x="{}" y="{}" font-size="13">{}</text>"#,
            COLORS[k % COLORS.len()],
            lx + 20.0,
            ly + 12.0,
            esc(r.measured[ti].name)
        );
    }
    // Shaded bands behind every other workload, so that a bar's group is easy to tell.
    for wi in (0..r.workloads.len()).step_by(2) {
        let _ = writeln!(
            o,
            r##"<rect x="0" y="{}" width="{WIDTH}" height="{group_h}" fill="#f3f3f3"/>"##,
            plot_top + wi as f64 * group_h
        );
    }
    // Grid at every power of two, labelled above and below the plot.
    let mut p = lo;
    while p <= hi {
        let v = 2f64.powf(p);
        let gx = x(v);
        let (stroke, w) = if p == 0.0 {
            ("#000", 2.0)
        } else {
            ("#ccc", 1.0)
        };
        let _ = writeln!(
            o,
            r#"<line x1="{gx:.1}" y1="{}" x2="{gx:.1}" y2="{}" stroke="{stroke}" stroke-width="{w}"/>"#,
            plot_top - 6.0,
            plot_top + plot_h
        );
        let label = if p == 0.0 {
            format!("1× = {BASELINE}")
        } else if v < 1.0 {
            format!("1/{}×", 2f64.powf(-p))
        } else {
            format!("{v}×")
        };
        for y in [plot_top - 10.0, plot_top + plot_h + 16.0] {
            let _ = writeln!(
                o,
                r#"<text x="{gx:.1}" y="{y}" font-size="12" text-anchor="middle">{}</text>"#,
                esc(&label)
            );
        }
        p += 1.0;
    }
    let one = x(1.0);
    for (wi, w) in r.workloads.iter().enumerate() {
        let top = plot_top + wi as f64 * group_h + GROUP_PAD / 2.0;
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{:.1}" font-size="13" text-anchor="end" dominant-baseline="middle">{}</text>"#,
            LEFT - 10.0,
            top + (group_h - GROUP_PAD) / 2.0,
            esc(w.name)
        );
        for (k, v) in values[wi].iter().enumerate() {
            let y = top + k as f64 * (BAR + 2.0);
            let color = COLORS[k % COLORS.len()];
            let Some(v) = *v else {
                let _ = writeln!(
                    o,
                    r##"<text x="{:.1}" y="{:.1}" font-size="9" fill="#a00">no result</text>"##,
                    one + 4.0,
                    y + BAR - 1.0
                );
                continue;
            };
            let end = x(v);
            let (bx, bw) = if end >= one {
                (one, end - one)
            } else {
                (end, one - end)
            };
            let _ = writeln!(
                o,
                r#"<rect x="{bx:.1}" y="{y:.1}" width="{:.1}" height="{BAR}" fill="{color}"><title>{} on {}: {}</title></rect>"#,
                bw.max(1.0),
                esc(w.name),
                esc(r.measured[series[k]].name),
                esc(&ratio(v))
            );
            let (tx, anchor) = if end >= one {
                (bx + bw.max(1.0) + 3.0, "start")
            } else {
                (bx - 3.0, "end")
            };
            let _ = writeln!(
                o,
                r#"<text x="{tx:.1}" y="{:.1}" font-size="9" text-anchor="{anchor}">{}</text>"#,
                y + BAR - 1.5,
                esc(&ratio(v))
            );
        }
    }
    let _ = writeln!(o, "</svg>");
    o
}
