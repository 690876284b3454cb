//! `unionfs explain --svg DIR`: one merged directory drawn as hand-written SVG. One column
//! per layer (the bottom lower on the left, then up to the upper) and one for the merged
//! view; one row per name. Whiteouts are struck through, opaque directories carry a bar
//! and the word "opaque", entries the merge rule does not reach are grey, and an upper
//! copy of a lower object (an `origin` xattr, or simply the same name below) is joined to
//! it by a dashed line. Elements carry `class` and `data-*` attributes so that tests (and
//! curious readers) can check the structure without rendering it.

use std::fmt::Write as _;

use crate::explain::{Entry, Explanation, LayerId, LayerSet};

const COL_W: f64 = 190.0;
const ROW_H: f64 = 34.0;
const LEFT: f64 = 20.0;
const TOP: f64 = 92.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The SVG text for the directory `here` and its rows (from [`LayerSet::list`]).
pub fn draw(set: &LayerSet, here: &Explanation, rows: &[Explanation]) -> String {
    // Bottom lower first, so that the picture stacks up to the merged view on the right.
    let mut cols: Vec<LayerId> = (0..set.lowers.len()).rev().map(LayerId::Lower).collect();
    if set.upper.is_some() {
        cols.push(LayerId::Upper);
    }
    let ncols = cols.len() + 1;
    let width = LEFT * 2.0 + COL_W * ncols as f64;
    let height = TOP + ROW_H * rows.len().max(1) as f64 + 84.0;
    let x_of = |i: usize| LEFT + COL_W * i as f64;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Arial, sans-serif" data-dir="{}">"#,
        esc(&here.path)
    );
    let _ = writeln!(o, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{LEFT}" y="26" font-size="17" font-weight="bold">{} in each layer and in the merged view</text>"#,
        esc(&here.path)
    );
    let _ = writeln!(
        o,
        r##"<text x="{LEFT}" y="46" font-size="12" fill="#444">{}</text>"##,
        esc(&here.rule)
    );
    // Column headings and backgrounds.
    for (i, id) in cols
        .iter()
        .chain(std::iter::once(&LayerId::Upper))
        .enumerate()
    {
        let merged = i == cols.len();
        let (label, layer) = if merged {
            ("merged view".to_string(), "merged".to_string())
        } else {
            (id.name(), id.name())
        };
        let fill = if merged { "#eef5ee" } else { "#f3f3f7" };
        let _ = writeln!(
            o,
            r#"<g class="column" data-layer="{layer}"><rect x="{}" y="{}" width="{}" height="{}" rx="6" fill="{fill}"/><text x="{}" y="{}" font-size="14" font-weight="bold">{label}</text></g>"#,
            x_of(i) + 4.0,
            TOP - 30.0,
            COL_W - 8.0,
            ROW_H * rows.len().max(1) as f64 + 40.0,
            x_of(i) + 14.0,
            TOP - 10.0
        );
    }
    for (r, row) in rows.iter().enumerate() {
        let y = TOP + ROW_H * r as f64;
        let name = base_name(&row.path);
        let _ = writeln!(o, r#"<g class="row" data-name="{}">"#, esc(name));
        let mut lower_cols: Vec<(usize, bool)> = Vec::new();
        let mut upper_col: Option<(usize, bool)> = None;
        for (i, id) in cols.iter().enumerate() {
            let Some(le) = row.layers.iter().find(|l| l.layer == *id) else {
                continue;
            };
            let shown = row.shown.as_ref().is_some_and(|(s, _)| s == id);
            let reached = le.consulted;
            let (mark, text, deco) = match &le.entry {
                Entry::Absent => continue,
                Entry::Whiteout { aufs } => (
                    "whiteout",
                    format!("{name} {}", if *aufs { "(.wh.)" } else { "(c 0 0)" }),
                    "line-through",
                ),
                Entry::Dir { opaque: true, .. } => ("opaque", format!("{name}/  opaque"), "none"),
                Entry::Dir { .. } => ("dir", format!("{name}/"), "none"),
                Entry::NonDir {
                    origin: true, size, ..
                } => ("copied-up", format!("{name}  {size} B  (copy-up)"), "none"),
                Entry::NonDir { kind, size, .. } => {
                    if *kind == "file" {
                        ("file", format!("{name}  {size} B"), "none")
                    } else {
                        ("other", format!("{name}  ({kind})"), "none")
                    }
                }
            };
            if let Entry::NonDir { .. } | Entry::Dir { .. } = le.entry {
                match id {
                    LayerId::Upper => {
                        upper_col =
                            Some((i, matches!(le.entry, Entry::NonDir { origin: true, .. })))
                    }
                    LayerId::Lower(_) => lower_cols.push((i, le.entry.is_dir())),
                }
            }
            let color = if !reached {
                "#aaaaaa"
            } else if mark == "whiteout" {
                "#c0392b"
            } else if shown {
                "#1a1a1a"
            } else {
                "#555555"
            };
            let weight = if shown { "bold" } else { "normal" };
            let hidden = if reached { "" } else { " data-hidden=\"yes\"" };
            let _ = write!(
                o,
                r#"<g class="cell" data-layer="{}" data-mark="{mark}"{hidden}><text x="{}" y="{}" font-size="13" font-weight="{weight}" fill="{color}" text-decoration="{deco}">{}</text>"#,
                id.name(),
                x_of(i) + 16.0,
                y + 22.0,
                esc(&text)
            );
            if mark == "whiteout" {
                // Drawn too, since not every renderer honours text-decoration.
                let _ = write!(
                    o,
                    r##"<line class="strike" x1="{}" y1="{}" x2="{}" y2="{}" stroke="#c0392b" stroke-width="1.5"/>"##,
                    x_of(i) + 14.0,
                    y + 17.5,
                    x_of(i) + 16.0 + 7.0 * text.chars().count() as f64,
                    y + 17.5
                );
            }
            if mark == "opaque" {
                let _ = write!(
                    o,
                    r##"<rect class="opaque-bar" x="{}" y="{}" width="{}" height="4" fill="#34495e"/>"##,
                    x_of(i) + 10.0,
                    y + 27.0,
                    COL_W - 28.0
                );
            }
            o.push_str("</g>\n");
        }
        // A copy-up: the upper non-directory joined to the lower original it replaced.
        if let Some((ui, origin)) = upper_col {
            let upper_is_dir = row
                .layers
                .iter()
                .any(|l| l.layer == LayerId::Upper && l.entry.is_dir());
            if let Some(&(li, _)) = lower_cols.iter().rev().find(|(_, d)| !upper_is_dir && !*d) {
                let _ = writeln!(
                    o,
                    r##"<line class="link" data-why="{}" x1="{}" y1="{}" x2="{}" y2="{}" stroke="#2e86c1" stroke-width="1.2" stroke-dasharray="5,3"/>"##,
                    if origin { "origin" } else { "same-name" },
                    x_of(li) + COL_W - 12.0,
                    y + 17.0,
                    x_of(ui) + 12.0,
                    y + 17.0
                );
            }
        }
        // The merged view.
        let mi = cols.len();
        match (&row.shown, row.shown_kind()) {
            (Some((from, _)), Some(kind)) => {
                let label = if kind == "dir" {
                    format!("{name}/")
                } else {
                    name.to_string()
                };
                let _ = writeln!(
                    o,
                    r##"<g class="cell" data-layer="merged" data-mark="shown" data-from="{}"><text x="{}" y="{}" font-size="13" font-weight="bold">{}</text><text x="{}" y="{}" font-size="10" fill="#2e7d32">from {}</text></g>"##,
                    from.name(),
                    x_of(mi) + 16.0,
                    y + 22.0,
                    esc(&label),
                    x_of(mi) + COL_W - 78.0,
                    y + 22.0,
                    from.name()
                );
            }
            _ => {
                let _ = writeln!(
                    o,
                    r##"<g class="cell" data-layer="merged" data-mark="absent"><text x="{}" y="{}" font-size="12" fill="#999" font-style="italic">(not shown)</text></g>"##,
                    x_of(mi) + 16.0,
                    y + 22.0
                );
            }
        }
        o.push_str("</g>\n");
    }
    let legend_y = TOP + ROW_H * rows.len().max(1) as f64 + 36.0;
    let _ = writeln!(
        o,
        r##"<text x="{LEFT}" y="{legend_y}" font-size="11" fill="#444">bold: the object the merged view shows · red, struck through: whiteout · bar: opaque directory</text>"##
    );
    let _ = writeln!(
        o,
        r##"<text x="{LEFT}" y="{}" font-size="11" fill="#444">grey: not reached by the merge rule · dashed line: an upper copy and the lower object it replaces</text>"##,
        legend_y + 16.0
    );
    o.push_str("</svg>\n");
    o
}
