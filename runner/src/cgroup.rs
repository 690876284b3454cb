//! Resource limits through cgroups, v1 (one hierarchy per controller, as on this hybrid
//! machine) or v2 (unified), behind one trait. A cgroup is made only when a limit is asked
//! for; a limit that cannot be applied is an error, and the group is removed at the end.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub memory: Option<u64>,
    pub pids: Option<u64>,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.memory.is_some() || self.pids.is_some()
    }
}

/// A created cgroup: the files a process joins it by, and its removal.
pub trait Cgroup {
    /// The `cgroup.procs` files a process writes `0` into to join (one per hierarchy).
    fn procs_files(&self) -> Vec<PathBuf>;
    /// Removes the group's directories (the processes in it must be gone).
    fn remove(&mut self) -> Result<()>;
}

/// Which files hold which limit, per version. Pure: tested without a cgroup tree.
pub fn limit_files(v2: bool, limits: &Limits) -> Vec<(&'static str, &'static str, String)> {
    let mut out = Vec::new();
    if let Some(m) = limits.memory {
        if v2 {
            out.push(("", "memory.max", m.to_string()));
            // Like the v1 path below on this swapless machine: the limit is on memory,
            // not pushed into swap.
            out.push(("", "memory.swap.max", "0".to_string()));
        } else {
            out.push(("memory", "memory.limit_in_bytes", m.to_string()));
        }
    }
    if let Some(p) = limits.pids {
        out.push((if v2 { "" } else { "pids" }, "pids.max", p.to_string()));
    }
    out
}

struct Dirs {
    dirs: Vec<PathBuf>,
}

impl Cgroup for Dirs {
    fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }
    fn remove(&mut self) -> Result<()> {
        for d in std::mem::take(&mut self.dirs) {
            // Exiting tasks leave the group a moment after waitpid returns.
            let mut last = None;
            for _ in 0..100 {
                match fs::remove_dir(&d) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(e) = last {
                return Err(Error::path("remove cgroup", &d, e));
            }
        }
        Ok(())
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

/// Removes `runbox/NAME` groups a killed runbox left behind (each only if empty).
pub fn remove_stale(name: &str) {
    for h in ["memory", "pids", ""] {
        let d = Path::new(ROOT).join(h).join("runbox").join(name);
        if d.exists() {
            let _ = fs::remove_dir(&d);
        }
    }
}

fn is_v2(root: &Path) -> bool {
    root.join("cgroup.controllers").exists()
}

/// Creates `runbox/NAME` in each hierarchy a limit needs and writes the limits.
pub fn create(name: &str, limits: &Limits) -> Result<Box<dyn Cgroup>> {
    create_in(Path::new(ROOT), name, limits)
}

/// `create` below another cgroup mount point (tests use a plain directory).
pub fn create_in(root: &Path, name: &str, limits: &Limits) -> Result<Box<dyn Cgroup>> {
    let v2 = is_v2(root);
    let mut made = Dirs { dirs: Vec::new() };
    for (controller, file, value) in limit_files(v2, limits) {
        let base = root.join(controller);
        if !v2 && !base.join("cgroup.procs").exists() {
            return Err(Error::usage(format!(
                "cannot apply the limit: no cgroup v1 {controller} hierarchy at {}",
                base.display()
            )));
        }
        let dir = base.join("runbox").join(name);
        // v2: every controller used must be enabled in the parents (memory.swap.max
        // belongs to memory, enabled just before it).
        if v2 && file != "memory.swap.max" {
            enable_v2(root, controller_of(file))?;
        }
        if !made.dirs.contains(&dir) {
            fs::create_dir_all(&dir).map_err(|e| {
                Error::path(
                    "cannot apply the limit: create cgroup (delegated cgroup needed?)",
                    &dir,
                    e,
                )
            })?;
            made.dirs.push(dir.clone());
        }
        let p = dir.join(file);
        if file == "memory.swap.max" && !p.exists() {
            continue;
        }
        fs::write(&p, &value).map_err(|e| {
            Error::path(&format!("cannot apply the limit: write {value} to"), &p, e)
        })?;
    }
    Ok(Box::new(made))
}

fn controller_of(file: &str) -> &str {
    file.split('.').next().unwrap_or(file)
}

/// v2 needs the controller enabled in every ancestor's subtree_control.
fn enable_v2(root: &Path, controller: &str) -> Result<()> {
    let runbox = root.join("runbox");
    fs::create_dir_all(&runbox).map_err(|e| Error::path("create cgroup", &runbox, e))?;
    for d in [root, runbox.as_path()] {
        let p = d.join("cgroup.subtree_control");
        fs::write(&p, format!("+{controller}")).map_err(|e| {
            Error::path(
                &format!("cannot apply the limit: enable {controller} in"),
                &p,
                e,
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_per_version() {
        let l = Limits {
            memory: Some(32 << 20),
            pids: Some(20),
        };
        let v1 = limit_files(false, &l);
        assert_eq!(
            v1[0],
            ("memory", "memory.limit_in_bytes", "33554432".to_string())
        );
        assert_eq!(v1[1], ("pids", "pids.max", "20".to_string()));
        let v2 = limit_files(true, &l);
        assert_eq!(v2[0], ("", "memory.max", "33554432".to_string()));
        assert_eq!(v2[2], ("", "pids.max", "20".to_string()));
        assert!(limit_files(true, &Limits::default()).is_empty());
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_default()
    }

    #[test]
    fn v2_tree() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = t.path();
        fs::write(root.join("cgroup.controllers"), "memory pids").unwrap_or_default();
        let l = Limits {
            memory: Some(1 << 20),
            pids: Some(5),
        };
        let cg = create_in(root, "c1", &l).unwrap_or_else(|e| panic!("{e}"));
        let dir = root.join("runbox/c1");
        assert_eq!(read(&dir.join("memory.max")), "1048576");
        assert_eq!(read(&dir.join("pids.max")), "5");
        assert_eq!(read(&root.join("runbox/cgroup.subtree_control")), "+pids");
        assert_eq!(cg.procs_files(), vec![dir.join("cgroup.procs")]);
        std::mem::forget(cg); // a plain directory with files cannot be rmdir'ed
    }

    #[test]
    fn v1_hierarchies() {
        let t = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let root = t.path();
        let l = Limits {
            memory: Some(1 << 20),
            pids: Some(5),
        };
        // No memory hierarchy: the limit cannot be applied, which is an error.
        assert!(create_in(root, "c1", &l).is_err());
        for h in ["memory", "pids"] {
            fs::create_dir_all(root.join(h)).unwrap_or_default();
            fs::write(root.join(h).join("cgroup.procs"), "").unwrap_or_default();
        }
        let cg = create_in(root, "c2", &l).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            read(&root.join("memory/runbox/c2/memory.limit_in_bytes")),
            "1048576"
        );
        assert_eq!(read(&root.join("pids/runbox/c2/pids.max")), "5");
        assert_eq!(cg.procs_files().len(), 2);
        std::mem::forget(cg);
    }
}
