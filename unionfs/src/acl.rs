//! POSIX ACLs as the kernel stores them in `system.posix_acl_access` and
//! `system.posix_acl_default`, and the rule that gives a new object the default ACL of its
//! directory (`posix_acl_create` in fs/posix_acl.c).
//!
//! The kernel enforces ACLs on the FUSE mount itself (`FUSE_POSIX_ACL`) from the xattrs the
//! daemon returns; the upper filesystem applies a directory's default ACL to what is
//! created in it directly. Only what is built in the work directory and renamed into place
//! (a create over a whiteout) needs the rule here, computed from the upper directory's
//! default ACL as the kernel's overlay computes it from the merged one.

use crate::errno::{Errno, Result};

pub const ACCESS: &str = "system.posix_acl_access";
pub const DEFAULT: &str = "system.posix_acl_default";

const VERSION: u32 = 2;
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    tag: u16,
    perm: u16,
    id: u32,
}

/// An ACL in the xattr format: a version word, then (tag, perm, id) entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acl(Vec<Entry>);

impl Acl {
    pub fn parse(b: &[u8]) -> Result<Acl> {
        let (head, rest) = b.split_first_chunk::<4>().ok_or(Errno::EINVAL)?;
        if u32::from_le_bytes(*head) != VERSION || rest.len() % 8 != 0 {
            return Err(Errno::EINVAL);
        }
        let entries = rest
            .chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        Ok(Acl(entries))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut v = VERSION.to_le_bytes().to_vec();
        for e in &self.0 {
            v.extend_from_slice(&e.tag.to_le_bytes());
            v.extend_from_slice(&e.perm.to_le_bytes());
            v.extend_from_slice(&e.id.to_le_bytes());
        }
        v
    }

    /// `posix_acl_create_masq`: narrows the ACL and `mode` to each other. Returns the new
    /// mode and whether the ACL says more than the mode can (named entries or a mask).
    fn create_masq(&mut self, mode_p: u32) -> Result<(u32, bool)> {
        let mut mode = mode_p;
        let mut not_equiv = false;
        let (mut group_obj, mut mask) = (None, None);
        for (i, e) in self.0.iter_mut().enumerate() {
            let perm = u32::from(e.perm);
            match e.tag {
                USER_OBJ => {
                    let p = perm & ((mode >> 6) | !0o7);
                    e.perm = p as u16;
                    mode &= (p << 6) | !0o700;
                }
                USER | GROUP => not_equiv = true,
                GROUP_OBJ => group_obj = Some(i),
                OTHER => {
                    let p = perm & (mode | !0o7);
                    e.perm = p as u16;
                    mode &= p | !0o7;
                }
                MASK => {
                    mask = Some(i);
                    not_equiv = true;
                }
                _ => return Err(Errno::EIO),
            }
        }
        let g = mask.or(group_obj).ok_or(Errno::EIO)?;
        let e = self.0.get_mut(g).ok_or(Errno::EIO)?;
        let p = u32::from(e.perm) & ((mode >> 3) | !0o7);
        e.perm = p as u16;
        mode &= (p << 3) | !0o70;
        Ok(((mode_p & !0o777) | (mode & 0o777), not_equiv))
    }
}

/// What a new object gets from its directory.
#[derive(Debug, PartialEq, Eq)]
pub struct Inherited {
    pub mode: u32,
    pub access: Option<Vec<u8>>,
    pub default: Option<Vec<u8>>,
}

/// `posix_acl_create`: with a default ACL on the directory the new object's mode is masked
/// by it (the umask is not used) and it gets an access ACL, and a directory the default ACL
/// too; without one, the umask applies.
pub fn inherit(
    dir_default: Option<&[u8]>,
    mode: u32,
    umask: u32,
    is_dir: bool,
) -> Result<Inherited> {
    let Some(raw) = dir_default else {
        return Ok(Inherited {
            mode: mode & !(umask & 0o777),
            access: None,
            default: None,
        });
    };
    let dflt = Acl::parse(raw)?;
    let mut access = dflt.clone();
    let (mode, not_equiv) = access.create_masq(mode)?;
    Ok(Inherited {
        mode,
        access: not_equiv.then(|| access.encode()),
        default: is_dir.then(|| dflt.encode()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        Acl(entries
            .iter()
            .map(|&(tag, perm, id)| Entry { tag, perm, id })
            .collect())
        .encode()
    }

    const ANY: u32 = u32::MAX;

    #[test]
    fn without_a_default_acl_the_umask_applies() {
        let i = inherit(None, 0o100666, 0o027, false).unwrap();
        assert_eq!(i.mode, 0o100640);
        assert_eq!((i.access, i.default), (None, None));
    }

    #[test]
    fn a_minimal_default_acl_only_masks_the_mode() {
        let d = acl(&[(USER_OBJ, 7, ANY), (GROUP_OBJ, 5, ANY), (OTHER, 0, ANY)]);
        let f = inherit(Some(&d), 0o100666, 0o077, false).unwrap();
        assert_eq!(f.mode, 0o100640);
        assert_eq!((f.access, f.default), (None, None));
        let dir = inherit(Some(&d), 0o40777, 0o077, true).unwrap();
        assert_eq!(dir.mode, 0o40750);
        assert_eq!(dir.access, None);
        assert_eq!(dir.default, Some(d));
    }

    #[test]
    fn named_entries_give_an_access_acl_with_the_mask_narrowed() {
        let d = acl(&[
            (USER_OBJ, 7, ANY),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, ANY),
            (MASK, 7, ANY),
            (OTHER, 5, ANY),
        ]);
        let f = inherit(Some(&d), 0o100644, 0o077, false).unwrap();
        // group bits are the mask's: 7 & 4 = 4; other 5 & 4 = 4; umask ignored
        assert_eq!(f.mode, 0o100644);
        let want = acl(&[
            (USER_OBJ, 6, ANY),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, ANY),
            (MASK, 4, ANY),
            (OTHER, 4, ANY),
        ]);
        assert_eq!(f.access, Some(want));
    }

    #[test]
    fn malformed_acls_are_refused() {
        assert_eq!(Acl::parse(b"\x01\0\0\0"), Err(Errno::EINVAL));
        assert_eq!(Acl::parse(b"\x02\0\0\0\x01\0"), Err(Errno::EINVAL));
        let no_group = acl(&[(USER_OBJ, 7, ANY), (OTHER, 0, ANY)]);
        assert!(inherit(Some(&no_group), 0o644, 0, false).is_err());
    }
}
