//! The command line (clap) and one function per verb that is not big enough for a module.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::diff;
use crate::error::{Error, Result};
use crate::fsutil::remove_tree;
use crate::image::import::import;
use crate::size::human;
use crate::store::{check_name, default_root, Store};

#[derive(Parser, Debug)]
#[command(
    name = "runbox",
    version,
    about = "Runs commands in container images on a union root (unionfs or the kernel's overlay)",
    long_about = "Runs commands in container images on a union root: the image layers are the \
read-only lower layers, each container gets its own upper directory. The union is unionfs \
(FUSE, the binary next to runbox, or $RUNBOX_UNIONFS) or the kernel's overlay.\n\n\
Store layout under --root: images/NAME/{layers/0..N,config.json} and \
containers/NAME/{upper,work,merged,state.json}."
)]
pub struct Cli {
    /// Store directory [default: /var/lib/runbox as root, else $XDG_DATA_HOME/runbox or
    /// ~/.local/share/runbox]
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Say more on stderr: import progress, the backend chosen and why
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Import an image from FILE ('-' = stdin): a root filesystem tar, a `docker save`
    /// archive or an OCI image layout archive, plain or gzip. All or nothing: members that
    /// would land outside the layer (absolute names, '..', through a symlink), truncated
    /// archives and non-tar data are refused and leave nothing behind.
    Import { name: String, file: String },
    /// List images: name, size, number of layers.
    Images,
    /// Remove an image (refused while a container uses it).
    Rmi { name: String },
    /// Run CMD (or the image's entrypoint and command) in a new container, or in the
    /// stopped container --name NAME if it exists (it keeps its files between runs).
    /// Exits with the command's status: 128+N if signal N killed it, 125 if the container
    /// could not be set up, 126/127 if the command cannot be run or is not found.
    Run(RunArgs),
    /// List containers: name, image, state, backend.
    Ps,
    /// Remove a stopped container and its files.
    Rm { name: String },
    /// Show what a container changed, as `docker diff`: A (added), C (changed), D (deleted).
    Diff { name: String },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendArg {
    /// unionfs over FUSE.
    Fuse,
    /// The kernel's overlay filesystem.
    Kernel,
    /// FUSE when /dev/fuse and fusermount3 are usable, else the kernel's overlay.
    Auto,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetArg {
    /// A new network namespace with only loopback, up.
    None,
    /// The host's network.
    Host,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Container name [default: generated]; reused if it exists and is stopped
    #[arg(long)]
    pub name: Option<String>,
    /// Remove the container (its upper directory too) when the command ends
    #[arg(long)]
    pub rm: bool,
    /// Which union to mount the root with
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendArg,
    /// Host name in the container [default: the container name]
    #[arg(long)]
    pub hostname: Option<String>,
    /// Network: a private one with loopback only, or the host's
    #[arg(long, value_enum, default_value = "none")]
    pub net: NetArg,
    /// Memory limit, e.g. 32m, 1g (a cgroup; the command is killed beyond it)
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Limit on the number of processes and threads (a cgroup)
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// Set an environment variable (repeatable); over the image's Env
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory in the container [default: the image's WorkingDir, or /]
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as USER[:GROUP], numbers or names from the image's /etc/passwd and /etc/group
    /// [default: the image's User, or 0:0]
    #[arg(long, short = 'u', value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Trace what the union does (copy-ups, whiteouts, ...; `unionfs -o trace`), to FILE
    /// (appended) or, as `--trace` alone, to runbox's stderr. The fuse backend only
    #[arg(long, value_name = "FILE", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub trace: Option<String>,
    /// The image to run (as listed by `runbox images`)
    pub image: String,
    /// The command and its arguments [default: the image's Entrypoint and Cmd]
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// Runs one verb; the result is the process exit code.
pub fn dispatch(cli: Cli) -> Result<i32> {
    let root = match cli.root {
        Some(r) => r,
        None => default_root()?,
    };
    let store = Store::open(root)?;
    match cli.cmd {
        Cmd::Import { name, file } => {
            let cfg = import(&store, &name, &file, cli.verbose)?;
            if cli.verbose {
                eprintln!(
                    "runbox: imported {name}: {} layer(s), {}",
                    cfg.layers,
                    human(cfg.size)
                );
            }
            Ok(0)
        }
        Cmd::Images => {
            println!("{:<24} {:>10} {:>6}", "NAME", "SIZE", "LAYERS");
            for (name, cfg) in store.list_images()? {
                println!("{name:<24} {:>10} {:>6}", human(cfg.size), cfg.layers);
            }
            Ok(0)
        }
        Cmd::Rmi { name } => rmi(&store, &name).map(|_| 0),
        Cmd::Run(args) => crate::run::run(&store, args, cli.verbose),
        Cmd::Ps => {
            println!(
                "{:<24} {:<20} {:<12} {:<8}",
                "NAME", "IMAGE", "STATE", "BACKEND"
            );
            for st in store.list_containers()? {
                let state = match (st.status.as_str(), st.exit_code) {
                    ("running", _) if !crate::run::is_running(&store, &st.name) => {
                        "dead".to_string()
                    }
                    ("exited", Some(c)) => format!("exited({c})"),
                    (s, _) => s.to_string(),
                };
                println!(
                    "{:<24} {:<20} {:<12} {:<8}",
                    st.name, st.image, state, st.backend
                );
            }
            Ok(0)
        }
        Cmd::Rm { name } => rm(&store, &name).map(|_| 0),
        Cmd::Diff { name } => {
            let st = store
                .load_state(&name)?
                .ok_or_else(|| Error::usage(format!("no such container: {name}")))?;
            let cfg = store.load_image(&st.image)?;
            let upper = store.container_dir(&name).join("upper");
            for (c, p) in diff::diff(&upper, &store.layer_dirs(&st.image, &cfg))? {
                println!("{} {p}", c.letter());
            }
            Ok(0)
        }
    }
}

fn rmi(store: &Store, name: &str) -> Result<()> {
    check_name("image", name)?;
    let _lock = store.lock()?;
    store.load_image(name)?;
    let users: Vec<String> = store
        .list_containers()?
        .into_iter()
        .filter(|c| c.image == name)
        .map(|c| c.name)
        .collect();
    if !users.is_empty() {
        return Err(Error::Busy(format!(
            "image {name} is used by container(s) {}: rm them first",
            users.join(", ")
        )));
    }
    // Rename first so a half-removed image never looks like an image.
    let dir = store.image_dir(name);
    let doomed = store
        .tmp()
        .join(format!("rmi-{name}-{}-0", std::process::id()));
    std::fs::rename(&dir, &doomed).map_err(|e| Error::path("remove", &dir, e))?;
    remove_tree(&doomed).map_err(|e| Error::path("remove", &doomed, e))
}

fn rm(store: &Store, name: &str) -> Result<()> {
    check_name("container", name)?;
    let dir = store.container_dir(name);
    if !dir.exists() {
        return Err(Error::usage(format!("no such container: {name}")));
    }
    let lock = store.lock_container(name)?;
    crate::run::remove_container(store, name)?;
    drop(lock);
    Ok(())
}
