//! The command line without containers: help for every verb, and errors as one line with a
//! non-zero exit (these run as any user).

mod common;

use common::*;

#[test]
fn help_explains_each_verb() {
    let root = Root::new("cli-help");
    let out = root.run(&["--help"]);
    let h = text(&out.stdout);
    assert!(out.status.success());
    for verb in ["import", "images", "rmi", "run", "ps", "rm", "diff"] {
        assert!(
            h.lines().any(|l| l.trim_start().starts_with(verb)),
            "{verb} missing: {h}"
        );
    }
    let out = root.run(&["run", "--help"]);
    let h = text(&out.stdout);
    for opt in [
        "--name",
        "--rm",
        "--backend",
        "--hostname",
        "--net",
        "--memory",
        "--pids",
        "--env",
        "--workdir",
        "--user",
        "--verbose",
    ] {
        assert!(h.contains(opt), "{opt} missing: {h}");
    }
}

#[test]
fn errors_are_one_line() {
    let root = Root::new("cli-errors");
    let cases: &[&[&str]] = &[
        &["rmi", "nothing"],
        &["rm", "nothing"],
        &["diff", "nothing"],
        &["import", "x", "/nonexistent/file.tar"],
        &["import", "../bad", "-"],
        &["run", "--memory", "lots", "img", "true"],
        &["run", "nothing", "true"],
        &["run", "--name", "a/b", "img"],
    ];
    for args in cases {
        let out = root.run(args);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err:?}");
        assert!(err.starts_with("runbox: error: "), "{args:?}: {err:?}");
    }
    let out = root.run(&["images"]);
    assert!(out.status.success());
    let out = root.run(&["ps"]);
    assert!(out.status.success());
}
