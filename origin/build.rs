//! Puts the dashboard's chart library (uPlot, pinned in package-lock.json and
//! installed by `scripts/setup` with npm) where `src/dashboard` includes it: the
//! origin serves it itself, nothing is fetched from a CDN when the page runs.

use std::path::PathBuf;

const VENDORED: &[&str] = &["uPlot.iife.min.js", "uPlot.min.css"];

fn main() {
    let dist = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../node_modules/uplot/dist");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    for file in VENDORED {
        let from = dist.join(file);
        println!("cargo:rerun-if-changed={}", from.display());
        if let Err(e) = std::fs::copy(&from, out.join(file)) {
            panic!("{}: {e} — run `scripts/setup` (it installs the npm packages, uPlot among them)", from.display());
        }
    }
}
