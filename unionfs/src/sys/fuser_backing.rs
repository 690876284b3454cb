//! Open and create replies through fuser (`-o frontend=fuser`) naming one of our backing
//! ids (`crate::backing::Backing`): fuser wants its own `BackingId` for the reply, which
//! only `ReplyOpen::wrap_backing` (unsafe: it trusts the id) makes from a bare id. One is
//! made for the reply and given back with `into_raw`, so only our `Backing` closes the id.

use std::time::Duration;

use fuser::{FileAttr, FileHandle, FopenFlags, Generation, ReplyCreate, ReplyOpen};

use crate::backing::Backing;

pub fn opened(reply: ReplyOpen, fh: FileHandle, flags: FopenFlags, b: &Backing) {
    // SAFETY: the id is open and belongs to this session (registered on a duplicate of its
    // descriptor), and it stays open while `b` lives, which outlives the `BackingId`; that
    // is given up with `into_raw`, which does not close it.
    let id = unsafe { reply.wrap_backing(b.id()) };
    reply.opened_passthrough(fh, flags, &id);
    let _ = id.into_raw();
}

pub fn created(
    reply: ReplyCreate,
    ttl: &Duration,
    attr: &FileAttr,
    fh: FileHandle,
    flags: FopenFlags,
    b: &Backing,
) {
    // SAFETY: as in `opened`.
    let id = unsafe { reply.wrap_backing(b.id()) };
    reply.created_passthrough(ttl, attr, Generation(0), fh, flags, &id);
    let _ = id.into_raw();
}
