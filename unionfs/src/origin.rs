//! The origin record of a copied-up object, in the kernel's format (`struct ovl_fb` in the
//! `*.overlay.origin` xattr), so that `st_ino` survives copy-up and remounts, and so that
//! the kernel's overlay reading our upper finds the same origin it would have written.

const OVL_FH_VERSION: u8 = 0;
const OVL_FH_MAGIC: u8 = 0xfb;
/// version, magic, len, flags, type
const HEADER: usize = 5;
const UUID_LEN: usize = 16;

/// Encodes a lower object's file handle (`name_to_handle_at`'s type and bytes) as the
/// kernel does.
pub fn encode(handle: (i32, Vec<u8>), uuid: &[u8; 16]) -> Option<Vec<u8>> {
    let (kind, fid) = handle;
    let len = HEADER + UUID_LEN + fid.len();
    let mut v = Vec::with_capacity(len);
    v.push(OVL_FH_VERSION);
    v.push(OVL_FH_MAGIC);
    v.push(u8::try_from(len).ok()?);
    // Flags 0: the kernel on a little-endian machine writes no flag bits here.
    v.push(0);
    v.push(u8::try_from(kind).ok()?);
    v.extend_from_slice(uuid);
    v.extend_from_slice(&fid);
    Some(v)
}

/// The inode number an origin record names, for the handle types whose layout is public
/// (`FILEID_INO32_GEN*`, `FILEID_INO64_GEN*`); None for anything else.
pub fn decode_ino(value: &[u8]) -> Option<u64> {
    if value.len() < HEADER + UUID_LEN || value[1] != OVL_FH_MAGIC {
        return None;
    }
    let kind = value[4];
    let fid = &value[HEADER + UUID_LEN..];
    match kind {
        1 | 2 => {
            let b: [u8; 4] = fid.get(0..4)?.try_into().ok()?;
            Some(u64::from(u32::from_le_bytes(b)))
        }
        0x81 | 0x82 => {
            let b: [u8; 8] = fid.get(0..8)?.try_into().ok()?;
            Some(u64::from_le_bytes(b))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_kernels_record() {
        // Written by the kernel's overlay on ext4 for inode 10010829.
        let v: Vec<u8> = [
            0x00, 0xfb, 0x1d, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xcd,
            0xc0, 0x98, 0x00, 0xf7, 0x3a, 0x2e, 0x12,
        ]
        .to_vec();
        assert_eq!(decode_ino(&v), Some(10010829));
        assert_eq!(decode_ino(&v[..10]), None);
    }
}
