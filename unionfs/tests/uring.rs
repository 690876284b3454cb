//! FUSE over io_uring (`wire::uring`) against the real kernel, before our own protocol
//! server exists: a toy `Handler` (INIT granting the ring, GETATTR of the root, LOOKUP ->
//! ENOENT, a LOOKUP of "slow" held for the test to answer) and a minimal /dev/fuse loop.
//!
//! Its own harness (`harness = false` in Cargo.toml): every case flips the fuse module's
//! `enable_uring` (restored after each, under a lock shared with `scripts/test.sh` and the
//! bench), so they run one at a time; and the SIGTERM case re-runs this binary as a toy
//! daemon that blocks SIGTERM in every thread before it starts one, as the daemon's main
//! does, which libtest's own threads would not.

mod common;

use std::fs::File;
use std::io::{BufRead, BufReader, IoSlice, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use unionfs::sys::fuse_mount::{self, MountMethod, MountRequest};
use unionfs::wire::uring::{self, KernelSupport, Uring};
use unionfs::wire::{Handler, RawRequest, Responder};

use common::{mount_entry, Scratch, Skip};

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_STATFS: u32 = 17;
const FUSE_RELEASE: u32 = 18;
const FUSE_FLUSH: u32 = 25;
/// FOPEN_DIRECT_IO: every read and write of "big" comes to the daemon.
const FOPEN_DIRECT_IO: u32 = 1;
/// Size of the toy's file "big" (nodeid 2): two full payload buffers.
const BIG: u64 = 256 * 1024;
const FUSE_INIT: u32 = 26;
const FUSE_DESTROY: u32 = 38;
const FUSE_BATCH_FORGET: u32 = 42;
const FUSE_INIT_EXT: u32 = 1 << 30;
/// FUSE_OVER_IO_URING is bit 41 of the 64-bit flags: bit 9 of flags2.
const FLAGS2_OVER_IO_URING: u32 = 1 << 9;
const MAX_WRITE: usize = 128 * 1024;

/// Serialises every change of `enable_uring` on this machine (tests, bench, test.sh).
const PARAM_LOCK: &str = "/tmp/unionfs-enable-uring.lock";

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_ne_bytes)
}

/// Sets `enable_uring` while held and puts back the value it found, also when the test
/// panics. The lock file holds the value found while the parameter is changed, so a holder
/// that was killed is repaired by the next one.
struct Param {
    lock: nix::fcntl::Flock<File>,
    old: String,
}

impl Param {
    fn set(on: bool) -> Result<Param, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(PARAM_LOCK)
            .map_err(|e| format!("open {PARAM_LOCK}: {e}"))?;
        let mut lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| format!("lock {PARAM_LOCK}: {e}"))?;
        let mut stale = String::new();
        let _ = lock.read_to_string(&mut stale);
        if !stale.trim().is_empty() {
            eprintln!(
                "enable_uring: restoring {} left by a killed holder",
                stale.trim()
            );
            std::fs::write(uring::ENABLE_PARAM, stale.trim())
                .map_err(|e| format!("restore {}: {e}", uring::ENABLE_PARAM))?;
        }
        let old = std::fs::read_to_string(uring::ENABLE_PARAM)
            .map_err(|e| format!("read {}: {e}", uring::ENABLE_PARAM))?
            .trim()
            .to_string();
        lock.set_len(0).map_err(|e| e.to_string())?;
        lock.rewind().map_err(|e| e.to_string())?;
        lock.write_all(old.as_bytes()).map_err(|e| e.to_string())?;
        lock.sync_all().map_err(|e| e.to_string())?;
        let want = if on { "Y" } else { "N" };
        std::fs::write(uring::ENABLE_PARAM, want)
            .map_err(|e| format!("set {} to {want}: {e}", uring::ENABLE_PARAM))?;
        Ok(Param { lock, old })
    }
}

impl Drop for Param {
    fn drop(&mut self) {
        match std::fs::write(uring::ENABLE_PARAM, &self.old) {
            Ok(()) => {
                let _ = self.lock.set_len(0);
            }
            Err(e) => eprintln!("enable_uring: cannot restore {}: {e}", self.old),
        }
    }
}

/// A request the toy did not answer: its unique and where the reply goes.
type Held = (u64, Box<dyn Responder>);

/// The toy filesystem: an empty root directory.
struct Toy {
    offer_uring: bool,
    initialized: AtomicBool,
    granted: AtomicBool,
    /// Requests served by each ring queue (by the qid in the thread's name).
    ring: Vec<AtomicU64>,
    /// Requests other than INIT and FORGET served through /dev/fuse.
    dev: AtomicU64,
    /// What `max_payload` says (0: the kernel's value); a test lies here.
    payload: AtomicU64,
    /// Bytes written to "big" that matched `pattern`, and writes that did not.
    written_ok: AtomicU64,
    bad_writes: AtomicU64,
    /// LOOKUP of "slow" goes here instead of being answered.
    hold: Mutex<Option<mpsc::Sender<Held>>>,
}

impl Toy {
    fn new(offer_uring: bool) -> Arc<Toy> {
        Arc::new(Toy {
            offer_uring,
            initialized: AtomicBool::new(false),
            granted: AtomicBool::new(false),
            ring: (0..1024).map(|_| AtomicU64::new(0)).collect(),
            dev: AtomicU64::new(0),
            payload: AtomicU64::new(0),
            written_ok: AtomicU64::new(0),
            bad_writes: AtomicU64::new(0),
            hold: Mutex::new(None),
        })
    }

    fn ring_total(&self) -> u64 {
        self.ring.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// The content of "big" (and of what the test writes to it): a byte per offset.
fn pattern(off: u64) -> u8 {
    (off % 251) as u8
}

/// `struct fuse_attr` (88 bytes).
fn attr(ino: u64, mode: u32, size: u64) -> [u8; 88] {
    let mut a = [0u8; 88];
    a[0..8].copy_from_slice(&ino.to_ne_bytes());
    a[8..16].copy_from_slice(&size.to_ne_bytes());
    a[60..64].copy_from_slice(&mode.to_ne_bytes());
    a[64..68].copy_from_slice(&1u32.to_ne_bytes()); // nlink
    a[80..84].copy_from_slice(&4096u32.to_ne_bytes()); // blksize
    a
}

/// `fuse_attr_out`: attr_valid u64, attr_valid_nsec u32, dummy u32, fuse_attr. A validity
/// of 0 makes every stat ask again.
fn attr_out(ino: u64, mode: u32, size: u64) -> [u8; 104] {
    let mut o = [0u8; 104];
    o[16..].copy_from_slice(&attr(ino, mode, size));
    o
}

/// `fuse_entry_out`: nodeid, generation, entry_valid, attr_valid (u64 each), two u32 nsecs,
/// fuse_attr.
fn entry_out(ino: u64, mode: u32, size: u64, attr_valid: u64) -> [u8; 128] {
    let mut o = [0u8; 128];
    o[0..8].copy_from_slice(&ino.to_ne_bytes());
    o[24..32].copy_from_slice(&attr_valid.to_ne_bytes());
    o[40..].copy_from_slice(&attr(ino, mode, size));
    o
}

impl Handler for Toy {
    fn fixed_size(&self, opcode: u32) -> usize {
        match opcode {
            FUSE_INIT => 64,
            FUSE_GETATTR => 16,
            FUSE_OPEN => 8,
            FUSE_READ | FUSE_WRITE => 40,
            FUSE_RELEASE | FUSE_FLUSH => 24,
            _ => 0,
        }
    }

    fn handle(&self, req: RawRequest<'_>, out: Box<dyn Responder>) {
        let opcode = le32(req.header, 4);
        let unique = le64(req.header, 8);
        let nodeid = le64(req.header, 16);
        let thread = std::thread::current();
        let qid = thread
            .name()
            .and_then(|n| n.strip_prefix("unionfs-ring-"))
            .and_then(|q| q.parse::<usize>().ok());
        match qid {
            Some(q) => {
                if let Some(c) = self.ring.get(q) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
            None if !matches!(opcode, FUSE_INIT | FUSE_FORGET | FUSE_BATCH_FORGET) => {
                self.dev.fetch_add(1, Ordering::Relaxed);
            }
            None => {}
        }
        match opcode {
            FUSE_INIT => {
                let flags = le32(req.fixed, 12);
                let flags2 = if flags & FUSE_INIT_EXT != 0 {
                    le32(req.fixed, 16)
                } else {
                    0
                };
                let grant = self.offer_uring && flags2 & FLAGS2_OVER_IO_URING != 0;
                let mut o = [0u8; 64];
                o[0..4].copy_from_slice(&7u32.to_ne_bytes());
                o[4..8].copy_from_slice(&le32(req.fixed, 4).to_ne_bytes());
                o[8..12].copy_from_slice(&le32(req.fixed, 8).to_ne_bytes());
                o[12..16].copy_from_slice(&FUSE_INIT_EXT.to_ne_bytes());
                o[16..18].copy_from_slice(&16u16.to_ne_bytes());
                o[18..20].copy_from_slice(&12u16.to_ne_bytes());
                o[20..24].copy_from_slice(&(MAX_WRITE as u32).to_ne_bytes());
                o[24..28].copy_from_slice(&1u32.to_ne_bytes());
                if grant {
                    o[32..36].copy_from_slice(&FLAGS2_OVER_IO_URING.to_ne_bytes());
                }
                self.granted.store(grant, Ordering::SeqCst);
                out.respond(unique, 0, &[IoSlice::new(&o)]);
                self.initialized.store(true, Ordering::SeqCst);
            }
            FUSE_GETATTR if nodeid == 1 => {
                let a = attr_out(1, libc::S_IFDIR | 0o755, 0);
                out.respond(unique, 0, &[IoSlice::new(&a)])
            }
            FUSE_GETATTR if nodeid == 2 => {
                let a = attr_out(2, libc::S_IFREG | 0o644, BIG);
                out.respond(unique, 0, &[IoSlice::new(&a)])
            }
            FUSE_GETATTR => out.respond(unique, -libc::ENOENT, &[]),
            FUSE_OPEN if nodeid == 2 => {
                // fuse_open_out: fh u64, open_flags u32, backing_id i32.
                let mut o = [0u8; 16];
                o[8..12].copy_from_slice(&FOPEN_DIRECT_IO.to_ne_bytes());
                out.respond(unique, 0, &[IoSlice::new(&o)])
            }
            FUSE_READ => {
                // fuse_read_in: fh u64, offset u64, size u32, ...
                let off = le64(req.fixed, 8);
                let size = u64::from(le32(req.fixed, 16));
                let end = (off + size).min(BIG).max(off);
                let data: Vec<u8> = (off..end).map(pattern).collect();
                out.respond(unique, 0, &[IoSlice::new(&data)])
            }
            FUSE_WRITE => {
                // fuse_write_in: fh u64, offset u64, size u32, ...; the data is the payload.
                let off = le64(req.fixed, 8);
                let size = le32(req.fixed, 16);
                let good = req.rest.len() == size as usize
                    && req
                        .rest
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b == pattern(off + i as u64));
                if good {
                    self.written_ok
                        .fetch_add(u64::from(size), Ordering::Relaxed);
                } else {
                    self.bad_writes.fetch_add(1, Ordering::Relaxed);
                }
                // fuse_write_out: size u32, padding u32.
                let mut o = [0u8; 8];
                o[0..4].copy_from_slice(&size.to_ne_bytes());
                out.respond(unique, 0, &[IoSlice::new(&o)])
            }
            FUSE_RELEASE | FUSE_FLUSH => out.respond(unique, 0, &[]),
            FUSE_LOOKUP => {
                let name = req.rest.split(|&b| b == 0).next().unwrap_or_default();
                if name == b"big" {
                    let e = entry_out(2, libc::S_IFREG | 0o644, BIG, 0);
                    return out.respond(unique, 0, &[IoSlice::new(&e)]);
                }
                if name == b"slow" {
                    if let Some(tx) = self.hold.lock().ok().and_then(|h| h.clone()) {
                        let _ = tx.send((unique, out));
                        return;
                    }
                }
                out.respond(unique, -libc::ENOENT, &[])
            }
            FUSE_FORGET | FUSE_BATCH_FORGET => drop(out),
            FUSE_STATFS => out.respond(unique, 0, &[IoSlice::new(&[0u8; 80])]),
            FUSE_DESTROY => out.respond(unique, 0, &[]),
            _ => out.respond(unique, -libc::ENOSYS, &[]),
        }
    }

    fn uring_granted(&self) -> bool {
        self.granted.load(Ordering::SeqCst)
    }

    fn max_payload(&self) -> usize {
        if let Ok(p @ 1..) = usize::try_from(self.payload.load(Ordering::Relaxed)) {
            return p;
        }
        // The kernel's max_payload_sz: max(8192, max_write, max_pages * page size), with
        // max_pages at its default of 32 (this INIT does not set FUSE_MAX_PAGES).
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(4096);
        MAX_WRITE.max(32 * page).max(8192)
    }

    fn initialized(&self) -> bool {
        self.initialized.load(Ordering::SeqCst)
    }
}

/// Replies written to /dev/fuse.
struct DevResponder(Arc<OwnedFd>);

impl Responder for DevResponder {
    fn respond(self: Box<Self>, unique: u64, error: i32, body: &[IoSlice<'_>]) {
        let len: usize = body.iter().map(|b| b.len()).sum::<usize>() + 16;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        h[4..8].copy_from_slice(&error.to_ne_bytes());
        h[8..16].copy_from_slice(&unique.to_ne_bytes());
        let mut iov = vec![IoSlice::new(&h)];
        if error == 0 {
            iov.extend(body.iter().map(|b| IoSlice::new(b)));
        }
        // ENOENT: the request was interrupted meanwhile.
        let _ = nix::sys::uio::writev(self.0.as_fd(), &iov);
    }
}

/// Reads /dev/fuse until the connection ends (ENODEV).
fn dev_loop(fd: Arc<OwnedFd>, toy: Arc<Toy>) {
    let mut buf = vec![0u8; MAX_WRITE + 4096 + 1024 * 1024];
    loop {
        let n = match nix::unistd::read(fd.as_fd(), &mut buf) {
            Ok(n) => n,
            Err(Errno::EINTR | Errno::ENOENT | Errno::EAGAIN) => continue,
            Err(_) => return,
        };
        let Some(msg) = buf.get(..n) else { continue };
        let (header, body) = msg.split_at(40.min(msg.len()));
        let fixed_len = toy.fixed_size(le32(header, 4)).min(body.len());
        let (fixed, rest) = body.split_at(fixed_len);
        toy.handle(
            RawRequest {
                header,
                fixed,
                rest,
            },
            Box::new(DevResponder(Arc::clone(&fd))),
        );
    }
}

/// A toy mount served by two /dev/fuse readers; unmounted on drop.
struct Fixture {
    _scratch: Scratch,
    mnt: PathBuf,
    method: Option<MountMethod>,
    dev: Arc<OwnedFd>,
    toy: Arc<Toy>,
    readers: Vec<JoinHandle<()>>,
}

impl Fixture {
    fn new(tag: &str, offer_uring: bool) -> Fixture {
        let scratch = Scratch::new(tag);
        let mnt = scratch.path("mnt");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        let req = MountRequest {
            mountpoint: &mnt,
            fsname: "unionfs-uring-test",
            subtype: "unionfs",
            kernel_opts: &[],
            force_fusermount: false,
        };
        let (fd, method) = fuse_mount::mount(&req).expect("mount");
        let dev = Arc::new(fd);
        let toy = Toy::new(offer_uring);
        let readers = (0..2)
            .map(|_| {
                let (d, t) = (Arc::clone(&dev), Arc::clone(&toy));
                std::thread::spawn(move || dev_loop(d, t))
            })
            .collect();
        let f = Fixture {
            _scratch: scratch,
            mnt,
            method: Some(method),
            dev,
            toy,
            readers,
        };
        assert!(
            common::wait_until(Duration::from_secs(10), || f.toy.initialized()),
            "INIT never came"
        );
        f
    }

    fn start(&self) -> Result<Uring, uring::StartError> {
        let h: Arc<dyn Handler> = self.toy.clone();
        uring::start(&self.dev, h)
    }

    /// Unmounts (lazily: a held request keeps the mount busy) and waits for the readers.
    fn unmount(&mut self) {
        if let Some(m) = self.method.take() {
            fuse_mount::unmount(&self.mnt, m).expect("unmount");
        }
    }

    fn join_readers(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.readers.iter().all(|r| r.is_finished()) {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if self.method.take().is_some() {
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Threads of this process named like ring queues.
fn ring_threads() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm"))
                .map(|c| c.starts_with("unionfs-ring-"))
                .unwrap_or(false)
        })
        .count()
}

/// Waits for the ring's threads to end, which they must once the connection is gone.
fn ring_ends(uring: Uring, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while !uring.finished() {
        if Instant::now() > end {
            // Leak it: dropping would force the threads, hiding the hang.
            std::mem::forget(uring);
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    uring.wait();
    true
}

fn on_cpu<T: Send + 'static>(cpu: usize, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).ok()?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).ok()?;
        Some(f())
    })
    .join()
    .ok()
    .flatten()
}

/// Why the ring cannot be tested here, if it cannot.
fn cannot_test() -> Option<(Skip, String)> {
    if !common::is_root() {
        return Some((
            Skip::NeedsRoot,
            "needs root to mount FUSE and set enable_uring".into(),
        ));
    }
    if uring::kernel_support() == KernelSupport::Missing {
        let why = uring::unavailable_reason(KernelSupport::Missing).unwrap_or_default();
        return Some((Skip::Missing, why));
    }
    None
}

// ---- the cases ----

/// Requests from callers on each CPU come through that CPU's queue, none through
/// /dev/fuse; a plain unmount then ends every queue thread.
fn ring_serves_each_cpu() {
    let _param = Param::set(true).expect("enable_uring");
    let mut f = Fixture::new("uring-cpus", true);
    assert!(
        f.toy.uring_granted(),
        "INIT did not offer FUSE_OVER_IO_URING"
    );
    let ring = f.start().expect("ring starts");
    let cpus = uring::possible_cpus().expect("possible cpus");
    assert_eq!(ring.queues(), cpus.len());
    let before_dev = f.toy.dev.load(Ordering::Relaxed);
    const N: u64 = 200;
    for &cpu in &cpus {
        let mnt = f.mnt.clone();
        let misses = on_cpu(cpu, move || {
            let mut enoent = 0u64;
            for i in 0..N {
                if let Err(e) = std::fs::metadata(mnt.join(format!("missing-{i}"))) {
                    if e.raw_os_error() == Some(libc::ENOENT) {
                        enoent += 1;
                    }
                }
                let md = std::fs::metadata(&mnt).expect("stat the root");
                assert!(md.is_dir());
            }
            enoent
        });
        let Some(misses) = misses else {
            eprintln!("cpu {cpu} is not online: not tested");
            continue;
        };
        assert_eq!(misses, N, "LOOKUPs answered ENOENT from cpu {cpu}");
        let served = f.toy.ring.get(cpu).map_or(0, |c| c.load(Ordering::Relaxed));
        assert!(
            served >= N,
            "queue {cpu} served {served} requests, expected >= {N} (per queue: {:?})",
            ring.served()
        );
    }
    assert_eq!(
        f.toy.dev.load(Ordering::Relaxed),
        before_dev,
        "requests went through /dev/fuse while the ring was up"
    );
    println!("    served per queue: {:?}", ring.served());
    f.unmount();
    assert!(
        ring_ends(ring, Duration::from_secs(10)),
        "ring threads still running"
    );
    assert!(
        f.join_readers(Duration::from_secs(10)),
        "/dev/fuse readers still running"
    );
    assert_eq!(ring_threads(), 0);
    assert!(mount_entry(&f.mnt).is_none(), "still mounted");
}

/// Reads and writes bigger than a page go through the payload buffers both ways: a
/// direct-I/O read of "big" (two full 128 KiB replies) and a 64 KiB write checked by the toy.
fn ring_moves_payloads() {
    let _param = Param::set(true).expect("enable_uring");
    let mut f = Fixture::new("uring-data", true);
    let ring = f.start().expect("ring starts");
    let before_dev = f.toy.dev.load(Ordering::Relaxed);
    let big = f.mnt.join("big");
    let data = std::fs::read(&big).expect("read big");
    assert_eq!(data.len() as u64, BIG);
    let wrong = data
        .iter()
        .enumerate()
        .position(|(i, &b)| b != pattern(i as u64));
    assert_eq!(wrong, None, "first wrong byte of the read");
    let chunk: Vec<u8> = (0..65536u64).map(|i| pattern(4096 + i)).collect();
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&big)
            .expect("open big for writing");
        file.write_all_at(&chunk, 4096).expect("write 64 KiB");
    }
    assert_eq!(
        f.toy.bad_writes.load(Ordering::Relaxed),
        0,
        "writes with wrong data"
    );
    assert_eq!(f.toy.written_ok.load(Ordering::Relaxed), 65536);
    assert_eq!(
        f.toy.dev.load(Ordering::Relaxed),
        before_dev,
        "requests went through /dev/fuse while the ring was up"
    );
    f.unmount();
    assert!(
        ring_ends(ring, Duration::from_secs(10)),
        "ring threads still running"
    );
    assert!(f.join_readers(Duration::from_secs(10)));
}

/// A request held by a "worker" while the mount is detached: its reply, made off the
/// queue thread, still reaches the caller (mailbox + eventfd), and then the queues end.
fn busy_ring_unmount() {
    let _param = Param::set(true).expect("enable_uring");
    let mut f = Fixture::new("uring-busy", true);
    let (tx, rx) = mpsc::channel();
    *f.toy.hold.lock().expect("hold") = Some(tx);
    let ring = f.start().expect("ring starts");
    let slow = f.mnt.join("slow");
    let caller = std::thread::spawn(move || std::fs::metadata(slow).map(|m| m.len()));
    let (unique, held) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the LOOKUP of slow reached the handler");
    assert!(
        f.toy.ring_total() > 0,
        "the held request came through the ring"
    );
    f.unmount();
    assert!(
        mount_entry(&f.mnt).is_none(),
        "still in mountinfo after a lazy unmount"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !caller.is_finished(),
        "the caller did not wait for the reply"
    );
    // A reply with a body, made on this thread: the queue thread copies it into the entry.
    let e = entry_out(3, libc::S_IFREG | 0o600, 777, 60);
    held.respond(unique, 0, &[IoSlice::new(&e[..40]), IoSlice::new(&e[40..])]);
    let got = caller.join().expect("caller");
    assert_eq!(got.as_ref().ok().copied(), Some(777), "{got:?}");
    assert!(
        ring_ends(ring, Duration::from_secs(10)),
        "ring threads still running"
    );
    assert!(
        f.join_readers(Duration::from_secs(10)),
        "/dev/fuse readers still running"
    );
    assert_eq!(ring_threads(), 0);
}

/// With enable_uring N the kernel does not offer the ring: `start` says so, nothing
/// waits for it, and /dev/fuse serves.
fn disabled_falls_back_to_dev_fuse() {
    let _param = Param::set(false).expect("enable_uring");
    let mut f = Fixture::new("uring-off", true);
    assert!(!f.toy.uring_granted());
    let err = match f.start() {
        Ok(_) => panic!("the ring started with enable_uring N"),
        Err(e) => e,
    };
    assert!(!err.kernel_waits, "{err}");
    assert!(err.reason.contains("did not grant"), "{err}");
    for _ in 0..10 {
        std::fs::metadata(&f.mnt).expect("stat through /dev/fuse");
    }
    assert!(f.toy.dev.load(Ordering::Relaxed) >= 1);
    assert_eq!(f.toy.ring_total(), 0);
    f.unmount();
    assert!(f.join_readers(Duration::from_secs(10)));
}

/// INIT granted the ring, but the kernel refuses every REGISTER (payload buffers smaller
/// than its max_payload_sz: EINVAL): `start` fails without leaving the kernel waiting for
/// the ring, and /dev/fuse serves (what `uring=auto` falls back to).
fn refused_registration_falls_back() {
    let _param = Param::set(true).expect("enable_uring");
    let mut f = Fixture::new("uring-refused", true);
    assert!(f.toy.uring_granted());
    f.toy.payload.store(4096, Ordering::Relaxed);
    let err = match f.start() {
        Ok(_) => panic!("the ring started with payload buffers too small"),
        Err(e) => e,
    };
    println!("    start: {err}");
    assert!(!err.kernel_waits, "{err}");
    assert!(err.reason.contains("REGISTER failed"), "{err}");
    assert_eq!(ring_threads(), 0, "queue threads left after a failed start");
    let (tx, rx) = mpsc::channel();
    let mnt = f.mnt.clone();
    std::thread::spawn(move || {
        let _ = tx.send((0..10).all(|_| std::fs::metadata(&mnt).is_ok()));
    });
    let served = rx.recv_timeout(Duration::from_secs(10));
    if served.is_err() {
        f.unmount();
    }
    assert_eq!(served, Ok(true), "stat through /dev/fuse after the refusal");
    assert!(f.toy.dev.load(Ordering::Relaxed) >= 1);
    assert_eq!(f.toy.ring_total(), 0);
    f.unmount();
    assert!(f.join_readers(Duration::from_secs(10)));
}

/// `unionfs -o uring=on` with enable_uring N: one line, exit 1, nothing mounted.
fn uring_on_refused_when_disabled() {
    let _param = Param::set(false).expect("enable_uring");
    let s = Scratch::new("uring-on");
    s.mkdirs(&["lower", "mnt"]);
    let out = Command::new(common::bin())
        .arg("-f")
        .arg("-o")
        .arg(format!("lowerdir={},uring=on", s.path("lower").display()))
        .arg(s.path("mnt"))
        .stdin(Stdio::null())
        .output()
        .expect("run unionfs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(
        err.contains("uring=on") && err.contains("enable_uring"),
        "{err}"
    );
    assert!(mount_entry(&s.path("mnt")).is_none(), "mounted anyway");
}

/// Runs this binary as a toy daemon on `mnt`; returns it once it says READY.
fn spawn_child(mnt: &Path) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .env("UNIONFS_URING_CHILD", mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the toy daemon");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read READY");
    assert!(line.starts_with("READY"), "toy daemon said {line:?}");
    (child, out)
}

fn wait_exit(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to a daemon serving through the ring: its signal thread unmounts, the queues
/// end, it exits 0 (which it does only after joining every queue thread).
fn sigterm_unmounts() {
    let _param = Param::set(true).expect("enable_uring");
    let s = Scratch::new("uring-term");
    s.mkdirs(&["mnt"]);
    let mnt = s.path("mnt");
    let (mut child, mut out) = spawn_child(&mnt);
    for _ in 0..20 {
        std::fs::metadata(&mnt).expect("stat through the toy daemon");
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let st = wait_exit(&mut child, Duration::from_secs(15));
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    if st.is_none() {
        let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
    }
    assert!(
        st.is_some_and(|s| s.success()),
        "toy daemon: {st:?}, said {rest:?}"
    );
    assert!(rest.contains("SERVED ring="), "{rest:?}");
    assert!(
        !rest.contains("ring=0 "),
        "nothing came through the ring: {rest:?}"
    );
    assert!(mount_entry(&mnt).is_none(), "still mounted");
}

/// A daemon killed with requests on the ring: callers get ENOTCONN at once, not a hang,
/// and the mount can be removed.
fn killed_daemon_leaves_no_hang() {
    let _param = Param::set(true).expect("enable_uring");
    let s = Scratch::new("uring-kill");
    s.mkdirs(&["mnt"]);
    let mnt = s.path("mnt");
    let (mut child, _out) = spawn_child(&mnt);
    std::fs::metadata(&mnt).expect("stat through the toy daemon");
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let m = mnt.clone();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::metadata(&m).map(|_| ()));
    });
    let got = rx.recv_timeout(Duration::from_secs(10));
    let _ = nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH);
    let got = got.expect("stat after the daemon died hung");
    // ENOTCONN once the kernel has torn the connection down. The io_uring teardown of a
    // dead process runs asynchronously, after its exit: a stat made meanwhile is queued to
    // the ring and ended by the abort with ECONNABORTED (most runs), or handed to an entry
    // of the dead task and ended with ECANCELED (IO_URING_F_TASK_DEAD; some runs).
    let errno = got.as_ref().err().and_then(|e| e.raw_os_error());
    assert!(
        [libc::ENOTCONN, libc::ECONNABORTED, libc::ECANCELED].contains(&errno.unwrap_or(0)),
        "{got:?}"
    );
    println!("    stat after SIGKILL: {got:?}");
    assert!(mount_entry(&mnt).is_none(), "still mounted");
}

/// The toy daemon for `sigterm_unmounts` and `killed_daemon_leaves_no_hung_mount`: as the
/// daemon's main, termination signals are blocked before any thread starts and one thread
/// takes them and unmounts.
fn child(mnt: PathBuf) -> i32 {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
        nix::sys::signal::Signal::SIGHUP,
    ] {
        set.add(s);
    }
    if let Err(e) = set.thread_block() {
        eprintln!("child: block signals: {e}");
        return 1;
    }
    let req = MountRequest {
        mountpoint: &mnt,
        fsname: "unionfs-uring-test",
        subtype: "unionfs",
        kernel_opts: &[],
        force_fusermount: false,
    };
    let (fd, method) = match fuse_mount::mount(&req) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("child: mount: {e}");
            return 1;
        }
    };
    let dev = Arc::new(fd);
    let toy = Toy::new(true);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (d, t) = (Arc::clone(&dev), Arc::clone(&toy));
            std::thread::spawn(move || dev_loop(d, t))
        })
        .collect();
    let h: Arc<dyn Handler> = toy.clone();
    let ring = match uring::start(&dev, h) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("child: ring: {e}");
            let _ = fuse_mount::unmount(&mnt, method);
            return 1;
        }
    };
    let m = mnt.clone();
    std::thread::spawn(move || {
        if set.wait().is_ok() {
            if let Err(e) = fuse_mount::unmount(&m, method) {
                eprintln!("child: unmount: {e}");
            }
        }
    });
    println!("READY {}", ring.queues());
    let _ = std::io::stdout().flush();
    ring.wait();
    for r in readers {
        let _ = r.join();
    }
    println!(
        "SERVED ring={} dev={} ",
        toy.ring_total(),
        toy.dev.load(Ordering::Relaxed)
    );
    let _ = std::io::stdout().flush();
    0
}

// ---- the real daemon ----

/// The real daemon in the foreground with `-v`, its stderr gathered by a thread.
struct Daemon {
    child: std::process::Child,
    log: Option<JoinHandle<String>>,
    mnt: PathBuf,
}

impl Daemon {
    fn start(s: &Scratch, uring: &str, env: &[(&str, &str)]) -> Daemon {
        let mnt = s.path("mnt");
        let mut cmd = Command::new(common::bin());
        cmd.arg("-f").arg("-v").arg("-o").arg(format!(
            "lowerdir={},upperdir={},workdir={},uring={uring}",
            s.path("lower").display(),
            s.path("upper").display(),
            s.path("work").display()
        ));
        cmd.arg(&mnt).stdin(Stdio::null()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run unionfs");
        let mut err = child.stderr.take().expect("stderr");
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        let d = Daemon {
            child,
            log: Some(log),
            mnt,
        };
        let end = Instant::now() + Duration::from_secs(10);
        while mount_entry(&d.mnt).is_none() {
            assert!(Instant::now() < end, "unionfs did not mount");
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    /// Names of the daemon's threads that serve a ring queue.
    fn ring_threads(&self) -> usize {
        let dir = format!("/proc/{}/task", self.child.id());
        std::fs::read_dir(dir)
            .map(|it| {
                it.filter_map(Result::ok)
                    .filter(|t| {
                        std::fs::read_to_string(t.path().join("comm"))
                            .is_ok_and(|c| c.starts_with("unionfs-ring-"))
                    })
                    .count()
            })
            .unwrap_or(0)
    }

    /// SIGTERM, then the exit status (None: it did not exit in time and was killed) and
    /// what it logged.
    fn terminate(mut self) -> (Option<std::process::ExitStatus>, String) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let st = wait_exit(&mut self.child, Duration::from_secs(20));
        let log = self
            .log
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        (st, log)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if mount_entry(&self.mnt).is_some() {
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `uring=auto` where enable_uring is N: the daemon serves through /dev/fuse, says so with
/// `-v`, starts no ring thread, and SIGTERM unmounts it.
fn daemon_auto_without_the_ring_serves_dev_fuse() {
    let _param = Param::set(false).expect("enable_uring");
    let s = Scratch::new("uring-auto");
    s.mkdirs(&["lower", "upper", "work", "mnt"]);
    std::fs::write(s.path("lower/a"), "lower\n").expect("write lower");
    let d = Daemon::start(&s, "auto", &[]);
    std::fs::write(d.mnt.join("a"), "written\n").expect("write through the mount");
    let back = std::fs::read_to_string(d.mnt.join("a")).expect("read back");
    assert_eq!(back, "written\n");
    assert_eq!(d.ring_threads(), 0, "a ring thread without the ring");
    let mnt = d.mnt.clone();
    let (st, log) = d.terminate();
    assert!(st.is_some_and(|s| s.success()), "unionfs: {st:?}: {log}");
    assert!(log.contains("transport: /dev/fuse"), "{log}");
    assert!(mount_entry(&mnt).is_none(), "still mounted");
    let upper = std::fs::read_to_string(s.path("upper/a")).expect("upper copy");
    assert_eq!(upper, "written\n");
}

/// `uring=on` with enable_uring Y: one queue thread per possible CPU serves; a SIGTERM that
/// comes while a request is held inside the daemon (a copy-up paused by the test hook)
/// lets that request finish, then the daemon unmounts, joins its queues and exits 0.
fn daemon_ring_sigterm_while_busy() {
    let _param = Param::set(true).expect("enable_uring");
    let s = Scratch::new("uring-busy");
    s.mkdirs(&["lower", "upper", "work", "mnt"]);
    std::fs::write(s.path("lower/big"), vec![7u8; 1 << 20]).expect("write lower");
    let d = Daemon::start(&s, "on", &[("UNIONFS_TEST_PAUSE", "copy-up-placed:1500")]);
    let cpus = uring::possible_cpus().expect("possible cpus").len();
    assert_eq!(d.ring_threads(), cpus, "one queue thread per possible CPU");
    for _ in 0..50 {
        std::fs::metadata(d.mnt.join("big")).expect("stat through the ring");
    }
    let big = d.mnt.join("big");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = std::fs::OpenOptions::new()
            .append(true)
            .open(&big)
            .and_then(|mut f| f.write_all(b"+"));
        let _ = tx.send(r.map_err(|e| e.raw_os_error()));
    });
    // Inside the copy-up's pause by now.
    std::thread::sleep(Duration::from_millis(500));
    let mnt = d.mnt.clone();
    let (st, log) = d.terminate();
    let appended = rx.recv_timeout(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "unionfs: {st:?}: {log}");
    assert!(log.contains("transport: io_uring"), "{log}");
    assert_eq!(appended, Ok(Ok(())), "the held append");
    assert!(mount_entry(&mnt).is_none(), "still mounted");
    let len = std::fs::metadata(s.path("upper/big")).map(|m| m.len());
    assert_eq!(
        len.ok(),
        Some((1 << 20) + 1),
        "the append reached the upper copy"
    );
}

fn main() {
    if let Some(mnt) = std::env::var_os("UNIONFS_URING_CHILD") {
        std::process::exit(child(PathBuf::from(mnt)));
    }
    let cases: [(&str, fn()); 10] = [
        ("ring_serves_each_cpu", ring_serves_each_cpu),
        ("ring_moves_payloads", ring_moves_payloads),
        ("busy_ring_unmount", busy_ring_unmount),
        (
            "disabled_falls_back_to_dev_fuse",
            disabled_falls_back_to_dev_fuse,
        ),
        (
            "refused_registration_falls_back",
            refused_registration_falls_back,
        ),
        (
            "uring_on_refused_when_disabled",
            uring_on_refused_when_disabled,
        ),
        ("sigterm_unmounts", sigterm_unmounts),
        ("killed_daemon_leaves_no_hang", killed_daemon_leaves_no_hang),
        (
            "daemon_auto_without_the_ring_serves_dev_fuse",
            daemon_auto_without_the_ring_serves_dev_fuse,
        ),
        (
            "daemon_ring_sigterm_while_busy",
            daemon_ring_sigterm_while_busy,
        ),
    ];
    // libtest's flags are accepted and ignored; a bare word filters by substring.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected: Vec<_> = cases
        .iter()
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f.as_str())))
        .collect();
    println!("\nrunning {} tests", selected.len());
    let (mut passed, mut failed) = (0, 0);
    for (name, case) in &selected {
        if let Some((kind, why)) = cannot_test() {
            common::skip(name, kind, &why);
            println!("test {name} ... ok (skipped)");
            passed += 1;
            continue;
        }
        match std::panic::catch_unwind(case) {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; {} filtered out\n",
        cases.len() - selected.len()
    );
    if failed > 0 {
        std::process::exit(101);
    }
}
