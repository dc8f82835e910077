//! Builds the web UI (`ui/`, Vite + TypeScript) with npm into `$OUT_DIR/ui`, which
//! `src/ui.rs` embeds so the server stays one file. Reruns only when the UI's sources,
//! its package manifest or its lockfile change.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ui = manifest_dir.join("ui");
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("ui");
    for watched in [
        "src",
        "public",
        "index.html",
        "package.json",
        "package-lock.json",
        "vite.config.ts",
        "tsconfig.json",
    ] {
        println!("cargo:rerun-if-changed=ui/{watched}");
    }
    println!("cargo:rerun-if-env-changed=NEPHILIA_UI_SKIP_INSTALL");

    let npm = which_npm()?;
    if needs_install(&ui) && std::env::var_os("NEPHILIA_UI_SKIP_INSTALL").is_none() {
        // The lockfile pins every package, other platforms' optional builds (rollup's,
        // esbuild's) included, so `npm ci` installs exactly it.
        run(
            Command::new(&npm)
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&ui),
            &format!("npm ci in {}", ui.display()),
        )?;
    }
    run(
        Command::new(&npm)
            .args(["run", "build", "--silent"])
            .env("NEPHILIA_UI_OUT_DIR", &out)
            .current_dir(&ui),
        &format!("npm run build in {}", ui.display()),
    )?;
    if !out.join("index.html").exists() {
        bail!(
            "npm run build finished but {} has no index.html",
            out.display()
        );
    }
    Ok(())
}

/// npm from `NPM` or `PATH`; a missing npm is the most likely failure on a fresh machine.
fn which_npm() -> anyhow::Result<PathBuf> {
    println!("cargo:rerun-if-env-changed=NPM");
    if let Some(npm) = std::env::var_os("NPM") {
        return Ok(PathBuf::from(npm));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("npm"))
        .find(|candidate| candidate.is_file())
        .context(
            "npm was not found on PATH: building nephilia-graph-server needs Node.js 20+ and \
             npm to build its web UI (graph-server/ui). Install them (e.g. `apt-get install \
             nodejs npm`) or point NPM at an npm binary.",
        )
}

/// Installs when `node_modules` is missing or older than the manifest or lockfile. npm
/// writes `node_modules/.package-lock.json` at the end of every install.
fn needs_install(ui: &Path) -> bool {
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    let Some(installed) = modified(&ui.join("node_modules/.package-lock.json")) else {
        return true;
    };
    ["package.json", "package-lock.json"]
        .iter()
        .filter_map(|f| modified(&ui.join(f)))
        .any(|changed| changed > installed)
}

fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("{what}: cannot start npm"))?;
    if !status.success() {
        bail!("{what} failed ({status}); run it by hand to see why");
    }
    Ok(())
}
