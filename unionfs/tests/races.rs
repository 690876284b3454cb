//! Races between a request on a node and a rename or unlink of its name, made repeatable:
//! the daemon pauses at a named point inside the rename or unlink (`UNIONFS_TEST_PAUSE`,
//! see `testhook.rs`) while the test sends a request on the same node. Under concurrent
//! load these requests read the node's old name, found the whiteout there and the kernel
//! answered EIO. Also a lookup in the daemon racing a copy-up of the name (the pause
//! after its probe of the layers): an unlink or rename of a lower file during its copy-up.

mod common;

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Mounts the daemon with a pause of `ms` at `point`.
fn mount_paused(s: &Scratch, point: &str, ms: u64) -> Mounted {
    mount_paused_with(s, point, ms, "")
}

/// `mount_paused` with more mount options (`extra`).
fn mount_paused_with(s: &Scratch, point: &str, ms: u64, extra: &str) -> Mounted {
    let o = union_opts(
        &s.path("l").display().to_string(),
        &s.path("u"),
        &s.path("w"),
        extra,
    );
    let out = Command::new(bin())
        .env("UNIONFS_TEST_PAUSE", format!("{point}:{ms}"))
        .arg("-o")
        .arg(&o)
        .arg(s.path("m"))
        .output()
        .unwrap_or_else(|e| panic!("run unionfs: {e}"));
    assert!(
        out.status.success(),
        "unionfs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Mounted(s.path("m"))
}

fn setup(tag: &str) -> Scratch {
    let s = Scratch::new(tag);
    s.mkdirs(&["l/d", "u", "w", "m"]);
    std::fs::write(s.path("l/d/a"), "lower a\n").unwrap_or_else(|e| panic!("{e}"));
    s
}

fn open_path(p: &Path) -> OwnedFd {
    let fd = nix::fcntl::open(
        p,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_NOFOLLOW,
        nix::sys::stat::Mode::empty(),
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    fd
}

/// `statx` of the node behind `fd`, forcing a GETATTR to the daemon (no cached
/// attributes): `(mode, ino)` or the errno.
fn statx_sync(fd: &OwnedFd) -> Result<(u32, u64), i32> {
    let empty = CString::default();
    // SAFETY: statx writes into `buf`, a zeroed libc::statx that lives across the call;
    // the path is a NUL-terminated empty string.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            &mut buf,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    Ok((u32::from(buf.stx_mode), buf.stx_ino))
}

fn require_root(name: &str) -> bool {
    common::require_root(name, "needs root to mount")
}

/// A GETATTR of a file that is being renamed (the real rename done, the node not yet
/// told): it must describe the file, not the whiteout left at the old name.
#[test]
fn getattr_during_rename_of_a_lower_file() {
    if !require_root("getattr_during_rename_of_a_lower_file") {
        return;
    }
    let s = setup("race-rename");
    let mut m = mount_paused(&s, "rename", 600);
    let before = std::fs::symlink_metadata(s.path("m/d/a")).unwrap_or_else(|e| panic!("{e}"));
    let fd = open_path(&s.path("m/d/a"));
    let (from, to) = (s.path("m/d/a"), s.path("m/d/b"));
    let mover = std::thread::spawn(move || std::fs::rename(from, to));
    // Well inside the daemon's pause.
    std::thread::sleep(Duration::from_millis(200));
    let during = statx_sync(&fd);
    let moved = mover
        .join()
        .unwrap_or_else(|_| panic!("rename thread panicked"));
    let after = std::fs::symlink_metadata(s.path("m/d/b"));
    drop(fd);
    m.unmount();
    moved.unwrap_or_else(|e| panic!("rename: {e}"));
    assert_eq!(
        during,
        Ok((before.mode(), before.ino())),
        "GETATTR during the rename (errno {:?})",
        during.err()
    );
    let after = after.unwrap_or_else(|e| panic!("lstat after: {e}"));
    assert_eq!((after.mode(), after.ino()), (before.mode(), before.ino()));
}

/// A GETATTR of a file that is being removed: it must describe the file (its last link
/// going), not the whiteout that took its name.
#[test]
fn getattr_during_unlink_of_an_upper_file() {
    if !require_root("getattr_during_unlink_of_an_upper_file") {
        return;
    }
    let s = setup("race-unlink");
    let mut m = mount_paused(&s, "unlink", 600);
    // Copied up: the upper file goes and a whiteout takes its name.
    std::fs::write(s.path("m/d/a"), "upper a\n").unwrap_or_else(|e| panic!("{e}"));
    let before = std::fs::symlink_metadata(s.path("m/d/a")).unwrap_or_else(|e| panic!("{e}"));
    let fd = open_path(&s.path("m/d/a"));
    let gone = s.path("m/d/a");
    let remover = std::thread::spawn(move || std::fs::remove_file(gone));
    std::thread::sleep(Duration::from_millis(200));
    let during = statx_sync(&fd);
    let removed = remover
        .join()
        .unwrap_or_else(|_| panic!("unlink thread panicked"));
    let after = statx_sync(&fd);
    drop(fd);
    m.unmount();
    removed.unwrap_or_else(|e| panic!("unlink: {e}"));
    assert_eq!(
        during,
        Ok((before.mode(), before.ino())),
        "GETATTR during the unlink"
    );
    assert_eq!(
        after,
        Ok((before.mode(), before.ino())),
        "GETATTR after the unlink"
    );
}

/// Truncates `file` as uid 1000 (no CAP_FSETID) and returns the child's process.
fn truncate_as_user(file: &Path) -> std::process::Child {
    Command::new("setpriv")
        .args(["--reuid", "1000", "--regid", "1000", "--clear-groups", "--"])
        .arg("truncate")
        .args(["-s", "1"])
        .arg(file)
        .spawn()
        .unwrap_or_else(|e| panic!("setpriv truncate: {e}"))
}

/// The set-id decision for a truncate whose caller is killed while the daemon holds its
/// SETATTR: the kernel decided when it sent the request (a caller without CAP_FSETID:
/// set-user-id goes), and the daemon must come to the same answer, not take a caller it
/// can no longer read for root. The same truncate on the kernel's overlay is the oracle.
#[test]
fn setid_kill_when_the_caller_dies_during_its_truncate() {
    if !require_root("setid_kill_when_the_caller_dies_during_its_truncate") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let prepare = |s: &Scratch| {
        let f = s.path("l/d/s");
        std::fs::write(&f, "set-id file\n").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4777))
            .unwrap_or_else(|e| panic!("{e}"));
    };
    // The oracle: the kernel's overlay, the caller alive.
    let k = setup("race-setid-k");
    prepare(&k);
    let mut km = mount_kernel(
        &k.path("l").display().to_string(),
        &k.path("u"),
        &k.path("w"),
        &k.path("m"),
        "",
    );
    let st = truncate_as_user(&k.path("m/d/s"))
        .wait()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(st.success(), "truncate on the kernel's overlay: {st}");
    let want = std::fs::metadata(k.path("m/d/s"))
        .unwrap_or_else(|e| panic!("{e}"))
        .mode();
    km.unmount();
    // unionfs, the caller killed while its SETATTR is held in the daemon.
    let s = setup("race-setid");
    prepare(&s);
    let mut m = mount_paused(&s, "setattr", 600);
    let mut child = truncate_as_user(&s.path("m/d/s"));
    std::thread::sleep(Duration::from_millis(200));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0)),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    // The daemon finishes the held request; then the mode shows.
    std::thread::sleep(Duration::from_millis(600));
    let got = std::fs::metadata(s.path("m/d/s"))
        .unwrap_or_else(|e| panic!("{e}"))
        .mode();
    m.unmount();
    assert_eq!(
        got & 0o7777,
        want & 0o7777,
        "mode after a killed user's truncate: unionfs {got:o}, kernel overlay {want:o}"
    );
}

/// A lookup of a name whose file is being copied up, once the copy has its name and before
/// the node knows it: it must find the same node (the same inode number), not make a
/// second one for the copy, which would leave the kernel two page caches of one file.
/// The listing sends the lookup (READDIRPLUS looks every entry up); the name itself stays
/// cached in the kernel.
#[test]
fn lookup_during_copy_up_finds_the_same_node() {
    if !require_root("lookup_during_copy_up_finds_the_same_node") {
        return;
    }
    let s = setup("race-copyup");
    // In the root, whose upper exists: no parent copy-up pauses first.
    std::fs::write(s.path("l/top"), "lower top\n").unwrap_or_else(|e| panic!("{e}"));
    let mut m = mount_paused(&s, "copy-up-placed", 600);
    let before = std::fs::symlink_metadata(s.path("m/top"))
        .unwrap_or_else(|e| panic!("{e}"))
        .ino();
    let target = s.path("m/top");
    let writer = std::thread::spawn(move || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(target)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"+"))
    });
    std::thread::sleep(Duration::from_millis(200));
    let listed: Vec<(String, u64)> = std::fs::read_dir(s.path("m"))
        .unwrap_or_else(|e| panic!("{e}"))
        .flatten()
        .filter(|e| e.file_name() == "top")
        .map(|e| {
            let ino = e.metadata().map(|m| m.ino()).unwrap_or(0);
            (e.file_name().to_string_lossy().into_owned(), ino)
        })
        .collect();
    let wrote = writer.join().unwrap_or_else(|_| panic!("writer panicked"));
    let after = std::fs::symlink_metadata(s.path("m/top")).map(|m| m.ino());
    m.unmount();
    wrote.unwrap_or_else(|e| panic!("append: {e}"));
    assert_eq!(
        listed,
        vec![("top".to_string(), before)],
        "listing during the copy-up"
    );
    assert_eq!(after.ok(), Some(before), "st_ino after the copy-up");
}

/// Maps the first page of `f` shared and read-only and copies it with a syscall (`pwrite`
/// to a memfd), so that a page beyond the kernel's idea of the file's end fails the copy
/// with EFAULT instead of killing the test with SIGBUS.
fn fault_first_page(f: &std::fs::File) -> Result<(), i32> {
    let len = 4096;
    let sink = nix::sys::memfd::memfd_create("races-sink", nix::sys::memfd::MFdFlags::empty())
        .unwrap_or_else(|e| panic!("memfd_create: {e}"));
    // SAFETY: a fresh mapping at an address the kernel picks, of an open file; nothing
    // else refers to it, and it is unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    // SAFETY: addr is len mapped bytes, read only by the kernel (no Rust reference).
    let r = unsafe { libc::pwrite(sink.as_raw_fd(), addr, len, 0) };
    let err = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: the mapping made above, of len bytes, not used after this.
    unsafe { libc::munmap(addr, len) };
    if r < 0 {
        Err(err)
    } else {
        Ok(())
    }
}

/// An `O_TRUNC` open of a file while another process's append to it is in the daemon
/// (held there by the pause; the appender holds the kernel's inode lock meanwhile). The
/// VFS truncates an `O_TRUNC` open under the inode lock (`handle_truncate`), so the
/// truncation comes after the append, and on the kernel's overlay the file is then empty.
/// With `FUSE_ATOMIC_O_TRUNC` the daemon truncated at OPEN, before the append landed, and
/// the kernel's `handle_truncate` only set its size to 0 (`fuse_do_setattr`, `ATTR_OPEN`):
/// the appended bytes stayed in the file behind a hole, a mapping of it took SIGBUS while
/// stat and read showed them (issue 14's mmap readers under `nopassthrough`), and a GETATTR
/// later brought them back.
#[test]
fn open_trunc_during_an_append_truncates_after_it() {
    if !require_root("open_trunc_during_an_append_truncates_after_it") {
        return;
    }
    for frontend in ["wire", "fuser"] {
        open_trunc_during_an_append(frontend);
    }
}

fn open_trunc_during_an_append(frontend: &str) {
    let s = setup(&format!("race-otrunc-{frontend}"));
    // Data through the daemon: passthrough writes never reach it.
    let opts = format!("nopassthrough,frontend={frontend}");
    let mut m = mount_paused_with(&s, "write", 600, &opts);
    let file = s.path("m/d/a");
    let target = file.clone();
    let appender = std::thread::spawn(move || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(target)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"appended\n"))
    });
    // Well inside the daemon's pause of the append's WRITE.
    std::thread::sleep(Duration::from_millis(200));
    let truncated = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&file);
    let appended = appender
        .join()
        .unwrap_or_else(|_| panic!("appender panicked"));
    let reader = std::fs::File::open(&file);
    // Before any stat: what the kernel holds as the size after the truncating open.
    let mapped = reader
        .as_ref()
        .map(fault_first_page)
        .map_err(ToString::to_string);
    let size = std::fs::metadata(&file).map(|m| m.len());
    let content = std::fs::read(&file);
    drop((truncated, reader));
    m.unmount();
    appended.unwrap_or_else(|e| panic!("append: {e}"));
    let content = content.unwrap_or_else(|e| panic!("read: {e}"));
    assert_eq!(
        (size.ok(), String::from_utf8_lossy(&content).into_owned()),
        (Some(0), String::new()),
        "frontend={frontend}: after the O_TRUNC open that waited for the append (a \
         mapping of the file then gave {mapped:?}, errno 14 is EFAULT: SIGBUS)"
    );
}

/// What one name change of `m/top` gave while an open for writing copied the file up:
/// the change's result, a write through the open file, what `m/top` and `m/moved` show
/// after (`None`: absent), and the type of `u/top` (`None`: absent).
type Outcome = (
    Result<(), Option<i32>>,
    Result<(), Option<i32>>,
    Option<String>,
    Option<String>,
    Option<u32>,
);

/// The name changes that look the name up again in the daemon.
#[derive(Clone, Copy, Debug)]
enum NameChange {
    Unlink,
    Rename,
}

impl NameChange {
    fn run(self, m: &Path) -> std::io::Result<()> {
        match self {
            NameChange::Unlink => std::fs::remove_file(m.join("top")),
            NameChange::Rename => std::fs::rename(m.join("top"), m.join("moved")),
        }
    }
}

/// The rest of an `Outcome`, once the change and the write are done.
fn outcome_after(
    s: &Scratch,
    changed: Result<(), Option<i32>>,
    wrote: Result<(), Option<i32>>,
) -> Outcome {
    let read = |n: &str| std::fs::read_to_string(s.path(n)).ok();
    let upper = std::fs::symlink_metadata(s.path("u/top"))
        .ok()
        .map(|m| m.mode() & libc::S_IFMT);
    (changed, wrote, read("m/top"), read("m/moved"), upper)
}

fn errno_of(e: &std::io::Error) -> Option<i32> {
    e.raw_os_error()
}

fn open_w(p: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().append(true).open(p)
}

/// The oracle: the kernel's overlay, the open (and its copy-up) before the change, which
/// is what the race comes down to there (`ovl_remove_and_whiteout` exchanges a whiteout
/// with the copy it finds under the name; a rename moves the copy).
fn change_after_copy_up_on_kernel(change: NameChange) -> Outcome {
    let k = setup(&format!("race-{change:?}-copyup-k"));
    std::fs::write(k.path("l/top"), "lower top\n").unwrap_or_else(|e| panic!("{e}"));
    let mut km = mount_kernel(
        &k.path("l").display().to_string(),
        &k.path("u"),
        &k.path("w"),
        &k.path("m"),
        "",
    );
    let f = open_w(&k.path("m/top")).unwrap_or_else(|e| panic!("open: {e}"));
    let changed = change.run(&k.path("m")).map_err(|e| errno_of(&e));
    let wrote = std::io::Write::write_all(&mut &f, b"+").map_err(|e| errno_of(&e));
    drop(f);
    let out = outcome_after(&k, changed, wrote);
    km.unmount();
    out
}

/// unionfs: the change's lookup of the name (in the daemon) held after it probed the
/// layers and found the file lower-only, the copy-up of an open for writing placing the
/// copy meanwhile.
fn change_during_copy_up_on_unionfs(change: NameChange) -> Outcome {
    let s = setup(&format!("race-{change:?}-copyup"));
    // In the root, whose upper exists: the copy-up copies no parent first.
    std::fs::write(s.path("l/top"), "lower top\n").unwrap_or_else(|e| panic!("{e}"));
    // Requests from /dev/fuse on several threads: the open must not queue behind the
    // paused change (as it may on the change's io_uring queue).
    let mut m = mount_paused_with(&s, "lookup-resolved", 500, "uring=off,threads=4");
    // The name is cached in the kernel from here on: no LOOKUP precedes the open.
    std::fs::symlink_metadata(s.path("m/top")).unwrap_or_else(|e| panic!("{e}"));
    let mnt = s.path("m");
    let changer = std::thread::spawn(move || change.run(&mnt));
    // Well inside the pause of the change's lookup: a rename's comes after the LOOKUP
    // of its target, which the kernel always sends again (LOOKUP_RENAME_TARGET) and
    // which pauses too.
    let wait = match change {
        NameChange::Unlink => 200,
        NameChange::Rename => 700,
    };
    std::thread::sleep(Duration::from_millis(wait));
    let f = open_w(&s.path("m/top"));
    let changed = changer
        .join()
        .unwrap_or_else(|_| panic!("{change:?} thread panicked"))
        .map_err(|e| errno_of(&e));
    let wrote = f
        .as_ref()
        .map_err(errno_of)
        .and_then(|f| std::io::Write::write_all(&mut &*f, b"+").map_err(|e| errno_of(&e)));
    drop(f);
    let out = outcome_after(&s, changed, wrote);
    m.unmount();
    out
}

/// `unlink-lower-during-copy-up`: the unlink of a lower file while an open for writing
/// (which the kernel does not serialize with the unlink) copies it up, the copy placed
/// between the unlink's look at the upper directory and its use of the node. The lookup
/// inside the unlink made a second, lower-only node for the file, and a whiteout over the
/// copy failed: EEXIST (1 in 133k operations of the stress load). On the kernel's overlay
/// the unlink succeeds, leaves a whiteout, and the open file stays writable.
#[test]
fn unlink_of_a_lower_file_during_its_copy_up() {
    if !require_root("unlink_of_a_lower_file_during_its_copy_up") {
        return;
    }
    let want = change_after_copy_up_on_kernel(NameChange::Unlink);
    assert_eq!(
        want,
        (Ok(()), Ok(()), None, None, Some(libc::S_IFCHR)),
        "the kernel's overlay"
    );
    let got = change_during_copy_up_on_unionfs(NameChange::Unlink);
    assert_eq!(
        got, want,
        "unlink during the copy-up of an open for writing: unionfs, kernel overlay (errno \
         17 is EEXIST)"
    );
}

/// `rename-lower-during-copy-up`: the same race with a rename of the file. With the
/// second node the rename copied the file up again, and the copy found the name taken:
/// EEXIST. On the kernel's overlay the copy moves, and the open file writes to it.
#[test]
fn rename_of_a_lower_file_during_its_copy_up() {
    if !require_root("rename_of_a_lower_file_during_its_copy_up") {
        return;
    }
    let want = change_after_copy_up_on_kernel(NameChange::Rename);
    assert_eq!(
        want,
        (
            Ok(()),
            Ok(()),
            None,
            Some("lower top\n+".into()),
            Some(libc::S_IFCHR)
        ),
        "the kernel's overlay"
    );
    let got = change_during_copy_up_on_unionfs(NameChange::Rename);
    assert_eq!(
        got, want,
        "rename during the copy-up of an open for writing: unionfs, kernel overlay (errno \
         17 is EEXIST)"
    );
}

/// Whether this kernel has FUSE passthrough (6.9 and later): `None` when it has, else why not.
fn no_fuse_passthrough() -> Option<String> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    if (major, minor) >= (6, 9) {
        None
    } else {
        Some(format!(
            "kernel {release} has no FUSE passthrough (6.9 or later)"
        ))
    }
}

/// `passthrough=all`, a lower file `d/a`: an append opens it (found no lower passthrough
/// open, the daemon paused before its copy-up, `open-write-checked`) while a reader opens
/// the lower file and holds it a little. The reader's open passed through to the lower file (a backing file
/// from the read-only clone of the layer), and the append's open then got that same
/// backing id (`DataPath::Direct`): the kernel opened the lower file for writing on the
/// read-only clone, failed (EROFS), and answered the append's `open` with EIO (the
/// `mixed-par` bench's one failure). On the kernel's overlay both succeed and the append
/// lands in the copy; here the append waits for the reader's release, then passes through
/// to the copy. Both front ends.
#[test]
fn append_open_of_a_lower_file_during_a_passthrough_read_open() {
    let name = "append_open_of_a_lower_file_during_a_passthrough_read_open";
    if !require_root(name) {
        return;
    }
    if let Some(why) = no_fuse_passthrough() {
        skip(name, Skip::Missing, &why);
        return;
    }
    for frontend in ["wire", "fuser"] {
        append_open_during_a_passthrough_read_open(frontend);
    }
}

fn append_open_during_a_passthrough_read_open(frontend: &str) {
    let s = setup(&format!("race-ptall-append-{frontend}"));
    let opts = format!("passthrough=all,frontend={frontend}");
    let mut m = mount_paused_with(&s, "open-write-checked", 600, &opts);
    let file = s.path("m/d/a");
    let target = file.clone();
    let appender = std::thread::spawn(move || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(target)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"appended\n"))
    });
    // Well inside the daemon's pause of the append's OPEN; held until after it ends.
    std::thread::sleep(Duration::from_millis(200));
    let read = std::fs::File::open(&file).and_then(|mut f| {
        let mut v = String::new();
        std::io::Read::read_to_string(&mut f, &mut v)?;
        std::thread::sleep(Duration::from_millis(700));
        Ok(v)
    });
    let appended = appender
        .join()
        .unwrap_or_else(|_| panic!("appender panicked"));
    let after = std::fs::read_to_string(&file);
    m.unmount();
    assert_eq!(
        read.map_err(|e| e.raw_os_error()),
        Ok("lower a\n".to_string()),
        "frontend={frontend}: the read open during the append's open"
    );
    assert_eq!(
        appended.map_err(|e| e.raw_os_error()),
        Ok(()),
        "frontend={frontend}: the append (errno 5 is EIO: its open got the lower backing file)"
    );
    assert_eq!(
        after.map_err(|e| e.raw_os_error()),
        Ok("lower a\nappended\n".to_string()),
        "frontend={frontend}: the file after"
    );
}
