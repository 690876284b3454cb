//! Unit tests of the wire format: struct sizes and field offsets against the kernel
//! header's (include/uapi/linux/fuse.h, written out here as `repr(C)` mirrors so the
//! compiler computes the C layout), decoding of short and malformed requests, dirent
//! packing, and the server's answers to requests it can serve without a union.

#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::IoSlice;
use std::mem::{offset_of, size_of};
use std::sync::{Arc, Mutex};

use crate::errno::Errno;
use crate::wire::abi::{self, off, opcode, size};
use crate::wire::reply::{self, DirBuf, FuseAttr};
use crate::wire::request::{decode, fixed_size, Header, Op, Time};

// The kernel's structs, field for field (C layout), to hold our offsets to.
#[repr(C)]
struct fuse_in_header {
    len: u32,
    opcode: u32,
    unique: u64,
    nodeid: u64,
    uid: u32,
    gid: u32,
    pid: u32,
    total_extlen: u16,
    padding: u16,
}
#[repr(C)]
struct fuse_attr {
    ino: u64,
    size: u64,
    blocks: u64,
    atime: u64,
    mtime: u64,
    ctime: u64,
    atimensec: u32,
    mtimensec: u32,
    ctimensec: u32,
    mode: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    rdev: u32,
    blksize: u32,
    flags: u32,
}
#[repr(C)]
struct fuse_entry_out {
    nodeid: u64,
    generation: u64,
    entry_valid: u64,
    attr_valid: u64,
    entry_valid_nsec: u32,
    attr_valid_nsec: u32,
    attr: fuse_attr,
}
#[repr(C)]
struct fuse_attr_out {
    attr_valid: u64,
    attr_valid_nsec: u32,
    dummy: u32,
    attr: fuse_attr,
}
#[repr(C)]
struct fuse_setattr_in {
    valid: u32,
    padding: u32,
    fh: u64,
    size: u64,
    lock_owner: u64,
    atime: u64,
    mtime: u64,
    ctime: u64,
    atimensec: u32,
    mtimensec: u32,
    ctimensec: u32,
    mode: u32,
    unused4: u32,
    uid: u32,
    gid: u32,
    unused5: u32,
}
#[repr(C)]
struct fuse_rw_in {
    fh: u64,
    offset: u64,
    size: u32,
    rw_flags: u32,
    lock_owner: u64,
    flags: u32,
    padding: u32,
}
#[repr(C)]
struct fuse_init_in {
    major: u32,
    minor: u32,
    max_readahead: u32,
    flags: u32,
    flags2: u32,
    unused: [u32; 11],
}
#[repr(C)]
struct fuse_init_out {
    major: u32,
    minor: u32,
    max_readahead: u32,
    flags: u32,
    max_background: u16,
    congestion_threshold: u16,
    max_write: u32,
    time_gran: u32,
    max_pages: u16,
    map_alignment: u16,
    flags2: u32,
    max_stack_depth: u32,
    request_timeout: u16,
    unused: [u16; 11],
}
#[repr(C)]
struct fuse_open_out {
    fh: u64,
    open_flags: u32,
    backing_id: i32,
}
#[repr(C)]
struct fuse_kstatfs {
    blocks: u64,
    bfree: u64,
    bavail: u64,
    files: u64,
    ffree: u64,
    bsize: u32,
    namelen: u32,
    frsize: u32,
    padding: u32,
    spare: [u32; 6],
}
#[repr(C)]
struct fuse_dirent {
    ino: u64,
    off: u64,
    namelen: u32,
    typ: u32,
}
#[repr(C)]
struct fuse_copy_file_range_in {
    fh_in: u64,
    off_in: u64,
    nodeid_out: u64,
    fh_out: u64,
    off_out: u64,
    len: u64,
    flags: u64,
}
#[repr(C)]
struct fuse_file_lock {
    start: u64,
    end: u64,
    typ: u32,
    pid: u32,
}
#[repr(C)]
struct fuse_lk_in {
    fh: u64,
    owner: u64,
    lk: fuse_file_lock,
    lk_flags: u32,
    padding: u32,
}
#[repr(C)]
struct fuse_ioctl_in {
    fh: u64,
    flags: u32,
    cmd: u32,
    arg: u64,
    in_size: u32,
    out_size: u32,
}
#[repr(C)]
struct fuse_ioctl_out {
    result: i32,
    flags: u32,
    in_iovs: u32,
    out_iovs: u32,
}
#[repr(C)]
struct fuse_fallocate_in {
    fh: u64,
    offset: u64,
    length: u64,
    mode: u32,
    padding: u32,
}
#[repr(C)]
struct fuse_lseek_in {
    fh: u64,
    offset: u64,
    whence: u32,
    padding: u32,
}
#[repr(C)]
struct fuse_setxattr_in {
    size: u32,
    flags: u32,
    setxattr_flags: u32,
    padding: u32,
}
#[repr(C)]
struct fuse_create_in {
    flags: u32,
    mode: u32,
    umask: u32,
    open_flags: u32,
}
#[repr(C)]
struct fuse_notify_inval_entry_out {
    parent: u64,
    namelen: u32,
    flags: u32,
}

#[test]
fn struct_sizes_are_the_kernels() {
    assert_eq!(size::IN_HEADER, size_of::<fuse_in_header>());
    assert_eq!(size::OUT_HEADER, 16);
    assert_eq!(size::ATTR, size_of::<fuse_attr>());
    assert_eq!(size::ENTRY_OUT, size_of::<fuse_entry_out>());
    assert_eq!(size::ATTR_OUT, size_of::<fuse_attr_out>());
    assert_eq!(size::SETATTR_IN, size_of::<fuse_setattr_in>());
    assert_eq!(size::READ_IN, size_of::<fuse_rw_in>());
    assert_eq!(size::WRITE_IN, size_of::<fuse_rw_in>());
    assert_eq!(size::INIT_IN, size_of::<fuse_init_in>());
    assert_eq!(size::INIT_OUT, size_of::<fuse_init_out>());
    assert_eq!(size::OPEN_OUT, size_of::<fuse_open_out>());
    assert_eq!(size::STATFS_OUT, size_of::<fuse_kstatfs>());
    assert_eq!(size::DIRENT, size_of::<fuse_dirent>());
    assert_eq!(
        size::DIRENTPLUS,
        size_of::<fuse_entry_out>() + size_of::<fuse_dirent>()
    );
    assert_eq!(
        size::COPY_FILE_RANGE_IN,
        size_of::<fuse_copy_file_range_in>()
    );
    assert_eq!(size::LK_IN, size_of::<fuse_lk_in>());
    assert_eq!(size::IOCTL_IN, size_of::<fuse_ioctl_in>());
    assert_eq!(size::IOCTL_OUT, size_of::<fuse_ioctl_out>());
    assert_eq!(size::FALLOCATE_IN, size_of::<fuse_fallocate_in>());
    assert_eq!(size::LSEEK_IN, size_of::<fuse_lseek_in>());
    assert_eq!(size::SETXATTR_IN, size_of::<fuse_setxattr_in>());
    assert_eq!(size::CREATE_IN, size_of::<fuse_create_in>());
    assert_eq!(
        size::NOTIFY_INVAL_ENTRY_OUT,
        size_of::<fuse_notify_inval_entry_out>()
    );
}

#[test]
fn field_offsets_are_the_kernels() {
    assert_eq!(off::IN_LEN, offset_of!(fuse_in_header, len));
    assert_eq!(off::IN_OPCODE, offset_of!(fuse_in_header, opcode));
    assert_eq!(off::IN_UNIQUE, offset_of!(fuse_in_header, unique));
    assert_eq!(off::IN_NODEID, offset_of!(fuse_in_header, nodeid));
    assert_eq!(off::IN_UID, offset_of!(fuse_in_header, uid));
    assert_eq!(off::IN_GID, offset_of!(fuse_in_header, gid));
    assert_eq!(off::IN_PID, offset_of!(fuse_in_header, pid));
    assert_eq!(
        off::IN_TOTAL_EXTLEN,
        offset_of!(fuse_in_header, total_extlen)
    );
    assert_eq!(off::ATTR_INO, offset_of!(fuse_attr, ino));
    assert_eq!(off::ATTR_SIZE, offset_of!(fuse_attr, size));
    assert_eq!(off::ATTR_BLOCKS, offset_of!(fuse_attr, blocks));
    assert_eq!(off::ATTR_ATIME, offset_of!(fuse_attr, atime));
    assert_eq!(off::ATTR_MTIME, offset_of!(fuse_attr, mtime));
    assert_eq!(off::ATTR_CTIME, offset_of!(fuse_attr, ctime));
    assert_eq!(off::ATTR_ATIMENSEC, offset_of!(fuse_attr, atimensec));
    assert_eq!(off::ATTR_MTIMENSEC, offset_of!(fuse_attr, mtimensec));
    assert_eq!(off::ATTR_CTIMENSEC, offset_of!(fuse_attr, ctimensec));
    assert_eq!(off::ATTR_MODE, offset_of!(fuse_attr, mode));
    assert_eq!(off::ATTR_NLINK, offset_of!(fuse_attr, nlink));
    assert_eq!(off::ATTR_UID, offset_of!(fuse_attr, uid));
    assert_eq!(off::ATTR_GID, offset_of!(fuse_attr, gid));
    assert_eq!(off::ATTR_RDEV, offset_of!(fuse_attr, rdev));
    assert_eq!(off::ATTR_BLKSIZE, offset_of!(fuse_attr, blksize));
    assert_eq!(off::ATTR_FLAGS, offset_of!(fuse_attr, flags));
    assert_eq!(off::ENTRY_NODEID, offset_of!(fuse_entry_out, nodeid));
    assert_eq!(
        off::ENTRY_GENERATION,
        offset_of!(fuse_entry_out, generation)
    );
    assert_eq!(off::ENTRY_VALID, offset_of!(fuse_entry_out, entry_valid));
    assert_eq!(
        off::ENTRY_ATTR_VALID,
        offset_of!(fuse_entry_out, attr_valid)
    );
    assert_eq!(
        off::ENTRY_VALID_NSEC,
        offset_of!(fuse_entry_out, entry_valid_nsec)
    );
    assert_eq!(
        off::ENTRY_ATTR_VALID_NSEC,
        offset_of!(fuse_entry_out, attr_valid_nsec)
    );
    assert_eq!(off::ENTRY_ATTR, offset_of!(fuse_entry_out, attr));
    assert_eq!(16, offset_of!(fuse_attr_out, attr));
    assert_eq!(off::SETATTR_VALID, offset_of!(fuse_setattr_in, valid));
    assert_eq!(off::SETATTR_FH, offset_of!(fuse_setattr_in, fh));
    assert_eq!(off::SETATTR_SIZE, offset_of!(fuse_setattr_in, size));
    assert_eq!(
        off::SETATTR_LOCK_OWNER,
        offset_of!(fuse_setattr_in, lock_owner)
    );
    assert_eq!(off::SETATTR_ATIME, offset_of!(fuse_setattr_in, atime));
    assert_eq!(off::SETATTR_MTIME, offset_of!(fuse_setattr_in, mtime));
    assert_eq!(off::SETATTR_CTIME, offset_of!(fuse_setattr_in, ctime));
    assert_eq!(
        off::SETATTR_ATIMENSEC,
        offset_of!(fuse_setattr_in, atimensec)
    );
    assert_eq!(
        off::SETATTR_MTIMENSEC,
        offset_of!(fuse_setattr_in, mtimensec)
    );
    assert_eq!(
        off::SETATTR_CTIMENSEC,
        offset_of!(fuse_setattr_in, ctimensec)
    );
    assert_eq!(off::SETATTR_MODE, offset_of!(fuse_setattr_in, mode));
    assert_eq!(off::SETATTR_UID, offset_of!(fuse_setattr_in, uid));
    assert_eq!(off::SETATTR_GID, offset_of!(fuse_setattr_in, gid));
    assert_eq!(off::RW_FH, offset_of!(fuse_rw_in, fh));
    assert_eq!(off::RW_OFFSET, offset_of!(fuse_rw_in, offset));
    assert_eq!(off::RW_SIZE, offset_of!(fuse_rw_in, size));
    assert_eq!(off::RW_FLAGS, offset_of!(fuse_rw_in, rw_flags));
    assert_eq!(off::RW_LOCK_OWNER, offset_of!(fuse_rw_in, lock_owner));
    assert_eq!(off::RW_OPEN_FLAGS, offset_of!(fuse_rw_in, flags));
    assert_eq!(off::INIT_IN_MAJOR, offset_of!(fuse_init_in, major));
    assert_eq!(off::INIT_IN_MINOR, offset_of!(fuse_init_in, minor));
    assert_eq!(
        off::INIT_IN_MAX_READAHEAD,
        offset_of!(fuse_init_in, max_readahead)
    );
    assert_eq!(off::INIT_IN_FLAGS, offset_of!(fuse_init_in, flags));
    assert_eq!(off::INIT_IN_FLAGS2, offset_of!(fuse_init_in, flags2));
    assert_eq!(off::INIT_OUT_MAJOR, offset_of!(fuse_init_out, major));
    assert_eq!(off::INIT_OUT_MINOR, offset_of!(fuse_init_out, minor));
    assert_eq!(
        off::INIT_OUT_MAX_READAHEAD,
        offset_of!(fuse_init_out, max_readahead)
    );
    assert_eq!(off::INIT_OUT_FLAGS, offset_of!(fuse_init_out, flags));
    assert_eq!(
        off::INIT_OUT_MAX_BACKGROUND,
        offset_of!(fuse_init_out, max_background)
    );
    assert_eq!(
        off::INIT_OUT_CONGESTION_THRESHOLD,
        offset_of!(fuse_init_out, congestion_threshold)
    );
    assert_eq!(
        off::INIT_OUT_MAX_WRITE,
        offset_of!(fuse_init_out, max_write)
    );
    assert_eq!(
        off::INIT_OUT_TIME_GRAN,
        offset_of!(fuse_init_out, time_gran)
    );
    assert_eq!(
        off::INIT_OUT_MAX_PAGES,
        offset_of!(fuse_init_out, max_pages)
    );
    assert_eq!(
        off::INIT_OUT_MAP_ALIGNMENT,
        offset_of!(fuse_init_out, map_alignment)
    );
    assert_eq!(off::INIT_OUT_FLAGS2, offset_of!(fuse_init_out, flags2));
    assert_eq!(
        off::INIT_OUT_MAX_STACK_DEPTH,
        offset_of!(fuse_init_out, max_stack_depth)
    );
    assert_eq!(off::OPEN_OUT_FH, offset_of!(fuse_open_out, fh));
    assert_eq!(off::OPEN_OUT_FLAGS, offset_of!(fuse_open_out, open_flags));
    assert_eq!(
        off::OPEN_OUT_BACKING_ID,
        offset_of!(fuse_open_out, backing_id)
    );
    assert_eq!(off::DIRENT_INO, offset_of!(fuse_dirent, ino));
    assert_eq!(off::DIRENT_OFF, offset_of!(fuse_dirent, off));
    assert_eq!(off::DIRENT_NAMELEN, offset_of!(fuse_dirent, namelen));
    assert_eq!(off::DIRENT_TYPE, offset_of!(fuse_dirent, typ));
    assert_eq!(off::DIRENT_NAME, size_of::<fuse_dirent>());
    assert_eq!(off::STATFS_BLOCKS, offset_of!(fuse_kstatfs, blocks));
    assert_eq!(off::STATFS_BFREE, offset_of!(fuse_kstatfs, bfree));
    assert_eq!(off::STATFS_BAVAIL, offset_of!(fuse_kstatfs, bavail));
    assert_eq!(off::STATFS_FILES, offset_of!(fuse_kstatfs, files));
    assert_eq!(off::STATFS_FFREE, offset_of!(fuse_kstatfs, ffree));
    assert_eq!(off::STATFS_BSIZE, offset_of!(fuse_kstatfs, bsize));
    assert_eq!(off::STATFS_NAMELEN, offset_of!(fuse_kstatfs, namelen));
    assert_eq!(off::STATFS_FRSIZE, offset_of!(fuse_kstatfs, frsize));
    assert_eq!(off::CFR_FH_IN, offset_of!(fuse_copy_file_range_in, fh_in));
    assert_eq!(off::CFR_OFF_IN, offset_of!(fuse_copy_file_range_in, off_in));
    assert_eq!(
        off::CFR_NODEID_OUT,
        offset_of!(fuse_copy_file_range_in, nodeid_out)
    );
    assert_eq!(off::CFR_FH_OUT, offset_of!(fuse_copy_file_range_in, fh_out));
    assert_eq!(
        off::CFR_OFF_OUT,
        offset_of!(fuse_copy_file_range_in, off_out)
    );
    assert_eq!(off::CFR_LEN, offset_of!(fuse_copy_file_range_in, len));
    assert_eq!(off::CFR_FLAGS, offset_of!(fuse_copy_file_range_in, flags));
    // Offsets request.rs reads without a named constant.
    assert_eq!(24, offset_of!(fuse_ioctl_in, in_size));
    assert_eq!(28, offset_of!(fuse_ioctl_in, out_size));
    assert_eq!(12, offset_of!(fuse_ioctl_in, cmd));
    assert_eq!(24, offset_of!(fuse_fallocate_in, mode));
    assert_eq!(16, offset_of!(fuse_lseek_in, whence));
    assert_eq!(8, offset_of!(fuse_setxattr_in, setxattr_flags));
    assert_eq!(12, offset_of!(fuse_create_in, open_flags));
}

fn header(op: u32, unique: u64, nodeid: u64, body_len: usize) -> Vec<u8> {
    let mut h = vec![0u8; size::IN_HEADER];
    let len = (size::IN_HEADER + body_len) as u32;
    h[0..4].copy_from_slice(&len.to_ne_bytes());
    h[4..8].copy_from_slice(&op.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h[16..24].copy_from_slice(&nodeid.to_ne_bytes());
    h[24..28].copy_from_slice(&1000u32.to_ne_bytes());
    h[28..32].copy_from_slice(&100u32.to_ne_bytes());
    h[32..36].copy_from_slice(&42u32.to_ne_bytes());
    h
}

fn hdr(op: u32) -> Header {
    Header::parse(&header(op, 7, 1, 0)).unwrap_or_else(|e| panic!("header: {e:?}"))
}

#[test]
fn header_fields_are_read_where_the_kernel_puts_them() {
    let h = Header::parse(&header(opcode::LOOKUP, 99, 5, 3)).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(h.opcode, opcode::LOOKUP);
    assert_eq!(h.unique, 99);
    assert_eq!(h.nodeid, 5);
    assert_eq!((h.uid, h.gid, h.pid), (1000, 100, 42));
    assert_eq!(h.len, 43);
    assert_eq!(Header::parse(&[0u8; 39]), Err(Errno::EINVAL));
}

/// Every opcode with a fixed struct, given each shorter length, is EINVAL, never a
/// panic; names without their NUL too.
#[test]
fn short_or_malformed_requests_are_einval() {
    for op in 1..=51u32 {
        // INIT's and SETXATTR's short forms are valid (older kernels, no SETXATTR_EXT).
        let want = match op {
            opcode::INIT => size::INIT_IN_COMPAT,
            _ => fixed_size(op, false),
        };
        let full = vec![0u8; want];
        for cut in 0..want {
            let r = decode(&hdr(op), &full[..cut], b"name\0value");
            assert_eq!(
                r.err(),
                Some(Errno::EINVAL),
                "opcode {op} with {cut} of {want} bytes"
            );
        }
    }
    for op in [
        opcode::LOOKUP,
        opcode::UNLINK,
        opcode::RMDIR,
        opcode::MKDIR,
        opcode::CREATE,
    ] {
        let fixed = vec![0u8; fixed_size(op, false)];
        assert_eq!(
            decode(&hdr(op), &fixed, b"no-nul").err(),
            Some(Errno::EINVAL)
        );
    }
    // A symlink needs two names, a rename two.
    assert_eq!(
        decode(&hdr(opcode::SYMLINK), &[], b"a\0b").err(),
        Some(Errno::EINVAL)
    );
    assert_eq!(
        decode(&hdr(opcode::RENAME), &[0; 8], b"a\0").err(),
        Some(Errno::EINVAL)
    );
    // A write whose data is shorter than its size.
    let mut w = vec![0u8; size::WRITE_IN];
    w[off::RW_SIZE..off::RW_SIZE + 4].copy_from_slice(&10u32.to_ne_bytes());
    assert_eq!(
        decode(&hdr(opcode::WRITE), &w, b"short").err(),
        Some(Errno::EINVAL)
    );
    // A batch forget counting more entries than it carries (no allocation on trust).
    let mut b = vec![0u8; 8];
    b[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
    assert_eq!(
        decode(&hdr(opcode::BATCH_FORGET), &b, &[0; 16]).err(),
        Some(Errno::EINVAL)
    );
}

#[test]
fn requests_decode_to_their_fields() {
    let r = decode(&hdr(opcode::LOOKUP), &[], b"etc\0");
    assert_eq!(
        r,
        Ok(Op::Lookup {
            name: OsStr::new("etc")
        })
    );
    let r = decode(&hdr(opcode::SYMLINK), &[], b"l\0/target\0");
    assert_eq!(
        r,
        Ok(Op::Symlink {
            name: OsStr::new("l"),
            target: OsStr::new("/target")
        })
    );
    let mut s = vec![0u8; size::SETATTR_IN];
    let valid = abi::fattr::SIZE
        | abi::fattr::KILL_SUIDGID
        | abi::fattr::ATIME
        | abi::fattr::MTIME
        | abi::fattr::MTIME_NOW;
    s[0..4].copy_from_slice(&valid.to_ne_bytes());
    s[off::SETATTR_SIZE..off::SETATTR_SIZE + 8].copy_from_slice(&5u64.to_ne_bytes());
    s[off::SETATTR_ATIME..off::SETATTR_ATIME + 8].copy_from_slice(&(-2i64).to_ne_bytes());
    s[off::SETATTR_ATIMENSEC..off::SETATTR_ATIMENSEC + 4].copy_from_slice(&7u32.to_ne_bytes());
    let Ok(Op::Setattr(a)) = decode(&hdr(opcode::SETATTR), &s, &[]) else {
        panic!("setattr not decoded");
    };
    assert_eq!(a.size, Some(5));
    assert_eq!(a.atime, Some(Time::At(-2, 7)));
    assert_eq!(a.mtime, Some(Time::Now));
    assert_eq!((a.mode, a.uid, a.fh), (None, None, None));
    assert_ne!(a.valid & abi::fattr::KILL_SUIDGID, 0);
    // SETXATTR: the extended struct carries the ACL kill flag; the compat one does not.
    let mut x = vec![0u8; 16];
    x[0..4].copy_from_slice(&2u32.to_ne_bytes());
    x[8..12].copy_from_slice(&abi::SETXATTR_ACL_KILL_SGID.to_ne_bytes());
    let r = decode(&hdr(opcode::SETXATTR), &x, b"user.a\0xy");
    assert_eq!(
        r,
        Ok(Op::Setxattr {
            flags: 0,
            setxattr_flags: abi::SETXATTR_ACL_KILL_SGID,
            name: OsStr::new("user.a"),
            value: b"xy"
        })
    );
    let r = decode(&hdr(opcode::SETXATTR), &x[..8], b"user.a\0xy");
    assert!(matches!(
        r,
        Ok(Op::Setxattr {
            setxattr_flags: 0,
            ..
        })
    ));
    assert_eq!(fixed_size(opcode::SETXATTR, false), 8);
    assert_eq!(fixed_size(opcode::SETXATTR, true), 16);
    // INIT: flags2 only counts with FUSE_INIT_EXT.
    let mut i = vec![0u8; size::INIT_IN];
    i[0..4].copy_from_slice(&7u32.to_ne_bytes());
    i[4..8].copy_from_slice(&44u32.to_ne_bytes());
    let flags = (abi::init::INIT_EXT | abi::init::POSIX_ACL) as u32;
    i[12..16].copy_from_slice(&flags.to_ne_bytes());
    i[16..20].copy_from_slice(&((abi::init::PASSTHROUGH >> 32) as u32).to_ne_bytes());
    let Ok(Op::Init(init)) = decode(&hdr(opcode::INIT), &i, &[]) else {
        panic!("init not decoded");
    };
    assert_eq!(
        init.flags,
        abi::init::INIT_EXT | abi::init::POSIX_ACL | abi::init::PASSTHROUGH
    );
    // An older kernel: 16 bytes, no FUSE_INIT_EXT.
    i[12..16].copy_from_slice(&(abi::init::POSIX_ACL as u32).to_ne_bytes());
    let Ok(Op::Init(old)) = decode(&hdr(opcode::INIT), &i[..16], &[]) else {
        panic!("old init not decoded");
    };
    assert_eq!(old.minor, 44);
    assert_eq!(decode(&hdr(9999), &[], &[]), Ok(Op::Unknown(9999)));
}

#[test]
fn dirents_are_packed_to_8_bytes_within_the_size_asked() {
    let mut d = DirBuf::new(100);
    // 24 + 1 -> 32; 24 + 8 -> 32; 24 + 9 -> 40 does not fit in the 36 left.
    assert!(d.push(5, 1, 4, OsStr::new(".")));
    assert!(d.push(6, 2, 8, OsStr::new("eightchr")));
    assert!(!d.push(7, 3, 8, OsStr::new("ninechars")));
    let b = d.bytes();
    assert_eq!(b.len(), 64);
    assert_eq!(&b[0..8], &5u64.to_ne_bytes());
    assert_eq!(&b[8..16], &1u64.to_ne_bytes());
    assert_eq!(&b[16..20], &1u32.to_ne_bytes());
    assert_eq!(&b[20..24], &4u32.to_ne_bytes());
    assert_eq!(b[24], b'.');
    assert!(b[25..32].iter().all(|&x| x == 0), "padding is zero");
    assert_eq!(&b[32..40], &6u64.to_ne_bytes());
    assert_eq!(&b[56..64], b"eightchr");
    // Plus: entry_out, then the dirent, the whole padded.
    let mut p = DirBuf::new(4096);
    let attr = FuseAttr {
        ino: 77,
        mode: libc::S_IFREG | 0o644,
        ..FuseAttr::default()
    };
    assert!(p.push_plus(
        77,
        &attr,
        std::time::Duration::from_secs(3),
        9,
        OsStr::new("abc")
    ));
    let b = p.bytes();
    assert_eq!(b.len(), abi::rec_align(size::DIRENTPLUS + 3));
    assert_eq!(&b[0..8], &77u64.to_ne_bytes());
    assert_eq!(&b[16..24], &3u64.to_ne_bytes());
    let dirent = &b[size::ENTRY_OUT..];
    assert_eq!(&dirent[0..8], &77u64.to_ne_bytes());
    assert_eq!(&dirent[8..16], &9u64.to_ne_bytes());
    assert_eq!(&dirent[20..24], &(libc::DT_REG as u32).to_ne_bytes());
    assert_eq!(&dirent[24..27], b"abc");
    // Nothing fits in a buffer smaller than one record.
    assert!(!DirBuf::new(20).push(1, 1, 4, OsStr::new("x")));
}

#[test]
fn replies_put_fields_at_the_kernels_offsets() {
    let a = FuseAttr {
        ino: 3,
        size: 10,
        atime: reply::time(std::time::UNIX_EPOCH - std::time::Duration::new(1, 200_000_000)),
        mode: libc::S_IFDIR | 0o755,
        uid: 5,
        ..FuseAttr::default()
    };
    assert_eq!(a.atime, (-2, 800_000_000));
    let e = reply::entry_out(
        3,
        &a,
        std::time::Duration::from_millis(1500),
        std::time::Duration::ZERO,
    );
    let at = |o: usize| u64::from_ne_bytes(e.0[o..o + 8].try_into().unwrap_or([0; 8]));
    assert_eq!(at(off::ENTRY_NODEID), 3);
    assert_eq!(at(off::ENTRY_VALID), 1);
    assert_eq!(
        &e.0[off::ENTRY_VALID_NSEC..off::ENTRY_VALID_NSEC + 4],
        &500_000_000u32.to_ne_bytes()
    );
    assert_eq!(at(off::ENTRY_ATTR + off::ATTR_SIZE), 10);
    assert_eq!(at(off::ENTRY_ATTR + off::ATTR_ATIME) as i64, -2);
    let m = off::ENTRY_ATTR + off::ATTR_MODE;
    assert_eq!(&e.0[m..m + 4], &(libc::S_IFDIR | 0o755).to_ne_bytes());
    let o = reply::open_out(9, abi::fopen::PASSTHROUGH, 4);
    assert_eq!(&o.0[12..16], &4u32.to_ne_bytes());
    let i = reply::init_out(&reply::InitOut {
        flags: abi::init::PASSTHROUGH | abi::init::POSIX_ACL,
        max_pages: 256,
        max_stack_depth: 1,
        ..reply::InitOut::default()
    });
    assert_eq!(&i.0[12..16], &(abi::init::POSIX_ACL as u32).to_ne_bytes());
    assert_eq!(
        &i.0[32..36],
        &((abi::init::PASSTHROUGH >> 32) as u32).to_ne_bytes()
    );
    assert_eq!(&i.0[28..30], &256u16.to_ne_bytes());
    assert_eq!(&i.0[36..40], &1u32.to_ne_bytes());
    let n = reply::inval_entry(8, OsStr::new("nm"));
    assert_eq!(n.len(), 16 + 3);
    assert_eq!(&n[8..12], &2u32.to_ne_bytes());
    assert_eq!(n[18], 0);
}

/// What a responder got.
type Got = Arc<Mutex<Vec<(u64, i32, Vec<u8>)>>>;

struct Capture(Got);

impl crate::wire::Responder for Capture {
    fn respond(self: Box<Self>, unique: u64, error: i32, body: &[IoSlice<'_>]) {
        let bytes = body.iter().flat_map(|b| b.iter().copied()).collect();
        if let Ok(mut g) = self.0.lock() {
            g.push((unique, error, bytes));
        }
    }
}

/// A server over an empty lower-only union, for requests that need no mount.
fn server() -> Option<crate::wire::server::Server> {
    let dir = std::env::temp_dir().join(format!("unionfs-wire-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let layers =
        crate::layer::Layers::open(&[dir], None, None, crate::layer::XattrNs::User).ok()?;
    let fs = crate::union::UnionFs::new(layers, crate::union::Config::default()).ok()?;
    Some(crate::wire::server::Server::new(
        fs,
        crate::wire::server::ServerOptions {
            dev: None,
            want_uring: false,
            access: crate::wire::server::Access::All,
        },
    ))
}

fn call(
    s: &dyn crate::wire::Handler,
    op: u32,
    fixed: &[u8],
    rest: &[u8],
) -> Vec<(u64, i32, Vec<u8>)> {
    let _ = s.fixed_size(op);
    let got: Got = Arc::default();
    let h = header(op, 11, abi::ROOT_ID, fixed.len() + rest.len());
    s.handle(
        crate::wire::RawRequest {
            header: &h,
            fixed,
            rest,
        },
        Box::new(Capture(Arc::clone(&got))),
    );
    let v = got.lock().map(|g| g.clone()).unwrap_or_default();
    v
}

#[test]
fn server_negotiates_init_answers_short_requests_with_einval_and_unknown_with_enosys() {
    use crate::wire::Handler;
    let Some(s) = server() else {
        panic!("no test union");
    };
    assert!(!s.initialized());
    let mut i = vec![0u8; size::INIT_IN];
    i[0..4].copy_from_slice(&7u32.to_ne_bytes());
    i[4..8].copy_from_slice(&44u32.to_ne_bytes());
    i[8..12].copy_from_slice(&(128u32 * 1024).to_ne_bytes());
    let offered = abi::init::INIT_EXT
        | abi::init::POSIX_ACL
        | abi::init::SETXATTR_EXT
        | abi::init::OVER_IO_URING
        | abi::init::DO_READDIRPLUS;
    i[12..16].copy_from_slice(&(offered as u32).to_ne_bytes());
    i[16..20].copy_from_slice(&((offered >> 32) as u32).to_ne_bytes());
    let r = call(&s, opcode::INIT, &i, &[]);
    assert_eq!(r.len(), 1);
    let (unique, err, body) = &r[0];
    assert_eq!((*unique, *err, body.len()), (11, 0, size::INIT_OUT));
    let flags = u32::from_ne_bytes(body[12..16].try_into().unwrap_or([0; 4]));
    let flags2 = u32::from_ne_bytes(body[32..36].try_into().unwrap_or([0; 4]));
    let granted = u64::from(flags) | u64::from(flags2) << 32;
    assert_eq!(
        granted & !offered,
        0,
        "nothing granted that was not offered"
    );
    assert_ne!(granted & abi::init::POSIX_ACL, 0);
    assert_ne!(granted & abi::init::SETXATTR_EXT, 0);
    assert_eq!(granted & abi::init::OVER_IO_URING, 0, "not asked for");
    assert!(s.initialized() && !s.uring_granted());
    assert_eq!(s.max_payload(), 1 << 20);
    assert_eq!(s.fixed_size(opcode::SETXATTR), 16);
    let max_write = u32::from_ne_bytes(body[20..24].try_into().unwrap_or([0; 4]));
    let max_pages = u16::from_ne_bytes(body[28..30].try_into().unwrap_or([0; 2]));
    assert_eq!(
        s.max_payload(),
        (max_write as usize).max(usize::from(max_pages) * 4096)
    );
    // A GETATTR a byte short: EINVAL, answered to its unique.
    let r = call(&s, opcode::GETATTR, &[0; 15], &[]);
    assert_eq!(r, vec![(11, -libc::EINVAL, vec![])]);
    // A LOOKUP whose name lacks its NUL.
    let r = call(&s, opcode::LOOKUP, &[], b"x");
    assert_eq!(r, vec![(11, -libc::EINVAL, vec![])]);
    // A miss is a negative entry: node id 0 with a TTL.
    let r = call(&s, opcode::LOOKUP, &[], b"missing\0");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].1, 0);
    assert_eq!(&r[0].2[0..8], &0u64.to_ne_bytes());
    assert_ne!(&r[0].2[16..24], &0u64.to_ne_bytes());
    assert_eq!(call(&s, 4242, &[], &[]), vec![(11, -libc::ENOSYS, vec![])]);
    // FORGET gets no reply.
    assert!(call(&s, opcode::FORGET, &1u64.to_ne_bytes(), &[]).is_empty());
    // READDIR of the root: `.` and `..`, packed.
    let r = call(&s, opcode::OPENDIR, &[0; 8], &[]);
    let fh = r.first().map(|x| x.2[0..8].to_vec()).unwrap_or_default();
    let mut rd = vec![0u8; size::READ_IN];
    rd[0..8].copy_from_slice(&fh);
    rd[16..20].copy_from_slice(&4096u32.to_ne_bytes());
    let r = call(&s, opcode::READDIR, &rd, &[]);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].2.len(), 64);
}

#[test]
fn uring_is_granted_only_when_wanted_and_offered() {
    use crate::wire::Handler;
    let dir = std::env::temp_dir().join(format!("unionfs-wire-u-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let Ok(layers) = crate::layer::Layers::open(&[dir], None, None, crate::layer::XattrNs::User)
    else {
        panic!("no layers");
    };
    let Ok(fs) = crate::union::UnionFs::new(layers, crate::union::Config::default()) else {
        panic!("no union");
    };
    let s = crate::wire::server::Server::new(
        fs,
        crate::wire::server::ServerOptions {
            dev: None,
            want_uring: true,
            access: crate::wire::server::Access::All,
        },
    );
    let mut i = vec![0u8; size::INIT_IN];
    i[0..4].copy_from_slice(&7u32.to_ne_bytes());
    i[4..8].copy_from_slice(&44u32.to_ne_bytes());
    let offered = abi::init::INIT_EXT | abi::init::OVER_IO_URING;
    i[12..16].copy_from_slice(&(offered as u32).to_ne_bytes());
    i[16..20].copy_from_slice(&((offered >> 32) as u32).to_ne_bytes());
    let _ = call(&s, opcode::INIT, &i, &[]);
    assert!(s.uring_granted());
}

#[test]
fn a_reply_dropped_unanswered_answers_eio() {
    let got: Got = Arc::default();
    drop(crate::wire::server::Reply::new(
        5,
        Box::new(Capture(Arc::clone(&got))),
    ));
    let v = got.lock().map(|g| g.clone()).unwrap_or_default();
    assert_eq!(v, vec![(5, -libc::EIO, vec![])]);
}
