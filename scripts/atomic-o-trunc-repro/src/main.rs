//! A trivial FUSE filesystem: one file `f`, every request passed to one real file, no
//! union logic. `ATOMIC=1` grants FUSE_ATOMIC_O_TRUNC (OPEN truncates); WRITE sleeps 600 ms
//! before its pwrite. Usage: repro BACKING MOUNTPOINT.
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::*;

const TTL: Duration = Duration::from_secs(86400);

struct Fs {
    backing: String,
    files: Mutex<Vec<Option<File>>>,
}

fn t(s: i64, ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::new(s as u64, ns as u32)
}

impl Fs {
    fn attr(&self, ino: u64) -> FileAttr {
        let m = std::fs::metadata(if ino == 1 { "/" } else { &self.backing }).unwrap();
        FileAttr {
            ino: INodeNo(ino),
            size: if ino == 1 { 0 } else { m.size() },
            blocks: m.blocks(),
            atime: t(m.atime(), m.atime_nsec()),
            mtime: t(m.mtime(), m.mtime_nsec()),
            ctime: t(m.ctime(), m.ctime_nsec()),
            crtime: UNIX_EPOCH,
            kind: if ino == 1 {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if ino == 1 { 0o755 } else { 0o644 },
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
    fn file(&self, fh: FileHandle) -> File {
        self.files.lock().unwrap()[fh.0 as usize]
            .as_ref()
            .unwrap()
            .try_clone()
            .unwrap()
    }
}

impl Filesystem for Fs {
    fn init(&mut self, _r: &Request, c: &mut KernelConfig) -> std::io::Result<()> {
        if std::env::var("ATOMIC").as_deref() == Ok("1") {
            c.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC).unwrap();
        }
        Ok(())
    }
    fn lookup(&self, _r: &Request, p: INodeNo, n: &OsStr, reply: ReplyEntry) {
        if p.0 == 1 && n == "f" {
            reply.entry(&TTL, &self.attr(2), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }
    fn getattr(&self, _r: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&TTL, &self.attr(ino.0));
    }
    fn setattr(
        &self,
        _r: &Request,
        ino: INodeNo,
        _m: Option<u32>,
        _u: Option<u32>,
        _g: Option<u32>,
        size: Option<u64>,
        _a: Option<TimeOrNow>,
        _mt: Option<TimeOrNow>,
        _c: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _cr: Option<SystemTime>,
        _ch: Option<SystemTime>,
        _b: Option<SystemTime>,
        _f: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let Some(s) = size {
            eprintln!("SETATTR size {s}");
            OpenOptions::new()
                .write(true)
                .open(&self.backing)
                .unwrap()
                .set_len(s)
                .unwrap();
        }
        reply.attr(&TTL, &self.attr(ino.0));
    }
    fn open(&self, _r: &Request, _ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let f = flags.0;
        eprintln!(
            "OPEN flags {f:#x}{}",
            if f & libc::O_TRUNC != 0 {
                " (O_TRUNC: truncating)"
            } else {
                ""
            }
        );
        let file = OpenOptions::new()
            .read(true)
            .write(f & libc::O_ACCMODE != libc::O_RDONLY)
            .custom_flags(f & libc::O_TRUNC)
            .open(&self.backing)
            .unwrap();
        let mut files = self.files.lock().unwrap();
        files.push(Some(file));
        reply.opened(
            FileHandle(files.len() as u64 - 1),
            FopenFlags::FOPEN_KEEP_CACHE,
        );
    }
    fn read(
        &self,
        _r: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        off: u64,
        size: u32,
        _f: OpenFlags,
        _l: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut buf = vec![0; size as usize];
        let n = self.file(fh).read_at(&mut buf, off).unwrap();
        reply.data(&buf[..n]);
    }
    fn write(
        &self,
        _r: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        off: u64,
        data: &[u8],
        _wf: WriteFlags,
        _f: OpenFlags,
        _l: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        eprintln!("WRITE offset {off} size {} (held 600 ms)", data.len());
        std::thread::sleep(Duration::from_millis(600));
        self.file(fh).write_all_at(data, off).unwrap();
        reply.written(data.len() as u32);
    }
    fn flush(&self, _r: &Request, _i: INodeNo, _fh: FileHandle, _l: LockOwner, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }
    fn release(
        &self,
        _r: &Request,
        _i: INodeNo,
        fh: FileHandle,
        _f: OpenFlags,
        _l: Option<LockOwner>,
        _fl: bool,
        reply: ReplyEmpty,
    ) {
        self.files.lock().unwrap()[fh.0 as usize] = None;
        reply.ok();
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let mut c = Config::default();
    c.n_threads = Some(4);
    c.mount_options = vec![MountOption::FSName("otrunc-repro".into())];
    fuser::mount(
        Fs {
            backing: a[1].clone(),
            files: Mutex::new(Vec::new()),
        },
        &a[2],
        &c,
    )
    .unwrap();
}
