//! Writes the CRDs generated from the Rust types into `crds/` and the chart's `crds/` (or the one
//! directory given), so the checked-in YAML is never edited by hand.
//! `crates/api/tests/crds_in_sync.rs` fails when they drift.

use std::path::PathBuf;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dirs = match std::env::args_os().nth(1) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![root.join("crds"), root.join("charts/diffkeeper/crds")],
    };
    let files = diffkeeper_api::crd_files().context("rendering the CRDs")?;
    for dir in dirs {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, body) in &files {
            let path = dir.join(name);
            std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
