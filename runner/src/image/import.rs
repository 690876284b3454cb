//! `runbox import`: archive (file or stdin, plain or gzip) to `images/NAME`, all or nothing.
//!
//! The input is first copied (decompressed) to a file in the store's `tmp/`: a docker-save
//! archive keeps its manifest at the end, so the layout is only known once the whole archive
//! has been read, and stdin cannot be read twice. Layers are then unpacked from that copy
//! into `tmp/.../image/layers/I`, and the image directory is renamed into `images/` only
//! when every layer and the config are complete; any error drops the temporary tree.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use flate2::read::GzDecoder;

use super::archive::{self, Defaults, Layout};
use super::extract::extract_layer;
use super::paths::normalize;
use super::progress::{Counting, Progress};
use crate::error::{Error, Result};
use crate::fsutil::TempDir;
use crate::store::{check_name, ImageConfig, Store};

/// Where a member's data lies in the uncompressed archive copy.
#[derive(Clone, Copy)]
struct Span {
    offset: u64,
    size: u64,
}

/// Gunzips when the stream starts with gzip's magic, passes it through otherwise.
fn maybe_gunzip<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(1 << 16, r);
    let head = br.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(GzDecoder::new(br)))
    } else {
        Ok(Box::new(br))
    }
}

pub fn import(store: &Store, name: &str, file: &str, verbose: bool) -> Result<ImageConfig> {
    check_name("image", name)?;
    if store.image_dir(name).exists() {
        return Err(Error::usage(format!(
            "image {name} already exists (rmi it first)"
        )));
    }
    let work = TempDir::new_in(&store.tmp(), &format!("import-{name}"))
        .map_err(|e| Error::path("create temporary directory in", &store.tmp(), e))?;
    let copy = work.path().join("archive.tar");
    let mut progress = Progress::new(verbose, "import: read");
    {
        let input: Box<dyn Read> = if file == "-" {
            Box::new(io::stdin().lock())
        } else {
            Box::new(File::open(file).map_err(|e| Error::path("open", Path::new(file), e))?)
        };
        let mut src = maybe_gunzip(Counting {
            inner: input,
            progress: &mut progress,
        })
        .map_err(|e| Error::io(format!("read {file}"), e))?;
        let mut out = File::create(&copy).map_err(|e| Error::path("create", &copy, e))?;
        io::copy(&mut src, &mut out).map_err(|e| Error::refused(format!("reading {file}: {e}")))?;
    }
    let members = index(&copy)?;
    let names = members.keys().map(String::as_str);
    let image = work.path().join("image");
    let layers_dir = image.join("layers");
    std::fs::create_dir_all(&layers_dir).map_err(|e| Error::path("create", &layers_dir, e))?;

    let mut extracting = Progress::new(verbose, "import: unpacked");
    let (spans, defaults) = match archive::detect(names) {
        Layout::Plain => {
            let len = std::fs::metadata(&copy)
                .map_err(|e| Error::path("stat", &copy, e))?
                .len();
            (
                vec![Span {
                    offset: 0,
                    size: len,
                }],
                Defaults::default(),
            )
        }
        layout => {
            let plan = match layout {
                Layout::DockerSave => {
                    archive::docker_plan(&member(&copy, &members, "manifest.json")?)?
                }
                _ => {
                    let (mut next, mut nested) =
                        archive::oci_pick(&member(&copy, &members, "index.json")?)?;
                    // An index may point to a per-platform index; follow a few levels.
                    let mut depth = 0;
                    while nested {
                        depth += 1;
                        if depth > 4 {
                            return Err(Error::refused("OCI indexes nest too deep"));
                        }
                        (next, nested) = archive::oci_pick(&member(&copy, &members, &next)?)?;
                    }
                    archive::oci_plan(&member(&copy, &members, &next)?)?
                }
            };
            if plan.layers.is_empty() {
                return Err(Error::refused("the image has no layers"));
            }
            let defaults = match &plan.config {
                Some(c) => archive::parse_config(&member(&copy, &members, c)?)?,
                None => Defaults::default(),
            };
            let spans = plan
                .layers
                .iter()
                .map(|l| {
                    members.get(l).copied().ok_or_else(|| {
                        Error::refused(format!("layer {l} is missing from the archive"))
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            (spans, defaults)
        }
    };
    let mut size = 0;
    for (i, span) in spans.iter().enumerate() {
        let dest = layers_dir.join(i.to_string());
        std::fs::create_dir(&dest).map_err(|e| Error::path("create", &dest, e))?;
        let mut f = File::open(&copy).map_err(|e| Error::path("open", &copy, e))?;
        f.seek(SeekFrom::Start(span.offset))
            .map_err(|e| Error::path("seek", &copy, e))?;
        let reader = maybe_gunzip(f.take(span.size))
            .map_err(|e| Error::refused(format!("reading layer {i}: {e}")))?;
        let stats = extract_layer(reader, &dest, &mut extracting).map_err(|e| match e {
            Error::Refused(m) if spans.len() > 1 => Error::refused(format!("layer {i}: {m}")),
            other => other,
        })?;
        for w in &stats.warnings {
            eprintln!("runbox: warning: {w}");
        }
        size += stats.bytes;
    }
    let cfg = ImageConfig {
        layers: spans.len(),
        size,
        env: defaults.env,
        cmd: defaults.cmd,
        entrypoint: defaults.entrypoint,
        working_dir: defaults.working_dir,
        user: defaults.user,
    };
    Store::save_image_config(&image, &cfg)?;
    let _lock = store.lock()?;
    let target = store.image_dir(name);
    if target.exists() {
        return Err(Error::usage(format!(
            "image {name} already exists (rmi it first)"
        )));
    }
    std::fs::rename(&image, &target).map_err(|e| Error::path("rename into place", &target, e))?;
    Ok(cfg)
}

/// Lists the archive's regular members and checks it is a whole tar: every member's data
/// is present and the end-of-archive blocks follow the last one.
fn index(copy: &Path) -> Result<HashMap<String, Span>> {
    let f = File::open(copy).map_err(|e| Error::path("open", copy, e))?;
    let len = f
        .metadata()
        .map_err(|e| Error::path("stat", copy, e))?
        .len();
    let mut ar = tar::Archive::new(f);
    let mut out = HashMap::new();
    let mut links = Vec::new();
    let mut end = 0u64;
    let mut count = 0u64;
    let entries = ar
        .entries_with_seek()
        .map_err(|e| Error::refused(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| Error::refused(format!("not a tar archive or truncated: {e}")))?;
        count += 1;
        let offset = entry.raw_file_position();
        let size = entry.size();
        end = offset.saturating_add(size.div_ceil(512) * 512);
        let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
        let kind = entry.header().entry_type();
        if kind.is_file() {
            out.insert(name, Span { offset, size });
        } else if kind.is_symlink() || kind.is_hard_link() {
            // docker save links a layer.tar identical to another one to it.
            let target = entry.link_name_bytes().unwrap_or_default();
            let target = String::from_utf8_lossy(&target).into_owned();
            if let Some(t) = link_target(&name, &target, kind.is_symlink()) {
                links.push((name, t));
            }
        }
    }
    // Links to links: a few rounds settle any sane chain.
    for _ in 0..8 {
        for (name, target) in &links {
            if let Some(span) = out.get(target).copied() {
                out.entry(name.clone()).or_insert(span);
            }
        }
    }
    if count == 0 {
        return Err(Error::refused("not a tar archive (no tar header found)"));
    }
    if end.saturating_add(512) > len || !zeros_at(copy, end)? {
        return Err(Error::refused(
            "truncated tar archive (data or end-of-archive blocks missing)",
        ));
    }
    Ok(out)
}

/// The member a link names, within the archive: a symlink's target is relative to its own
/// directory, a hard link's to the archive root. `None` if it climbs out of the archive.
pub fn link_target(name: &str, target: &str, symlink: bool) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    if symlink && !target.starts_with('/') {
        parts.extend(name.split('/').filter(|c| !c.is_empty()));
        parts.pop();
    }
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fn zeros_at(p: &Path, at: u64) -> Result<bool> {
    let mut f = File::open(p).map_err(|e| Error::path("open", p, e))?;
    f.seek(SeekFrom::Start(at))
        .map_err(|e| Error::path("seek", p, e))?;
    let mut block = [0u8; 512];
    f.read_exact(&mut block)
        .map_err(|e| Error::path("read", p, e))?;
    Ok(block.iter().all(|b| *b == 0))
}

fn member(copy: &Path, members: &HashMap<String, Span>, name: &str) -> Result<Vec<u8>> {
    let span = members
        .get(name)
        .ok_or_else(|| Error::refused(format!("{name} is missing from the archive")))?;
    if span.size > 64 << 20 {
        return Err(Error::refused(format!(
            "{name} is too large for a manifest"
        )));
    }
    let mut f = File::open(copy).map_err(|e| Error::path("open", copy, e))?;
    f.seek(SeekFrom::Start(span.offset))
        .map_err(|e| Error::path("seek", copy, e))?;
    let mut buf = Vec::new();
    f.take(span.size)
        .read_to_end(&mut buf)
        .map_err(|e| Error::path("read", copy, e))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::link_target;

    #[test]
    fn links_inside_the_archive() {
        assert_eq!(
            link_target("b/layer.tar", "../a/layer.tar", true).as_deref(),
            Some("a/layer.tar")
        );
        assert_eq!(link_target("b/x", "y", true).as_deref(), Some("b/y"));
        assert_eq!(
            link_target("b/x", "a/layer.tar", false).as_deref(),
            Some("a/layer.tar")
        );
        assert_eq!(link_target("x", "../../etc/passwd", true), None);
    }
}
