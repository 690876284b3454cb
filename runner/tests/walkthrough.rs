//! `docs/walkthrough.md` cannot go stale: every ```console block's `$ ` commands run here,
//! in order, in one scratch directory (as root: it mounts unionfs, a kernel overlay and
//! runs a container), and what each prints (stdout and stderr) must be the text under it,
//! after normalizing the timings (`us=N`). ```sh blocks run too, and must succeed; their
//! output is not shown. The SVG pictures the walk-through draws are compared with the
//! copies in `docs/` (which the page shows).
//!
//! `TEACH_UPDATE=1` rewrites the expected outputs in the page and the SVGs in `docs/`
//! from this run instead of comparing: review the diff before committing it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const DOC: &str = "docs/walkthrough.md";
/// The pictures the page draws, copied to `docs/` under the same names.
const PICTURES: &[&str] = &["walkthrough-etc.svg", "walkthrough-container-etc.svg"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// One step of the page.
#[derive(Debug)]
struct Step {
    cmd: String,
    /// None for ```sh blocks (run, output not checked).
    expect: Option<String>,
    /// Index of the line after the command in the page, and how many output lines follow.
    line: usize,
    out_lines: usize,
}

fn parse(doc: &str) -> Vec<Step> {
    let lines: Vec<&str> = doc.lines().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_end();
        let kind = match fence {
            "```console" => Some(true),
            "```sh" => Some(false),
            _ => None,
        };
        i += 1;
        let Some(console) = kind else { continue };
        let mut cur: Option<Step> = None;
        while i < lines.len() && lines[i].trim_end() != "```" {
            let l = lines[i];
            if !console {
                if !l.trim().is_empty() && !l.starts_with('#') {
                    steps.push(Step {
                        cmd: l.to_string(),
                        expect: None,
                        line: i + 1,
                        out_lines: 0,
                    });
                }
            } else if let Some(c) = l.strip_prefix("$ ") {
                if let Some(s) = cur.take() {
                    steps.push(s);
                }
                cur = Some(Step {
                    cmd: c.to_string(),
                    expect: Some(String::new()),
                    line: i + 1,
                    out_lines: 0,
                });
            } else if let Some(s) = cur.as_mut() {
                if let Some(e) = s.expect.as_mut() {
                    e.push_str(l);
                    e.push('\n');
                }
                s.out_lines += 1;
            }
            i += 1;
        }
        if let Some(s) = cur.take() {
            steps.push(s);
        }
        i += 1;
    }
    steps
}

/// Timings change from run to run.
fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("us=") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push('N');
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

#[test]
fn walkthrough_commands_print_what_the_page_says() {
    if !need_root("walkthrough_commands_print_what_the_page_says") {
        return;
    }
    if !Path::new(BUSYBOX).exists() {
        skip(
            "walkthrough_commands_print_what_the_page_says",
            "missing",
            &format!("{BUSYBOX} is missing (scripts/setup.sh installs it)"),
        );
        return;
    }
    let update = std::env::var_os("TEACH_UPDATE").is_some();
    let root = Root::new("walkthrough");
    let doc_path = workspace().join(DOC);
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_else(|e| panic!("{DOC}: {e}"));
    let steps = parse(&doc);
    assert!(steps.len() > 20, "{DOC}: only {} steps found", steps.len());
    let bin = unionfs();
    let bindir = bin.parent().map(Path::to_path_buf).unwrap_or_default();
    let path = format!(
        "{}:{}",
        bindir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut failures = Vec::new();
    let mut outputs: Vec<(usize, usize, String)> = Vec::new();
    for s in &steps {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{} 2>&1", s.cmd))
            .current_dir(&root.path)
            .env("PATH", &path)
            .env("RUNBOX_UNIONFS", &bin)
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("bash: {e}"));
        let got = text(&out.stdout);
        match &s.expect {
            None => {
                if !out.status.success() {
                    failures.push(format!(
                        "{DOC}:{}: `{}` failed ({}): {got}",
                        s.line, s.cmd, out.status
                    ));
                }
            }
            Some(want) => {
                if normalize(&got) != normalize(want) {
                    failures.push(format!(
                        "{DOC}:{}: `{}`\n--- the page says:\n{want}--- it printed:\n{got}",
                        s.line, s.cmd
                    ));
                }
                // Only what really changed is rewritten (timings would churn the page).
                if normalize(&got) != normalize(want) {
                    outputs.push((s.line, s.out_lines, got));
                }
            }
        }
    }
    // Whatever the page left mounted is unmounted by the guard of `root`, and reported.
    for pic in PICTURES {
        let made = std::fs::read_to_string(root.path.join(pic)).unwrap_or_default();
        let kept = workspace().join("docs").join(pic);
        if update {
            std::fs::write(&kept, &made).unwrap_or_else(|e| panic!("{}: {e}", kept.display()));
        } else if std::fs::read_to_string(&kept).unwrap_or_default() != made {
            failures.push(format!(
                "docs/{pic} differs from what the walk-through draws now (TEACH_UPDATE=1 rewrites it)"
            ));
        }
    }
    if update {
        let mut lines: Vec<String> = doc.lines().map(str::to_string).collect();
        for (line, n, got) in outputs.iter().rev() {
            let new: Vec<String> = got.lines().map(str::to_string).collect();
            lines.splice(*line..*line + *n, new);
        }
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&doc_path, text).unwrap_or_else(|e| panic!("{DOC}: {e}"));
        return;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn parser_reads_console_and_sh_blocks() {
    let doc = "text\n```sh\nmkdir a\n# comment\n```\n```console\n$ echo x\nx\n$ true\n```\n";
    let s = parse(doc);
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].cmd, "mkdir a");
    assert!(s[0].expect.is_none());
    assert_eq!(s[1].expect.as_deref(), Some("x\n"));
    assert_eq!((s[1].line, s[1].out_lines), (7, 1));
    assert_eq!(s[2].expect.as_deref(), Some(""));
    assert_eq!(normalize("a us=123 b us= c"), "a us=N b us= c");
}
