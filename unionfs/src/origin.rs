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

/// The file handle in an origin record: its type and bytes, as `open_by_handle_at` takes
/// them.
pub fn handle(value: &[u8]) -> Option<(i32, &[u8])> {
    if value.len() < HEADER + UUID_LEN || value.get(1) != Some(&OVL_FH_MAGIC) {
        return None;
    }
    let len = usize::from(*value.get(2)?).min(value.len());
    Some((
        i32::from(*value.get(4)?),
        value.get(HEADER + UUID_LEN..len)?,
    ))
}

/// The inode number an origin record names, read from the handle's layout where that is
/// known: `FILEID_INO32_GEN*` (ext4, xfs: inode number first), the same type with three
/// words (tmpfs: generation, then the 64-bit inode number) and `FILEID_INO64_GEN*`. A
/// fallback for when handles cannot be opened (see `Layers::origin_ino`).
pub fn decode_ino(value: &[u8]) -> Option<u64> {
    let (kind, fid) = handle(value)?;
    let word = |i: usize| -> Option<u64> {
        let b: [u8; 4] = fid.get(i * 4..i * 4 + 4)?.try_into().ok()?;
        Some(u64::from(u32::from_le_bytes(b)))
    };
    match (kind, fid.len()) {
        (1, 12) => Some(word(1)? | (word(2)? << 32)),
        (1 | 2, _) => word(0),
        (0x81 | 0x82, _) => Some(word(0)? | (word(1)? << 32)),
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

    #[test]
    fn decodes_a_tmpfs_record() {
        // Written by the kernel's overlay for inode 4 of a tmpfs lower: generation, then
        // the inode number in two words.
        let mut v: Vec<u8> = vec![0x00, 0xfb, 0x21, 0x00, 0x01];
        v.extend_from_slice(&[0xc0; 16]);
        v.extend_from_slice(&[0x2c, 0x93, 0x6c, 0x04, 4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_ino(&v), Some(4));
        assert_eq!(handle(&v).map(|(k, f)| (k, f.len())), Some((1, 12)));
    }
}
