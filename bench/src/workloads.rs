//! The workloads, in Rust on std::fs so that a timing holds only the file system calls (no
//! process start-up). Each returns how many items it did, checked against what it should have
//! done: a union that hides files is an error, not a fast result.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::trees::{self, Rng, Sizes, Tree};

/// What a workload runs on.
pub struct Ctx<'a> {
    /// The mount point (or the plain directory).
    pub root: &'a Path,
    pub sizes: &'a Sizes,
    pub tarball: &'a Path,
    /// Threads of the parallel variants: one per core.
    pub workers: usize,
}

/// The state of the caches when the clock starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prep {
    /// A fresh mount over a lower tree that is in the page cache.
    Warm,
    /// A fresh mount, then sync and drop_caches.
    Cold,
    /// As `Warm`, and the workload already ran once on this mount (untimed).
    Twice,
}

pub struct Workload {
    pub name: &'static str,
    describe: fn(&Sizes) -> String,
    pub lower: Tree,
    /// Changes the tree: the plain target needs a private copy of the lower.
    pub writes: bool,
    /// Deletes files of the upper filesystem, at least on the plain target (see
    /// `measure::measure_one` for why that matters).
    pub deletes: bool,
    pub prep: Prep,
    run: fn(&Ctx) -> io::Result<u64>,
    expect: fn(&Sizes) -> u64,
}

impl Workload {
    pub fn describe(&self, s: &Sizes) -> String {
        (self.describe)(s)
    }

    /// Runs it once; an error names the workload's failing call or the count that is off.
    pub fn run(&self, ctx: &Ctx) -> Result<(), String> {
        let done = (self.run)(ctx).map_err(|e| e.to_string())?;
        let want = (self.expect)(ctx.sizes);
        if done != want {
            return Err(format!("did {done} items instead of {want}"));
        }
        Ok(())
    }
}

fn n(v: usize) -> u64 {
    v as u64
}

fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(v: u64) -> String {
    if v >= 1 << 30 && v.is_multiple_of(1 << 30) {
        format!("{} GiB", v >> 30)
    } else {
        format!("{} MiB", v >> 20)
    }
}

pub const ALL: [Workload; 19] = [
    Workload {
        name: "stat-cold",
        describe: |s| {
            format!(
                "lstat every entry of a {}-file tree, caches dropped",
                thousands(n(s.tree.file_count()))
            )
        },
        lower: Tree::Files,
        writes: false,
        deletes: false,
        prep: Prep::Cold,
        run: |c| walk(c.root, &mut |_| Ok(())),
        expect: |s| n(s.tree.file_count()),
    },
    Workload {
        name: "stat-warm",
        describe: |s| {
            format!(
                "the same {}-file lstat walk a second time on the same mount",
                thousands(n(s.tree.file_count()))
            )
        },
        lower: Tree::Files,
        writes: false,
        deletes: false,
        prep: Prep::Twice,
        run: |c| walk(c.root, &mut |_| Ok(())),
        expect: |s| n(s.tree.file_count()),
    },
    Workload {
        name: "stat-par",
        describe: |s| {
            format!(
                "the {}-file lstat walk split over one thread per core (fresh mount)",
                thousands(n(s.tree.file_count()))
            )
        },
        lower: Tree::Files,
        writes: false,
        deletes: false,
        prep: Prep::Warm,
        run: |c| parallel(c, false),
        expect: |s| n(s.tree.file_count()),
    },
    Workload {
        name: "readdir",
        describe: |s| {
            format!(
                "list a directory of {} entries (getdents only)",
                thousands(n(s.bigdir_entries))
            )
        },
        lower: Tree::BigDir,
        writes: false,
        deletes: false,
        prep: Prep::Warm,
        run: |c| fs::read_dir(c.root.join(trees::BIGDIR))?.try_fold(0, |k, e| e.map(|_| k + 1)),
        expect: |s| n(s.bigdir_entries),
    },
    Workload {
        name: "lookup-neg",
        describe: |s| {
            format!(
            "$PATH-style search: {} missing names x {} directories, {} passes ({} failing lstats)",
            thousands(n(s.missing_names)), s.path_dirs, s.lookup_passes,
            thousands(n(s.missing_names * s.path_dirs * s.lookup_passes))
        )
        },
        lower: Tree::PathDirs,
        writes: false,
        deletes: false,
        prep: Prep::Warm,
        run: lookup_negative,
        expect: |s| n(s.missing_names * s.path_dirs * s.lookup_passes),
    },
    Workload {
        name: "read-small",
        describe: |s| {
            format!(
                "open, read and close every file of the {}-file tree (~3 KiB each)",
                thousands(n(s.tree.file_count()))
            )
        },
        lower: Tree::Files,
        writes: false,
        deletes: false,
        prep: Prep::Warm,
        run: |c| {
            let mut buf = vec![0u8; 64 << 10];
            walk(c.root, &mut |p| read_file(p, &mut buf))
        },
        expect: |s| n(s.tree.file_count()),
    },
    Workload {
        name: "read-par",
        describe: |s| {
            format!(
                "read-small split over one thread per core ({} files)",
                thousands(n(s.tree.file_count()))
            )
        },
        lower: Tree::Files,
        writes: false,
        deletes: false,
        prep: Prep::Warm,
        run: |c| parallel(c, true),
        expect: |s| n(s.tree.file_count()),
    },
    Workload {
        name: "seq-read-cold",
        describe: |s| {
            format!(
                "read a {} lower file sequentially (1 MiB reads), caches dropped",
                bytes(s.big_file_bytes)
            )
        },
        lower: Tree::Big,
        writes: false,
        deletes: false,
        prep: Prep::Cold,
        run: |c| read_big(&c.root.join(trees::BIG_FILE)),
        expect: |s| s.big_file_bytes,
    },
    Workload {
        name: "seq-read-warm",
        describe: |s| {
            format!(
                "read the {} file sequentially, its lower in the page cache (fresh mount)",
                bytes(s.big_file_bytes)
            )
        },
        lower: Tree::Big,
        writes: false,
        deletes: false,
        prep: Prep::Warm,
        run: |c| read_big(&c.root.join(trees::BIG_FILE)),
        expect: |s| s.big_file_bytes,
    },
    Workload {
        name: "rand-read",
        describe: |s| {
            format!(
                "{} random 4 KiB preads of the {} file, its lower in the page cache",
                thousands(n(s.random_reads)),
                bytes(s.big_file_bytes)
            )
        },
        lower: Tree::Big,
        writes: false,
        deletes: false,
        prep: Prep::Warm,
        run: random_reads,
        expect: |s| n(s.random_reads),
    },
    Workload {
        name: "copyup-big",
        describe: |s| {
            format!(
                "append 1 byte to the {} lower file (copy-up of the whole file)",
                bytes(s.big_file_bytes)
            )
        },
        lower: Tree::Big,
        writes: true,
        deletes: false,
        prep: Prep::Warm,
        run: |c| {
            let path = c.root.join(trees::BIG_FILE);
            append_byte(&path)?;
            Ok(fs::metadata(&path)?
                .len()
                .saturating_sub(c.sizes.big_file_bytes))
        },
        expect: |_| 1,
    },
    Workload {
        name: "copyup-small",
        describe: |s| {
            format!(
                "append 1 byte to each of {} small lower files (copy-ups)",
                thousands(n(s.few.file_count()))
            )
        },
        lower: Tree::Few,
        writes: true,
        deletes: false,
        prep: Prep::Warm,
        run: |c| walk(c.root, &mut |p| append_byte(p)),
        expect: |s| n(s.few.file_count()),
    },
    Workload {
        name: "chmod",
        describe: |s| {
            format!(
                "chmod {} small lower files (metadata copy-ups)",
                thousands(n(s.few.file_count()))
            )
        },
        lower: Tree::Few,
        writes: true,
        deletes: false,
        prep: Prep::Warm,
        run: |c| {
            walk(c.root, &mut |p| {
                fs::set_permissions(p, fs::Permissions::from_mode(0o600))
            })
        },
        expect: |s| n(s.few.file_count()),
    },
    Workload {
        name: "create",
        describe: |s| {
            format!(
                "create, write (~3 KiB) and close {} new files in {} new directories",
                thousands(n(s.create.file_count())),
                s.create.top * s.create.sub
            )
        },
        lower: Tree::Empty,
        writes: true,
        deletes: false,
        prep: Prep::Warm,
        run: create_files,
        expect: |s| n(s.create.file_count()),
    },
    Workload {
        name: "write-4k",
        describe: |s| {
            format!(
                "write a new {} file in 4 KiB writes (empty lower)",
                bytes(s.write_bytes)
            )
        },
        lower: Tree::Empty,
        writes: true,
        deletes: false,
        prep: Prep::Warm,
        run: write_small_pieces,
        expect: |s| s.write_bytes,
    },
    Workload {
        name: "rm-rf",
        describe: |s| {
            format!(
                "delete a {}-file lower tree: walk, unlink, rmdir (whiteouts)",
                thousands(n(s.delete.file_count()))
            )
        },
        lower: Tree::Delete,
        writes: true,
        deletes: true,
        prep: Prep::Warm,
        run: |c| remove_tree(&c.root.join(trees::DELETE_DIR)),
        expect: |s| n(s.delete.file_count()),
    },
    Workload {
        name: "untar",
        describe: |s| {
            format!(
                "extract a {}-file source tarball into the mount (empty lower)",
                thousands(n(s.src.file_count()))
            )
        },
        lower: Tree::Empty,
        writes: true,
        deletes: false,
        prep: Prep::Warm,
        run: untar,
        expect: |s| n(s.src.file_count()),
    },
    Workload {
        name: "tar",
        describe: |s| {
            format!(
                "tar the whole merged {}-file source tree to a sink",
                thousands(n(s.src.file_count()))
            )
        },
        lower: Tree::Src,
        writes: false,
        deletes: false,
        prep: Prep::Warm,
        run: tar_to_sink,
        expect: |s| n(s.src.file_count()),
    },
    Workload {
        name: "mixed-par",
        describe: |s| {
            format!(
                "{} random appends, reads, chmods, unlinks, creates and renames on {} shared lower names in {} directories, over one thread per core",
                thousands(n(s.mixed_ops)),
                s.mixed.file_count(),
                s.mixed.top * s.mixed.sub
            )
        },
        lower: Tree::Mixed,
        writes: true,
        deletes: true,
        prep: Prep::Warm,
        run: mixed_parallel,
        expect: |s| n(s.mixed_ops),
    },
];

/// Recursive walk: lstat of every entry (as find or ls -lR do), `on_file` for each non-directory.
/// Returns the number of non-directories.
fn walk(dir: &Path, on_file: &mut dyn FnMut(&Path) -> io::Result<()>) -> io::Result<u64> {
    let mut count = 0;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if fs::symlink_metadata(&path)?.is_dir() {
            count += walk(&path, on_file)?;
        } else {
            on_file(&path)?;
            count += 1;
        }
    }
    Ok(count)
}

fn read_file(path: &Path, buf: &mut [u8]) -> io::Result<()> {
    let mut f = File::open(path)?;
    while f.read(buf)? > 0 {}
    Ok(())
}

/// The tree's top directories dealt round-robin to one thread per core.
fn parallel(c: &Ctx, read: bool) -> io::Result<u64> {
    let mut tops: Vec<PathBuf> = fs::read_dir(c.root)?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    tops.sort();
    let workers = c.workers.max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let tops = &tops;
                s.spawn(move || -> io::Result<u64> {
                    let mut buf = vec![0u8; 64 << 10];
                    let mut count = 0;
                    for top in tops.iter().skip(w).step_by(workers) {
                        count += if read {
                            walk(top, &mut |p| read_file(p, &mut buf))?
                        } else {
                            walk(top, &mut |_| Ok(()))?
                        };
                    }
                    Ok(count)
                })
            })
            .collect();
        handles.into_iter().try_fold(0, |sum, h| {
            let part = h
                .join()
                .map_err(|_| io::Error::other("a worker thread panicked"))??;
            Ok(sum + part)
        })
    })
}

fn lookup_negative(c: &Ctx) -> io::Result<u64> {
    let s = c.sizes;
    let dirs: Vec<PathBuf> = (0..s.path_dirs)
        .map(|d| c.root.join(trees::path_dir(d)))
        .collect();
    let names: Vec<String> = (0..s.missing_names).map(trees::missing_name).collect();
    let mut count = 0;
    for _ in 0..s.lookup_passes {
        for name in &names {
            for dir in &dirs {
                match fs::symlink_metadata(dir.join(name)) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => count += 1,
                    Err(e) => return Err(e),
                    Ok(_) => return Err(io::Error::other(format!("{name} exists"))),
                }
            }
        }
    }
    Ok(count)
}

fn read_big(path: &Path) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(total),
            k => total += k as u64,
        }
    }
}

fn random_reads(c: &Ctx) -> io::Result<u64> {
    let f = File::open(c.root.join(trees::BIG_FILE))?;
    let blocks = c.sizes.big_file_bytes / 4096;
    let mut rng = Rng::new(6);
    let mut buf = [0u8; 4096];
    for _ in 0..c.sizes.random_reads {
        f.read_exact_at(&mut buf, rng.below(blocks) * 4096)?;
    }
    Ok(n(c.sizes.random_reads))
}

fn append_byte(path: &Path) -> io::Result<()> {
    OpenOptions::new().append(true).open(path)?.write_all(b"+")
}

fn create_files(c: &Ctx) -> io::Result<u64> {
    let mut rng = Rng::new(7);
    let mut data = vec![0u8; 64 << 10];
    rng.fill(&mut data);
    let mut count = 0;
    for leaf in c.sizes.create.leaf_dirs() {
        let dir = c.root.join("new").join(leaf);
        fs::create_dir_all(&dir)?;
        for f in 0..c.sizes.create.files {
            let size = rng.small_size().min(data.len());
            File::create(dir.join(format!("n{f:04}.dat")))?.write_all(&data[..size])?;
            count += 1;
        }
    }
    Ok(count)
}

/// One file written 4 KiB at a time, as a logger or a database does; returns the bytes.
fn write_small_pieces(c: &Ctx) -> io::Result<u64> {
    let mut rng = Rng::new(8);
    let mut block = [0u8; 4096];
    rng.fill(&mut block);
    let mut f = File::create(c.root.join("written.dat"))?;
    let mut total = 0;
    while total < c.sizes.write_bytes {
        f.write_all(&block)?;
        total += block.len() as u64;
    }
    Ok(total)
}

/// rm -rf: depth first, unlink the files, rmdir each directory once empty.
fn remove_tree(dir: &Path) -> io::Result<u64> {
    let mut count = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            count += remove_tree(&entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
            count += 1;
        }
    }
    fs::remove_dir(dir)?;
    Ok(count)
}

fn untar(c: &Ctx) -> io::Result<u64> {
    let mut archive = tar::Archive::new(BufReader::new(File::open(c.tarball)?));
    let mut count = 0;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let file = entry.header().entry_type().is_file();
        entry.unpack_in(c.root)?;
        if file {
            count += 1;
        }
    }
    Ok(count)
}

/// Counts what tar writes, and drops it: a writer no std fast path can skip the reads for.
struct Sink(u64);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tar_to_sink(c: &Ctx) -> io::Result<u64> {
    let mut builder = tar::Builder::new(Sink(0));
    builder.follow_symlinks(false);
    let count = tar_dir(&mut builder, c.root, Path::new(trees::SRC_DIR))?;
    let sink = builder.into_inner()?;
    if sink.0 == 0 {
        return Err(io::Error::other("tar wrote nothing"));
    }
    Ok(count)
}

fn tar_dir(b: &mut tar::Builder<Sink>, root: &Path, rel: &Path) -> io::Result<u64> {
    let mut count = 0;
    for entry in fs::read_dir(root.join(rel))? {
        let name = rel.join(entry?.file_name());
        let path = root.join(&name);
        if fs::symlink_metadata(&path)?.is_dir() {
            b.append_dir(&name, &path)?;
            count += tar_dir(b, root, &name)?;
        } else {
            b.append_path_with_name(&path, &name)?;
            count += 1;
        }
    }
    Ok(count)
}

/// One step of the mixed load.
#[derive(Clone, Copy)]
enum MixedOp {
    Append,
    Read,
    Chmod,
    Unlink,
    Create,
    Rename,
}

impl MixedOp {
    fn name(self) -> &'static str {
        match self {
            MixedOp::Append => "append",
            MixedOp::Read => "read",
            MixedOp::Chmod => "chmod",
            MixedOp::Unlink => "unlink",
            MixedOp::Create => "create",
            MixedOp::Rename => "rename",
        }
    }
}

/// The mix, with weights: mostly appends, reads and chmods (copy-ups of lower files), some
/// unlinks (whiteouts), creates to bring names back, and renames within and across the
/// directories.
const MIXED_OPS: [(MixedOp, u64); 6] = [
    (MixedOp::Append, 25),
    (MixedOp::Read, 25),
    (MixedOp::Chmod, 20),
    (MixedOp::Unlink, 10),
    (MixedOp::Create, 10),
    (MixedOp::Rename, 10),
];

/// `Sizes::mixed_ops` operations on the shared names, dealt to one thread per core, each
/// with its own seeded sequence. The threads race on purpose: a name another thread just
/// removed or renamed fails with `ENOENT`, as on any file system, and a copy-up racing a
/// rename onto its name can fail with `EEXIST` on the kernel's overlay. Any other error
/// fails the workload, once every operation has run, with the counts per errno and
/// operation and the time the run took. Returns the operations done, failed or not.
fn mixed_parallel(c: &Ctx) -> io::Result<u64> {
    let t0 = std::time::Instant::now();
    let dirs: Vec<PathBuf> = c
        .sizes
        .mixed
        .leaf_dirs()
        .into_iter()
        .map(|d| c.root.join(d))
        .collect();
    let files = c.sizes.mixed.files as u64;
    let workers = c.workers.max(1);
    let total = c.sizes.mixed_ops;
    // (errno, operation) -> (count, the first path it happened on)
    type Failures = BTreeMap<(String, &'static str), (u64, PathBuf)>;
    let (done, failures) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let dirs = &dirs;
                // The first threads take the remainder.
                let ops = total / workers + usize::from(w < total % workers);
                s.spawn(move || {
                    let mut rng = Rng::new(100 + w as u64);
                    let mut buf = Vec::new();
                    let mut failures = Failures::new();
                    let name = |rng: &mut Rng| {
                        let d = &dirs[rng.below(dirs.len() as u64) as usize];
                        d.join(format!("f{:04}.dat", rng.below(files)))
                    };
                    let weights: u64 = MIXED_OPS.iter().map(|(_, k)| k).sum();
                    for i in 0..ops {
                        let mut x = rng.below(weights);
                        let op = MIXED_OPS
                            .iter()
                            .find(|(_, k)| {
                                let hit = x < *k;
                                x = x.saturating_sub(*k);
                                hit
                            })
                            .map_or(MixedOp::Read, |(o, _)| *o);
                        let p = name(&mut rng);
                        let r = match op {
                            MixedOp::Append => OpenOptions::new()
                                .append(true)
                                .open(&p)
                                .and_then(|mut f| f.write_all(format!("{w}.{i};").as_bytes())),
                            MixedOp::Read => File::open(&p).and_then(|mut f| {
                                buf.clear();
                                f.read_to_end(&mut buf).map(|_| ())
                            }),
                            MixedOp::Chmod => fs::set_permissions(
                                &p,
                                fs::Permissions::from_mode(0o600 | (rng.below(8) as u32) << 3),
                            ),
                            MixedOp::Unlink => fs::remove_file(&p),
                            MixedOp::Create => OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(&p)
                                .and_then(|mut f| f.write_all(format!("{w}.{i};").as_bytes())),
                            MixedOp::Rename => fs::rename(&p, name(&mut rng)),
                        };
                        let errno = match r {
                            Ok(()) => continue,
                            Err(e) => e.raw_os_error(),
                        };
                        if errno == Some(nix::libc::ENOENT) || errno == Some(nix::libc::EEXIST) {
                            continue;
                        }
                        let what = errno.map_or("no errno".into(), |e| {
                            format!("{:?}", nix::errno::Errno::from_raw(e))
                        });
                        failures.entry((what, op.name())).or_insert((0, p)).0 += 1;
                    }
                    (ops as u64, failures)
                })
            })
            .collect();
        handles
            .into_iter()
            .try_fold((0, Failures::new()), |(sum, mut all), h| {
                let (n, f) = h
                    .join()
                    .map_err(|_| io::Error::other("a worker thread panicked"))?;
                for (k, (count, path)) in f {
                    all.entry(k).or_insert((0, path)).0 += count;
                }
                Ok::<_, io::Error>((sum + n, all))
            })
    })?;
    if failures.is_empty() {
        return Ok(done);
    }
    let failed: u64 = failures.values().map(|(k, _)| k).sum();
    let list: Vec<String> = failures
        .iter()
        .map(|((errno, op), (k, path))| format!("{op} {errno} x{k} (first {})", path.display()))
        .collect();
    Err(io::Error::other(format!(
        "{failed} of {done} operations failed in {:.0?}: {}",
        t0.elapsed(),
        list.join(", ")
    )))
}
