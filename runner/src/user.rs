//! Who the command runs as: `--user` (or the image's User) as `UID[:GID]` or names, looked
//! up in the container's own /etc/passwd and /etc/group after the root switch (as runc
//! does: the image's files describe the image's users, and reading them inside the
//! container cannot reach the host's). Pure over the files' contents.

use crate::error::{Error, Result};

/// The resolved identity: ids, supplementary groups, and the home directory for $HOME.
#[derive(Debug, PartialEq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = Passwd<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some(Passwd {
            name: f.first()?,
            uid: f.get(2)?.parse().ok()?,
            gid: f.get(3)?.parse().ok()?,
            home: f.get(5).copied().unwrap_or(""),
        })
    })
}

/// (name, gid, members) of each /etc/group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let members = f
            .get(3)
            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
            .unwrap_or_default();
        Some((*f.first()?, f.get(2)?.parse().ok()?, members))
    })
}

/// Checks the syntax before anything is set up: `USER[:GROUP]`, each a number or a name.
pub fn check_spec(spec: &str) -> Result<()> {
    let ok_part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if ok_part(u) && g.is_none_or(ok_part) {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "bad user {spec:?}: expected USER[:GROUP], numbers or names"
        )))
    }
}

/// Resolves `USER[:GROUP]` as docker does: a numeric user needs no passwd entry (its
/// group is then 0 unless given); a name must exist; the supplementary groups are those
/// listing the user by name, plus the primary group.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity> {
    check_spec(spec)?;
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match u.parse::<u32>() {
        Ok(uid) => passwd_entries(passwd).find(|p| p.uid == uid),
        Err(_) => Some(
            passwd_entries(passwd)
                .find(|p| p.name == u)
                .ok_or_else(|| {
                    Error::usage(format!("user {u} is not in the image's /etc/passwd"))
                })?,
        ),
    };
    let uid = match (u.parse::<u32>(), &entry) {
        (Ok(n), _) => n,
        (Err(_), Some(p)) => p.uid,
        (Err(_), None) => return Err(Error::usage(format!("unknown user {u}"))),
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries(group)
                .find(|(name, _, _)| *name == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| {
                    Error::usage(format!("group {g} is not in the image's /etc/group"))
                })?,
        },
        None => entry.as_ref().map(|p| p.gid).unwrap_or(0),
    };
    let mut groups = vec![gid];
    if let Some(p) = &entry {
        for (_, id, members) in group_entries(group) {
            if members.contains(&p.name) && !groups.contains(&id) {
                groups.push(id);
            }
        }
    }
    let home = entry
        .as_ref()
        .map(|p| p.home)
        .filter(|h| !h.is_empty())
        .unwrap_or(if uid == 0 { "/root" } else { "/" })
        .to_string();
    Ok(Identity {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:web:/var/www:/bin/false\nbad line\n";
    const GROUP: &str = "root:x:0:\nwww:x:34:\nadm:x:4:www,other\nstaff:x:50:\n";

    fn r(s: &str) -> Identity {
        resolve(s, PASSWD, GROUP).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn names_and_numbers() {
        assert_eq!(
            r("www"),
            Identity {
                uid: 33,
                gid: 34,
                groups: vec![34, 4],
                home: "/var/www".into()
            }
        );
        assert_eq!((r("33").uid, r("33").gid), (33, 34));
        assert_eq!(
            (r("1000").uid, r("1000").gid, r("1000").home.as_str()),
            (1000, 0, "/")
        );
        assert_eq!((r("1000:50").gid, r("1000:staff").gid), (50, 50));
        assert_eq!(r("www:staff").groups, vec![50, 4]);
        assert_eq!(r("0").home, "/root");
    }

    #[test]
    fn refusals() {
        assert!(resolve("nobody", PASSWD, GROUP).is_err());
        assert!(resolve("www:nogroup", PASSWD, GROUP).is_err());
        assert!(resolve("", PASSWD, GROUP).is_err());
        assert!(resolve("a b", PASSWD, GROUP).is_err());
        assert!(resolve("1:", PASSWD, GROUP).is_err());
        assert!(check_spec("www:adm").is_ok());
    }
}
