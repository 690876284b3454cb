//! SIGINT, SIGTERM, SIGHUP: the first asks the run to stop after the current measurement
//! (whose guard then unmounts, as every guard does on the way out); a second one detaches
//! every mount and kills our daemons at once, then exits.
//!
//! Without unsafe code: the signals are blocked in every thread (the mask is inherited by
//! threads started later) and one thread takes them with sigwait. std's Command resets the
//! mask in the children, so the daemons get their signals as usual.

use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SigSet, Signal};

static STOP: AtomicBool = AtomicBool::new(false);

/// Call first in main, before any thread exists.
pub fn install() -> Result<(), String> {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()
        .map_err(|e| format!("cannot block the termination signals: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let Ok(sig) = set.wait() else { return };
            if STOP.swap(true, Ordering::SeqCst) {
                eprintln!(
                    "\nbench: {sig} again: detaching every mount now and exiting; the scratch \
                     directory unionfs-bench.{} is left behind",
                    std::process::id()
                );
                crate::mount::force_cleanup();
                crate::uring_param::restore_now();
                std::process::exit(130);
            }
            eprintln!(
                "\nbench: {sig}: stopping after the current measurement, then unmounting (again to force)"
            );
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}
