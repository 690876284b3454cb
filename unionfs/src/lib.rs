//! unionfs: a union filesystem in userspace with the kernel overlayfs's semantics and
//! on-disk format. The core (`union`, `ops`, `lookup`, `copyup`, ...) knows nothing of FUSE;
//! `fs` adapts it to fuser, and `main.rs` turns a command line into a mount.
#![deny(unsafe_code)]

pub mod acl;
pub mod copyup;
pub mod dirfd;
pub mod errno;
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
pub mod readdir;
pub mod sys;
pub mod testhook;
#[cfg(test)]
mod testskip;
pub mod union;
pub mod whiteout;
