//! Getting a /dev/fuse fd mounted on the mount point: mount(2) directly when privileged, else
//! through the setuid `fusermount3` helper (fd handed back over a socket); and the matching
//! unmount.

use std::ffi::OsStr;
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// What to mount and how.
#[derive(Debug, Clone)]
pub struct MountRequest<'a> {
    pub mountpoint: &'a Path,
    /// Source column of mountinfo, e.g. "unionfs".
    pub fsname: &'a str,
    /// "unionfs" gives the filesystem type `fuse.unionfs`.
    pub subtype: &'a str,
    /// Mount options such as "allow_other", "default_permissions", "nodev", "ro". Flag options
    /// become mount flags; "allow_root" becomes "allow_other" (the daemon must then admit only
    /// root and the owner); the rest are passed to the kernel as FUSE data options.
    pub kernel_opts: &'a [String],
    /// Skip mount(2) and go straight to fusermount3 (tests; also works as root).
    pub force_fusermount: bool,
}

/// How a mount was made, which decides how to undo it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountMethod {
    Direct,
    Fusermount,
}

/// Options that set mount flags; libfuse's table, which fusermount3 also understands.
const SET_FLAGS: [(&str, MsFlags); 8] = [
    ("ro", MsFlags::MS_RDONLY),
    ("nosuid", MsFlags::MS_NOSUID),
    ("nodev", MsFlags::MS_NODEV),
    ("noexec", MsFlags::MS_NOEXEC),
    ("noatime", MsFlags::MS_NOATIME),
    ("nodiratime", MsFlags::MS_NODIRATIME),
    ("sync", MsFlags::MS_SYNCHRONOUS),
    ("dirsync", MsFlags::MS_DIRSYNC),
];

/// Options that clear a flag set by default or by an earlier option.
const CLEAR_FLAGS: [(&str, MsFlags); 7] = [
    ("rw", MsFlags::MS_RDONLY),
    ("suid", MsFlags::MS_NOSUID),
    ("dev", MsFlags::MS_NODEV),
    ("exec", MsFlags::MS_NOEXEC),
    ("atime", MsFlags::MS_NOATIME),
    ("diratime", MsFlags::MS_NODIRATIME),
    ("async", MsFlags::MS_SYNCHRONOUS),
];

/// Data options we compute ourselves; letting a caller set them would confuse the kernel or
/// fusermount3 about which fd or owner the mount belongs to.
const RESERVED: [&str; 6] = ["fd", "rootmode", "user_id", "group_id", "fsname", "subtype"];

/// The kernel options sorted for both mount paths.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    flags: MsFlags,
    /// FUSE data options for mount(2).
    data: Vec<String>,
    /// Everything, as fusermount3 wants it in its -o list.
    helper: Vec<String>,
}

fn plan(opts: &[String]) -> io::Result<Plan> {
    // nosuid,nodev by default, as libfuse does: a user-supplied filesystem should not be able
    // to provide setuid binaries or device nodes unless asked for.
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    let mut data = Vec::new();
    let mut helper = Vec::new();
    for opt in opts {
        if opt.is_empty() {
            continue;
        }
        if opt.contains(',') {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("mount option '{opt}' contains a comma"),
            ));
        }
        let key = opt.split('=').next().unwrap_or(opt);
        if RESERVED.contains(&key) {
            return Err(io::Error::new(
                ErrorKind::InvalidInput,
                format!("mount option '{key}' is set by unionfs itself"),
            ));
        }
        // The kernel knows only allow_other; allow_root is enforced in the daemon.
        let opt = if opt == "allow_root" {
            "allow_other"
        } else {
            opt.as_str()
        };
        helper.push(opt.to_string());
        if let Some((_, f)) = SET_FLAGS.iter().find(|(n, _)| *n == opt) {
            flags |= *f;
        } else if let Some((_, f)) = CLEAR_FLAGS.iter().find(|(n, _)| *n == opt) {
            flags &= !*f;
        } else if !data.iter().any(|d| d == opt) {
            data.push(opt.to_string());
        }
    }
    Ok(Plan {
        flags,
        data,
        helper,
    })
}

/// Mounts a FUSE filesystem on `req.mountpoint` and returns the /dev/fuse fd (close-on-exec)
/// to serve it, e.g. with `fuser::Session::from_fd`. Tries mount(2) first and falls back to
/// fusermount3 when that is not permitted.
pub fn mount(req: &MountRequest) -> io::Result<(OwnedFd, MountMethod)> {
    let plan = plan(req.kernel_opts)?;
    if !req.force_fusermount {
        if let Some(fd) = mount_direct(req, &plan)? {
            return Ok((fd, MountMethod::Direct));
        }
    }
    mount_fusermount(req, &plan).map(|fd| (fd, MountMethod::Fusermount))
}

/// Ok(None) means "not permitted, try fusermount3".
fn mount_direct(req: &MountRequest, plan: &Plan) -> io::Result<Option<OwnedFd>> {
    let dev = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        Ok(f) => f,
        // EACCES and EPERM both land here.
        Err(e) if e.kind() == ErrorKind::PermissionDenied => return Ok(None),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(io::Error::new(
                ErrorKind::NotFound,
                "/dev/fuse does not exist (is the fuse kernel module loaded?)",
            ))
        }
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot open /dev/fuse: {e}"),
            ))
        }
    };
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={}",
        dev.as_raw_fd(),
        nix::unistd::geteuid(),
        nix::unistd::getegid()
    );
    for d in &plan.data {
        data.push(',');
        data.push_str(d);
    }
    let fstype = fstype(req.subtype);
    let source = source(req);
    match nix::mount::mount(
        Some(source),
        req.mountpoint,
        Some(fstype.as_str()),
        plan.flags,
        Some(data.as_str()),
    ) {
        Ok(()) => Ok(Some(OwnedFd::from(dev))),
        Err(Errno::EPERM) => Ok(None),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!(
                "mount of {fstype} on '{}' (options {data}) failed: {}",
                req.mountpoint.display(),
                e.desc()
            ),
        )),
    }
}

fn fstype(subtype: &str) -> String {
    if subtype.is_empty() {
        "fuse".to_string()
    } else {
        format!("fuse.{subtype}")
    }
}

fn source<'a>(req: &MountRequest<'a>) -> &'a str {
    if req.fsname.is_empty() {
        req.subtype
    } else {
        req.fsname
    }
}

/// fusermount3 splits its -o list on commas and takes a backslash as quoting the next byte.
fn escape_helper_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == ',' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn fusermount_bin() -> PathBuf {
    for p in ["/usr/bin/fusermount3", "/bin/fusermount3"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("fusermount3");
            if p.is_file() {
                return p;
            }
        }
    }
    // Let spawn report "not found" with the name in the message.
    PathBuf::from("fusermount3")
}

/// fusermount3's stderr as one line; it already names itself in its messages.
fn helper_message(bin: &Path, stderr: &[u8], status: std::process::ExitStatus) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        format!("{} failed ({status})", bin.display())
    } else {
        lines.join("; ")
    }
}

fn mount_fusermount(req: &MountRequest, plan: &Plan) -> io::Result<OwnedFd> {
    let bin = fusermount_bin();
    let (ours, theirs) = UnixStream::pair()?;
    let mut opts = vec![
        format!("fsname={}", escape_helper_value(source(req))),
        format!("subtype={}", escape_helper_value(req.subtype)),
    ];
    opts.extend(plan.helper.iter().cloned());

    let mut cmd = Command::new(&bin);
    cmd.arg("-o")
        .arg(opts.join(","))
        .arg("--")
        .arg(req.mountpoint)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let raw = theirs.as_raw_fd();
    // SAFETY: the closure runs in the forked child between fork and exec, where only
    // async-signal-safe calls are allowed; it makes a single fcntl(2) call and allocates
    // nothing. `raw` is open in the child because `theirs` is alive until after spawn.
    unsafe {
        cmd.pre_exec(move || {
            // The socket is close-on-exec so no other child can inherit it (which would keep
            // it open and make us miss fusermount3's exit); only this child gets it.
            if libc::fcntl(raw, libc::F_SETFD, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot run {}: {e}", bin.display())))?;
    // Our copy of its end must go, or we would never see EOF if it exits without an fd.
    drop(theirs);

    let received = receive_fd(&ours);
    drop(ours);
    let out = child.wait_with_output()?;
    let fd = received?;
    match fd {
        Some(fd) if out.status.success() => Ok(fd),
        Some(fd) => {
            drop(fd);
            Err(io::Error::other(helper_message(
                &bin,
                &out.stderr,
                out.status,
            )))
        }
        None => {
            let msg = helper_message(&bin, &out.stderr, out.status);
            let kind = if msg.contains("user_allow_other") || msg.contains("ermission denied") {
                ErrorKind::PermissionDenied
            } else {
                ErrorKind::Other
            };
            Err(io::Error::new(kind, msg))
        }
    }
}

/// Reads fusermount3's one-byte message; the fd rides along as SCM_RIGHTS. Ok(None) on EOF
/// (fusermount3 failed; its stderr says why). Plain libc rather than nix, whose socket API
/// needs a nix feature this crate does not enable.
fn receive_fd(sock: &UnixStream) -> io::Result<Option<OwnedFd>> {
    // Room for a few fds in case of surprises, so that none is lost in a truncated message.
    const MAX_FDS: u32 = 4;
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    let space = unsafe { libc::CMSG_SPACE(MAX_FDS * std::mem::size_of::<RawFd>() as u32) };
    // u64 elements so the buffer is aligned for struct cmsghdr.
    let mut cbuf = vec![0u64; (space as usize).div_ceil(8)];
    let mut byte = [0u8; 1];
    loop {
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: byte.len(),
        };
        // SAFETY: msghdr is plain data for which all-zero (null pointers, zero lengths) is a
        // valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: `msg` points at `iov` (1 byte of `byte`) and `cbuf` (`space` bytes), all of
        // which outlive the call; the kernel writes only within those lengths.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let mut fds = Vec::new();
        // SAFETY: `msg` was just filled by recvmsg, so CMSG_FIRSTHDR returns null or a header
        // inside `cbuf` within msg_controllen.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !c.is_null() {
            // SAFETY: `c` is non-null and was produced by CMSG_FIRSTHDR/CMSG_NXTHDR for this
            // message, so it points at a complete cmsghdr inside `cbuf`.
            let hdr = unsafe { &*c };
            if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
                // SAFETY: CMSG_LEN is pure arithmetic.
                let header = unsafe { libc::CMSG_LEN(0) } as usize;
                let count =
                    (hdr.cmsg_len as usize).saturating_sub(header) / std::mem::size_of::<RawFd>();
                // SAFETY: CMSG_DATA of a valid header points at its payload.
                let data = unsafe { libc::CMSG_DATA(c) }.cast::<RawFd>();
                for i in 0..count {
                    // SAFETY: `i < count` keeps the read within cmsg_len, which the kernel
                    // bounds by msg_controllen; read_unaligned because CMSG_DATA gives no
                    // alignment guarantee for the int array.
                    let raw = unsafe { std::ptr::read_unaligned(data.add(i)) };
                    // SAFETY: SCM_RIGHTS just installed `raw` in our fd table; nothing else
                    // refers to it, so this OwnedFd is its only owner.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
            // SAFETY: `c` is a valid header of `msg`; CMSG_NXTHDR returns the next one or null.
            c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
        }
        // Extra fds, if any, are closed when `fds` drops.
        return Ok(if fds.is_empty() {
            None
        } else {
            Some(fds.swap_remove(0))
        });
    }
}

/// Detaches the mount (lazy, so a busy mount still goes away from the namespace).
pub fn unmount(mountpoint: &Path, method: MountMethod) -> io::Result<()> {
    match method {
        MountMethod::Direct => nix::mount::umount2(mountpoint, MntFlags::MNT_DETACH).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("cannot unmount '{}': {}", mountpoint.display(), e.desc()),
            )
        }),
        MountMethod::Fusermount => {
            let bin = fusermount_bin();
            let out = Command::new(&bin)
                .args([OsStr::new("-u"), OsStr::new("-z"), OsStr::new("--")])
                .arg(mountpoint)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot run {}: {e}", bin.display()))
                })?;
            if out.status.success() {
                Ok(())
            } else {
                Err(io::Error::other(helper_message(
                    &bin,
                    &out.stderr,
                    out.status,
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn plan_sorts_flags_and_data() {
        let p = plan(&s(&[
            "ro",
            "allow_root",
            "default_permissions",
            "dev",
            "noatime",
            "max_read=131072",
        ]))
        .expect("plan");
        assert_eq!(
            p.flags,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOATIME
        );
        assert_eq!(
            p.data,
            s(&["allow_other", "default_permissions", "max_read=131072"])
        );
        assert_eq!(
            p.helper,
            s(&[
                "ro",
                "allow_other",
                "default_permissions",
                "dev",
                "noatime",
                "max_read=131072"
            ])
        );
        let p = plan(&s(&["ro", "rw", "suid", "sync", "async"])).expect("plan");
        assert_eq!(p.flags, MsFlags::MS_NODEV);
    }

    #[test]
    fn plan_rejects_reserved_and_commas() {
        for bad in ["fd=3", "rootmode=100000", "user_id=0", "subtype=x", "a,b"] {
            let e = plan(&s(&[bad])).expect_err(bad);
            assert_eq!(e.kind(), ErrorKind::InvalidInput);
        }
    }

    #[test]
    fn helper_values_are_escaped() {
        assert_eq!(escape_helper_value(r"a,b\c"), r"a\,b\\c");
    }

    /// A unique directory under the temp dir, canonical (so it matches mountinfo), removed on
    /// drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "unionfs-mount-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).expect("create scratch dir");
            Scratch(std::fs::canonicalize(&p).expect("canonicalize"))
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    /// Unmounts on drop, even when an assertion failed; lazy umount2 as the last resort.
    struct Mounted<'a> {
        path: &'a Path,
        method: Option<MountMethod>,
        _fd: Option<OwnedFd>,
    }

    impl Mounted<'_> {
        fn unmount(&mut self) -> io::Result<()> {
            match self.method.take() {
                Some(m) => unmount(self.path, m),
                None => Ok(()),
            }
        }
    }

    impl Drop for Mounted<'_> {
        fn drop(&mut self) {
            if self.unmount().is_err() {
                let _ = nix::mount::umount2(self.path, MntFlags::MNT_DETACH);
            }
        }
    }

    /// (fstype, source, mount options, super options) of the mount at `path`. Reads only
    /// mountinfo: touching the mount itself would hang, as no daemon answers it.
    fn mountinfo_entry(path: &Path) -> Option<(String, String, String, String)> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let want = path.to_str()?;
        info.lines().rev().find_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            if pre.get(4) != Some(&want) {
                return None;
            }
            Some((
                post.first()?.to_string(),
                post.get(1)?.to_string(),
                pre.get(5)?.to_string(),
                post.get(2)?.to_string(),
            ))
        })
    }

    fn can_mount() -> bool {
        nix::unistd::geteuid().is_root() && Path::new("/dev/fuse").exists()
    }

    fn mount_and_check(force_fusermount: bool, opts: &[&str]) -> (String, String) {
        let dir = Scratch::new();
        let kernel_opts = s(opts);
        let req = MountRequest {
            mountpoint: &dir.0,
            fsname: "unionfs-test",
            subtype: "unionfs",
            kernel_opts: &kernel_opts,
            force_fusermount,
        };
        let (fd, method) = mount(&req).expect("mount");
        let mut guard = Mounted {
            path: &dir.0,
            method: Some(method),
            _fd: Some(fd),
        };
        let expected = if force_fusermount {
            MountMethod::Fusermount
        } else {
            MountMethod::Direct
        };
        assert_eq!(method, expected);
        let (fstype, source, mopts, sopts) = mountinfo_entry(&dir.0).expect("in mountinfo");
        assert_eq!(fstype, "fuse.unionfs");
        assert_eq!(source, "unionfs-test");
        guard.unmount().expect("unmount");
        assert!(mountinfo_entry(&dir.0).is_none(), "still mounted");
        (mopts, sopts)
    }

    #[test]
    fn direct_mount_shows_in_mountinfo() {
        if !can_mount() {
            crate::testskip::skip(
                "direct_mount_shows_in_mountinfo",
                crate::testskip::root_or_missing(),
                "needs root and /dev/fuse",
            );
            return;
        }
        let (mopts, sopts) = mount_and_check(false, &["ro", "default_permissions", "allow_root"]);
        assert!(mopts.split(',').any(|o| o == "ro"), "{mopts}");
        assert!(mopts.split(',').any(|o| o == "nosuid"), "{mopts}");
        assert!(
            sopts.split(',').any(|o| o == "default_permissions"),
            "{sopts}"
        );
        assert!(sopts.split(',').any(|o| o == "allow_other"), "{sopts}");
    }

    #[test]
    fn fusermount_mount_shows_in_mountinfo() {
        if !can_mount() || !fusermount_bin().is_absolute() {
            crate::testskip::skip(
                "fusermount_mount_shows_in_mountinfo",
                crate::testskip::root_or_missing(),
                "needs root, /dev/fuse and fusermount3",
            );
            return;
        }
        let (mopts, sopts) = mount_and_check(true, &["allow_other", "noexec"]);
        assert!(mopts.split(',').any(|o| o == "noexec"), "{mopts}");
        assert!(sopts.split(',').any(|o| o == "allow_other"), "{sopts}");
    }

    #[test]
    fn fusermount_error_is_propagated() {
        if !fusermount_bin().is_absolute() {
            crate::testskip::skip(
                "fusermount_error_is_propagated",
                crate::testskip::Skip::Missing,
                "needs fusermount3",
            );
            return;
        }
        let dir = Scratch::new();
        let missing = dir.0.join("missing");
        let req = MountRequest {
            mountpoint: &missing,
            fsname: "unionfs-test",
            subtype: "unionfs",
            kernel_opts: &[],
            force_fusermount: true,
        };
        match mount(&req) {
            Ok((fd, method)) => {
                let _ = unmount(&missing, method);
                drop(fd);
                panic!("mounted on a missing directory");
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("fusermount3"), "{msg}");
                assert!(!msg.contains('\n'), "{msg}");
            }
        }
    }

    #[test]
    fn unmount_of_unmounted_dir_fails() {
        let dir = Scratch::new();
        assert!(unmount(&dir.0, MountMethod::Direct).is_err());
    }
}
