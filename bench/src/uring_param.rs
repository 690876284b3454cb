//! The fuse module's `enable_uring`, which the `unionfs-uring` target needs set to Y: set
//! for the run and put back afterwards. The lock file (shared with the daemon's tests and
//! scripts/test.sh) serialises every change on the machine and holds the value found while
//! it is changed, so that a run killed before restoring is repaired by the next holder.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

pub const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";
const LOCK: &str = "/tmp/unionfs-enable-uring.lock";

/// The value to restore if the run is cut short (`restore_now`, from the signal path).
static FOUND: Mutex<Option<String>> = Mutex::new(None);

/// Holds `enable_uring` at Y; restores the value found on drop.
pub struct EnableUring {
    lock: Flock<File>,
    /// What the parameter was (Y or N).
    pub found: String,
}

impl EnableUring {
    pub fn acquire() -> Result<EnableUring, String> {
        if std::fs::metadata(PARAM).is_err() {
            return Err(format!(
                "the kernel has no FUSE over io_uring (no {PARAM}: needs Linux 6.14+ with \
                 CONFIG_FUSE_IO_URING)"
            ));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(LOCK)
            .map_err(|e| format!("cannot open {LOCK}: {e}"))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((file, _)) => {
                eprintln!("bench: waiting for another user of {PARAM} ({LOCK})");
                Flock::lock(file, FlockArg::LockExclusive)
                    .map_err(|(_, e)| format!("cannot lock {LOCK}: {e}"))?
            }
        };
        let mut stale = String::new();
        let _ = lock.read_to_string(&mut stale);
        if !stale.trim().is_empty() {
            std::fs::write(PARAM, stale.trim())
                .map_err(|e| format!("cannot restore {PARAM} left by a killed run: {e}"))?;
        }
        let found = std::fs::read_to_string(PARAM)
            .map_err(|e| format!("cannot read {PARAM}: {e}"))?
            .trim()
            .to_string();
        let record = (|| -> std::io::Result<()> {
            lock.set_len(0)?;
            lock.rewind()?;
            lock.write_all(found.as_bytes())?;
            lock.sync_all()
        })();
        record.map_err(|e| format!("cannot record {PARAM} in {LOCK}: {e}"))?;
        std::fs::write(PARAM, "Y").map_err(|e| format!("cannot set {PARAM} to Y: {e}"))?;
        if let Ok(mut f) = FOUND.lock() {
            *f = Some(found.clone());
        }
        Ok(EnableUring { lock, found })
    }
}

impl EnableUring {
    /// Runs `f` with the parameter at the value found (for what must be measured as on a
    /// machine where the bench had not turned the ring on), then sets it to Y again.
    pub fn as_found<T>(&self, f: impl FnOnce() -> T) -> T {
        if let Err(e) = std::fs::write(PARAM, &self.found) {
            eprintln!("bench: cannot put {PARAM} back to {}: {e}", self.found);
        }
        let r = f();
        if let Err(e) = std::fs::write(PARAM, "Y") {
            eprintln!("bench: cannot set {PARAM} to Y again: {e}");
        }
        r
    }
}

impl Drop for EnableUring {
    fn drop(&mut self) {
        match std::fs::write(PARAM, &self.found) {
            Ok(()) => {
                let _ = self.lock.set_len(0);
                if let Ok(mut f) = FOUND.lock() {
                    *f = None;
                }
                eprintln!("bench: {PARAM} restored to {}", self.found);
            }
            Err(e) => eprintln!("bench: cannot restore {PARAM} to {}: {e}", self.found),
        }
    }
}

/// Puts the value back now (the process is about to exit without unwinding).
pub fn restore_now() {
    if let Ok(f) = FOUND.lock() {
        if let Some(v) = f.as_ref() {
            let _ = std::fs::write(PARAM, v);
        }
    }
}
