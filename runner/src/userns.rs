//! Rootless id maps: with `newuidmap`/`newgidmap` and a range for the caller in
//! /etc/subuid and /etc/subgid, the container gets root = the caller plus 1..=N = the
//! range (so `--user` works); otherwise the helper maps only the caller to root itself.

use std::path::Path;
use std::process::Command;

use crate::error::{Error, Result};

const NEWUIDMAP: &str = "/usr/bin/newuidmap";
const NEWGIDMAP: &str = "/usr/bin/newgidmap";

#[derive(Debug, Clone, PartialEq)]
pub enum IdMap {
    /// The caller's ids as 0, written by the helper itself.
    SelfOnly { uid: u32, gid: u32 },
    /// The caller's ids as 0 and a subordinate range from 1, written by the setuid tools.
    Ranges {
        uid: u32,
        gid: u32,
        subuid: (u32, u32),
        subgid: (u32, u32),
    },
}

impl IdMap {
    pub fn root_ids(&self) -> (u32, u32) {
        match self {
            IdMap::SelfOnly { uid, gid } | IdMap::Ranges { uid, gid, .. } => (*uid, *gid),
        }
    }
}

/// The first `start:count` range of `user` (by name or uid) in a subuid/subgid file.
pub fn subid_range(content: &str, user: &str, id: u32) -> Option<(u32, u32)> {
    content.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let who = f.next()?;
        let start = f.next()?.parse().ok()?;
        let count: u32 = f.next()?.parse().ok()?;
        ((who == user || who == id.to_string()) && count > 0).then_some((start, count))
    })
}

/// Chooses the map for the calling user.
pub fn choose(uid: u32, gid: u32) -> IdMap {
    let tools = Path::new(NEWUIDMAP).exists() && Path::new(NEWGIDMAP).exists();
    let name = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    match (
        tools,
        subid_range(&read("/etc/subuid"), &name, uid),
        subid_range(&read("/etc/subgid"), &name, gid),
    ) {
        (true, Some(subuid), Some(subgid)) => IdMap::Ranges {
            uid,
            gid,
            subuid,
            subgid,
        },
        _ => IdMap::SelfOnly { uid, gid },
    }
}

/// The arguments of newuidmap and newgidmap for the process `pid`.
pub fn tool_args(pid: i32, map: &IdMap) -> Option<[Vec<String>; 2]> {
    let IdMap::Ranges {
        uid,
        gid,
        subuid,
        subgid,
    } = map
    else {
        return None;
    };
    let args = |own: u32, (start, count): (u32, u32)| {
        [
            pid.to_string(),
            "0".into(),
            own.to_string(),
            "1".into(),
            "1".into(),
        ]
        .into_iter()
        .chain([start.to_string(), count.to_string()])
        .collect()
    };
    Some([args(*uid, *subuid), args(*gid, *subgid)])
}

/// Runs newuidmap and newgidmap for the helper `pid` (which has unshared its user
/// namespace and waits).
pub fn write_with_tools(pid: i32, map: &IdMap) -> Result<()> {
    let Some([u, g]) = tool_args(pid, map) else {
        return Ok(());
    };
    for (tool, args) in [(NEWUIDMAP, u), (NEWGIDMAP, g)] {
        let out = Command::new(tool)
            .args(&args)
            .output()
            .map_err(|e| Error::io(format!("run {tool}"), e))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(Error::usage(format!(
                "{tool} {} failed: {}",
                args.join(" "),
                err.lines().next().unwrap_or("").trim()
            )));
        }
    }
    Ok(())
}

/// Removes a container's tree; a rootless one's upper may hold files of the subordinate
/// ids, which only a user namespace with the same map can remove.
pub fn remove_container_tree(p: &Path) -> Result<()> {
    match crate::fsutil::remove_tree(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            let map = choose(
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            );
            if nix::unistd::geteuid().is_root() || !matches!(map, IdMap::Ranges { .. }) {
                return Err(Error::path("remove", p, e));
            }
            remove_tree_mapped(p, &map)
        }
        Err(e) => Err(Error::path("remove", p, e)),
    }
}

/// Removes a tree holding files of the subordinate ids (a rootless container's upper):
/// the caller may not, but root of a user namespace with the same map may. A child enters
/// such a namespace, waits while newuidmap/newgidmap map it, and removes the tree.
pub fn remove_tree_mapped(path: &Path, map: &IdMap) -> Result<()> {
    use std::io::{Read, Write};
    let pipe =
        || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e));
    let (sync_r, sync_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    match crate::sys::fork().map_err(|e| Error::sys("fork", e))? {
        nix::unistd::ForkResult::Child => {
            drop(sync_r);
            drop(go_w);
            let code = (|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).ok()?;
                std::fs::File::from(sync_w).write_all(b"u").ok()?;
                let mut b = [0u8; 1];
                std::fs::File::from(go_r).read_exact(&mut b).ok()?;
                (b == *b"g").then_some(())?;
                crate::fsutil::remove_tree(path).ok()
            })()
            .map_or(1, |_| 0);
            std::process::exit(code)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(sync_w);
            drop(go_r);
            let mut b = [0u8; 1];
            let mapped = std::fs::File::from(sync_r)
                .read_exact(&mut b)
                .map_err(|e| Error::io("enter a user namespace", e))
                .and_then(|_| write_with_tools(child.as_raw(), map));
            let _ = std::fs::File::from(go_w).write_all(if mapped.is_ok() { b"g" } else { b"x" });
            let status = nix::sys::wait::waitpid(child, None).map_err(|e| Error::sys("wait", e))?;
            mapped?;
            match status {
                nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
                _ => Err(Error::usage(format!(
                    "cannot remove {} even in a user namespace",
                    path.display()
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let f = "alice:100000:65536\n1001:200000:1000\nbob:1:0\n";
        assert_eq!(subid_range(f, "alice", 1000), Some((100000, 65536)));
        assert_eq!(subid_range(f, "carol", 1001), Some((200000, 1000)));
        assert_eq!(subid_range(f, "bob", 7), None, "an empty range is no range");
        assert_eq!(subid_range(f, "dave", 9), None);
    }

    #[test]
    fn arguments() {
        let m = IdMap::Ranges {
            uid: 1000,
            gid: 100,
            subuid: (100000, 65536),
            subgid: (200000, 500),
        };
        let [u, g] = tool_args(42, &m).unwrap_or_default();
        assert_eq!(u, ["42", "0", "1000", "1", "1", "100000", "65536"]);
        assert_eq!(g, ["42", "0", "100", "1", "1", "200000", "500"]);
        assert!(tool_args(42, &IdMap::SelfOnly { uid: 1, gid: 1 }).is_none());
    }
}
