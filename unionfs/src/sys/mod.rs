//! The only place with `unsafe`: thin wrappers over syscalls that std and nix do not cover.
#![allow(unsafe_code)]

pub mod daemon;
pub mod fsops;
pub mod fuse_dev;
pub mod fuse_mount;
pub mod fuser_backing;
pub mod uring;
