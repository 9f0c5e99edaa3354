//! How many bytes a host directory holds: what a history's store takes on the node.

use std::path::Path;

/// The sum of the lengths of the files under `dir`, recursively (symlinks not followed);
/// 0 for what cannot be read, since a size is a report, not a decision worth failing for.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_size(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_files_in_nested_directories() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a"), [0u8; 10]).unwrap();
        std::fs::create_dir_all(tmp.path().join("d/e")).unwrap();
        std::fs::write(tmp.path().join("d/e/b"), [0u8; 5]).unwrap();
        assert_eq!(dir_size(tmp.path()), 15);
        assert_eq!(dir_size(&tmp.path().join("missing")), 0);
    }
}
