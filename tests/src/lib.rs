//! Differential test harness for the `unionfs` FUSE daemon: every scenario
//! runs on a kernel overlayfs mount (the reference, side A) and on the
//! target under test (side B), and everything observable is compared.
#![deny(unsafe_code)]

pub mod acl;
pub mod explain_check;
pub mod fixture;
pub mod ops;
pub mod scenario;
pub mod snapshot;
pub mod sys;
pub mod tree;

pub use nix::fcntl::OFlag;
pub use ops::{Ops, RENAME_EXCHANGE, RENAME_NOREPLACE, RENAME_WHITEOUT};
pub use scenario::{remount_check, Scenario};

pub use tree::Tree;

/// What is mounted on a side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Kernel overlayfs (`mount -t overlay`).
    Kernel,
    /// The `unionfs` FUSE daemon (`<target>/debug/unionfs` or $UNIONFS_BIN).
    Unionfs,
}

/// The target under test on side B. Switch this one line to change the
/// default; `DIFFTEST_TARGET=kernel|unionfs` overrides it at run time.
pub const TARGET: Target = Target::Unionfs;

/// The effective side-B target (`TARGET`, or `$DIFFTEST_TARGET`).
pub fn target() -> Target {
    match std::env::var("DIFFTEST_TARGET").as_deref() {
        Ok("kernel") => Target::Kernel,
        Ok("unionfs") => Target::Unionfs,
        Ok(other) => panic!("DIFFTEST_TARGET must be `kernel` or `unionfs`, not {other:?}"),
        Err(_) => TARGET,
    }
}
