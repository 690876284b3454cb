//! Images: importing archives into layer directories, and the kernel-format whiteout masks.

pub mod archive;
pub mod extract;
pub mod import;
pub mod kernel;
pub mod paths;
pub mod progress;
pub mod sparse;
