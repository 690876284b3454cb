//! Where images and containers live on disk, their names, their metadata files, and the
//! locks that keep two runbox processes from using one container at once.
//!
//! Layout under the root: `images/NAME/{layers/0..N, config.json}` (layer 0 is the base,
//! N-1 the top), `images/NAME/kernel-*/` (whiteout masks for the kernel's overlay, built on
//! first use), `containers/NAME/{upper,work,merged,init,state.json,lock}`, and `tmp/` for
//! imports in progress (renamed into `images/` only when complete).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::error::{Context, Error, Result};

/// An image's run defaults and facts, from its config (docker/OCI) or empty for a plain tar.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageConfig {
    pub layers: usize,
    pub size: u64,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub working_dir: String,
    #[serde(default)]
    pub user: String,
}

/// What `ps` shows and what `run` reads back to reuse a container.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContainerState {
    pub name: String,
    pub image: String,
    pub backend: String,
    pub status: String,
    #[serde(default)]
    pub pid: Option<i32>,
    #[serde(default)]
    pub exit_code: Option<i32>,
}

pub struct Store {
    root: PathBuf,
}

/// Names become directory names: a conservative alphabet, no dots first (no `..`).
pub fn check_name(kind: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && name
            .as_bytes()
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "invalid {kind} name {name:?}: use letters, digits, '_', '-', '.', starting with a letter or digit"
        )))
    }
}

/// The default root: system-wide for root, per user otherwise (as podman does).
pub fn default_root() -> Result<PathBuf> {
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/runbox"));
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("runbox"));
    }
    match std::env::var_os("HOME").filter(|x| !x.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".local/share/runbox")),
        None => Err(Error::usage(
            "neither XDG_DATA_HOME nor HOME is set: give --root DIR",
        )),
    }
}

/// Writes a file by renaming a complete temporary copy over it, so readers never see half.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| Error::path("create", &tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::path("write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::path("rename into place", path, e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let data = fs::read(path).map_err(|e| Error::path("read", path, e))?;
    serde_json::from_slice(&data)
        .map_err(|e| Error::usage(format!("corrupt {}: {e}", path.display())))
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::usage(format!("cannot encode json: {e}")))
}

impl Store {
    pub fn open(root: PathBuf) -> Result<Store> {
        for sub in ["images", "containers", "tmp"] {
            let p = root.join(sub);
            if !p.exists() {
                fs::create_dir_all(&p).map_err(|e| Error::path("create store directory", &p, e))?;
                // Image layers hold set-uid programs and device nodes, and a running
                // container's root is mounted under containers/: other users of the host
                // must not reach them (docker keeps its store 0710/0700 for this reason).
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o700))
                    .map_err(|e| Error::path("restrict", &p, e))?;
            }
        }
        let store = Store { root };
        store.sweep_tmp();
        Ok(store)
    }

    /// Removes what runbox processes killed mid-way left in `tmp/` (names end in
    /// `-PID-N`; a live PID keeps its entries).
    fn sweep_tmp(&self) {
        let Ok(rd) = fs::read_dir(self.tmp()) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = tmp_owner(&name) {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = crate::userns::remove_container_tree(&e.path());
                }
            }
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Held while images are added, removed, or picked by a container (short sections).
    pub fn lock(&self) -> Result<Flock<fs::File>> {
        lock_file(&self.root.join("lock"), true)
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn image_dir(&self, name: &str) -> PathBuf {
        self.root.join("images").join(name)
    }

    /// The layer directories of an image, top first (the order of `lowerdir=`).
    pub fn layer_dirs(&self, name: &str, cfg: &ImageConfig) -> Vec<PathBuf> {
        let d = self.image_dir(name).join("layers");
        (0..cfg.layers)
            .rev()
            .map(|i| d.join(i.to_string()))
            .collect()
    }

    pub fn load_image(&self, name: &str) -> Result<ImageConfig> {
        check_name("image", name)?;
        let p = self.image_dir(name).join("config.json");
        if !p.exists() {
            return Err(Error::usage(format!("no such image: {name}")));
        }
        read_json(&p)
    }

    pub fn list_images(&self) -> Result<Vec<(String, ImageConfig)>> {
        let mut out = Vec::new();
        for name in list_names(&self.root.join("images"))? {
            if let Ok(cfg) = self.load_image(&name) {
                out.push((name, cfg));
            }
        }
        Ok(out)
    }

    pub fn container_dir(&self, name: &str) -> PathBuf {
        self.root.join("containers").join(name)
    }

    pub fn load_state(&self, name: &str) -> Result<Option<ContainerState>> {
        check_name("container", name)?;
        let p = self.container_dir(name).join("state.json");
        if !p.exists() {
            return Ok(None);
        }
        read_json(&p).map(Some)
    }

    pub fn save_state(&self, st: &ContainerState) -> Result<()> {
        let p = self.container_dir(&st.name).join("state.json");
        write_atomic(&p, &to_json(st)?)
    }

    pub fn save_image_config(dir: &Path, cfg: &ImageConfig) -> Result<()> {
        write_atomic(&dir.join("config.json"), &to_json(cfg)?)
    }

    pub fn list_containers(&self) -> Result<Vec<ContainerState>> {
        let mut out = Vec::new();
        for name in list_names(&self.root.join("containers"))? {
            if let Ok(Some(st)) = self.load_state(&name) {
                out.push(st);
            }
        }
        Ok(out)
    }

    /// The container's exclusive lock: held for the whole run, tried by `rm`.
    pub fn lock_container(&self, name: &str) -> Result<Flock<fs::File>> {
        lock_file(&self.container_dir(name).join("lock"), false)
            .map_err(|_| Error::Busy(format!("container {name} is running")))
    }
}

/// The PID in a temporary name `TAG-PID-N`.
pub fn tmp_owner(name: &str) -> Option<u32> {
    let mut it = name.rsplitn(3, '-');
    let n = it.next()?;
    let pid = it.next()?;
    it.next()?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

fn list_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(|e| Error::path("read", dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| check_name("", n).is_ok())
        .collect();
    names.sort();
    Ok(names)
}

fn lock_file(path: &Path, wait: bool) -> Result<Flock<fs::File>> {
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::path("open lock", path, e))?;
    let arg = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    Flock::lock(f, arg)
        .map_err(|(_, e)| e)
        .ctx(|| format!("lock {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("image", "busybox").is_ok());
        assert!(check_name("image", "a.b-c_1").is_ok());
        for bad in ["", "..", ".x", "a/b", "-x", "a b", "é"] {
            assert!(check_name("image", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn temporary_names() {
        assert_eq!(tmp_owner("import-busy-box-123-0"), Some(123));
        assert_eq!(tmp_owner("rm-c1-77-0"), Some(77));
        assert_eq!(tmp_owner("nodash"), None);
        assert_eq!(tmp_owner("a-b-c"), None);
    }

    #[test]
    fn layers_top_first() {
        let s = Store {
            root: PathBuf::from("/r"),
        };
        let cfg = ImageConfig {
            layers: 3,
            ..Default::default()
        };
        let l = s.layer_dirs("i", &cfg);
        assert_eq!(l[0], PathBuf::from("/r/images/i/layers/2"));
        assert_eq!(l[2], PathBuf::from("/r/images/i/layers/0"));
    }
}
