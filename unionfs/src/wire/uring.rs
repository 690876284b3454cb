//! The FUSE-over-io_uring transport: after INIT granted FUSE_OVER_IO_URING, one queue per
//! possible CPU, each a thread pinned to its CPU with its own ring, takes requests from the
//! kernel and commits the replies. FORGET and INTERRUPT keep coming through /dev/fuse (the
//! kernel's `fuse_io_uring_ops`), so the /dev/fuse readers keep running beside it.
//!
//! Why one thread owns each ring: the kernel copies a request into our buffers in the task
//! context of the thread that submitted the command (`io_uring_cmd_complete_in_task`), so
//! every submission of a queue stays on its queue thread. A reply made on another thread
//! (the handler runs copy-ups on workers) goes into the queue's mailbox, and an eventfd the
//! ring always has a read pending on wakes the queue thread to commit it.
//!
//! Teardown: when the connection ends (unmount, abort), the kernel completes every command
//! it holds with -ENOTCONN (`fuse_uring_stop_queues`), and a commit of a request it already
//! dropped fails the same way; a queue thread exits once it holds no command in the kernel.
//! If the daemon dies, io_uring cancels the commands (`fuse_uring_cancel`) and the kernel
//! tears the connection down as for any dead FUSE daemon: callers get ENOTCONN, not a hang.

use std::io;
use std::io::IoSlice;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::Mutex;

use super::{Handler, RawRequest, Responder};
use crate::sys::uring::{Completion, QueueRing, Target, ENT_IN_OUT, OP_IN};

/// Entries each queue registers. A queue serves the callers running on its CPU; more
/// entries than requests in flight on one CPU only cost memory (each holds a payload
/// buffer of `max_payload`, 128 KiB to 1 MiB), and fewer make a burst of parallel
/// requests from one CPU (readahead, a parallel `cp`) wait in the kernel's queue. libfuse
/// defaults to 8 as well.
pub const QUEUE_DEPTH: usize = 8;

/// The kernel's switch for FUSE over io_uring (CONFIG_FUSE_IO_URING).
pub const ENABLE_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// How long `start` waits for INIT to be answered before giving up.
const INIT_WAIT: Duration = Duration::from_secs(10);

/// The kernel answers REGISTER with EAGAIN until it has processed the INIT reply, which
/// may lag `Handler::initialized` by a moment: retry for this long.
const REGISTER_RETRY: Duration = Duration::from_secs(5);

/// `struct fuse_in_header` and `struct fuse_out_header`.
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
/// `op_in` is 128 bytes: no fixed argument struct is longer.
const OP_IN_SIZE: usize = 128;

/// Whether the kernel has FUSE over io_uring and it is switched on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelSupport {
    Enabled,
    /// `enable_uring` is N: INIT will not offer the ring.
    Disabled,
    /// No such module parameter: a kernel without CONFIG_FUSE_IO_URING (or before 6.14).
    Missing,
}

/// Reads `enable_uring`.
pub fn kernel_support() -> KernelSupport {
    match std::fs::read_to_string(ENABLE_PARAM) {
        Ok(v) if v.trim() == "Y" || v.trim() == "1" => KernelSupport::Enabled,
        Ok(_) => KernelSupport::Disabled,
        Err(_) => KernelSupport::Missing,
    }
}

/// Why the ring will not serve a mount, in one line (without a "unionfs:" prefix).
pub fn unavailable_reason(s: KernelSupport) -> Option<String> {
    match s {
        KernelSupport::Enabled => None,
        KernelSupport::Disabled => Some(format!(
            "FUSE over io_uring is switched off in this kernel ({ENABLE_PARAM} is N)"
        )),
        KernelSupport::Missing => Some(format!(
            "this kernel has no FUSE over io_uring (no {ENABLE_PARAM}; needs Linux 6.14+ \
             with CONFIG_FUSE_IO_URING)"
        )),
    }
}

/// The CPUs in a list such as the kernel's `possible` file ("0-3", "0,2-5").
pub fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 65535 {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

/// The kernel makes one queue per possible CPU (`num_possible_cpus()`), qid = CPU number.
pub fn possible_cpus() -> io::Result<Vec<usize>> {
    let path = "/sys/devices/system/cpu/possible";
    let text = std::fs::read_to_string(path)?;
    parse_cpu_list(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse {path}: {:?}", text.trim()),
        )
    })
}

/// Why `start` did not start the ring.
#[derive(Debug)]
pub struct StartError {
    /// One line, e.g. "queue 1: FUSE_IO_URING_CMD_REGISTER failed: Invalid argument (os error 22)".
    pub reason: String,
    /// INIT granted the ring, and the kernel could not be told that it will not come: it
    /// holds every new request until the connection ends. The caller must unmount.
    pub kernel_waits: bool,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for StartError {}

/// What a queue thread and the responders of its requests share.
struct Shared {
    qid: u16,
    replies: Mutex<Vec<Reply>>,
    wake: EventFd,
    owner: OnceLock<ThreadId>,
    stop: AtomicBool,
    served: AtomicU64,
}

impl Shared {
    fn post(&self, r: Reply) {
        self.replies.lock().push(r);
        // The queue thread drains the mailbox after each batch of completions: a reply
        // made during `handle` needs no wake-up.
        if self.owner.get() != Some(&std::thread::current().id()) {
            self.wake_up();
        }
    }

    fn wake_up(&self) {
        if let Err(e) = self.wake.write(1) {
            log::warn!("fuse ring {}: cannot wake the queue thread: {e}", self.qid);
        }
    }
}

struct Reply {
    idx: usize,
    error: i32,
    body: Vec<u8>,
}

/// The reply path of one ring request. Dropped without a reply (a handler bug), it answers
/// EIO: the entry must come back to the kernel, or its queue would shrink for good.
struct RingResponder {
    shared: Arc<Shared>,
    idx: usize,
    /// The payload buffer's size: a longer reply cannot be committed.
    cap: usize,
    sent: bool,
}

impl Responder for RingResponder {
    fn respond(mut self: Box<Self>, _unique: u64, error: i32, body: &[IoSlice<'_>]) {
        self.sent = true;
        let len: usize = body.iter().map(|b| b.len()).sum();
        let reply = if error != 0 {
            Reply {
                idx: self.idx,
                error,
                body: Vec::new(),
            }
        } else if len > self.cap {
            log::error!(
                "fuse ring {}: reply of {len} bytes exceeds the {} byte payload buffer",
                self.shared.qid,
                self.cap
            );
            Reply {
                idx: self.idx,
                error: -libc::EIO,
                body: Vec::new(),
            }
        } else {
            let mut data = Vec::with_capacity(len);
            for b in body {
                data.extend_from_slice(b);
            }
            Reply {
                idx: self.idx,
                error: 0,
                body: data,
            }
        };
        self.shared.post(reply);
    }
}

impl Drop for RingResponder {
    fn drop(&mut self) {
        if !self.sent {
            log::error!(
                "fuse ring {}: a request was dropped without a reply; answering EIO",
                self.shared.qid
            );
            self.shared.post(Reply {
                idx: self.idx,
                error: -libc::EIO,
                body: Vec::new(),
            });
        }
    }
}

struct Queue {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The running ring transport. `wait` after the connection ended; dropping it earlier stops
/// the queue threads at once, and requests the kernel then sends to the ring are answered
/// only when the connection is aborted or unmounted: drop it early only to abandon a mount.
pub struct Uring {
    queues: Vec<Queue>,
}

impl Uring {
    /// Number of queues (one per possible CPU).
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// Requests served by each queue so far, by qid.
    pub fn served(&self) -> Vec<u64> {
        self.queues
            .iter()
            .map(|q| q.shared.served.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits for every queue thread to end, which they do once the kernel has ended the
    /// connection (unmount or abort) and holds none of their commands.
    pub fn wait(mut self) {
        for q in &mut self.queues {
            if let Some(t) = q.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Whether every queue thread has ended.
    pub fn finished(&self) -> bool {
        self.queues
            .iter()
            .all(|q| q.thread.as_ref().is_none_or(|t| t.is_finished()))
    }

    fn stop_all(&mut self) {
        for q in &self.queues {
            q.shared.stop.store(true, Ordering::SeqCst);
            q.shared.wake_up();
        }
        for q in &mut self.queues {
            if let Some(t) = q.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Starts the ring on the FUSE connection of `dev` (the mount's /dev/fuse fd or a clone):
/// waits for INIT to be answered, then one queue per possible CPU registers
/// `QUEUE_DEPTH` entries. Returns once every queue has registered: from then on the kernel
/// sends every request but FORGET and INTERRUPT to the ring.
///
/// On failure nothing is left running; unless `kernel_waits` says otherwise the kernel has
/// been told not to wait for the ring, and /dev/fuse serves every request.
///
/// How main uses it (the /dev/fuse readers run from before INIT to the end):
///
/// ```text
/// let plan = wire::uring::plan(opts.uring)?;               // before mounting
/// // the server grants FUSE_OVER_IO_URING in INIT only if plan == Plan::Ring
/// let readers = devfuse::start(&fd, server.clone());       // answers INIT
/// let ring = match plan {
///     Plan::Ring => match wire::uring::start(&fd, server.clone()) {
///         Ok(r) => Some(r),                                 // info: "transport: io_uring"
///         Err(e) if opts.uring == UringMode::On || e.kernel_waits => unmount, fail: {e}
///         Err(e) => None,                                   // info: "/dev/fuse: {e}"
///     },
///     Plan::DevFuse => None,
/// };
/// readers.join();                                           // ENODEV after unmount
/// if let Some(r) = ring { r.wait(); }
/// ```
pub fn start(dev: &OwnedFd, handler: Arc<dyn Handler>) -> Result<Uring, StartError> {
    let fail = |reason: String| StartError {
        reason,
        kernel_waits: false,
    };
    let deadline = Instant::now() + INIT_WAIT;
    while !handler.initialized() {
        if Instant::now() > deadline {
            return Err(fail("INIT was not answered in time".into()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    if !handler.uring_granted() {
        return Err(fail(
            "INIT did not grant FUSE_OVER_IO_URING (not offered by the kernel, or declined)".into(),
        ));
    }
    // From here the kernel holds new requests until every queue registered.
    let cpus = match possible_cpus() {
        Ok(c) => c,
        Err(e) => return Err(release(dev, format!("cannot list the possible CPUs: {e}"))),
    };
    let payload = handler.max_payload();
    let (tx, rx) = mpsc::channel::<(u16, Result<(), String>)>();
    let mut uring = Uring { queues: Vec::new() };
    for qid in 0..cpus.len() {
        let Ok(qid) = u16::try_from(qid) else {
            break;
        };
        let shared = match EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC) {
            Ok(wake) => Arc::new(Shared {
                qid,
                replies: Mutex::new(Vec::new()),
                wake,
                owner: OnceLock::new(),
                stop: AtomicBool::new(false),
                served: AtomicU64::new(0),
            }),
            Err(e) => {
                drop(uring);
                return Err(release(dev, format!("cannot make an eventfd: {e}")));
            }
        };
        let qdev = match dev.try_clone() {
            Ok(d) => d,
            Err(e) => {
                drop(uring);
                return Err(release(
                    dev,
                    format!("cannot duplicate the /dev/fuse fd: {e}"),
                ));
            }
        };
        let (h, s, tx) = (Arc::clone(&handler), Arc::clone(&shared), tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("unionfs-ring-{qid}"))
            .spawn(move || queue_thread(qdev, h, s, payload, tx));
        match spawned {
            Ok(t) => uring.queues.push(Queue {
                shared,
                thread: Some(t),
            }),
            Err(e) => {
                drop(uring);
                return Err(release(
                    dev,
                    format!("cannot start queue thread {qid}: {e}"),
                ));
            }
        }
    }
    drop(tx);
    let mut first_err = None;
    for _ in 0..uring.queues.len() {
        match rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((qid, Err(e))) => {
                first_err.get_or_insert(format!("queue {qid}: {e}"));
            }
            Err(_) => {
                first_err.get_or_insert("a queue thread ended during setup".into());
                break;
            }
        }
    }
    match first_err {
        None => {
            log::debug!(
                "fuse ring: {} queues of {QUEUE_DEPTH} entries, {payload} byte payloads",
                uring.queues.len()
            );
            Ok(uring)
        }
        Some(reason) => {
            drop(uring);
            Err(release(dev, reason))
        }
    }
}

/// Tells the kernel not to wait for the ring: a REGISTER it refuses (qid out of range)
/// clears the connection's io_uring flag and wakes the requests held for the ring
/// (`fuse_uring_cmd`), which /dev/fuse then serves.
fn release(dev: &OwnedFd, reason: String) -> StartError {
    let outcome = (|| -> io::Result<i32> {
        let mut ring = QueueRing::new(dev.as_fd(), u16::MAX, 1, 0)?;
        ring.register(0)?;
        ring.submit_and_wait(1)?;
        let mut done = Vec::new();
        ring.reap(&mut done);
        Ok(done.first().map_or(0, |c| c.res))
    })();
    match outcome {
        Ok(res) if res < 0 => StartError {
            reason,
            kernel_waits: false,
        },
        Ok(_) => StartError {
            reason: format!("{reason}; and the kernel accepted a queue it should not have"),
            kernel_waits: true,
        },
        Err(e) => StartError {
            reason: format!("{reason}; and the kernel cannot be told to stop waiting: {e}"),
            kernel_waits: true,
        },
    }
}

/// Where an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Its REGISTER (`commit: None`) or COMMIT_AND_FETCH is in the kernel.
    Kernel { commit: Option<u64> },
    /// A request is with the handler; commit with this id.
    Handler { commit_id: u64 },
    /// The kernel will not take it again (connection gone, or refused).
    Retired,
}

fn errno_name(res: i32) -> String {
    io::Error::from_raw_os_error(-res).to_string()
}

/// Whether a completion error means the connection is gone (the normal end).
fn connection_gone(res: i32) -> bool {
    [
        libc::ENOTCONN,
        libc::ECONNABORTED,
        libc::ECANCELED,
        libc::ENODEV,
    ]
    .contains(&-res)
}

fn queue_thread(
    dev: OwnedFd,
    handler: Arc<dyn Handler>,
    shared: Arc<Shared>,
    payload: usize,
    ready: mpsc::Sender<(u16, Result<(), String>)>,
) {
    let qid = shared.qid;
    let _ = shared.owner.set(std::thread::current().id());
    // The kernel picks the queue of the CPU a caller runs on; serving it from that CPU
    // keeps the request and its reply in one cache. Not fatal: a CPU may be offline.
    let mut set = nix::sched::CpuSet::new();
    let pinned = set
        .set(usize::from(qid))
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        log::debug!("fuse ring {qid}: cannot pin to CPU {qid}: {e}");
    }
    let mut ring = match QueueRing::new(dev.as_fd(), qid, QUEUE_DEPTH, payload) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send((qid, Err(format!("cannot set up an io_uring: {e}"))));
            return;
        }
    };
    let setup = match register_all(&mut ring) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send((qid, Err(e)));
            return;
        }
    };
    let _ = ready.send((qid, Ok(())));
    drop(ready);
    serve(&mut ring, &*handler, &shared, setup);
    log::debug!(
        "fuse ring {qid}: ended after {} requests",
        shared.served.load(Ordering::Relaxed)
    );
}

/// What registration left.
struct Setup {
    /// Entries that already hold a request: the last queue to register makes the ring
    /// ready, and a caller on this CPU may be quicker than our next look at the completions.
    early: Vec<usize>,
    /// Entries the kernel refused.
    refused: Vec<usize>,
}

/// Registers every entry, retrying EAGAIN (INIT not yet processed by the kernel). A
/// refusal comes back at once; an accepted REGISTER completes only with a request.
///
/// A queue fails only if the kernel took none of its entries: once it took one, this
/// queue may be all the ring lacked to be ready, and from then on the kernel sends this
/// CPU's requests here, so the queue must be served even with fewer entries.
fn register_all(ring: &mut QueueRing) -> Result<Setup, String> {
    let mut early = Vec::new();
    let mut refused = Vec::new();
    let mut first_err = None;
    let deadline = Instant::now() + REGISTER_RETRY;
    let mut todo: Vec<usize> = (0..ring.depth()).collect();
    while !todo.is_empty() {
        for idx in todo.drain(..) {
            ring.register(idx)
                .map_err(|e| format!("cannot queue REGISTER: {e}"))?;
        }
        ring.submit_and_wait(0)
            .map_err(|e| format!("io_uring_enter: {e}"))?;
        let mut done = Vec::new();
        ring.reap(&mut done);
        for c in done {
            let Target::Entry(idx) = c.target else {
                continue;
            };
            match -c.res {
                0 => early.push(idx),
                libc::EAGAIN | libc::EINTR if Instant::now() < deadline => todo.push(idx),
                _ => {
                    refused.push(idx);
                    first_err.get_or_insert(format!(
                        "FUSE_IO_URING_CMD_REGISTER failed: {}",
                        errno_name(c.res)
                    ));
                }
            }
        }
        if !todo.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    match first_err {
        Some(e) if refused.len() == ring.depth() => Err(e),
        Some(e) => {
            log::warn!(
                "fuse ring: {} of {} entries refused ({e}); serving with the rest",
                refused.len(),
                ring.depth()
            );
            Ok(Setup { early, refused })
        }
        None => Ok(Setup { early, refused }),
    }
}

fn serve(ring: &mut QueueRing, handler: &dyn Handler, shared: &Arc<Shared>, setup: Setup) {
    let qid = shared.qid;
    let mut states = vec![State::Kernel { commit: None }; ring.depth()];
    for idx in setup.refused {
        if let Some(s) = states.get_mut(idx) {
            *s = State::Retired;
        }
    }
    let mut closing = false;
    let mut done = Vec::new();
    for idx in setup.early {
        dispatch(ring, handler, shared, &mut states, idx);
    }
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            // Forced stop: whatever the kernel still holds is leaked with the ring.
            return;
        }
        // Replies first, before waiting: one made during `handle` on this thread posted no
        // wake-up.
        let replies = std::mem::take(&mut *shared.replies.lock());
        for r in replies {
            commit(ring, &mut states, r, closing, qid);
        }
        if closing {
            // The kernel dropped the entries it had given us; their replies have nowhere
            // to go.
            for s in &mut states {
                if matches!(s, State::Handler { .. }) {
                    *s = State::Retired;
                }
            }
        }
        if states.iter().all(|s| *s == State::Retired) && ring.in_kernel() == 0 {
            break;
        }
        if !closing {
            if let Err(e) = ring.arm_wake(shared.wake.as_fd()) {
                log::error!("fuse ring {qid}: cannot wait for replies from workers: {e}");
            }
        }
        if let Err(e) = ring.submit_and_wait(1) {
            // EBUSY: the completion queue is full; reaping below makes room.
            if e.raw_os_error() != Some(libc::EBUSY) {
                log::error!("fuse ring {qid}: io_uring_enter: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        ring.reap(&mut done);
        for c in done.drain(..) {
            match c.target {
                Target::Wake => {}
                Target::Entry(idx) => {
                    handle_completion(ring, handler, shared, &mut states, idx, c, &mut closing)
                }
            }
        }
    }
    // Take the eventfd read back too, or the ring's buffers would count as lent.
    for _ in 0..100 {
        if !ring.wake_pending() {
            break;
        }
        shared.wake_up();
        let _ = ring.submit_and_wait(1);
        ring.reap(&mut done);
        done.clear();
    }
}

fn handle_completion(
    ring: &mut QueueRing,
    handler: &dyn Handler,
    shared: &Arc<Shared>,
    states: &mut [State],
    idx: usize,
    c: Completion,
    closing: &mut bool,
) {
    let qid = shared.qid;
    let Some(state) = states.get(idx).copied() else {
        return;
    };
    let registering = matches!(state, State::Kernel { commit: None });
    let set = |states: &mut [State], s: State| {
        if let Some(x) = states.get_mut(idx) {
            *x = s;
        }
    };
    if c.res == 0 {
        if *closing {
            set(states, State::Retired);
            return;
        }
        dispatch(ring, handler, shared, states, idx);
        return;
    }
    if connection_gone(c.res) {
        log::debug!("fuse ring {qid}: entry {idx} ended: {}", errno_name(c.res));
        *closing = true;
        set(states, State::Retired);
        return;
    }
    if (c.res == -libc::EAGAIN || c.res == -libc::EINTR) && !*closing {
        // Resubmit the same command: for a commit, the reply is still in the buffers.
        let again = match state {
            State::Kernel { commit: None } => ring.register(idx),
            State::Kernel {
                commit: Some(commit_id),
            } => ring.commit(idx, commit_id),
            _ => Err(io::Error::other("no command to resubmit")),
        };
        if again.is_ok() {
            return;
        }
    }
    log::warn!(
        "fuse ring {qid}: {} failed: {}",
        if registering {
            "FUSE_IO_URING_CMD_REGISTER"
        } else {
            "FUSE_IO_URING_CMD_COMMIT_AND_FETCH"
        },
        errno_name(c.res)
    );
    if registering || *closing {
        set(states, State::Retired);
        return;
    }
    // The kernel refused a commit (its request is gone): give the buffers to a fresh
    // kernel entry, so the queue keeps its depth.
    match ring.register(idx) {
        Ok(()) => set(states, State::Kernel { commit: None }),
        Err(_) => set(states, State::Retired),
    }
}

fn dispatch(
    ring: &mut QueueRing,
    handler: &dyn Handler,
    shared: &Arc<Shared>,
    states: &mut [State],
    idx: usize,
) {
    let qid = shared.qid;
    let Some((header, payload)) = ring.buffers(idx) else {
        return;
    };
    let word = |at: usize| -> u32 {
        header
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_ne_bytes)
    };
    let dword = |at: usize| -> u64 {
        header
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes)
    };
    let opcode = word(4);
    // fuse_uring_ent_in_out: flags u64, commit_id u64, payload_sz u32.
    let commit_id = dword(ENT_IN_OUT + 8);
    let payload_sz = usize::try_from(word(ENT_IN_OUT + 16)).unwrap_or(usize::MAX);
    let fixed_len = handler.fixed_size(opcode).min(OP_IN_SIZE);
    let req = RawRequest {
        header: header.get(..IN_HEADER).unwrap_or_default(),
        fixed: header.get(OP_IN..OP_IN + fixed_len).unwrap_or_default(),
        rest: payload
            .get(..payload_sz.min(payload.len()))
            .unwrap_or_default(),
    };
    log::debug!("fuse ring {qid}: opcode {opcode} unique {commit_id}");
    if let Some(s) = states.get_mut(idx) {
        *s = State::Handler { commit_id };
    }
    shared.served.fetch_add(1, Ordering::Relaxed);
    let out = Box::new(RingResponder {
        shared: Arc::clone(shared),
        idx,
        cap: payload.len(),
        sent: false,
    });
    handler.handle(req, out);
}

fn commit(ring: &mut QueueRing, states: &mut [State], r: Reply, closing: bool, qid: u16) {
    let Some(State::Handler { commit_id }) = states.get(r.idx).copied() else {
        return;
    };
    if closing {
        return;
    }
    let Some((header, payload)) = ring.buffers_mut(r.idx) else {
        return;
    };
    let n = r.body.len();
    let (Some(dst), Ok(n32)) = (payload.get_mut(..n), u32::try_from(n)) else {
        return;
    };
    dst.copy_from_slice(&r.body);
    // fuse_out_header { len u32, error i32, unique u64 }; the kernel checks unique against
    // the request it gave this entry, so it is the commit id, not what the handler said.
    let len = u32::try_from(OUT_HEADER + n).unwrap_or(u32::MAX);
    if let Some(h) = header.get_mut(..OUT_HEADER) {
        h[..4].copy_from_slice(&len.to_ne_bytes());
        h[4..8].copy_from_slice(&r.error.to_ne_bytes());
        h[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    }
    if let Some(p) = header.get_mut(ENT_IN_OUT + 16..ENT_IN_OUT + 20) {
        p.copy_from_slice(&n32.to_ne_bytes());
    }
    match ring.commit(r.idx, commit_id) {
        Ok(()) => {
            if let Some(s) = states.get_mut(r.idx) {
                *s = State::Kernel {
                    commit: Some(commit_id),
                };
            }
        }
        Err(e) => log::error!("fuse ring {qid}: cannot queue a commit: {e}"),
    }
}

/// The transport a mount will use, decided from `-o uring=` before mounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Offer the ring in INIT and start it if granted.
    Ring,
    /// Serve through /dev/fuse only.
    DevFuse,
}

/// Before mounting: `on` fails (one line) unless the kernel has the ring switched on;
/// `auto` uses it when it can and says why not at info level; `off` never.
pub fn plan(mode: crate::options::UringMode) -> Result<Plan, String> {
    use crate::options::UringMode;
    if mode == UringMode::Off {
        return Ok(Plan::DevFuse);
    }
    match unavailable_reason(kernel_support()) {
        None => Ok(Plan::Ring),
        Some(why) if mode == UringMode::On => Err(format!("uring=on: {why}")),
        Some(why) => {
            log::info!("serving through /dev/fuse: {why}");
            Ok(Plan::DevFuse)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0,2-4,7"), Some(vec![0, 2, 3, 4, 7]));
        assert_eq!(parse_cpu_list(""), None);
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn gone_errnos() {
        assert!(connection_gone(-libc::ENOTCONN));
        assert!(!connection_gone(-libc::EINVAL));
    }
}
