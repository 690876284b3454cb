//! The machine the numbers come from, printed above the table: CPU, cores, memory, kernel,
//! and the filesystem under the scratch directory (the upper and lower layers' filesystem).

use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::mount;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub ram_gib: f64,
    pub kernel: String,
    pub scratch_fs: String,
}

impl Machine {
    pub fn describe(scratch: &Path) -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_string(), |(_, v)| v.trim().to_string());
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let ram_kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let kernel = nix::sys::utsname::uname().map_or_else(
            |_| "unknown".to_string(),
            |u| {
                format!(
                    "{} {}",
                    u.sysname().to_string_lossy(),
                    u.release().to_string_lossy()
                )
            },
        );
        // The mount holding the scratch directory: the longest mount point above it.
        let scratch_fs = mount::table()
            .ok()
            .and_then(|t| {
                t.into_iter()
                    .filter(|e| scratch.starts_with(&e.point))
                    .max_by_key(|e| e.point.as_os_str().len())
            })
            .map_or_else(
                || "unknown".to_string(),
                |e| format!("{} ({} on {})", e.fstype, e.source, e.point.display()),
            );
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ram_gib: ram_kib / (1024.0 * 1024.0),
            kernel,
            scratch_fs,
        }
    }
}
