//! Progress lines on stderr for long imports: only on a terminal or with --verbose.

use std::io::IsTerminal;

const STEP: u64 = 16 << 20;

pub struct Progress {
    enabled: bool,
    what: &'static str,
    done: u64,
    next: u64,
}

impl Progress {
    pub fn new(verbose: bool, what: &'static str) -> Progress {
        Progress {
            enabled: verbose || std::io::stderr().is_terminal(),
            what,
            done: 0,
            next: STEP,
        }
    }

    pub fn add(&mut self, n: u64) {
        self.done += n;
        if self.enabled && self.done >= self.next {
            eprintln!("runbox: {}: {} MiB", self.what, self.done >> 20);
            self.next = self.done + STEP;
        }
    }

    pub fn done(&self) -> u64 {
        self.done
    }
}

/// A reader that reports what passes through it.
pub struct Counting<'a, R> {
    pub inner: R,
    pub progress: &'a mut Progress,
}

impl<R: std::io::Read> std::io::Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}
