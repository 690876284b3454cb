//! `runbox run`: a container's directories and state, the union mount, the cgroup, the
//! processes, and the clean-up that follows in every case (guards, in reverse order).

use std::fs;
use std::path::{Path, PathBuf};

use crate::backend::{self, Backend, Mounted, Probe};
use crate::cgroup::{self, Limits};
use crate::cli::{NetArg, RunArgs};
use crate::env;
use crate::error::{Error, Result};
use crate::image::kernel::kernel_lowers;
use crate::process::{self, ChildSpec};
use crate::rootfs;
use crate::size::parse_size;
use crate::store::{check_name, ContainerState, Store};

/// Whether a container is running now: its lock is held by a live runbox.
pub fn is_running(store: &Store, name: &str) -> bool {
    store.container_dir(name).exists() && store.lock_container(name).is_err()
}

/// Removes a container's directory (its lock must be held or its runbox gone).
pub fn remove_container(store: &Store, name: &str) -> Result<()> {
    let dir = store.container_dir(name);
    let merged = dir.join("merged");
    // A union left mounted by a killed runbox would make the removal fail half-way.
    if is_mount_point(&merged) {
        let _ = backend::Mounted::at(&merged, &dir.join("work")).unmount();
    }
    // ... and its cgroup (empty once its processes died with it).
    cgroup::remove_stale(name);
    let doomed = store
        .tmp()
        .join(format!("rm-{name}-{}-0", std::process::id()));
    fs::rename(&dir, &doomed).map_err(|e| Error::path("remove", &dir, e))?;
    crate::userns::remove_container_tree(&doomed)
}

fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(p), p.parent().map(fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev(),
        _ => false,
    }
}

fn generated_name() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("c{:x}{:x}", std::process::id(), t & 0xffff_ffff)
}

fn check_hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!("invalid hostname {h:?}")))
    }
}

/// The container's top lower layer: the mount points and /etc files the root needs, so
/// they exist without writing them into the upper (docker's "init" layer does the same).
fn make_init_layer(dir: &Path) -> Result<PathBuf> {
    let init = dir.join("init");
    for d in ["proc", "sys", "dev", "etc"] {
        let p = init.join(d);
        fs::create_dir_all(&p).map_err(|e| Error::path("create", &p, e))?;
    }
    for f in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        let p = init.join(f);
        if !p.exists() {
            fs::write(&p, b"").map_err(|e| Error::path("create", &p, e))?;
        }
    }
    Ok(init)
}

/// The files bound over /etc/hosts, /etc/hostname and /etc/resolv.conf.
fn write_etc_files(dir: &Path, hostname: &str) -> Result<rootfs::Spec> {
    let w = |name: &str, data: &[u8]| -> Result<PathBuf> {
        let p = dir.join(name);
        fs::write(&p, data).map_err(|e| Error::path("write", &p, e))?;
        Ok(p)
    };
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    );
    let resolv = fs::read("/etc/resolv.conf").unwrap_or_default();
    Ok(rootfs::Spec {
        overlay: None,
        hosts: w("hosts", hosts.as_bytes())?,
        hostname: w("hostname", format!("{hostname}\n").as_bytes())?,
        resolv: w("resolv.conf", &resolv)?,
    })
}

/// Removes the container after a `--rm` run, whatever happened.
struct RmGuard<'a> {
    store: &'a Store,
    name: Option<String>,
}

impl Drop for RmGuard<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.name.take() {
            if let Err(e) = remove_container(self.store, &n) {
                eprintln!("runbox: error: {e}");
            }
        }
    }
}

pub fn run(store: &Store, args: RunArgs, verbose: bool) -> Result<i32> {
    // Rootless: a user namespace maps the caller to root; the kernel's overlay is mounted
    // inside it with userxattr, FUSE goes through fusermount3.
    let rootless = !nix::unistd::geteuid().is_root();
    let idmap = rootless.then(|| {
        crate::userns::choose(
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    });
    if verbose {
        match &idmap {
            Some(crate::userns::IdMap::Ranges { subuid, .. }) => eprintln!(
                "runbox: user namespace: you as 0, {}+{} as 1..{}",
                subuid.0, subuid.1, subuid.1
            ),
            Some(_) => eprintln!(
                "runbox: user namespace: only you, as 0 (no newuidmap or /etc/subuid range)"
            ),
            None => {}
        }
    }
    let name = args.name.clone().unwrap_or_else(generated_name);
    check_name("container", &name)?;
    check_name("image", &args.image)?;
    let hostname = args.hostname.clone().unwrap_or_else(|| name.clone());
    check_hostname(&hostname)?;
    let limits = Limits {
        memory: args.memory.as_deref().map(parse_size).transpose()?,
        pids: args.pids,
    };
    if args.pids == Some(0) {
        return Err(Error::usage("--pids must be above zero"));
    }

    let dir = store.container_dir(&name);
    let (cfg, _lock, existed) = {
        let _store_lock = store.lock()?;
        let cfg = store.load_image(&args.image)?;
        if let Some(st) = store.load_state(&name)? {
            if st.image != args.image {
                return Err(Error::usage(format!(
                    "container {name} exists with image {}: rm it or pick another --name",
                    st.image
                )));
            }
        }
        let existed = dir.join("state.json").exists();
        fs::create_dir_all(&dir).map_err(|e| Error::path("create", &dir, e))?;
        let lock = store.lock_container(&name)?;
        (cfg, lock, existed)
    };
    // A new container that never got to run its command is not kept; --rm removes it
    // in any case.
    let mut rm_guard = RmGuard {
        store,
        name: (args.rm || !existed).then(|| name.clone()),
    };

    let user = args
        .user
        .clone()
        .or((!cfg.user.is_empty()).then(|| cfg.user.clone()));
    if let Some(u) = &user {
        crate::user::check_spec(u)?;
    }
    let term = std::env::var("TERM").ok();
    let envv = env::build_env(&cfg.env, &args.env, &hostname, term.as_deref())?;
    let argv = env::build_argv(&cfg.entrypoint, &cfg.cmd, &args.cmd)?;
    let workdir = args
        .workdir
        .clone()
        .or((!cfg.working_dir.is_empty()).then(|| cfg.working_dir.clone()))
        .unwrap_or_else(|| "/".to_string());
    if !workdir.starts_with('/') {
        return Err(Error::usage(format!(
            "--workdir {workdir} must be absolute"
        )));
    }

    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for p in [&upper, &work, &merged] {
        fs::create_dir_all(p).map_err(|e| Error::path("create", p, e))?;
    }
    let init = make_init_layer(&dir)?;
    let mut etc = write_etc_files(&dir, &hostname)?;
    // A container killed with its runbox may have left its union mounted (we hold the
    // lock, so no live run uses it).
    if is_mount_point(&merged) {
        let _ = backend::Mounted::at(&merged, &work).unmount();
    }

    process::block_signals()?;
    let probe = Probe::gather();
    let (backend, why) = backend::choose(args.backend, &probe)?;
    if verbose {
        eprintln!("runbox: backend: {why}");
    }
    let mut lowers = vec![init];
    match backend {
        Backend::Fuse => lowers.extend(store.layer_dirs(&args.image, &cfg)),
        Backend::Kernel => lowers.extend(kernel_lowers(store, &args.image, &cfg, rootless)?),
    }
    let mut opts = backend::options(&lowers, &upper, &work)?;
    if let Some(t) = &args.trace {
        if backend != Backend::Fuse {
            return Err(Error::usage(
                "--trace needs the fuse backend (the kernel's overlay has no trace): add --backend fuse",
            ));
        }
        opts.push_str(&backend::trace_option(t)?);
    }
    if rootless && backend == Backend::Kernel {
        opts.push_str(",userxattr");
        etc.overlay = Some(opts.clone());
    }

    let mut state = ContainerState {
        name: name.clone(),
        image: args.image.clone(),
        backend: backend.as_str().to_string(),
        status: "running".into(),
        pid: Some(std::process::id() as i32),
        exit_code: None,
    };
    store.save_state(&state)?;

    let result = (|| -> Result<i32> {
        let mut cg = if limits.any() {
            Some(cgroup::create(&name, &limits)?)
        } else {
            None
        };
        let mut mounted: Mounted = match backend {
            Backend::Fuse => {
                let bin = probe
                    .unionfs
                    .clone()
                    .ok_or_else(|| Error::usage("unionfs binary not found"))?;
                backend::mount_fuse(&bin, &opts, &merged, &work)?
            }
            Backend::Kernel if rootless => Mounted::none(),
            Backend::Kernel => backend::mount_kernel(&opts, &merged)?,
        };
        let spec = ChildSpec {
            root: merged.clone(),
            steps: rootfs::plan(&etc),
            hostname: hostname.clone(),
            host_net: args.net == NetArg::Host,
            user: user.clone(),
            workdir: workdir.clone(),
            argv: argv.clone(),
            env: envv.clone(),
            cgroup_procs: cg.as_ref().map(|c| c.procs_files()).unwrap_or_default(),
            userns: idmap.clone(),
        };
        let outcome = process::run(&spec);
        let unmounted = mounted.unmount();
        let removed = cg.as_mut().map(|c| c.remove()).unwrap_or(Ok(()));
        let outcome = outcome?;
        unmounted?;
        removed?;
        if let Some(msg) = &outcome.error {
            eprintln!("runbox: error: {msg}");
        }
        Ok(outcome.code)
    })();

    state.status = "exited".into();
    state.pid = None;
    state.exit_code = result.as_ref().ok().copied();
    if !args.rm {
        store.save_state(&state)?;
        if result.is_ok() {
            rm_guard.name = None;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(check_hostname("box-1.local").is_ok());
        assert!(check_hostname("").is_err());
        assert!(check_hostname("a b").is_err());
        assert!(check_hostname(&"x".repeat(65)).is_err());
    }
}
