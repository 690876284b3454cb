//! Declarative description of a layer (lower or pre-populated upper) and
//! the code that materialises it on disk.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::sys;

/// One entry of a [`Tree`]. Paths are relative byte strings.
#[derive(Debug, Clone)]
pub enum Item {
    Dir(Vec<u8>, u32),
    File(Vec<u8>, u32, Vec<u8>),
    Symlink(Vec<u8>, Vec<u8>),
    /// Hard link: (new path, existing path).
    Hardlink(Vec<u8>, Vec<u8>),
    Fifo(Vec<u8>, u32),
    CharDev(Vec<u8>, u32, u64, u64),
    Xattr(Vec<u8>, Vec<u8>, Vec<u8>),
    /// Overlay whiteout: char device 0/0.
    Whiteout(Vec<u8>),
    /// Directory marked opaque with `trusted.overlay.opaque=y`.
    Opaque(Vec<u8>),
    /// Sparse file: (path, mode, size, offset, data at offset).
    Sparse(Vec<u8>, u32, u64, u64, Vec<u8>),
    Owner(Vec<u8>, u32, u32),
    /// Explicit mtime (seconds) — set after everything else.
    Mtime(Vec<u8>, i64),
    /// File flags set with `chattr SPEC` after everything else (after the mtimes).
    Flags(Vec<u8>, String),
}

/// A list of entries, applied in order. Missing parent directories are
/// created with mode 0755.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    pub items: Vec<Item>,
}

fn b(p: impl AsRef<[u8]>) -> Vec<u8> {
    p.as_ref().to_vec()
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }
    pub fn dir(mut self, p: impl AsRef<[u8]>, mode: u32) -> Self {
        self.items.push(Item::Dir(b(p), mode));
        self
    }
    pub fn file(mut self, p: impl AsRef<[u8]>, mode: u32, content: impl AsRef<[u8]>) -> Self {
        self.items.push(Item::File(b(p), mode, b(content)));
        self
    }
    pub fn symlink(mut self, p: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        self.items.push(Item::Symlink(b(p), b(target)));
        self
    }
    /// `new` becomes a hard link of the already created `existing`.
    pub fn hardlink(mut self, new: impl AsRef<[u8]>, existing: impl AsRef<[u8]>) -> Self {
        self.items.push(Item::Hardlink(b(new), b(existing)));
        self
    }
    pub fn fifo(mut self, p: impl AsRef<[u8]>, mode: u32) -> Self {
        self.items.push(Item::Fifo(b(p), mode));
        self
    }
    pub fn chardev(mut self, p: impl AsRef<[u8]>, mode: u32, major: u64, minor: u64) -> Self {
        self.items.push(Item::CharDev(b(p), mode, major, minor));
        self
    }
    pub fn xattr(
        mut self,
        p: impl AsRef<[u8]>,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Self {
        self.items.push(Item::Xattr(b(p), b(name), b(value)));
        self
    }
    pub fn whiteout(mut self, p: impl AsRef<[u8]>) -> Self {
        self.items.push(Item::Whiteout(b(p)));
        self
    }
    pub fn opaque(mut self, p: impl AsRef<[u8]>) -> Self {
        self.items.push(Item::Opaque(b(p)));
        self
    }
    pub fn sparse(
        mut self,
        p: impl AsRef<[u8]>,
        mode: u32,
        size: u64,
        offset: u64,
        data: impl AsRef<[u8]>,
    ) -> Self {
        self.items
            .push(Item::Sparse(b(p), mode, size, offset, b(data)));
        self
    }
    pub fn owner(mut self, p: impl AsRef<[u8]>, uid: u32, gid: u32) -> Self {
        self.items.push(Item::Owner(b(p), uid, gid));
        self
    }
    pub fn mtime(mut self, p: impl AsRef<[u8]>, secs: i64) -> Self {
        self.items.push(Item::Mtime(b(p), secs));
        self
    }

    /// `chattr spec p` once the tree is built (`+i`, `+a`, `+A`, ...). A layout with such
    /// a tree clears `a` and `i` again before it is removed.
    pub fn chattr(mut self, p: impl AsRef<[u8]>, spec: &str) -> Self {
        self.items.push(Item::Flags(b(p), spec.to_string()));
        self
    }

    pub fn has_flags(&self) -> bool {
        self.items.iter().any(|i| matches!(i, Item::Flags(..)))
    }

    /// Materialises the tree under `root` (which must exist).
    pub fn build(&self, root: &Path) -> std::io::Result<()> {
        let j = |p: &[u8]| -> PathBuf { root.join(OsStr::from_bytes(p)) };
        let parents = |p: &Path| -> std::io::Result<()> {
            if let Some(parent) = p.parent() {
                if !parent.exists() {
                    std::fs::create_dir_all(parent)?;
                    // create_dir_all honours the umask; pin 0755
                    let mut cur = parent;
                    while cur != root && cur.starts_with(root) {
                        std::fs::set_permissions(cur, std::fs::Permissions::from_mode(0o755))?;
                        cur = cur.parent().unwrap();
                    }
                }
            }
            Ok(())
        };
        let chmod = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        };
        let err = |e: nix::errno::Errno| std::io::Error::from_raw_os_error(e as i32);
        let mut mtimes = Vec::new();
        let mut flags = Vec::new();
        for it in &self.items {
            match it {
                Item::Dir(p, mode) => {
                    let p = j(p);
                    parents(&p)?;
                    if !p.is_dir() {
                        std::fs::create_dir(&p)?;
                    }
                    chmod(&p, *mode)?;
                }
                Item::File(p, mode, content) => {
                    let p = j(p);
                    parents(&p)?;
                    std::fs::write(&p, content)?;
                    chmod(&p, *mode)?;
                }
                Item::Sparse(p, mode, size, off, data) => {
                    use std::os::unix::fs::FileExt;
                    let p = j(p);
                    parents(&p)?;
                    let f = std::fs::File::create(&p)?;
                    f.set_len(*size)?;
                    f.write_all_at(data, *off)?;
                    drop(f);
                    chmod(&p, *mode)?;
                }
                Item::Symlink(p, t) => {
                    let p = j(p);
                    parents(&p)?;
                    symlink(OsStr::from_bytes(t), &p)?;
                }
                Item::Hardlink(new, old) => {
                    let new = j(new);
                    parents(&new)?;
                    std::fs::hard_link(j(old), &new)?;
                }
                Item::Fifo(p, mode) => {
                    let p = j(p);
                    parents(&p)?;
                    nix::unistd::mkfifo(&p, Mode::from_bits_truncate(*mode)).map_err(err)?;
                    chmod(&p, *mode)?;
                }
                Item::CharDev(p, mode, ma, mi) => {
                    let p = j(p);
                    parents(&p)?;
                    mknod(
                        &p,
                        SFlag::S_IFCHR,
                        Mode::from_bits_truncate(*mode),
                        makedev(*ma, *mi),
                    )
                    .map_err(err)?;
                    chmod(&p, *mode)?;
                }
                Item::Whiteout(p) => {
                    let p = j(p);
                    parents(&p)?;
                    mknod(&p, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(err)?;
                }
                Item::Opaque(p) => {
                    let p = j(p);
                    parents(&p)?;
                    if !p.is_dir() {
                        std::fs::create_dir(&p)?;
                        chmod(&p, 0o755)?;
                    }
                    sys::lsetxattr(&p, b"trusted.overlay.opaque", b"y", 0).map_err(err)?;
                }
                Item::Xattr(p, n, v) => {
                    sys::lsetxattr(&j(p), n, v, 0).map_err(err)?;
                }
                Item::Owner(p, u, g) => {
                    std::os::unix::fs::lchown(j(p), Some(*u), Some(*g))?;
                }
                Item::Mtime(p, s) => mtimes.push((j(p), *s)),
                Item::Flags(p, spec) => flags.push((j(p), spec.clone())),
            }
        }
        for (p, s) in mtimes {
            let ts = nix::sys::time::TimeSpec::new(s, 0);
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &p,
                &ts,
                &ts,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .map_err(err)?;
        }
        for (p, spec) in flags {
            let st = std::process::Command::new("chattr")
                .arg(&spec)
                .arg(&p)
                .status()?;
            if !st.success() {
                return Err(std::io::Error::other(format!(
                    "chattr {spec} {}: {st}",
                    p.display()
                )));
            }
        }
        Ok(())
    }
}
