//! The container's environment, user and command line, from the image defaults and the
//! run options. Pure, so the precedence rules are unit-tested.

use crate::error::{Error, Result};

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A clean environment: the image's Env, then `--env` (later wins), a default PATH if none,
/// HOSTNAME, and the caller's TERM when it has one (as docker -t passes it on).
pub fn build_env(
    image: &[String],
    cli: &[String],
    hostname: &str,
    term: Option<&str>,
) -> Result<Vec<String>> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match out.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => out.push((k.to_string(), v.to_string())),
    };
    for kv in image {
        if let Some((k, v)) = kv.split_once('=') {
            set(k, v);
        }
    }
    for kv in cli {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() && !k.contains('\0') && !v.contains('\0') => set(k, v),
            _ => {
                return Err(Error::usage(format!(
                    "bad --env {kv:?}: expected KEY=VALUE"
                )))
            }
        }
    }
    let has = |out: &[(String, String)], k: &str| out.iter().any(|(ek, _)| ek == k);
    if !has(&out, "PATH") {
        out.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !has(&out, "HOSTNAME") {
        out.push(("HOSTNAME".into(), hostname.into()));
    }
    if let Some(t) = term {
        if !has(&out, "TERM") {
            out.push(("TERM".into(), t.into()));
        }
    }
    Ok(out.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// The argv to exec: an explicit command replaces the image's Cmd, the Entrypoint stays.
pub fn build_argv(
    entrypoint: &[String],
    image_cmd: &[String],
    cli_cmd: &[String],
) -> Result<Vec<String>> {
    let mut argv = entrypoint.to_vec();
    if cli_cmd.is_empty() {
        argv.extend_from_slice(image_cmd);
    } else {
        argv.extend_from_slice(cli_cmd);
    }
    if argv.is_empty() {
        return Err(Error::usage(
            "no command given and the image has no default command",
        ));
    }
    Ok(argv)
}

/// Finds a command in PATH inside the new root, as execvp would, but with the container's
/// PATH rather than runbox's own.
pub fn resolve(cmd: &str, path: &str, exists: impl Fn(&str) -> bool) -> Option<String> {
    if cmd.contains('/') {
        return Some(cmd.to_string());
    }
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{}/{cmd}", d.trim_end_matches('/')))
        .find(|p| exists(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn env_precedence() {
        let e = build_env(
            &s(&["A=1", "PATH=/bin"]),
            &s(&["A=2", "B=x=y"]),
            "h",
            Some("xterm"),
        )
        .unwrap_or_default();
        assert_eq!(
            e,
            s(&["A=2", "PATH=/bin", "B=x=y", "HOSTNAME=h", "TERM=xterm"])
        );
        let e = build_env(&[], &[], "h", None).unwrap_or_default();
        assert_eq!(e[0], format!("PATH={DEFAULT_PATH}"));
        assert!(build_env(&[], &s(&["NOEQUALS"]), "h", None).is_err());
        assert!(build_env(&[], &s(&["=v"]), "h", None).is_err());
    }

    #[test]
    fn argv() {
        assert_eq!(build_argv(&[], &s(&["sh"]), &[]).ok(), Some(s(&["sh"])));
        assert_eq!(
            build_argv(&s(&["e"]), &s(&["sh"]), &s(&["ls"])).ok(),
            Some(s(&["e", "ls"]))
        );
        assert!(build_argv(&[], &[], &[]).is_err());
    }

    #[test]
    fn path_lookup() {
        let have = |p: &str| p == "/bin/sh";
        assert_eq!(
            resolve("sh", "/usr/bin:/bin", have).as_deref(),
            Some("/bin/sh")
        );
        assert_eq!(resolve("nope", "/usr/bin:/bin", have), None);
        assert_eq!(resolve("./x", "/bin", have).as_deref(), Some("./x"));
    }
}
