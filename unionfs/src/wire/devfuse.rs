//! The `/dev/fuse` transport: request threads reading the session's device, each on its
//! own descriptor (cloned with FUSE_DEV_IOC_CLONE, as fuser's `clone_fd` does), handing
//! each request to the `Handler` and writing replies with one `writev`; and the
//! notifier that tells the kernel to drop cached names (`union::Invalidate`).
//!
//! For another transport (FUSE over io_uring) on the same session: `serve`'s `after_init`
//! runs once INIT has been answered, on the thread that answered it, before the other
//! request threads start; `Handler::uring_granted` and `Handler::max_payload` are then
//! valid. The ring is registered on the session descriptor (`serve`'s `dev`, or a clone
//! of it, `sys::fuse_dev::clone_fd`); the `/dev/fuse` threads keep serving whatever the
//! kernel sends there (INIT, and everything when no ring was set up).

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use crate::wire::abi::{self, size};
use crate::wire::{Handler, RawRequest, Responder};

/// A read buffer before INIT says how big requests get: the largest write we will accept
/// (1 MiB) and room for the headers.
const FIRST_BUFFER: usize = (1 << 20) + 4096;

/// Writes `fuse_out_header` and `body` in one `writev` (the kernel takes a reply only
/// whole).
fn send(dev: &OwnedFd, unique: u64, error: i32, body: &[IoSlice<'_>]) -> io::Result<()> {
    let len = size::OUT_HEADER + body.iter().map(|b| b.len()).sum::<usize>();
    let len = u32::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
    let mut header = [0u8; size::OUT_HEADER];
    header[0..4].copy_from_slice(&len.to_ne_bytes());
    header[4..8].copy_from_slice(&error.to_ne_bytes());
    header[8..16].copy_from_slice(&unique.to_ne_bytes());
    let mut iov = Vec::with_capacity(body.len() + 1);
    iov.push(IoSlice::new(&header));
    iov.extend(
        body.iter()
            .filter(|b| !b.is_empty())
            .map(|b| IoSlice::new(b)),
    );
    nix::sys::uio::writev(dev.as_fd(), &iov)?;
    Ok(())
}

/// The reply path of one request read from `/dev/fuse`.
struct DevResponder {
    dev: Arc<OwnedFd>,
}

impl Responder for DevResponder {
    fn respond(self: Box<Self>, unique: u64, error: i32, body: &[IoSlice<'_>]) {
        match send(&self.dev, unique, error, body) {
            Ok(()) => {}
            // The request was interrupted and is gone: nobody waits for the answer.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                log::debug!("reply to {unique}: request gone")
            }
            Err(e) => log::warn!("reply to {unique} not sent: {e}"),
        }
    }
}

/// Tells the kernel to drop a cached name (FUSE_NOTIFY_INVAL_ENTRY: unique 0, the code in
/// the error field).
pub struct Notifier {
    dev: Arc<OwnedFd>,
}

impl Notifier {
    pub fn new(dev: Arc<OwnedFd>) -> Notifier {
        Notifier { dev }
    }
}

impl crate::union::Invalidate for Notifier {
    fn entry(&self, parent: u64, name: &std::ffi::OsStr) {
        let body = crate::wire::reply::inval_entry(parent, name);
        if let Err(e) = send(
            &self.dev,
            0,
            abi::NOTIFY_INVAL_ENTRY,
            &[IoSlice::new(&body)],
        ) {
            log::debug!("invalidating {name:?} in {parent}: {e}");
        }
    }
}

/// How one read went.
enum Read {
    Request(usize),
    /// Retry (EINTR, EAGAIN, ENOENT: a request interrupted before we read it).
    Again,
    /// Unmounted (ENODEV): the session is over.
    Gone,
}

fn read_one(dev: &OwnedFd, buf: &mut [u8]) -> io::Result<Read> {
    match nix::unistd::read(dev.as_fd(), buf) {
        Ok(n) => Ok(Read::Request(n)),
        Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN | nix::errno::Errno::ENOENT) => {
            Ok(Read::Again)
        }
        Err(nix::errno::Errno::ENODEV) => Ok(Read::Gone),
        Err(e) => Err(e.into()),
    }
}

/// Splits a request as the ring does (header / fixed argument struct / rest) and hands it
/// to the handler.
fn dispatch(handler: &dyn Handler, dev: &Arc<OwnedFd>, req: &[u8]) {
    let Some((header, body)) = req.split_at_checked(size::IN_HEADER) else {
        log::error!(
            "short request ({} bytes) from the kernel dropped",
            req.len()
        );
        return;
    };
    let opcode = crate::wire::request::Bytes(header)
        .u32(abi::off::IN_OPCODE)
        .unwrap_or(0);
    let (fixed, rest) = body.split_at(handler.fixed_size(opcode).min(body.len()));
    let out = Box::new(DevResponder {
        dev: Arc::clone(dev),
    });
    // A panic is a bug; it must not also take this request thread away (with all of them
    // gone every caller of the mount would hang). The request itself is answered EIO as
    // its reply is dropped (`server::Reply`).
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handler.handle(
            RawRequest {
                header,
                fixed,
                rest,
            },
            out,
        )
    }));
    if served.is_err() {
        log::error!("request with opcode {opcode} panicked");
    }
}

/// Serves one descriptor until the session ends (or, with `until_init`, until INIT has
/// been answered; then `Ok(true)`).
fn serve_fd(handler: &dyn Handler, dev: &Arc<OwnedFd>, until_init: bool) -> io::Result<bool> {
    let mut buf = vec![0u8; FIRST_BUFFER.max(handler.max_payload() + 4096)];
    loop {
        if until_init && handler.initialized() {
            return Ok(true);
        }
        match read_one(dev, &mut buf)? {
            Read::Request(n) => dispatch(handler, dev, buf.get(..n).unwrap_or(&buf)),
            Read::Again => continue,
            Read::Gone => return Ok(false),
        }
        let want = handler.max_payload() + 4096;
        if buf.len() < want {
            buf.resize(want, 0);
        }
    }
}

/// Serves the session of `dev` with `threads` request threads until it is unmounted.
/// INIT is served first on the calling thread; then `after_init` runs (see the module
/// comment), then the other threads start, each on a clone of `dev`.
pub fn serve(
    dev: Arc<OwnedFd>,
    handler: Arc<dyn Handler>,
    threads: usize,
    after_init: Option<Box<dyn FnOnce() + Send>>,
) -> io::Result<()> {
    if !serve_fd(&*handler, &dev, true)? {
        // Unmounted before INIT.
        return Ok(());
    }
    if let Some(f) = after_init {
        f();
    }
    let mut workers = Vec::new();
    for i in 1..threads.max(1) {
        let fd = match crate::sys::fuse_dev::clone_fd(dev.as_fd()) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                log::warn!("cannot clone the FUSE descriptor ({e}): {i} request threads");
                break;
            }
        };
        let handler = Arc::clone(&handler);
        let spawned = std::thread::Builder::new()
            .name(format!("unionfs-req-{i}"))
            .spawn(move || serve_fd(&*handler, &fd, false).map(|_| ()));
        match spawned {
            Ok(t) => workers.push(t),
            Err(e) => {
                log::warn!("cannot start a request thread: {e}");
                break;
            }
        }
    }
    let mut result = serve_fd(&*handler, &dev, false).map(|_| ());
    for w in workers {
        let r = w
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("a request thread panicked")));
        if result.is_ok() {
            result = r;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    /// One request as split: header, fixed, rest.
    type Split = (Vec<u8>, Vec<u8>, Vec<u8>);

    /// Records how requests were split and answers each with ENOENT.
    #[derive(Default)]
    struct Rec(Mutex<Vec<Split>>);

    impl Handler for Rec {
        fn fixed_size(&self, opcode: u32) -> usize {
            crate::wire::request::fixed_size(opcode, false)
        }
        fn handle(&self, req: RawRequest<'_>, out: Box<dyn Responder>) {
            self.0
                .lock()
                .push((req.header.to_vec(), req.fixed.to_vec(), req.rest.to_vec()));
            let unique = crate::wire::request::Bytes(req.header)
                .u64(abi::off::IN_UNIQUE)
                .unwrap_or(0);
            out.respond(
                unique,
                -libc::ENOENT,
                &[IoSlice::new(b"ab"), IoSlice::new(b"")],
            );
        }
        fn uring_granted(&self) -> bool {
            false
        }
        fn max_payload(&self) -> usize {
            0
        }
        fn initialized(&self) -> bool {
            false
        }
    }

    fn request(opcode: u32, unique: u64, body: &[u8]) -> Vec<u8> {
        let mut r = vec![0u8; size::IN_HEADER];
        r[0..4].copy_from_slice(&((size::IN_HEADER + body.len()) as u32).to_ne_bytes());
        r[4..8].copy_from_slice(&opcode.to_ne_bytes());
        r[8..16].copy_from_slice(&unique.to_ne_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn requests_are_split_and_replies_carry_the_out_header() {
        let (rd, wr) = nix::unistd::pipe().unwrap_or_else(|e| panic!("pipe: {e}"));
        let dev = Arc::new(wr);
        let rec = Rec::default();
        // OPEN: an 8-byte fuse_open_in, then nothing; SETXATTR (compat): 8 bytes, then
        // the name and value; a request shorter than its struct: all of it is `fixed`.
        dispatch(&rec, &dev, &request(abi::opcode::OPEN, 9, &[1; 8]));
        dispatch(
            &rec,
            &dev,
            &request(abi::opcode::SETXATTR, 10, b"12345678user.a\0v"),
        );
        dispatch(&rec, &dev, &request(abi::opcode::READ, 11, &[0; 5]));
        dispatch(&rec, &dev, &[0; 39]);
        let got = rec.0.lock().clone();
        assert_eq!(got.len(), 3, "the short one is not handed on");
        assert_eq!((got[0].0.len(), got[0].1.len(), got[0].2.len()), (40, 8, 0));
        assert_eq!(got[1].1, b"12345678");
        assert_eq!(got[1].2, b"user.a\0v");
        assert_eq!((got[2].1.len(), got[2].2.len()), (5, 0));
        let mut buf = [0u8; 18];
        let n = nix::unistd::read(&rd, &mut buf).unwrap_or(0);
        assert_eq!(n, 18);
        assert_eq!(&buf[0..4], &18u32.to_ne_bytes());
        assert_eq!(&buf[4..8], &(-libc::ENOENT).to_ne_bytes());
        assert_eq!(&buf[8..16], &9u64.to_ne_bytes());
        assert_eq!(&buf[16..18], b"ab");
    }

    #[test]
    fn inval_entry_notification_has_unique_0_and_the_code() {
        let (rd, wr) = nix::unistd::pipe().unwrap_or_else(|e| panic!("pipe: {e}"));
        let n = Notifier::new(Arc::new(wr));
        crate::union::Invalidate::entry(&n, 7, std::ffi::OsStr::new("nm"));
        let mut buf = [0u8; 64];
        let got = nix::unistd::read(&rd, &mut buf).unwrap_or(0);
        assert_eq!(got, 16 + 16 + 3);
        assert_eq!(&buf[4..8], &abi::NOTIFY_INVAL_ENTRY.to_ne_bytes());
        assert_eq!(&buf[8..16], &0u64.to_ne_bytes());
        assert_eq!(&buf[16..24], &7u64.to_ne_bytes());
        assert_eq!(&buf[32..35], b"nm\0");
    }
}
