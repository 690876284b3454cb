//! Our own FUSE protocol front end: requests decoded from the kernel's bytes, served by the
//! union core, replies encoded back, over two transports (`/dev/fuse` reads and writes, or
//! FUSE over io_uring). Unlike the `fuser` adapter (`fs.rs`) it sees every flag the kernel
//! sends (the set-id kill flags among them), and it can be served from a ring.
//!
//! This file is the seam between the protocol (`Handler`) and the transports: a transport
//! gets a request's bytes from the kernel, hands them to the handler as a `RawRequest`, and
//! sends what the handler answers through the `Responder` it passed along.
//!
//! The pieces: `abi` (the kernel's opcodes, flags, struct sizes and offsets), `request`
//! (bytes to a typed `Op`), `reply` (typed replies to bytes), `server` (`Server`, the
//! `Handler` over the union core), `devfuse` (the `/dev/fuse` transport and the notifier
//! for cached names). A second transport on the same session gets the session descriptor
//! from whoever mounted (`main.rs` passes it to `devfuse::serve`; clones come from
//! `sys::fuse_dev::clone_fd`), starts in `devfuse::serve`'s `after_init` (or once
//! `Handler::initialized`), and hands each request to the same `Handler`.

use std::io::IoSlice;

/// One request as the kernel sent it, split the way FUSE over io_uring splits it.
#[derive(Clone, Copy, Debug)]
pub struct RawRequest<'a> {
    /// `struct fuse_in_header` (40 bytes).
    pub header: &'a [u8],
    /// The opcode's fixed argument struct (`fuse_setattr_in`, `fuse_write_in`, ...): the
    /// ring's `op_in`; on `/dev/fuse`, the first `Handler::fixed_size(opcode)` bytes after
    /// the header (fewer if the request is shorter). Empty for opcodes without one
    /// (LOOKUP, UNLINK, ...).
    pub fixed: &'a [u8],
    /// Everything after it (names, write data): the ring's payload; on `/dev/fuse` the rest
    /// of what `read` returned.
    pub rest: &'a [u8],
}

/// Where the reply to one request goes. Each request that wants a reply gets exactly one
/// `respond`; FORGET and BATCH_FORGET get none (the responder is dropped). It may be called
/// on another thread (a request that may copy up a large file runs on a worker) and later.
pub trait Responder: Send + 'static {
    /// `error`: 0 or a negative errno (then `body` is empty). `body`: the reply's
    /// arguments, without the `fuse_out_header`, which the transport writes.
    fn respond(self: Box<Self>, unique: u64, error: i32, body: &[IoSlice<'_>]);
}

/// What serves requests (`server::Server` over the union core; tests use small ones).
pub trait Handler: Send + Sync + 'static {
    /// Bytes of the fixed argument struct of `opcode` as this kernel sends it (0 if none):
    /// what the io_uring transport finds in `op_in`, and where a `/dev/fuse` transport
    /// splits a request.
    fn fixed_size(&self, opcode: u32) -> usize;
    /// Serves one request (INIT and DESTROY included). Never panics on bad input: a request
    /// it cannot decode gets EINVAL (ENOSYS for an unknown opcode).
    fn handle(&self, req: RawRequest<'_>, out: Box<dyn Responder>);
    /// After INIT: whether the reply granted FUSE_OVER_IO_URING (the ring may be set up).
    /// Grant it only when the ring will be started (`wire::uring::plan` said `Ring`): once
    /// granted, the kernel holds every new request until the ring is registered or
    /// refused.
    fn uring_granted(&self) -> bool;
    /// After INIT: the largest payload a request or reply may carry (the kernel's
    /// `max_payload_sz`: max(8192, max_write, max_pages * page size)); ring payload buffers
    /// and `/dev/fuse` read buffers (plus the header) must be at least this big.
    fn max_payload(&self) -> usize;
    /// Whether INIT has been answered (a transport that starts after INIT polls this).
    fn initialized(&self) -> bool;
}

pub mod abi;
pub mod devfuse;
pub mod reply;
pub mod request;
pub mod server;
#[cfg(test)]
mod tests;
pub mod uring;
