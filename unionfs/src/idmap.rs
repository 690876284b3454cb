//! Owner translation between the layers and the merged view, as fuse-overlayfs's
//! `uidmapping=`/`gidmapping=` and `squash_to_*` options define it: one image store can
//! serve several user namespaces without chowning its files.
//!
//! A mapping `C:H:L` says that the ids `C..C+L` stored in the layers show as `H..H+L`
//! through the union; creating and chowning through the union store them back. An id
//! stored with no mapping shows as the overflow id and cannot be written back.

use crate::errno::{Errno, Result};

/// The id an unmapped owner shows as (`/proc/sys/kernel/overflowuid` on every distribution).
pub const OVERFLOW: u32 = 65534;

/// One range: `len` ids from `stored` on disk show from `shown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub stored: u32,
    pub shown: u32,
    pub len: u32,
}

/// The ranges of one kind of id (uids or gids); empty means ids go through unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranges(pub Vec<Range>);

fn within(id: u32, start: u32, len: u32) -> Option<u32> {
    let off = id.checked_sub(start)?;
    (off < len).then_some(off)
}

impl Ranges {
    /// Parses `C:H:L[:C2:H2:L2...]`; a leading `:` (as containers-storage writes it) is
    /// allowed. Ranges that overlap on either side are refused: the translation would not
    /// be one-to-one.
    pub fn parse(text: &str) -> std::result::Result<Ranges, String> {
        let text = text.strip_prefix(':').unwrap_or(text);
        let nums: Vec<&str> = text.split(':').collect();
        if text.is_empty() || !nums.len().is_multiple_of(3) {
            return Err(format!(
                "'{text}' is not a list of CONTAINER-ID:HOST-ID:LENGTH triples"
            ));
        }
        let mut out = Vec::new();
        for t in nums.chunks(3) {
            let n = |s: &str| -> std::result::Result<u32, String> {
                s.parse::<u32>()
                    .map_err(|_| format!("'{s}' in '{text}' is not an id or a length"))
            };
            let r = Range {
                stored: n(t[0])?,
                shown: n(t[1])?,
                len: n(t[2])?,
            };
            if r.len == 0 {
                return Err(format!("a range of length 0 in '{text}'"));
            }
            let end = |start: u32| u64::from(start) + u64::from(r.len);
            if end(r.stored) > 1 << 32 || end(r.shown) > 1 << 32 {
                return Err(format!("a range in '{text}' goes past the largest id"));
            }
            out.push(r);
        }
        for (i, a) in out.iter().enumerate() {
            for b in &out[i + 1..] {
                let overlap = |x: u32, y: u32| {
                    u64::from(x) < u64::from(y) + u64::from(b.len)
                        && u64::from(y) < u64::from(x) + u64::from(a.len)
                };
                if overlap(a.stored, b.stored) || overlap(a.shown, b.shown) {
                    return Err(format!("the ranges in '{text}' overlap"));
                }
            }
        }
        Ok(Ranges(out))
    }

    /// The id a stored id shows as.
    pub fn to_shown(&self, stored: u32) -> u32 {
        if self.0.is_empty() {
            return stored;
        }
        self.0
            .iter()
            .find_map(|r| within(stored, r.stored, r.len).map(|o| r.shown + o))
            .unwrap_or(OVERFLOW)
    }

    /// The id to store for a shown one; None when no range covers it.
    pub fn to_stored(&self, shown: u32) -> Option<u32> {
        if self.0.is_empty() {
            return Some(shown);
        }
        self.0
            .iter()
            .find_map(|r| within(shown, r.shown, r.len).map(|o| r.stored + o))
    }
}

/// The whole translation of a mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdMap {
    pub uids: Ranges,
    pub gids: Ranges,
    /// `squash_to_uid=N` (or 0 for `squash_to_root`): every owner shows as this.
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
}

impl IdMap {
    pub fn is_identity(&self) -> bool {
        *self == IdMap::default()
    }

    /// The owner a stored `(uid, gid)` shows as.
    pub fn shown(&self, uid: u32, gid: u32) -> (u32, u32) {
        (
            self.squash_uid.unwrap_or_else(|| self.uids.to_shown(uid)),
            self.squash_gid.unwrap_or_else(|| self.gids.to_shown(gid)),
        )
    }

    /// The uid to store for a shown one (chown, a creator); EINVAL for an id no range
    /// covers, as chown(2) refuses an id the filesystem cannot hold.
    pub fn stored_uid(&self, shown: u32) -> Result<u32> {
        self.uids.to_stored(shown).ok_or(Errno::EINVAL)
    }

    pub fn stored_gid(&self, shown: u32) -> Result<u32> {
        self.gids.to_stored(shown).ok_or(Errno::EINVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_podman_form_and_several_triples() {
        let r = Ranges::parse(":0:100000:65536").unwrap_or_default();
        assert_eq!(
            r.0,
            vec![Range {
                stored: 0,
                shown: 100000,
                len: 65536
            }]
        );
        let r = Ranges::parse("0:1000:1:1:110000:65536").unwrap_or_default();
        assert_eq!(r.0.len(), 2);
        assert_eq!(r.to_shown(0), 1000);
        assert_eq!(r.to_shown(1), 110000);
        assert_eq!(r.to_shown(1000), 110999);
        assert_eq!(r.to_shown(65537), OVERFLOW);
        assert_eq!(r.to_stored(110999), Some(1000));
        assert_eq!(r.to_stored(1000), Some(0));
        assert_eq!(r.to_stored(5), None);
    }

    #[test]
    fn refuses_bad_syntax_and_overlaps() {
        for bad in [
            "",
            ":",
            "0:1",
            "0:1:2:3",
            "a:1:1",
            "0:1:0",
            "0:4294967295:2",
            "-1:0:1",
        ] {
            assert!(Ranges::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(
            Ranges::parse("0:100:10:5:200:10").is_err(),
            "stored overlap"
        );
        assert!(
            Ranges::parse("0:100:10:20:105:10").is_err(),
            "shown overlap"
        );
        assert!(
            Ranges::parse("0:100:10:10:110:10").is_ok(),
            "adjacent is fine"
        );
    }

    #[test]
    fn squash_wins_and_identity_passes_through() {
        let m = IdMap::default();
        assert!(m.is_identity());
        assert_eq!(m.shown(7, 8), (7, 8));
        assert_eq!(m.stored_uid(7), Ok(7));
        let m = IdMap {
            squash_uid: Some(0),
            squash_gid: Some(5),
            ..IdMap::default()
        };
        assert_eq!(m.shown(1000, 1000), (0, 5));
    }
}
