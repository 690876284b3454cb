//! runbox: imports container images into layer directories and runs commands in them on a
//! union root (unionfs over FUSE, or the kernel's overlay), in fresh namespaces.
#![deny(unsafe_code)]

pub mod backend;
pub mod cgroup;
pub mod cli;
pub mod diff;
pub mod env;
pub mod error;
pub mod fsutil;
pub mod image;
pub mod process;
pub mod rootfs;
pub mod run;
pub mod size;
pub mod store;
pub mod sys;
pub mod user;
pub mod userns;
