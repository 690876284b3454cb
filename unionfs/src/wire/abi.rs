//! The part of the FUSE ABI we serve (include/uapi/linux/fuse.h, protocol 7.42): opcodes,
//! flags, and the sizes and field offsets of the structs we read and write. Structs are
//! not mirrored as Rust types: `request.rs` reads fields at these offsets and `reply.rs`
//! writes them, in native byte order (the kernel's), with bounds checks, so that no
//! request the kernel sends, however short, can make us read out of bounds.

/// The protocol version we speak (7.42 added FUSE_OVER_IO_URING).
pub const KERNEL_VERSION: u32 = 7;
pub const KERNEL_MINOR_VERSION: u32 = 42;

/// The node id of the root.
pub const ROOT_ID: u64 = 1;

pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const NOTIFY_REPLY: u32 = 41;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
}

/// `fuse_notify_code`.
pub const NOTIFY_INVAL_ENTRY: i32 = 3;

/// INIT flags (`flags`, and `flags2` for bits 32..63 when FUSE_INIT_EXT is set).
pub mod init {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DONT_MASK: u64 = 1 << 6;
    pub const HAS_IOCTL_DIR: u64 = 1 << 11;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const POSIX_ACL: u64 = 1 << 20;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
    pub const SETXATTR_EXT: u64 = 1 << 29;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const PASSTHROUGH: u64 = 1 << 37;
    pub const OVER_IO_URING: u64 = 1 << 41;
}

/// `fuse_setattr_in.valid`.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// `fuse_open_out.open_flags`.
pub mod fopen {
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const CACHE_DIR: u32 = 1 << 3;
    pub const PASSTHROUGH: u32 = 1 << 7;
}

pub const GETATTR_FH: u32 = 1 << 0;
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
pub const FSYNC_FDATASYNC: u32 = 1 << 0;
pub const OPEN_KILL_SUIDGID: u32 = 1 << 0;
pub const SETXATTR_ACL_KILL_SGID: u32 = 1 << 0;

/// Sizes of the structs (the kernel's `sizeof`).
pub mod size {
    pub const IN_HEADER: usize = 40;
    pub const OUT_HEADER: usize = 16;
    pub const ATTR: usize = 88;
    pub const ENTRY_OUT: usize = 40 + ATTR;
    pub const ATTR_OUT: usize = 16 + ATTR;
    pub const FORGET_IN: usize = 8;
    pub const FORGET_ONE: usize = 16;
    pub const BATCH_FORGET_IN: usize = 8;
    pub const GETATTR_IN: usize = 16;
    pub const SETATTR_IN: usize = 88;
    pub const MKNOD_IN: usize = 16;
    pub const MKDIR_IN: usize = 8;
    pub const RENAME_IN: usize = 8;
    pub const RENAME2_IN: usize = 16;
    pub const LINK_IN: usize = 8;
    pub const OPEN_IN: usize = 8;
    pub const CREATE_IN: usize = 16;
    pub const OPEN_OUT: usize = 16;
    pub const RELEASE_IN: usize = 24;
    pub const FLUSH_IN: usize = 24;
    pub const READ_IN: usize = 40;
    pub const WRITE_IN: usize = 40;
    pub const WRITE_OUT: usize = 8;
    pub const STATFS_OUT: usize = 80;
    pub const FSYNC_IN: usize = 16;
    /// `fuse_setxattr_in` without FUSE_SETXATTR_EXT (FUSE_COMPAT_SETXATTR_IN_SIZE).
    pub const SETXATTR_IN_COMPAT: usize = 8;
    pub const SETXATTR_IN: usize = 16;
    pub const GETXATTR_IN: usize = 8;
    pub const GETXATTR_OUT: usize = 8;
    pub const LK_IN: usize = 48;
    pub const ACCESS_IN: usize = 8;
    /// `fuse_init_in` with FUSE_INIT_EXT's `flags2` and reserved words (older kernels
    /// send the first 16 bytes).
    pub const INIT_IN: usize = 64;
    pub const INIT_IN_COMPAT: usize = 16;
    pub const INIT_OUT: usize = 64;
    pub const INTERRUPT_IN: usize = 8;
    pub const BMAP_IN: usize = 16;
    pub const IOCTL_IN: usize = 32;
    pub const IOCTL_OUT: usize = 16;
    pub const POLL_IN: usize = 24;
    pub const FALLOCATE_IN: usize = 32;
    pub const LSEEK_IN: usize = 24;
    pub const LSEEK_OUT: usize = 8;
    pub const COPY_FILE_RANGE_IN: usize = 56;
    pub const SYNCFS_IN: usize = 8;
    pub const NOTIFY_RETRIEVE_IN: usize = 40;
    pub const DIRENT: usize = 24;
    pub const DIRENTPLUS: usize = ENTRY_OUT + DIRENT;
    pub const NOTIFY_INVAL_ENTRY_OUT: usize = 16;
}

/// Field offsets, for the unit tests that hold our reads and writes to the header's
/// layout (and for the code that reads and writes them).
pub mod off {
    // fuse_in_header
    pub const IN_LEN: usize = 0;
    pub const IN_OPCODE: usize = 4;
    pub const IN_UNIQUE: usize = 8;
    pub const IN_NODEID: usize = 16;
    pub const IN_UID: usize = 24;
    pub const IN_GID: usize = 28;
    pub const IN_PID: usize = 32;
    pub const IN_TOTAL_EXTLEN: usize = 36;
    // fuse_attr
    pub const ATTR_INO: usize = 0;
    pub const ATTR_SIZE: usize = 8;
    pub const ATTR_BLOCKS: usize = 16;
    pub const ATTR_ATIME: usize = 24;
    pub const ATTR_MTIME: usize = 32;
    pub const ATTR_CTIME: usize = 40;
    pub const ATTR_ATIMENSEC: usize = 48;
    pub const ATTR_MTIMENSEC: usize = 52;
    pub const ATTR_CTIMENSEC: usize = 56;
    pub const ATTR_MODE: usize = 60;
    pub const ATTR_NLINK: usize = 64;
    pub const ATTR_UID: usize = 68;
    pub const ATTR_GID: usize = 72;
    pub const ATTR_RDEV: usize = 76;
    pub const ATTR_BLKSIZE: usize = 80;
    pub const ATTR_FLAGS: usize = 84;
    // fuse_entry_out
    pub const ENTRY_NODEID: usize = 0;
    pub const ENTRY_GENERATION: usize = 8;
    pub const ENTRY_VALID: usize = 16;
    pub const ENTRY_ATTR_VALID: usize = 24;
    pub const ENTRY_VALID_NSEC: usize = 32;
    pub const ENTRY_ATTR_VALID_NSEC: usize = 36;
    pub const ENTRY_ATTR: usize = 40;
    // fuse_setattr_in
    pub const SETATTR_VALID: usize = 0;
    pub const SETATTR_FH: usize = 8;
    pub const SETATTR_SIZE: usize = 16;
    pub const SETATTR_LOCK_OWNER: usize = 24;
    pub const SETATTR_ATIME: usize = 32;
    pub const SETATTR_MTIME: usize = 40;
    pub const SETATTR_CTIME: usize = 48;
    pub const SETATTR_ATIMENSEC: usize = 56;
    pub const SETATTR_MTIMENSEC: usize = 60;
    pub const SETATTR_CTIMENSEC: usize = 64;
    pub const SETATTR_MODE: usize = 68;
    pub const SETATTR_UID: usize = 76;
    pub const SETATTR_GID: usize = 80;
    // fuse_read_in / fuse_write_in
    pub const RW_FH: usize = 0;
    pub const RW_OFFSET: usize = 8;
    pub const RW_SIZE: usize = 16;
    pub const RW_FLAGS: usize = 20;
    pub const RW_LOCK_OWNER: usize = 24;
    pub const RW_OPEN_FLAGS: usize = 32;
    // fuse_init_in
    pub const INIT_IN_MAJOR: usize = 0;
    pub const INIT_IN_MINOR: usize = 4;
    pub const INIT_IN_MAX_READAHEAD: usize = 8;
    pub const INIT_IN_FLAGS: usize = 12;
    pub const INIT_IN_FLAGS2: usize = 16;
    // fuse_init_out
    pub const INIT_OUT_MAJOR: usize = 0;
    pub const INIT_OUT_MINOR: usize = 4;
    pub const INIT_OUT_MAX_READAHEAD: usize = 8;
    pub const INIT_OUT_FLAGS: usize = 12;
    pub const INIT_OUT_MAX_BACKGROUND: usize = 16;
    pub const INIT_OUT_CONGESTION_THRESHOLD: usize = 18;
    pub const INIT_OUT_MAX_WRITE: usize = 20;
    pub const INIT_OUT_TIME_GRAN: usize = 24;
    pub const INIT_OUT_MAX_PAGES: usize = 28;
    pub const INIT_OUT_MAP_ALIGNMENT: usize = 30;
    pub const INIT_OUT_FLAGS2: usize = 32;
    pub const INIT_OUT_MAX_STACK_DEPTH: usize = 36;
    // fuse_open_out
    pub const OPEN_OUT_FH: usize = 0;
    pub const OPEN_OUT_FLAGS: usize = 8;
    pub const OPEN_OUT_BACKING_ID: usize = 12;
    // fuse_dirent
    pub const DIRENT_INO: usize = 0;
    pub const DIRENT_OFF: usize = 8;
    pub const DIRENT_NAMELEN: usize = 16;
    pub const DIRENT_TYPE: usize = 20;
    pub const DIRENT_NAME: usize = 24;
    // fuse_kstatfs
    pub const STATFS_BLOCKS: usize = 0;
    pub const STATFS_BFREE: usize = 8;
    pub const STATFS_BAVAIL: usize = 16;
    pub const STATFS_FILES: usize = 24;
    pub const STATFS_FFREE: usize = 32;
    pub const STATFS_BSIZE: usize = 40;
    pub const STATFS_NAMELEN: usize = 44;
    pub const STATFS_FRSIZE: usize = 48;
    // fuse_copy_file_range_in
    pub const CFR_FH_IN: usize = 0;
    pub const CFR_OFF_IN: usize = 8;
    pub const CFR_NODEID_OUT: usize = 16;
    pub const CFR_FH_OUT: usize = 24;
    pub const CFR_OFF_OUT: usize = 32;
    pub const CFR_LEN: usize = 40;
    pub const CFR_FLAGS: usize = 48;
}

/// A variable-length record (dirent) padded to 8 bytes (`FUSE_REC_ALIGN`).
pub const fn rec_align(n: usize) -> usize {
    (n + 7) & !7
}
