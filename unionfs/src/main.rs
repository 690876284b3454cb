//! `unionfs`: command line to mount. Parses and checks the options, daemonizes (unless
//! `-f`), mounts, reports readiness to the waiting parent, serves until unmounted, and
//! leaves the work directory clean.

use std::ffi::OsString;
use std::process::ExitCode;

use unionfs::fs::FuseAdapter;
use unionfs::layer::{Layers, XattrNs};
use unionfs::options::{self, KernelOpt, Options, ParseOutcome};
use unionfs::sys::daemon::{self, Readiness};
use unionfs::sys::fuse_mount::{self, MountRequest};
use unionfs::union::{Config, UnionFs};

/// Logs to stderr; `-d` turns on every request (fuser logs them at debug level).
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("unionfs: {}: {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

static LOGGER: StderrLog = StderrLog;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // `unionfs explain ...` and `unionfs diff ...`: a mount point cannot be called so without
    // a path separator, so the mount command line keeps its meaning.
    if let Some(code) = unionfs::teach::subcommand(&args) {
        return ExitCode::from(code);
    }
    let opts = match options::parse_args(args) {
        Ok(ParseOutcome::Run(o)) => *o,
        Ok(ParseOutcome::Exit(text, code)) => {
            print!("{text}");
            return ExitCode::from(u8::try_from(code).unwrap_or(1));
        }
        Err(e) => {
            eprintln!("unionfs: {e}");
            return ExitCode::from(1);
        }
    };
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(if opts.debug {
        log::LevelFilter::Debug
    } else if opts.verbose {
        log::LevelFilter::Info
    } else {
        log::LevelFilter::Warn
    });
    for w in &opts.warnings {
        eprintln!("unionfs: warning: {w}");
    }
    // Held for the daemon's whole life: a second mount on this workdir is refused.
    let _work_lock = match options::validate(&opts) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("unionfs: {e}");
            return ExitCode::from(1);
        }
    };
    // Before mounting: uring=on fails here, in one line, when the kernel cannot give a ring.
    if let Err(e) = choose_transport(&opts) {
        eprintln!("unionfs: {e}");
        return ExitCode::from(1);
    }
    if let Err(e) = start_trace(&opts) {
        eprintln!("unionfs: {e}");
        return ExitCode::from(1);
    }
    // Fork before any thread exists.
    let readiness = if opts.foreground {
        None
    } else {
        match daemon::daemonize() {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("unionfs: cannot start the daemon: {e}");
                return ExitCode::from(1);
            }
        }
    };
    match serve(&opts, readiness) {
        Ok(()) => ExitCode::SUCCESS,
        Err((msg, readiness)) => {
            match readiness {
                Some(r) => r.fail(&msg),
                None => eprintln!("unionfs: {msg}"),
            }
            ExitCode::from(1)
        }
    }
}

type ServeError = (String, Option<Readiness>);

fn serve(opts: &Options, readiness: Option<Readiness>) -> Result<(), ServeError> {
    // The caller's umask is applied by the kernel before a request reaches us; ours must
    // not apply a second time.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    raise_fd_limit();
    let root = nix::unistd::geteuid().is_root();
    let ns = if opts.userxattr || !root {
        XattrNs::User
    } else {
        XattrNs::Trusted
    };
    let layers = match Layers::open(
        &opts.lowerdirs,
        opts.upperdir.as_deref(),
        opts.workdir.as_deref(),
        ns,
    ) {
        Ok(l) => l,
        Err(e) => return Err((format!("cannot open the layers: {e}"), readiness)),
    };
    // As the kernel: its module's default, but with user xattrs redirects are neither
    // written nor followed unless asked for.
    // metacopy needs redirect_dir=on: by default it turns redirects on, and a redirect_dir
    // given otherwise turns a default metacopy off.
    let metacopy = opts
        .metacopy
        .unwrap_or(ns == XattrNs::Trusted && options::kernel_metacopy());
    let redirect = opts.redirect_dir.unwrap_or(if metacopy {
        options::RedirectDir::On
    } else if ns == XattrNs::User {
        options::RedirectDir::NoFollow
    } else {
        options::RedirectDir::kernel_default()
    });
    let metacopy = metacopy && redirect == options::RedirectDir::On;
    // Passthrough needs privilege to register backing files; by default it is on (for upper
    // files) as root.
    let config = Config {
        volatile: opts.volatile,
        passthrough: opts.passthrough.unwrap_or(if root {
            options::Passthrough::Upper
        } else {
            options::Passthrough::Off
        }),
        dir_fd_budget: 0,
        xino_on: opts.xino_on,
        noacl: opts.noacl,
        idmap: opts.idmap.clone(),
        redirect_create: redirect.creates(),
        redirect_follow: redirect.follows(),
        metacopy,
    };
    let fs = match UnionFs::new(layers, config) {
        Ok(f) => f,
        Err(e) => return Err((format!("cannot set up the union: {e}"), readiness)),
    };
    let mut kopts: Vec<String> = opts
        .kernel_opts
        .iter()
        .map(|k| k.as_str().to_string())
        .collect();
    // Permissions are the kernel's, checked against the attributes we report.
    if !opts.kernel_opts.contains(&KernelOpt::DefaultPermissions) {
        kopts.push("default_permissions".into());
    }
    // As root, like the kernel's overlay, set-id bits and device nodes work (a container's
    // root filesystem needs both); libfuse's mount turns them off unless told otherwise.
    // fusermount3 forces them off for unprivileged users anyway.
    if root {
        if !opts.kernel_opts.contains(&KernelOpt::NoSuid) {
            kopts.push("suid".into());
        }
        if !opts.kernel_opts.contains(&KernelOpt::NoDev) {
            kopts.push("dev".into());
        }
    }
    // As root, like the kernel's overlay, every user may use the mount.
    if root
        && !opts.kernel_opts.contains(&KernelOpt::AllowOther)
        && !opts.kernel_opts.contains(&KernelOpt::AllowRoot)
    {
        kopts.push("allow_other".into());
    }
    let acl = if kopts.iter().any(|k| k == "allow_other") {
        fuser::SessionACL::All
    } else if kopts.iter().any(|k| k == "allow_root") {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    let req = MountRequest {
        mountpoint: &opts.mountpoint,
        fsname: "unionfs",
        subtype: "unionfs",
        kernel_opts: &kopts,
        force_fusermount: false,
    };
    let (fd, method) = match fuse_mount::mount(&req) {
        Ok(x) => x,
        Err(e) => {
            return Err((
                format!("cannot mount on {}: {e}", opts.mountpoint.display()),
                readiness,
            ))
        }
    };
    let mut config = fuser::Config::default();
    config.n_threads = Some(opts.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2)
    }));
    config.clone_fd = true;
    let invalidator = std::sync::Arc::clone(&fs.invalidator);
    // Blocked here, before fuser starts its threads (they inherit the mask), and taken by
    // one thread of ours: SIGTERM, SIGINT and SIGHUP unmount cleanly instead of killing
    // the daemon under a live mount.
    let signals = stop_signals();
    if let Err(e) = signals.thread_block() {
        log::warn!("cannot block termination signals: {e}");
    }
    let session = match fuser::Session::from_fd(FuseAdapter::new(fs), fd, acl, config) {
        Ok(s) => s,
        Err(e) => {
            let _ = fuse_mount::unmount(&opts.mountpoint, method);
            return Err((format!("FUSE handshake failed: {e}"), readiness));
        }
    };
    let _ = invalidator.set(Box::new(unionfs::fs::KernelInvalidator(session.notifier())));
    let mountpoint = opts.mountpoint.clone();
    let spawned = std::thread::Builder::new()
        .name("unionfs-signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                log::warn!("{sig}: unmounting {}", mountpoint.display());
                if let Err(e) = fuse_mount::unmount(&mountpoint, method) {
                    log::error!("cannot unmount {}: {e}", mountpoint.display());
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("no signal handling thread: {e}");
    }
    if let Some(r) = readiness {
        r.ready();
    }
    let result = session.run();
    if let Some(w) = &opts.workdir {
        if let Ok(work) = unionfs::layer::open_dir_path(&w.join(unionfs::layer::WORK_SUBDIR)) {
            if let Err(e) = unionfs::layer::clean_dir(std::os::fd::AsFd::as_fd(&work)) {
                log::warn!("cannot clean the work directory: {e}");
            }
        }
    }
    result.map_err(|e| (format!("session ended with an error: {e}"), None))
}

/// Which transport will serve the mount. This build still serves through fuser, which
/// cannot take requests from a ring: `uring=on` is refused and `auto` says so. (Merged with
/// `wire::server`/`wire::devfuse`, a `Plan::Ring` offers the ring in INIT and calls
/// `wire::uring::start` once INIT granted it.)
fn choose_transport(opts: &Options) -> Result<(), String> {
    use unionfs::wire::uring::{self, Plan};
    match uring::plan(opts.uring)? {
        Plan::Ring if opts.uring == options::UringMode::On => Err(
            "uring=on: this build serves through fuser, which cannot use FUSE over io_uring".into(),
        ),
        Plan::Ring => {
            log::info!("transport: /dev/fuse (the fuser front end cannot use io_uring)");
            Ok(())
        }
        Plan::DevFuse => {
            log::info!("transport: /dev/fuse");
            Ok(())
        }
    }
}

/// Opens the trace file (before the daemon detaches: a relative name means the caller's
/// directory) and turns the tracer on.
fn start_trace(opts: &Options) -> Result<(), String> {
    if opts.trace == unionfs::trace::Level::Off {
        return Ok(());
    }
    let file = match &opts.trace_file {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(p)
                .map_err(|e| format!("cannot open the trace file {}: {e}", p.display()))?,
        ),
        None => {
            if !opts.foreground {
                eprintln!(
                    "unionfs: warning: trace goes to stderr, which the daemon closes once \
                     mounted: use -f or trace=FILE"
                );
            }
            None
        }
    };
    unionfs::trace::start(opts.trace, file);
    Ok(())
}

fn stop_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// Every directory the kernel holds keeps a descriptor open (and so does every open
/// file): allow as many as the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
