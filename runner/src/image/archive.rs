//! Reads the two image archive layouts, `docker save` (`manifest.json`) and OCI image
//! layout (`oci-layout`, `index.json`, `blobs/sha256/...`): which members are the layers,
//! base first, and the run defaults in the image config. Pure: it sees bytes, not files.

use serde::Deserialize;

use super::paths::normalize;
use crate::error::{Error, Result};

#[derive(Debug, PartialEq)]
pub enum Layout {
    /// A root filesystem tar: the archive is the only layer.
    Plain,
    DockerSave,
    Oci,
}

/// Which layout the archive's member names show.
pub fn detect<'a>(names: impl IntoIterator<Item = &'a str>) -> Layout {
    let (mut manifest, mut oci, mut index) = (false, false, false);
    for n in names {
        match n {
            "manifest.json" => manifest = true,
            "oci-layout" => oci = true,
            "index.json" => index = true,
            _ => {}
        }
    }
    // Recent docker writes both; its manifest.json is the simpler path to the layers.
    if manifest {
        Layout::DockerSave
    } else if oci && index {
        Layout::Oci
    } else {
        Layout::Plain
    }
}

/// The members to read: layers base first, and the config (if any).
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub layers: Vec<String>,
    pub config: Option<String>,
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: Option<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

fn bad(what: &str, e: impl std::fmt::Display) -> Error {
    Error::refused(format!("bad {what}: {e}"))
}

pub fn docker_plan(manifest: &[u8]) -> Result<Plan> {
    let entries: Vec<DockerEntry> =
        serde_json::from_slice(manifest).map_err(|e| bad("manifest.json", e))?;
    let mut it = entries.into_iter();
    let first = it
        .next()
        .ok_or_else(|| Error::refused("manifest.json lists no image"))?;
    if it.next().is_some() {
        return Err(Error::refused(
            "manifest.json lists several images; import one at a time",
        ));
    }
    Ok(Plan {
        layers: first.layers.iter().map(|l| normalize(l)).collect(),
        config: first.config.map(|c| normalize(&c)),
    })
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The member holding a blob: `sha256:HEX` is `blobs/sha256/HEX`. The digest is checked to
/// be an algorithm and hex, so it cannot name a path elsewhere in the archive.
pub fn blob_path(digest: &str) -> Result<String> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| Error::refused(format!("bad digest {digest:?}")))?;
    let alg_ok = !alg.is_empty() && alg.bytes().all(|b| b.is_ascii_alphanumeric());
    let hex_ok = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if !alg_ok || !hex_ok {
        return Err(Error::refused(format!("bad digest {digest:?}")));
    }
    Ok(format!("blobs/{alg}/{hex}"))
}

fn is_index(media_type: &str) -> bool {
    media_type.contains("image.index") || media_type.contains("manifest.list")
}

/// What an OCI index points to: the next blob and whether it is itself an index. Prefers
/// this machine's platform among several manifests.
pub fn oci_pick(index: &[u8]) -> Result<(String, bool)> {
    let idx: Index = serde_json::from_slice(index).map_err(|e| bad("index.json", e))?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let chosen = idx
        .manifests
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .or_else(|| idx.manifests.first())
        .ok_or_else(|| Error::refused("index.json lists no manifest"))?;
    Ok((blob_path(&chosen.digest)?, is_index(&chosen.media_type)))
}

pub fn oci_plan(manifest: &[u8]) -> Result<Plan> {
    let m: Manifest = serde_json::from_slice(manifest).map_err(|e| bad("OCI manifest", e))?;
    for l in &m.layers {
        if l.media_type.contains("zstd") {
            return Err(Error::refused(format!(
                "layer {} is zstd-compressed; only tar and tar+gzip are supported",
                l.digest
            )));
        }
    }
    Ok(Plan {
        layers: m
            .layers
            .iter()
            .map(|l| blob_path(&l.digest))
            .collect::<Result<_>>()?,
        config: Some(blob_path(&m.config.digest)?),
    })
}

/// Run defaults from an image config (the same `config` object in docker and OCI).
#[derive(Debug, Default, PartialEq)]
pub struct Defaults {
    pub env: Vec<String>,
    pub cmd: Vec<String>,
    pub entrypoint: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default, alias = "Config")]
    config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
struct RunConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

pub fn parse_config(data: &[u8]) -> Result<Defaults> {
    let f: ConfigFile = serde_json::from_slice(data).map_err(|e| bad("image config", e))?;
    let c = f.config.unwrap_or_default();
    Ok(Defaults {
        env: c.env.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        entrypoint: c.entrypoint.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_layouts() {
        assert_eq!(detect(["bin/sh", "etc"]), Layout::Plain);
        assert_eq!(detect(["a/layer.tar", "manifest.json"]), Layout::DockerSave);
        assert_eq!(
            detect(["oci-layout", "index.json", "blobs/sha256/aa"]),
            Layout::Oci
        );
        assert_eq!(detect(["oci-layout"]), Layout::Plain);
    }

    #[test]
    fn docker_manifest() {
        let m = br#"[{"Config":"abc.json","RepoTags":["x:latest"],"Layers":["l1/layer.tar","./l2/layer.tar"]}]"#;
        let p = docker_plan(m).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.layers, ["l1/layer.tar", "l2/layer.tar"]);
        assert_eq!(p.config.as_deref(), Some("abc.json"));
        assert!(docker_plan(b"[]").is_err());
        assert!(docker_plan(b"{").is_err());
    }

    #[test]
    fn oci_manifest_and_index() {
        let idx = br#"{"schemaVersion":2,"manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:00ff","size":1,
             "platform":{"os":"linux","architecture":"s390x"}},
            {"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:ab12","size":1,
             "platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let (p, nested) = oci_pick(idx).unwrap_or_else(|e| panic!("{e}"));
        if std::env::consts::ARCH == "x86_64" {
            assert_eq!(p, "blobs/sha256/ab12");
            assert!(nested);
        }
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:c0","size":1},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:01","size":1},
                      {"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:02","size":1}]}"#;
        let plan = oci_plan(m).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.layers, ["blobs/sha256/01", "blobs/sha256/02"]);
        assert_eq!(plan.config.as_deref(), Some("blobs/sha256/c0"));
    }

    #[test]
    fn digests_cannot_escape() {
        assert!(blob_path("sha256:../../etc").is_err());
        assert!(blob_path("sha256/x:aa").is_err());
        assert!(blob_path("nohex").is_err());
        assert_eq!(
            blob_path("sha256:aB09").ok().as_deref(),
            Some("blobs/sha256/aB09")
        );
    }

    #[test]
    fn config_defaults() {
        let c = br#"{"architecture":"amd64","config":{"Env":["PATH=/bin","A=b"],"Cmd":["sh"],"Entrypoint":null,"WorkingDir":"/w","User":"1:2"}}"#;
        let d = parse_config(c).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.env, ["PATH=/bin", "A=b"]);
        assert_eq!(d.cmd, ["sh"]);
        assert!(d.entrypoint.is_empty());
        assert_eq!(d.working_dir, "/w");
        assert_eq!(d.user, "1:2");
        assert_eq!(parse_config(b"{}").ok(), Some(Defaults::default()));
    }
}
