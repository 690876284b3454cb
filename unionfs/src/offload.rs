//! Workers for requests that may take long (the copy-up of a large file, the wait for a
//! passthrough reader to go), so that they do not hold the threads that answer every
//! other request: with one thread per core, two big copy-ups used to stall every `stat`
//! on the mount until they were done.

use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use parking_lot::Mutex;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of threads taking jobs in order. More long requests than threads wait for
/// one to be free; the request threads never do.
pub struct Pool {
    tx: Mutex<Option<Sender<Job>>>,
}

impl Pool {
    /// Runs a request on node `ino` that may copy it up (each front end's `maybe_long`):
    /// here when that may take long, on the caller's thread otherwise. `job` replies itself.
    pub fn run_maybe_long(
        &self,
        fs: &Arc<crate::union::UnionFs>,
        ino: u64,
        may_copy_up: bool,
        job: impl FnOnce(&crate::union::UnionFs) + Send + 'static,
    ) {
        let long = may_copy_up
            && fs
                .inodes
                .get(ino)
                .is_some_and(|n| crate::copyup::may_take_long(&n));
        if long {
            let fs = Arc::clone(fs);
            self.run(Box::new(move || job(&fs)));
        } else {
            job(fs);
        }
    }

    pub fn new(threads: usize) -> Pool {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("unionfs-long-{i}"))
                .spawn(move || loop {
                    // The lock is held only to take one job, not to run it.
                    let job = rx.lock().recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                log::warn!("cannot start a worker for long requests: {e}");
            }
        }
        Pool {
            tx: Mutex::new(Some(tx)),
        }
    }

    /// Runs `job` on a worker; on the calling thread when no worker takes it.
    pub fn run(&self, job: Job) {
        let job = match self.tx.lock().as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => job,
        };
        job();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // The workers end once the queue is closed and empty.
        self.tx.lock().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_jobs_off_the_calling_thread() {
        let pool = Pool::new(2);
        let (tx, rx) = channel();
        let me = std::thread::current().id();
        for _ in 0..4 {
            let tx = tx.clone();
            pool.run(Box::new(move || {
                let _ = tx.send(std::thread::current().id());
            }));
        }
        for _ in 0..4 {
            let id = rx
                .recv_timeout(std::time::Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("job did not run: {e}"));
            assert_ne!(id, me);
        }
    }
}
