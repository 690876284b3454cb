//! Turns a tar member name into components that stay inside the layer, or refuses it.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use crate::error::{Error, Result};

/// Splits `name` into its components, dropping `.` and empty ones. Refuses absolute names
/// and any `..`: docker strips a leading `/`, but an archive that asks for one was not made
/// by a layer tool, and refusing it keeps the rule simple ("nothing outside the layer").
pub fn components(name: &[u8]) -> Result<Vec<OsString>> {
    let shown = String::from_utf8_lossy(name);
    if name.first() == Some(&b'/') {
        return Err(Error::refused(format!("absolute member name {shown:?}")));
    }
    if name.contains(&0) {
        return Err(Error::refused(format!(
            "member name {shown:?} holds a NUL byte"
        )));
    }
    let mut out = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(Error::refused(format!(
                    "member name {shown:?} climbs out with '..'"
                )))
            }
            _ => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Ok(out)
}

/// A member name as the manifests of docker-save and OCI archives spell it (`./x` = `x`).
pub fn normalize(name: &str) -> String {
    name.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(n: &str) -> Vec<String> {
        components(n.as_bytes())
            .unwrap_or_else(|e| panic!("{n}: {e}"))
            .into_iter()
            .map(|c| c.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn plain_names() {
        assert_eq!(ok("bin/sh"), ["bin", "sh"]);
        assert_eq!(ok("./bin//sh/"), ["bin", "sh"]);
        assert_eq!(ok("./"), Vec::<String>::new());
        assert_eq!(ok("a/..b/c.."), ["a", "..b", "c.."]);
    }

    #[test]
    fn refused_names() {
        for n in ["/etc/passwd", "../x", "a/../../x", "a/..", "..", "a/\0b"] {
            assert!(components(n.as_bytes()).is_err(), "{n:?} accepted");
        }
    }

    #[test]
    fn normalized() {
        assert_eq!(normalize("./manifest.json"), "manifest.json");
        assert_eq!(normalize("blobs/sha256/ab"), "blobs/sha256/ab");
    }
}
