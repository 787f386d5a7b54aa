//! Records the git commit the binary was built from, so benchmark output names it
//! (`GEMMA_WGPU_COMMIT`; "unknown" outside a git checkout, "-dirty" with uncommitted changes).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    println!(
        "cargo:rustc-env=GEMMA_WGPU_COMMIT={commit}{}",
        if dirty { "-dirty" } else { "" }
    );
    for f in [".git/HEAD", ".git/logs/HEAD", ".git/index"] {
        println!("cargo:rerun-if-changed={f}");
    }
}
