//! The operations of the union, one file per family, each returning `Result`.

pub mod attr;
pub mod dir;
pub mod file;
pub mod fileattr;
pub mod namei;
pub mod xattr;

use std::ffi::OsStr;
use std::sync::Arc;

use crate::errno::Result;
use crate::inode::{Inode, State};
use crate::lookup::{probe, Probe};
use crate::union::UnionFs;

/// A node looked up for the length of one operation; the lookup it counted is given back
/// when it goes out of scope.
pub struct Held<'a> {
    fs: &'a UnionFs,
    pub node: Arc<Inode>,
}

impl<'a> Held<'a> {
    pub fn lookup(fs: &'a UnionFs, parent: u64, name: &OsStr) -> Result<Held<'a>> {
        let (node, _) = fs.lookup(parent, name)?;
        Ok(Held { fs, node })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.fs.forget(self.node.ino, 1);
    }
}

/// Whether some lower layer below `parent` shows `name` (so removing it needs a whiteout).
pub fn lower_positive(parent: &State, name: &OsStr) -> Result<bool> {
    for pl in &parent.lowers {
        match probe(pl.dir_ref()?, name, true)? {
            Probe::Found(..) => return Ok(true),
            Probe::Whiteout => return Ok(false),
            Probe::Missing => {}
        }
    }
    Ok(false)
}
