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
//! The kernel signals a write's kill with an empty SETATTR (from `file_remove_privs`) or
//! `FUSE_WRITE_KILL_SUIDGID`, a truncate's with `FATTR_KILL_SUIDGID` and an `O_TRUNC`
//! open's with `FUSE_OPEN_KILL_SUIDGID`: it sets them exactly when the caller lacks
//! CAP_FSETID (`fuse_do_setattr`, `fuse_open`, `fuse_send_write`). Our own front end
//! (`wire`) passes that on in `Ctx::fsetid`, and an access ACL's
//! `FUSE_SETXATTR_ACL_KILL_SGID` (the kernel's whole `in_group_or_capable` judgement) in
//! `Ctx::acl_kill_sgid`; fuser passes neither, so then the capability is read from the
//! caller's `/proc/PID/status`, only when the file has a set-id bit at all.
//!
//! Supplementary groups still come from `/proc` in both cases: they matter only for a
//! set-group-id file without group execute written by a caller whose own group is not the
//! file's, and no request carries them.

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
fn proc_creds(c: &Ctx) -> Creds {
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

/// The caller's CAP_FSETID (from the request when it says) and, only when `groups` is
/// asked for, its supplementary groups.
fn creds(c: &Ctx, groups: bool) -> Creds {
    match c.fsetid {
        Some(fsetid) if !groups => Creds {
            fsetid,
            groups: Vec::new(),
        },
        Some(fsetid) => Creds {
            fsetid,
            groups: proc_creds(c).groups,
        },
        None => proc_creds(c),
    }
}

/// The mode bits to clear from a file of `mode` and group `gid` for this caller.
pub fn bits_to_clear(mode: u32, gid: u32, caller: &Ctx, cause: Cause) -> u32 {
    let suid = mode & libc::S_ISUID;
    let sgid = mode & libc::S_ISGID;
    if suid == 0 && sgid == 0 {
        return 0;
    }
    let group_exec = mode & libc::S_IXGRP != 0;
    // Groups decide only a set-group-id bit without group execute, for a caller whose
    // own group is not the file's.
    let need_groups = sgid != 0 && !group_exec && caller.gid != gid;
    let who = creds(caller, need_groups);
    if who.fsetid && cause == Cause::Write {
        return 0;
    }
    let in_group = caller.gid == gid || who.groups.contains(&gid) || who.fsetid;
    suid | if group_exec || !in_group { sgid } else { 0 }
}

/// Whether setting an access ACL clears set-group-id (`posix_acl_update_mode`): for a
/// caller outside the file's group without CAP_FSETID.
pub fn acl_kills_sgid(gid: u32, caller: &Ctx) -> bool {
    if let Some(kill) = caller.acl_kill_sgid {
        return kill;
    }
    let who = creds(caller, caller.gid != gid);
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
            ..Ctx::default()
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
            ..Ctx::default()
        };
        let me = proc_creds(&root);
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

    /// The request's flag wins over `/proc`: a caller that has CAP_FSETID (pid 1, or this
    /// test as root) whose request says "kill" loses its set-id bits, and one whose
    /// request says "no kill" keeps them whatever `/proc` would say.
    #[test]
    fn the_requests_kill_flag_is_used_instead_of_proc() {
        for pid in [1, std::process::id()] {
            let has = Ctx {
                uid: 0,
                gid: 0,
                pid,
                ..Ctx::default()
            };
            if !proc_creds(&has).fsetid {
                continue;
            }
            let told_kill = Ctx {
                fsetid: Some(false),
                ..has
            };
            assert_eq!(bits_to_clear(0o6755, 0, &told_kill, Cause::Write), 0o6000);
            // Without group execute, in the group (its own gid): set-group-id stays.
            assert_eq!(bits_to_clear(0o6745, 0, &told_kill, Cause::Write), 0o4000);
            assert_eq!(bits_to_clear(0o6755, 0, &has, Cause::Write), 0);
            let told_acl = Ctx {
                acl_kill_sgid: Some(true),
                ..has
            };
            assert!(acl_kills_sgid(5, &told_acl));
            assert!(!acl_kills_sgid(5, &has));
            return;
        }
        crate::testskip::skip(
            "the_requests_kill_flag_is_used_instead_of_proc",
            crate::testskip::root_or_missing(),
            "neither pid 1 nor this test has CAP_FSETID",
        );
    }

    #[test]
    fn a_no_kill_flag_keeps_the_bits_of_a_caller_proc_knows_nothing_of() {
        let u = Ctx {
            fsetid: Some(true),
            ..user()
        };
        assert_eq!(bits_to_clear(0o6777, 0, &u, Cause::Write), 0);
        assert_eq!(bits_to_clear(0o6777, 0, &u, Cause::Signalled), 0o6000);
    }
}
