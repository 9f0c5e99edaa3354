//! Path patterns that choose which recorded entries an export includes.

use crate::ExportError;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use tracing::debug;

/// Characters that make a pattern a glob rather than a literal path.
const GLOB_CHARS: &[char] = &['*', '?', '[', ']', '{', '}', '\\'];

/// Compiles shell-style patterns matched against absolute recorded paths (`/tmp/w/*.txt`,
/// `/var/log/**`). `*` and `?` stay within one path component; `**` crosses components.
/// A pattern without glob characters is a literal path and also selects everything below it, so
/// `/tmp/w` exports that whole directory. No patterns means no filter (`None`).
pub fn compile_globs(patterns: &[String]) -> Result<Option<GlobSet>, ExportError> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        if pattern.is_empty() {
            return Err(ExportError::EmptyPattern);
        }
        let is_literal = !pattern.contains(GLOB_CHARS);
        if !pattern.starts_with('/') && (is_literal || !pattern.starts_with(GLOB_CHARS)) {
            return Err(ExportError::RelativePattern {
                pattern: pattern.clone(),
            });
        }
        if is_literal {
            // Recorded paths never end in `/`, so `/tmp/w/` must mean `/tmp/w`.
            let path = pattern.trim_end_matches('/');
            if !path.is_empty() {
                set.add(glob(pattern, path)?);
            }
            set.add(glob(pattern, &format!("{path}/**"))?);
        } else {
            set.add(glob(pattern, pattern)?);
        }
    }
    let set = set.build().map_err(|source| ExportError::BadPattern {
        pattern: patterns.join(" "),
        source,
    })?;
    debug!(?patterns, "compiled export path patterns");
    Ok(Some(set))
}

fn glob(pattern: &str, glob: &str) -> Result<globset::Glob, ExportError> {
    GlobBuilder::new(glob)
        // Without this `*` would cross `/`, so `/tmp/*.txt` would pick up `/tmp/a/b.txt`.
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|source| ExportError::BadPattern {
            pattern: pattern.to_owned(),
            source,
        })
}
