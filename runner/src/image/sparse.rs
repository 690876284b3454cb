//! GNU tar's PAX sparse format 1.0 (`tar -S --format=posix`, and GNU format with
//! `--xattrs`): the member is stored as `GNUSparseFile.N/NAME` with `GNU.sparse.*` pax keys;
//! its data starts with a map (count, then offset/size pairs, one decimal per line, padded
//! to 512 bytes) followed by the data chunks. The tar crate reads only the old GNU sparse
//! headers, so without this the map would end up inside the file and the file under the
//! wrong name. Formats 0.0 and 0.1 (pax maps) are refused rather than unpacked wrongly.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::error::{Error, Result};

#[derive(Debug, PartialEq)]
pub struct Sparse {
    /// The member's real name.
    pub name: Vec<u8>,
    pub realsize: u64,
}

fn num(v: &[u8], key: &str) -> Result<u64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::refused(format!("bad pax value for {key}")))
}

/// Recognizes the sparse keys among a member's pax records.
pub fn detect(keys: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<Sparse>> {
    let get = |k: &str| {
        keys.iter()
            .find(|(key, _)| key == k.as_bytes())
            .map(|(_, v)| v)
    };
    let any = keys.iter().any(|(k, _)| k.starts_with(b"GNU.sparse."));
    if !any {
        return Ok(None);
    }
    let major = get("GNU.sparse.major")
        .map(|v| num(v, "GNU.sparse.major"))
        .transpose()?;
    let minor = get("GNU.sparse.minor")
        .map(|v| num(v, "GNU.sparse.minor"))
        .transpose()?;
    if (major, minor) != (Some(1), Some(0)) {
        return Err(Error::refused(
            "sparse member in GNU's pax format 0.x; only format 1.0 is supported",
        ));
    }
    let name = get("GNU.sparse.name")
        .ok_or_else(|| Error::refused("sparse member without GNU.sparse.name"))?
        .clone();
    let realsize = num(
        get("GNU.sparse.realsize")
            .ok_or_else(|| Error::refused("sparse member without GNU.sparse.realsize"))?,
        "GNU.sparse.realsize",
    )?;
    Ok(Some(Sparse { name, realsize }))
}

/// Reads the map at the start of the data; returns the chunks and the bytes it took.
pub fn read_map(r: &mut impl Read) -> Result<(Vec<(u64, u64)>, u64)> {
    let bad = |m: &str| Error::refused(format!("bad sparse map: {m}"));
    let mut buf = Vec::new();
    let mut block = [0u8; 512];
    let mut numbers: Vec<u64> = Vec::new();
    let mut want: Option<u64> = None;
    loop {
        r.read_exact(&mut block)
            .map_err(|e| Error::refused(format!("truncated sparse map: {e}")))?;
        buf.extend_from_slice(&block);
        numbers.clear();
        let mut complete = false;
        for line in buf.split(|b| *b == b'\n') {
            // The last piece has no newline yet: not a whole number.
            if std::ptr::eq(line.as_ptr_range().end, buf.as_ptr_range().end) {
                break;
            }
            numbers.push(num(line, "the sparse map").map_err(|_| bad("not a number"))?);
            let n = *numbers.first().unwrap_or(&0);
            want = Some(n);
            if numbers.len() as u64 == 1 + 2 * n {
                complete = true;
                break;
            }
        }
        if complete {
            break;
        }
        if buf.len() > 1 << 20 {
            return Err(bad("too long"));
        }
    }
    let n = want.unwrap_or(0) as usize;
    let chunks = (0..n)
        .map(|i| {
            let off = numbers.get(1 + 2 * i).copied().unwrap_or(0);
            let len = numbers.get(2 + 2 * i).copied().unwrap_or(0);
            (off, len)
        })
        .collect();
    Ok((chunks, buf.len() as u64))
}

/// Writes the chunks at their offsets (leaving holes) and sizes the file; returns the data
/// bytes read after the map.
pub fn copy(r: &mut impl Read, f: &mut File, chunks: &[(u64, u64)], realsize: u64) -> Result<u64> {
    let mut total = 0;
    for (off, len) in chunks {
        if off.saturating_add(*len) > realsize {
            return Err(Error::refused("sparse chunk beyond the file's size"));
        }
        f.seek(SeekFrom::Start(*off))
            .map_err(|e| Error::io("seek in a sparse file", e))?;
        let got = io::copy(&mut r.take(*len), f)
            .map_err(|e| Error::refused(format!("reading sparse data: {e}")))?;
        if got != *len {
            return Err(Error::refused(
                "truncated tar archive: sparse data is short",
            ));
        }
        total += got;
    }
    f.set_len(realsize)
        .map_err(|e| Error::io("size a sparse file", e))?;
    f.flush().map_err(|e| Error::io("write a sparse file", e))?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn detects_format_1_0() {
        let keys = vec![
            kv("GNU.sparse.major", "1"),
            kv("GNU.sparse.minor", "0"),
            kv("GNU.sparse.name", "./big"),
            kv("GNU.sparse.realsize", "10485765"),
        ];
        assert_eq!(
            detect(&keys).ok().flatten(),
            Some(Sparse {
                name: b"./big".to_vec(),
                realsize: 10485765
            })
        );
        assert_eq!(detect(&[kv("path", "x")]).ok(), Some(None));
        assert!(detect(&[kv("GNU.sparse.map", "0,1")]).is_err());
    }

    #[test]
    fn map_and_holes() {
        let mut data = b"2\n0\n3\n100\n2\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"abcxy");
        let mut r = &data[..];
        let (chunks, used) = read_map(&mut r).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(chunks, vec![(0, 3), (100, 2)]);
        assert_eq!(used, 512);
        let t = tempfile::tempfile().unwrap_or_else(|e| panic!("{e}"));
        let mut f = t;
        let n = copy(&mut r, &mut f, &chunks, 200).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 5);
        let mut out = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap_or_default();
        f.read_to_end(&mut out).unwrap_or_default();
        assert_eq!(out.len(), 200);
        assert_eq!(&out[..3], b"abc");
        assert_eq!(&out[100..102], b"xy");
        assert!(out[3..100].iter().all(|b| *b == 0));
    }

    #[test]
    fn refuses_broken_maps() {
        let mut r: &[u8] = b"1\n0\n";
        assert!(read_map(&mut r).is_err(), "short");
        let mut data = b"x\n".to_vec();
        data.resize(512, 0);
        assert!(read_map(&mut &data[..]).is_err(), "not a number");
    }
}
