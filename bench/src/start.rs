//! Container start-up: `runbox run --rm IMAGE /bin/true` on each backend (the kernel's
//! overlay, and our union through FUSE), so that what our union costs a container's
//! start is measured in the same run as the rest. A table of its own: a start is a whole
//! `runbox` process, not file system calls on a mounted target.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::measure::Spread;
use crate::report::duration;

/// The image: the statically linked busybox of Debian's `busybox-static`, and the names
/// the command needs.
const BUSYBOX: &str = "/bin/busybox";

/// One backend's start times.
pub struct Row {
    pub backend: &'static str,
    pub secs: Vec<f64>,
}

/// Where runbox is and its store.
pub struct Start {
    runbox: PathBuf,
    unionfs: PathBuf,
    store: PathBuf,
}

/// A header owned by root, with every numeric field set (runbox refuses empty ones).
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn image_tar(path: &Path) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write the start image {}: {e}", path.display());
    let mut b = tar::Builder::new(std::fs::File::create(path).map_err(fail)?);
    let bb = std::fs::read(BUSYBOX).map_err(|e| {
        format!(
            "{BUSYBOX}: {e} (the start workload runs busybox-static; scripts/setup.sh installs it)"
        )
    })?;
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    b.append_data(&mut h, "bin", std::io::empty())
        .map_err(fail)?;
    let mut h = header(tar::EntryType::Regular, 0o755, bb.len() as u64);
    b.append_data(&mut h, "bin/busybox", bb.as_slice())
        .map_err(fail)?;
    for name in ["true", "sh"] {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        b.append_link(&mut h, format!("bin/{name}"), "busybox")
            .map_err(fail)?;
    }
    b.into_inner().and_then(|mut f| f.flush()).map_err(fail)
}

impl Start {
    /// Imports the image into a store under `scratch`. `runbox` and `unionfs` are the
    /// binaries beside the bench's own.
    pub fn prepare(runbox: &Path, unionfs: &Path, scratch: &Path) -> Result<Start, String> {
        if !runbox.exists() {
            return Err(format!(
                "{} not found: build it with `cargo build --release -p runner`",
                runbox.display()
            ));
        }
        let store = scratch.join("runbox");
        let tarball = scratch.join("start-image.tar");
        image_tar(&tarball)?;
        let s = Start {
            runbox: runbox.to_path_buf(),
            unionfs: unionfs.to_path_buf(),
            store,
        };
        s.runbox_cmd()
            .arg("import")
            .arg("bench")
            .arg(&tarball)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", s.runbox.display()))
            .and_then(|st| {
                st.success()
                    .then_some(())
                    .ok_or_else(|| format!("runbox import failed: {st}"))
            })?;
        Ok(s)
    }

    fn runbox_cmd(&self) -> Command {
        let mut c = Command::new(&self.runbox);
        c.env("RUNBOX_UNIONFS", &self.unionfs)
            .arg("--root")
            .arg(&self.store);
        c
    }

    /// One start on `backend`, timed from spawn to exit.
    fn once(&self, backend: &str) -> Result<f64, String> {
        let t = Instant::now();
        let out = self
            .runbox_cmd()
            .args(["run", "--rm", "--backend", backend, "bench", "/bin/true"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run runbox: {e}"))?;
        let secs = t.elapsed().as_secs_f64();
        if !out.status.success() {
            return Err(format!(
                "runbox run --backend {backend}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(secs)
    }

    /// `warmup` discarded starts, then `rounds` timed ones per backend, the backends
    /// alternating so that drift hits both alike.
    pub fn measure(&self, rounds: usize, warmup: usize) -> Result<Vec<Row>, String> {
        let mut rows = vec![
            Row {
                backend: "kernel",
                secs: Vec::new(),
            },
            Row {
                backend: "fuse",
                secs: Vec::new(),
            },
        ];
        for i in 0..warmup + rounds {
            for row in rows.iter_mut() {
                let s = self.once(row.backend)?;
                if i >= warmup {
                    row.secs.push(s);
                }
            }
        }
        eprintln!("bench: container start-up measured ({rounds} rounds per backend)");
        Ok(rows)
    }
}

/// The start-up table in Markdown: each backend's median (min-max) and its ratio to the
/// kernel's overlay.
pub fn markdown(rows: &[Row]) -> String {
    let base = rows
        .iter()
        .find(|r| r.backend == "kernel")
        .and_then(|r| Spread::of(&r.secs));
    let mut out = String::from(
        "\nContainer start-up: `runbox run --rm IMAGE /bin/true` (busybox image), from spawn to exit.\n\n| workload |",
    );
    for r in rows {
        out.push_str(&format!(" runbox --backend {} |", r.backend));
    }
    out.push_str("\n|---|");
    for _ in rows {
        out.push_str("---|");
    }
    out.push_str("\n| start |");
    for r in rows {
        match Spread::of(&r.secs) {
            Some(s) => {
                let ratio = base
                    .as_ref()
                    .map(|b| format!(" · {:.2}×", s.median / b.median))
                    .unwrap_or_default();
                out.push_str(&format!(
                    " {} ({}–{}){ratio} |",
                    duration(s.median),
                    duration(s.min),
                    duration(s.max)
                ));
            }
            None => out.push_str(" - |"),
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_both_backends_and_ratios() {
        let rows = [
            Row {
                backend: "kernel",
                secs: vec![0.02, 0.04, 0.03],
            },
            Row {
                backend: "fuse",
                secs: vec![0.06, 0.05, 0.07],
            },
        ];
        let t = markdown(&rows);
        assert!(
            t.contains("| runbox --backend kernel | runbox --backend fuse |"),
            "{t}"
        );
        assert!(t.contains("1.00×") && t.contains("2.00×"), "{t}");
    }
}
