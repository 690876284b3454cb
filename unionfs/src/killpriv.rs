//! Clearing set-id bits on write, truncate, `chown` and ACL changes, which the kernel
//! leaves to us.
//!
//! Without `FUSE_HANDLE_KILLPRIV_V2` the kernel asks for `security.capability` (a GETXATTR
//! round trip) before *every* write to a file; with it the answer is remembered per inode
//! (`S_NOSEC`) until the attributes change, and writing a file in 4 KiB pieces is six
//! times faster. The price is that the daemon clears the set-id bits itself where the
//! kernel's VFS would (`setattr_should_drop_suidgid`, `chown_common`):
//! - a write or truncate by a caller without CAP_FSETID clears set-user-id, and
//!   set-group-id when the group may execute or the caller is not in the file's group;
//! - `chown` clears set-user-id, and set-group-id when the group may execute, whoever
//!   calls (the upper filesystem's own `chown` does that for us).
//!
//! The kernel signals a write's kill with an empty SETATTR (from `file_remove_privs`), a
//! truncate's and an `O_TRUNC` open's with flags fuser does not pass on; so the rule is
//! applied here from the caller's credentials, read from `/proc` only when the file has a
//! set-id bit at all.

use std::fs;

use crate::union::Ctx;

const CAP_FSETID: u32 = 4;

/// What the kernel's rules know of a caller.
struct Creds {
    /// CAP_FSETID in the initial user namespace (the kernel's `capable()`).
    fsetid: bool,
    groups: Vec<u32>,
}

/// Reads the caller's effective capabilities, user namespace and supplementary groups.
/// A caller that is gone or unknown (pid 0) counts as root if its uid is 0.
fn creds(c: &Ctx) -> Creds {
    let status = if c.pid == 0 {
        None
    } else {
        fs::read_to_string(format!("/proc/{}/status", c.pid)).ok()
    };
    let Some(status) = status else {
        return Creds {
            fsetid: c.uid == 0,
            groups: Vec::new(),
        };
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
    };
    let cap = u64::from_str_radix(field("CapEff:"), 16).unwrap_or(0) & (1 << CAP_FSETID) != 0;
    // Capabilities held in a user namespace of its own are not `capable()` ones.
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/user")).ok();
    let same_ns = ns(&c.pid.to_string()).is_some_and(|n| Some(n) == ns("self"));
    let groups = field("Groups:")
        .split_whitespace()
        .filter_map(|g| g.parse().ok())
        .collect();
    Creds {
        fsetid: cap && same_ns,
        groups,
    }
}

/// Why the bits may have to go.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Cause {
    /// A write or truncate (or `O_TRUNC` open): nothing for a caller with CAP_FSETID.
    Write,
    /// The kernel's empty SETATTR: a write it judged to need the kill, or a `chown` that
    /// keeps both ids (which kills even for root).
    Signalled,
}

/// The mode bits to clear from a file of `mode` and group `gid` for this caller.
pub fn bits_to_clear(mode: u32, gid: u32, caller: &Ctx, cause: Cause) -> u32 {
    let suid = mode & libc::S_ISUID;
    let sgid = mode & libc::S_ISGID;
    if suid == 0 && sgid == 0 {
        return 0;
    }
    let who = creds(caller);
    if who.fsetid && cause == Cause::Write {
        return 0;
    }
    let in_group = caller.gid == gid || who.groups.contains(&gid) || who.fsetid;
    let group_exec = mode & libc::S_IXGRP != 0;
    suid | if group_exec || !in_group { sgid } else { 0 }
}

/// Whether setting an access ACL clears set-group-id (`posix_acl_update_mode`): for a
/// caller outside the file's group without CAP_FSETID.
pub fn acl_kills_sgid(gid: u32, caller: &Ctx) -> bool {
    let who = creds(caller);
    !(who.fsetid || caller.gid == gid || who.groups.contains(&gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> Ctx {
        // A pid that cannot exist: the caller is judged by its uid alone.
        Ctx {
            uid: 1000,
            gid: 1000,
            pid: 0,
            umask: 0,
        }
    }

    #[test]
    fn user_write_clears_suid_and_sgid_by_the_kernel_rules() {
        let u = user();
        assert_eq!(bits_to_clear(0o6777, 0, &u, Cause::Write), 0o6000);
        assert_eq!(bits_to_clear(0o4755, 0, &u, Cause::Write), 0o4000);
        // sgid without group execute: kept only for a member of the group.
        assert_eq!(bits_to_clear(0o2767, 1000, &u, Cause::Write), 0);
        assert_eq!(bits_to_clear(0o2767, 0, &u, Cause::Write), 0o2000);
        assert_eq!(bits_to_clear(0o0777, 0, &u, Cause::Write), 0);
    }

    #[test]
    fn root_keeps_on_write_but_not_on_chown() {
        let root = Ctx {
            uid: 0,
            gid: 0,
            pid: std::process::id(),
            umask: 0,
        };
        let me = creds(&root);
        if !me.fsetid {
            crate::testskip::skip(
                "root_keeps_on_write_but_not_on_chown",
                crate::testskip::root_or_missing(),
                "not run as root with CAP_FSETID",
            );
            return;
        }
        assert_eq!(bits_to_clear(0o6777, 0, &root, Cause::Write), 0);
        assert_eq!(bits_to_clear(0o6777, 0, &root, Cause::Signalled), 0o6000);
        assert_eq!(bits_to_clear(0o6767, 0, &root, Cause::Signalled), 0o4000);
    }
}
