//! Many threads on one mount: creates, renames, copy-ups, readdirs and unlinks, a fixed
//! number of operations each. Every step must succeed (the threads use disjoint names, so
//! no error is expected), no request may fail, and at the end the tree must be exactly
//! what the threads' own bookkeeping says, also as the kernel's overlay reads the upper.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;

use common::*;

const THREADS: usize = 8;
const ROUNDS: usize = 60;
const LOWER_FILES: usize = 40;

#[test]
fn threads_create_rename_copyup_readdir() {
    if !require_root(
        "threads_create_rename_copyup_readdir",
        "needs root to mount the kernel's overlay for the final check",
    ) {
        return;
    }
    let s = Scratch::new("conc");
    s.mkdirs(&["l/shared", "u", "w", "m", "k"]);
    for t in 0..THREADS {
        fs::create_dir_all(s.path(&format!("l/t{t}"))).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..LOWER_FILES {
            fs::write(
                s.path(&format!("l/t{t}/low{i}")),
                format!("lower {t} {i}\n"),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        }
    }
    for i in 0..100 {
        fs::write(s.path(&format!("l/shared/s{i}")), "s").unwrap_or_else(|e| panic!("{e}"));
    }
    let mut m = mount_unionfs(
        &s.path("l").display().to_string(),
        &s.path("u"),
        &s.path("w"),
        &s.path("m"),
        "",
    );
    let mnt = s.path("m");
    // Each thread returns what it believes its directory holds.
    let expected: Vec<BTreeMap<String, String>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..THREADS)
            .map(|t| {
                let mnt = mnt.clone();
                sc.spawn(move || {
                    let dir = mnt.join(format!("t{t}"));
                    let mut want: BTreeMap<String, String> = (0..LOWER_FILES)
                        .map(|i| (format!("low{i}"), format!("lower {t} {i}\n")))
                        .collect();
                    for r in 0..ROUNDS {
                        // create + write
                        let name = format!("new{r}");
                        fs::write(dir.join(&name), format!("{t}:{r}"))
                            .unwrap_or_else(|e| panic!("t{t} create {name}: {e}"));
                        want.insert(name.clone(), format!("{t}:{r}"));
                        // rename a new file
                        if r % 3 == 0 {
                            let to = format!("ren{r}");
                            fs::rename(dir.join(&name), dir.join(&to))
                                .unwrap_or_else(|e| panic!("t{t} rename {name}: {e}"));
                            let v = want.remove(&name).unwrap_or_default();
                            want.insert(to, v);
                        }
                        // copy-up of a lower file by appending
                        let low = format!("low{}", r % LOWER_FILES);
                        if !want.contains_key(&low) {
                            continue;
                        }
                        let mut f = fs::OpenOptions::new()
                            .append(true)
                            .open(dir.join(&low))
                            .unwrap_or_else(|e| panic!("t{t} open {low}: {e}"));
                        write!(f, "+{r}").unwrap_or_else(|e| panic!("t{t} append {low}: {e}"));
                        want.entry(low).or_default().push_str(&format!("+{r}"));
                        // delete a lower file (whiteout) now and then
                        if r % 7 == 3 {
                            let victim = format!("low{}", (r + 17) % LOWER_FILES);
                            if want.remove(&victim).is_some() {
                                fs::remove_file(dir.join(&victim))
                                    .unwrap_or_else(|e| panic!("t{t} unlink {victim}: {e}"));
                            }
                        }
                        // readdirs of a shared directory and of our own
                        let n = fs::read_dir(mnt.join("shared"))
                            .unwrap_or_else(|e| panic!("t{t} readdir shared: {e}"))
                            .count();
                        assert_eq!(n, 100, "t{t}: shared listing");
                        let mine = fs::read_dir(&dir)
                            .unwrap_or_else(|e| panic!("t{t} readdir own: {e}"))
                            .count();
                        assert_eq!(mine, want.len(), "t{t}: own listing at round {r}");
                    }
                    want
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| panic!("a worker panicked")))
            .collect()
    });
    let check = |root: &std::path::Path, who: &str| {
        for (t, want) in expected.iter().enumerate() {
            let dir = root.join(format!("t{t}"));
            let mut got: BTreeMap<String, String> = BTreeMap::new();
            for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{who} readdir: {e}")) {
                let e = e.unwrap_or_else(|e| panic!("{e}"));
                let name = e.file_name().to_string_lossy().into_owned();
                let v = fs::read_to_string(e.path()).unwrap_or_else(|e| panic!("{who} read: {e}"));
                got.insert(name, v);
            }
            assert_eq!(&got, want, "{who}: directory t{t}");
        }
    };
    check(&mnt, "unionfs");
    m.unmount();
    let _k = mount_kernel(
        &s.path("l").display().to_string(),
        &s.path("u"),
        &s.path("k"),
        &s.path("m"),
        "",
    );
    check(&mnt, "kernel overlay over the same upper");
}
