//! unionfs: a union filesystem in userspace with the kernel overlayfs's semantics and
//! on-disk format. The core (`union`, `ops`, `lookup`, `copyup`, ...) knows nothing of FUSE;
//! `wire` is our own FUSE protocol front end (the default), `fs` adapts the core to fuser
//! (`-o frontend=fuser`), and `main.rs` turns a command line into a mount.
#![deny(unsafe_code)]

pub mod acl;
pub mod backing;
pub mod copyup;
pub mod diff;
pub mod dirfd;
pub mod errno;
pub mod explain;
pub mod fs;
pub mod handle;
pub mod idmap;
pub mod inode;
pub mod killpriv;
pub mod layer;
pub mod lookup;
pub mod offload;
pub mod ops;
pub mod options;
pub mod origin;
pub mod picture;
pub mod readdir;
pub mod sys;
pub mod teach;
pub mod testhook;
#[cfg(test)]
mod testskip;
pub mod trace;
pub mod union;
pub mod whiteout;
pub mod wire;
