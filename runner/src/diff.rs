//! `diff`: what a container changed, from its upper directory against the image layers, as
//! `docker diff` prints it (`A`dded, `C`hanged, `D`eleted). The logic is the unionfs
//! library's (`unionfs::diff`, also behind `unionfs diff`); this only names the failure in
//! the runner's terms. The upper may hold markers of either namespace (a container runs on
//! unionfs or the kernel's overlay, as root or rootless), so both are read.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use unionfs::diff::Change;

/// The changes in `upper` over `lowers` (top first), sorted by path.
pub fn diff(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<(Change, String)>> {
    unionfs::diff::diff(upper, lowers, None).map_err(|e| Error::path(e.what, &e.path, e.err))
}
