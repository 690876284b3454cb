//! One FUSE-over-io_uring queue's ring and the buffers it lends the kernel: the only code
//! that builds submission entries pointing at our memory, and so the only code that knows
//! when that memory is the kernel's. `wire::uring` runs the protocol on top, in safe code.
//!
//! The rule that makes the safe accessors sound: an entry's header and payload buffers are
//! the kernel's from the moment a command naming them is queued until its completion has
//! been reaped; `header`/`payload` give them out only in between. The kernel writes a
//! request into them (in our thread's task work) only while it holds a command of that
//! entry, and reads a reply only while issuing the COMMIT_AND_FETCH we queued.

use std::alloc::Layout;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// `struct fuse_uring_req_header`: `in_out[128]`, `op_in[128]`, `fuse_uring_ent_in_out`.
pub const HEADER_SIZE: usize = 128 + 128 + 32;
/// Offset of `op_in` in the header buffer.
pub const OP_IN: usize = 128;
/// Offset of `struct fuse_uring_ent_in_out` (flags u64, commit_id u64, payload_sz u32, ..).
pub const ENT_IN_OUT: usize = 256;

/// `enum fuse_uring_cmd` (include/uapi/linux/fuse.h).
pub const CMD_REGISTER: u32 = 1;
pub const CMD_COMMIT_AND_FETCH: u32 = 2;

/// The user_data of the eventfd read; entries use their index.
const WAKE: u64 = u64::MAX;

/// What a reaped completion was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Entry(usize),
    Wake,
}

#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub target: Target,
    /// 0, or a negative errno.
    pub res: i32,
}

/// A zeroed heap block the kernel may write behind our back while lent out.
struct KernelBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl KernelBuf {
    fn new(len: usize, align: usize) -> io::Result<KernelBuf> {
        let layout = Layout::from_size_align(len.max(1), align)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        // SAFETY: the layout has a non-zero size (max(1) above).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(KernelBuf { ptr, layout })
    }

    fn addr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn len(&self) -> usize {
        self.layout.size()
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is a live allocation of `len` initialized (zeroed, then written by us
        // or the kernel) bytes; the owner hands this out only while the kernel holds no
        // command naming the buffer (see the module comment), so nothing writes meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len()) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes this the only reference on our side.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len()) }
    }
}

impl Drop for KernelBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout, freed only here.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

struct Slot {
    header: KernelBuf,
    payload: KernelBuf,
    /// iov[0] = header, iov[1] = payload; read by the kernel when it issues REGISTER.
    iov: Box<[libc::iovec; 2]>,
    in_kernel: bool,
}

/// A ring with SQE128 (the 80-byte command area holds `fuse_uring_cmd_req`), the /dev/fuse
/// fd registered as fixed file 0 (no file lookup per command), and `depth` entries.
pub struct QueueRing {
    ring: ManuallyDrop<IoUring<squeue::Entry128, cqueue::Entry>>,
    slots: ManuallyDrop<Vec<Slot>>,
    wake_buf: ManuallyDrop<Box<[u8; 8]>>,
    wake_in_kernel: bool,
    qid: u16,
}

impl QueueRing {
    /// `payload`: bytes of each payload buffer (the kernel refuses less than its
    /// `max_payload_sz`).
    pub fn new(dev: BorrowedFd<'_>, qid: u16, depth: usize, payload: usize) -> io::Result<Self> {
        // One submission per entry plus the eventfd read; completions never outnumber them.
        let sq = u32::try_from(depth + 1)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?
            .next_power_of_two();
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_cqsize(sq * 2)
            .build(sq)?;
        ring.submitter().register_files(&[dev.as_raw_fd()])?;
        let page = 4096;
        let mut slots = Vec::with_capacity(depth);
        for _ in 0..depth {
            let header = KernelBuf::new(HEADER_SIZE, 64)?;
            let payload = KernelBuf::new(payload, page)?;
            let iov = Box::new([
                libc::iovec {
                    iov_base: header.addr().cast(),
                    iov_len: header.len(),
                },
                libc::iovec {
                    iov_base: payload.addr().cast(),
                    iov_len: payload.len(),
                },
            ]);
            slots.push(Slot {
                header,
                payload,
                iov,
                in_kernel: false,
            });
        }
        Ok(QueueRing {
            ring: ManuallyDrop::new(ring),
            slots: ManuallyDrop::new(slots),
            wake_buf: ManuallyDrop::new(Box::new([0; 8])),
            wake_in_kernel: false,
            qid,
        })
    }

    pub fn depth(&self) -> usize {
        self.slots.len()
    }

    /// Whether the eventfd read is still queued.
    pub fn wake_pending(&self) -> bool {
        self.wake_in_kernel
    }

    /// Commands of ours the kernel still holds (the eventfd read not counted).
    pub fn in_kernel(&self) -> usize {
        self.slots.iter().filter(|s| s.in_kernel).count()
    }

    fn cmd_area(&self, commit_id: u64) -> [u8; 80] {
        // struct fuse_uring_cmd_req { u64 flags; u64 commit_id; u16 qid; u8 padding[6]; }
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        cmd
    }

    /// Lends entry `idx` to the kernel to wait for a request (FUSE_IO_URING_CMD_REGISTER).
    pub fn register(&mut self, idx: usize) -> io::Result<()> {
        let cmd = self.cmd_area(0);
        let slot = self.slot(idx)?;
        if slot.in_kernel {
            return Err(busy());
        }
        let mut sqe = opcode::UringCmd80::new(types::Fixed(0), CMD_REGISTER)
            .cmd(cmd)
            .addr(Some(slot.iov.as_ptr() as u64))
            .build()
            .user_data(idx as u64);
        set_sqe_len(&mut sqe, 2);
        self.push(&sqe)?;
        if let Some(s) = self.slots.get_mut(idx) {
            s.in_kernel = true;
        }
        Ok(())
    }

    /// Hands the reply in entry `idx` back and asks for the next request.
    pub fn commit(&mut self, idx: usize, commit_id: u64) -> io::Result<()> {
        let cmd = self.cmd_area(commit_id);
        let slot = self.slot(idx)?;
        if slot.in_kernel {
            return Err(busy());
        }
        let sqe = opcode::UringCmd80::new(types::Fixed(0), CMD_COMMIT_AND_FETCH)
            .cmd(cmd)
            .build()
            .user_data(idx as u64);
        self.push(&sqe)?;
        if let Some(s) = self.slots.get_mut(idx) {
            s.in_kernel = true;
        }
        Ok(())
    }

    /// Queues an 8-byte read of `efd` (an eventfd): it completes when another thread wakes us.
    pub fn arm_wake(&mut self, efd: BorrowedFd<'_>) -> io::Result<()> {
        if self.wake_in_kernel {
            return Ok(());
        }
        let sqe: squeue::Entry128 =
            opcode::Read::new(types::Fd(efd.as_raw_fd()), self.wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE)
                .into();
        self.push(&sqe)?;
        self.wake_in_kernel = true;
        Ok(())
    }

    fn push(&mut self, sqe: &squeue::Entry128) -> io::Result<()> {
        // SAFETY: every pointer in `sqe` (the iov array, the buffers it names, the wake
        // buffer) points into memory `self` owns, marked in-kernel by the caller right
        // after this push, and freed only in Drop once the ring is closed and nothing is
        // in the kernel (leaked otherwise).
        let pushed = unsafe { self.ring.submission().push(sqe) };
        if pushed.is_err() {
            // The queue holds one slot per entry plus the wake read: full means a bug.
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(sqe) }
                .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        }
        Ok(())
    }

    /// Submits what is queued and waits for at least `want` completions (EINTR retried).
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<usize> {
        loop {
            match self.ring.submit_and_wait(want) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Moves every completion into `out`; their entries are ours again.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in done {
            let target = if ud == WAKE {
                self.wake_in_kernel = false;
                Target::Wake
            } else {
                let idx = usize::try_from(ud).unwrap_or(usize::MAX);
                match self.slots.get_mut(idx) {
                    Some(s) => s.in_kernel = false,
                    None => continue,
                }
                Target::Entry(idx)
            };
            out.push(Completion { target, res });
        }
    }

    fn slot(&self, idx: usize) -> io::Result<&Slot> {
        self.slots
            .get(idx)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such ring entry"))
    }

    /// Entry `idx`'s header buffer; None while the kernel holds it.
    pub fn header(&self, idx: usize) -> Option<&[u8]> {
        let s = self.slots.get(idx)?;
        (!s.in_kernel).then(|| s.header.bytes())
    }

    pub fn header_mut(&mut self, idx: usize) -> Option<&mut [u8]> {
        let s = self.slots.get_mut(idx)?;
        (!s.in_kernel).then(|| s.header.bytes_mut())
    }

    /// Entry `idx`'s header and payload buffers; None while the kernel holds them.
    pub fn buffers(&self, idx: usize) -> Option<(&[u8], &[u8])> {
        let s = self.slots.get(idx)?;
        (!s.in_kernel).then(|| (s.header.bytes(), s.payload.bytes()))
    }

    pub fn buffers_mut(&mut self, idx: usize) -> Option<(&mut [u8], &mut [u8])> {
        let s = self.slots.get_mut(idx)?;
        (!s.in_kernel).then(|| (s.header.bytes_mut(), s.payload.bytes_mut()))
    }
}

impl Drop for QueueRing {
    fn drop(&mut self) {
        let lent = self.wake_in_kernel || self.slots.iter().any(|s| s.in_kernel);
        // SAFETY: dropped exactly once, here; closing the ring makes the kernel cancel
        // what it still holds.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
        if lent {
            // The cancellation runs asynchronously: memory the kernel may still write
            // must outlive it. A bounded leak (depth entries), only when the ring is
            // dropped while the FUSE connection still holds commands.
            log::debug!(
                "fuse ring {}: leaking buffers still lent to the kernel",
                self.qid
            );
            return;
        }
        // SAFETY: dropped exactly once, here, and nothing in the kernel refers to them.
        unsafe {
            ManuallyDrop::drop(&mut self.slots);
            ManuallyDrop::drop(&mut self.wake_buf);
        }
    }
}

/// `sqe.len` (the iovec count REGISTER wants), which `UringCmd80` does not set.
fn set_sqe_len(sqe: &mut squeue::Entry128, len: u32) {
    // struct io_uring_sqe: opcode u8, flags u8, ioprio u16, fd i32, off u64, addr u64, len u32.
    const LEN_OFFSET: usize = 24;
    const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);
    let base = (sqe as *mut squeue::Entry128).cast::<u8>();
    // SAFETY: Entry128 is `#[repr(C)]` with the 64-byte `struct io_uring_sqe` first (the
    // crate's layout, checked in size above), so bytes 24..28 are `len`, inside the
    // value we hold exclusively; write_unaligned needs no alignment.
    unsafe { base.add(LEN_OFFSET).cast::<u32>().write_unaligned(len) };
}

fn busy() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "ring entry is already in the kernel",
    )
}
