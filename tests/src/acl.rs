//! POSIX ACLs in the kernel's xattr format (`system.posix_acl_access` and `_default`),
//! written and read in a short text form, `u::rw-,u:1000:---,g::r--,m::r--,o::r--`
//! (`getfacl -c` with commas), so that a scenario can set ACLs as another user on its
//! own thread (a `setfacl` child would not have the thread's credentials).

pub const ACCESS: &[u8] = b"system.posix_acl_access";
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

const TAGS: [(u16, &str); 6] = [
    (0x01, "u"),
    (0x02, "u"),
    (0x04, "g"),
    (0x08, "g"),
    (0x10, "m"),
    (0x20, "o"),
];

/// Encodes `u::rwx,u:ID:r-x,g::...,g:ID:...,m::...,o::...` (entries in the kernel's
/// order: owner, named users, group, named groups, mask, other).
pub fn encode(text: &str) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for e in text.split(',') {
        let mut parts = e.splitn(3, ':');
        let (kind, id, perm) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let named = !id.is_empty();
        let tag: u16 = match (kind, named) {
            ("u", false) => 0x01,
            ("u", true) => 0x02,
            ("g", false) => 0x04,
            ("g", true) => 0x08,
            ("m", _) => 0x10,
            ("o", _) => 0x20,
            _ => panic!("bad ACL entry {e:?}"),
        };
        let p = perm
            .chars()
            .zip([4u16, 2, 1])
            .filter(|(c, _)| *c != '-')
            .map(|(_, b)| b)
            .sum::<u16>();
        let id: u32 = if named {
            id.parse().expect("numeric id")
        } else {
            u32::MAX
        };
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&p.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

/// The text form of an ACL xattr value, or `<raw bytes>` when it is not one.
pub fn decode(b: &[u8]) -> String {
    let body = match b.split_first_chunk::<4>() {
        Some((h, rest)) if u32::from_le_bytes(*h) == 2 && rest.len() % 8 == 0 => rest,
        _ => return format!("<{}>", crate::ops::esc(b)),
    };
    let mut out = Vec::new();
    for c in body.chunks_exact(8) {
        let tag = u16::from_le_bytes([c[0], c[1]]);
        let perm = u16::from_le_bytes([c[2], c[3]]);
        let id = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        let name = TAGS.iter().find(|t| t.0 == tag).map_or("?", |t| t.1);
        let id = if tag == 0x02 || tag == 0x08 {
            id.to_string()
        } else {
            String::new()
        };
        let rwx: String = [(4, 'r'), (2, 'w'), (1, 'x')]
            .iter()
            .map(|&(bit, ch)| if perm & bit != 0 { ch } else { '-' })
            .collect();
        out.push(format!("{name}:{id}:{rwx}"));
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_round_trips() {
        let t = "u::rw-,u:1000:---,g::r--,g:50:rwx,m::r-x,o::r--";
        assert_eq!(super::decode(&super::encode(t)), t);
        assert_eq!(super::encode("u::rwx").len(), 12);
    }
}
