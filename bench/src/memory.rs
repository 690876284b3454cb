//! `walk-200k`: what each FUSE daemon keeps in memory for a large cached tree (issue 13):
//! its VmRSS before, after an lstat walk over 200,000 lower files (every entry a cached
//! inode), and a few seconds after `drop_caches` made the kernel forget those inodes. A
//! table of its own: memory, not time, and one measurement per target (RSS does not vary
//! from run to run the way timings do).

use std::fs;
use std::io;
use std::path::Path;
use std::time::Duration;

use crate::targets::Target;

pub const NAME: &str = "walk-200k";

/// How long after `drop_caches` the RSS is read: the kernel sends its forgets at once, and
/// a daemon that gives memory back does so within a second or two.
const SETTLE: Duration = Duration::from_secs(5);

/// The tree: `DIRS` directories of `FILES` empty files (full run); the quick run takes a
/// hundredth of it, to show that it runs.
const DIRS: usize = 200;
const FILES: usize = 1_000;

pub struct Row {
    pub target: &'static str,
    pub idle_kb: u64,
    pub walk_kb: u64,
    pub after_kb: u64,
    /// Entries the walk saw (each a node the kernel caches).
    pub nodes: u64,
}

/// Makes the lower tree in `dir`; returns its file count.
pub fn generate(dir: &Path, quick: bool) -> io::Result<usize> {
    let dirs = if quick { DIRS / 10 } else { DIRS };
    let files = if quick { FILES / 10 } else { FILES };
    for d in 0..dirs {
        let sub = dir.join(format!("d{:02}/s{:02}", d / 10, d % 10));
        fs::create_dir_all(&sub)?;
        for f in 0..files {
            fs::File::create(sub.join(format!("file-{f:05}")))?;
        }
    }
    Ok(dirs * files)
}

fn rss_kb(pid: u32) -> Result<u64, String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/status: no VmRSS"))
}

/// lstat of every entry, as `find -ls`: one LOOKUP, one cached inode each.
fn walk(dir: &Path) -> io::Result<u64> {
    let mut n = 0;
    for e in fs::read_dir(dir)? {
        let p = e?.path();
        let md = fs::symlink_metadata(&p)?;
        n += 1;
        if md.is_dir() {
            n += walk(&p)?;
        }
    }
    Ok(n)
}

/// Mounts `t` over `lower` in the fresh directory `dir`, walks, reads its daemon's RSS.
pub fn measure(t: &Target, lower: &Path, dir: &Path) -> Result<Row, String> {
    let (mount, mnt) = t.mount(lower, dir)?;
    let pid = mount
        .daemon_pid()
        .ok_or_else(|| format!("{}: no daemon process", t.name))?;
    crate::cache::drop_caches()?;
    std::thread::sleep(Duration::from_millis(500));
    let idle_kb = rss_kb(pid)?;
    let nodes = walk(&mnt).map_err(|e| format!("{}: walk: {e}", t.name))?;
    let walk_kb = rss_kb(pid)?;
    crate::cache::drop_caches()?;
    std::thread::sleep(SETTLE);
    let after_kb = rss_kb(pid)?;
    mount.unmount()?;
    Ok(Row {
        target: t.name,
        idle_kb,
        walk_kb,
        after_kb,
        nodes,
    })
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

/// The table in Markdown, in the main table's shape: a row per measurement, a column per
/// target; the walk's cost per cached inode in parentheses.
pub fn markdown(rows: &[Row], files: usize) -> String {
    let mut out = format!(
        "\nDaemon memory (VmRSS): an lstat walk over {files} lower files, then `drop_caches`; \
         in parentheses the growth per cached inode.\n\n| {NAME} |"
    );
    for r in rows {
        out.push_str(&format!(" {} |", r.target));
    }
    out.push_str("\n|---|");
    for _ in rows {
        out.push_str("---|");
    }
    out.push_str("\n| idle |");
    for r in rows {
        out.push_str(&format!(" {} |", mb(r.idle_kb)));
    }
    out.push_str("\n| after the walk |");
    for r in rows {
        let per = r.walk_kb.saturating_sub(r.idle_kb) * 1024 / r.nodes.max(1);
        out.push_str(&format!(" {} ({per} B) |", mb(r.walk_kb)));
    }
    out.push_str(&format!("\n| {}s after drop_caches |", SETTLE.as_secs()));
    for r in rows {
        out.push_str(&format!(" {} |", mb(r.after_kb)));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_every_target_and_the_cost_per_inode() {
        let rows = [
            Row {
                target: "unionfs",
                idle_kb: 4_000,
                walk_kb: 61_000,
                after_kb: 6_000,
                nodes: 200_000,
            },
            Row {
                target: "fuse-overlayfs",
                idle_kb: 2_000,
                walk_kb: 61_000,
                after_kb: 61_000,
                nodes: 200_000,
            },
        ];
        let t = markdown(&rows, 200_000);
        assert!(
            t.contains("| walk-200k | unionfs | fuse-overlayfs |"),
            "{t}"
        );
        assert!(t.contains("59.6 MB (291 B)"), "{t}");
        assert!(
            t.contains("| 5s after drop_caches | 5.9 MB | 59.6 MB |"),
            "{t}"
        );
    }
}
