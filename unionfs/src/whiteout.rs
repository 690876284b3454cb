//! Whiteouts and opaque directories: the kernel's format (char 0/0 devices, the
//! `*.overlay.opaque` xattr), plus the OCI/AUFS markers (`.wh.NAME`, `.wh..wh..opq`) that
//! container image layers use, which we read in lower layers but never write.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::sys::stat::{FileStat, SFlag};

use crate::layer::XattrNs;

pub const AUFS_PREFIX: &[u8] = b".wh.";
pub const AUFS_OPAQUE: &[u8] = b".wh..wh..opq";

/// A whiteout is a character device with device number 0/0.
pub fn is_whiteout(st: &FileStat) -> bool {
    (st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFCHR.bits() && st.st_rdev == 0
}

/// Whether a directory carries the opaque marker xattr with value "y".
pub fn has_opaque_xattr(dir: &crate::sys::fsops::XPath, ns: XattrNs) -> bool {
    let mut buf = [0u8; 2];
    matches!(
        crate::sys::fsops::getxattr(dir, ns.opaque(), &mut buf),
        Ok(1) if buf[0] == b'y'
    )
}

/// `.wh.NAME` for NAME, or None when the marker name would be too long to exist.
pub fn aufs_marker(name: &OsStr) -> Option<OsString> {
    if name.len() + AUFS_PREFIX.len() > 255 {
        return None;
    }
    let mut v = AUFS_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    Some(OsString::from_vec(v))
}

/// Names that only exist as markers in image layers and never show in the union.
pub fn is_aufs_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(AUFS_PREFIX)
}

/// The name an AUFS whiteout marker hides, if `name` is one (and not the opaque marker).
pub fn aufs_hidden_name(name: &OsStr) -> Option<&OsStr> {
    let b = name.as_bytes();
    if b == AUFS_OPAQUE || !b.starts_with(AUFS_PREFIX) {
        return None;
    }
    let rest = &b[AUFS_PREFIX.len()..];
    if rest.is_empty() {
        None
    } else {
        Some(OsStr::from_bytes(rest))
    }
}

pub fn is_aufs_opaque(name: &OsStr) -> bool {
    name.as_bytes() == AUFS_OPAQUE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aufs_names() {
        assert_eq!(
            aufs_hidden_name(OsStr::new(".wh.foo")),
            Some(OsStr::new("foo"))
        );
        assert_eq!(aufs_hidden_name(OsStr::new(".wh..wh..opq")), None);
        assert_eq!(aufs_hidden_name(OsStr::new("foo")), None);
        assert_eq!(aufs_hidden_name(OsStr::new(".wh.")), None);
        assert!(is_aufs_opaque(OsStr::new(".wh..wh..opq")));
        assert_eq!(aufs_marker(OsStr::new("x")), Some(OsString::from(".wh.x")));
        assert_eq!(aufs_marker(OsStr::from_bytes(&[b'a'; 252])), None);
    }
}
