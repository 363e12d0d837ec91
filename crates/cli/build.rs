//! Records the commit `vmedia --version` names: `git rev-parse` when the source is a git
//! checkout, else "unknown commit" (a crates.io or tarball build); never the network.

use std::process::Command;

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    // No "modified" mark: edits to the work tree do not rerun this script, so it would go stale.
    let described = match commit {
        Some(hash) => format!("commit {hash}"),
        None => "unknown commit".to_string(),
    };
    println!("cargo:rustc-env=VMEDIA_BUILD_COMMIT={described}");
    // Rebuild the version text when HEAD moves (a commit, a checkout). A worktree keeps HEAD
    // in its own git folder and the branch refs in the common one.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        if let (Some(common), Some(reference)) = (
            git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
            git(&["symbolic-ref", "-q", "HEAD"]),
        ) {
            println!("cargo:rerun-if-changed={common}/{reference}");
            println!("cargo:rerun-if-changed={common}/packed-refs");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// One git query's trimmed output, or `None` when git is missing or this is no checkout.
fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8(output.stdout).ok()?.trim().to_string())
}
