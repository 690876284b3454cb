//! `unionfs`: command line to mount. Parses and checks the options, daemonizes (unless
//! `-f`), mounts, reports readiness to the waiting parent, serves until unmounted, and
//! leaves the work directory clean.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::process::ExitCode;
use std::sync::Arc;

use unionfs::fs::FuseAdapter;
use unionfs::layer::{Layers, XattrNs};
use unionfs::options::{self, Frontend, KernelOpt, Options, ParseOutcome};
use unionfs::sys::daemon::{self, Readiness};
use unionfs::sys::fuse_mount::{self, MountRequest};
use unionfs::union::{Config, UnionFs};
use unionfs::wire::uring::{self, Plan};

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
    let transport = match choose_transport(&opts) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("unionfs: {e}");
            return ExitCode::from(1);
        }
    };
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
    match serve(&opts, readiness, transport) {
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

fn serve(opts: &Options, readiness: Option<Readiness>, transport: Plan) -> Result<(), ServeError> {
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
    let threads = opts.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .max(2)
    });
    // Blocked here, before the request threads start (they inherit the mask), and taken
    // by one thread of ours: SIGTERM, SIGINT and SIGHUP unmount cleanly instead of killing
    // the daemon under a live mount.
    let signals = stop_signals();
    if let Err(e) = signals.thread_block() {
        log::warn!("cannot block termination signals: {e}");
    }
    let result = match opts.frontend {
        Frontend::Fuser => serve_fuser(opts, fs, fd, method, acl, threads, readiness, signals),
        Frontend::Wire => serve_wire(
            opts, fs, fd, method, acl, threads, readiness, signals, transport,
        ),
    };
    if let Some(w) = &opts.workdir {
        if let Ok(work) = unionfs::layer::open_dir_path(&w.join(unionfs::layer::WORK_SUBDIR)) {
            if let Err(e) = unionfs::layer::clean_dir(std::os::fd::AsFd::as_fd(&work)) {
                log::warn!("cannot clean the work directory: {e}");
            }
        }
    }
    result
}

/// Unmounts on the first termination signal (from a thread of its own).
fn spawn_signal_thread(
    signals: nix::sys::signal::SigSet,
    mountpoint: std::path::PathBuf,
    method: fuse_mount::MountMethod,
) {
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
}

/// Our own front end (`wire::server`) over `/dev/fuse` (`wire::devfuse`).
#[allow(clippy::too_many_arguments)]
fn serve_wire(
    opts: &Options,
    fs: UnionFs,
    fd: OwnedFd,
    method: fuse_mount::MountMethod,
    acl: fuser::SessionACL,
    threads: usize,
    readiness: Option<Readiness>,
    signals: nix::sys::signal::SigSet,
    transport: Plan,
) -> Result<(), ServeError> {
    use unionfs::wire::server::{Access, Server, ServerOptions};
    use unionfs::wire::Handler;
    let owner = nix::unistd::geteuid().as_raw();
    let access = match acl {
        fuser::SessionACL::All => Access::All,
        fuser::SessionACL::RootAndOwner => Access::RootAndOwner(owner),
        fuser::SessionACL::Owner => Access::Owner(owner),
    };
    let dev = Arc::new(fd);
    let _ = fs
        .invalidator
        .set(Box::new(unionfs::wire::devfuse::Notifier::new(Arc::clone(
            &dev,
        ))));
    let server = Arc::new(Server::new(
        fs,
        ServerOptions {
            dev: Some(Arc::clone(&dev)),
            want_uring: transport == Plan::Ring,
            access,
        },
    ));
    spawn_signal_thread(signals, opts.mountpoint.clone(), method);
    // Ready once INIT is answered, as fuser's handshake is done before `ready` there. A
    // transport that starts after INIT (FUSE over io_uring) starts here too.
    let pending = Arc::new(parking_lot::Mutex::new(readiness));
    let on_init = Arc::clone(&pending);
    let inited = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let inited_set = Arc::clone(&inited);
    // The ring's queues, once started; and why the mount had to go if they could not be.
    let ring: Arc<parking_lot::Mutex<Option<uring::Uring>>> = Arc::default();
    let ring_failed: Arc<parking_lot::Mutex<Option<String>>> = Arc::default();
    let (ring_slot, failed_slot) = (Arc::clone(&ring), Arc::clone(&ring_failed));
    let (ring_dev, ring_server) = (Arc::clone(&dev), Arc::clone(&server));
    let (mode, mountpoint) = (opts.uring, opts.mountpoint.clone());
    let after_init: Box<dyn FnOnce() + Send> = Box::new(move || {
        inited_set.store(true, std::sync::atomic::Ordering::Release);
        if ring_server.uring_granted() {
            // The kernel holds every request until the ring is registered or refused, so
            // this runs before the other /dev/fuse readers even start.
            match uring::start(&ring_dev, ring_server) {
                Ok(r) => {
                    log::info!("transport: io_uring ({} queues)", r.queues());
                    *ring_slot.lock() = Some(r);
                }
                Err(e) if mode == options::UringMode::On || e.kernel_waits => {
                    log::error!("FUSE over io_uring: {}", e.reason);
                    *failed_slot.lock() = Some(format!("FUSE over io_uring: {}", e.reason));
                    let _ = fuse_mount::unmount(&mountpoint, method);
                    return;
                }
                Err(e) => log::info!("transport: /dev/fuse (io_uring: {})", e.reason),
            }
        } else if transport == Plan::Ring {
            log::info!("transport: /dev/fuse (the kernel did not offer io_uring in INIT)");
        } else {
            log::info!("transport: /dev/fuse");
        }
        if let Some(r) = on_init.lock().take() {
            r.ready();
        }
    });
    let r = unionfs::wire::devfuse::serve(dev, server, threads, Some(after_init));
    // The readers end at unmount (ENODEV); the queues end as the kernel gives back their
    // commands.
    let queues = ring.lock().take();
    if let Some(q) = queues {
        q.wait();
    }
    if let Some(why) = ring_failed.lock().take() {
        return Err((why, pending.lock().take()));
    }
    if !inited.load(std::sync::atomic::Ordering::Acquire) {
        // INIT never came (or could not be read).
        let readiness = pending.lock().take();
        let _ = fuse_mount::unmount(&opts.mountpoint, method);
        let why = match r {
            Err(e) => e.to_string(),
            Ok(()) => "unmounted before INIT".into(),
        };
        return Err((format!("FUSE handshake failed: {why}"), readiness));
    }
    r.map_err(|e| (format!("session ended with an error: {e}"), None))
}

/// The `fuser` adapter (`fs.rs`), `-o frontend=fuser`.
#[allow(clippy::too_many_arguments)]
fn serve_fuser(
    opts: &Options,
    fs: UnionFs,
    fd: OwnedFd,
    method: fuse_mount::MountMethod,
    acl: fuser::SessionACL,
    threads: usize,
    readiness: Option<Readiness>,
    signals: nix::sys::signal::SigSet,
) -> Result<(), ServeError> {
    let mut config = fuser::Config::default();
    config.n_threads = Some(threads);
    config.clone_fd = true;
    // Backing files are registered on a duplicate of the session's descriptor (the same
    // open file, so the same session), closed by our `Backing` rather than fuser's.
    let dev = match fd.try_clone() {
        Ok(d) => Arc::new(d),
        Err(e) => {
            let _ = fuse_mount::unmount(&opts.mountpoint, method);
            return Err((
                format!("cannot duplicate the FUSE descriptor: {e}"),
                readiness,
            ));
        }
    };
    let invalidator = Arc::clone(&fs.invalidator);
    let session = match fuser::Session::from_fd(FuseAdapter::new(fs, dev), fd, acl, config) {
        Ok(s) => s,
        Err(e) => {
            let _ = fuse_mount::unmount(&opts.mountpoint, method);
            return Err((format!("FUSE handshake failed: {e}"), readiness));
        }
    };
    let _ = invalidator.set(Box::new(unionfs::fs::KernelInvalidator(session.notifier())));
    spawn_signal_thread(signals, opts.mountpoint.clone(), method);
    if let Some(r) = readiness {
        r.ready();
    }
    session
        .run()
        .map_err(|e| (format!("session ended with an error: {e}"), None))
}

/// Which transport will serve the mount: the ring is offered in INIT only when `-o uring=`
/// and the kernel allow it and the front end can serve it (fuser cannot).
fn choose_transport(opts: &Options) -> Result<Plan, String> {
    let plan = uring::plan(opts.uring)?;
    match (plan, opts.frontend) {
        (Plan::Ring, Frontend::Fuser) if opts.uring == options::UringMode::On => {
            Err("uring=on: the fuser front end cannot use FUSE over io_uring".into())
        }
        (Plan::Ring, Frontend::Fuser) => {
            log::info!("transport: /dev/fuse (the fuser front end cannot use io_uring)");
            Ok(Plan::DevFuse)
        }
        (p, _) => Ok(p),
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
