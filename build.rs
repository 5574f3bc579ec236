//! Puts the commit the binary is built from into `sse-relay --version`, when
//! the source is a git checkout (a source tarball has none: the version alone).

use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let dirty = commit.is_some()
        && Command::new("git")
            .args([
                "diff",
                "--quiet",
                "HEAD",
                "--",
                "src",
                "Cargo.toml",
                "Cargo.lock",
            ])
            .status()
            .is_ok_and(|s| !s.success());
    let version = env!("CARGO_PKG_VERSION");
    let long = match commit {
        Some(commit) if dirty => format!("{version} (commit {commit}, modified)"),
        Some(commit) => format!("{version} (commit {commit})"),
        None => version.to_owned(),
    };
    println!("cargo:rustc-env=SSE_RELAY_VERSION={long}");
    // A new commit or a checkout of another: the version changes.
    for path in [".git/HEAD", ".git/index", ".git/refs/heads"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
