//! Which recorded paths a recording keeps: include and exclude globs, as `spec.paths` of a
//! Recording or `record --include/--exclude` give them.
//!
//! A glob that matches a directory takes in everything below it, as a `.gitignore` line does:
//! `/var/cache` excludes the whole tree, `/var/log/*.d` includes every file of each `.d`
//! directory. `*` and `?` stay within one component; `**` crosses components.

use diffkeeper_store::{RecPath, Scope};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::os::unix::ffi::OsStrExt;

/// Characters that make a component a pattern rather than a name.
const PATTERN_CHARS: &[u8] = b"*?[]{}\\";

#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error(
        "path glob {glob:?} is relative: globs match absolute paths inside the recorded tree, \
         so write it as /{glob} or **/{glob}"
    )]
    Relative { glob: String },
    #[error("path glob {glob:?} does not compile: {source}")]
    Bad {
        glob: String,
        #[source]
        source: globset::Error,
    },
}

/// A [`Scope`] compiled for matching.
#[derive(Clone, Debug)]
pub struct PathScope {
    scope: Scope,
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    /// For each include glob, its components before the first pattern: where matches can be.
    include_roots: Vec<Vec<Vec<u8>>>,
}

impl PathScope {
    /// Every path.
    pub fn everything() -> PathScope {
        PathScope {
            scope: Scope::default(),
            include: None,
            exclude: None,
            include_roots: Vec::new(),
        }
    }

    pub fn new(scope: Scope) -> Result<PathScope, ScopeError> {
        let include = compile(&scope.include)?;
        let exclude = compile(&scope.exclude)?;
        let include_roots = scope.include.iter().map(|g| literal_root(g)).collect();
        Ok(PathScope {
            scope,
            include,
            exclude,
            include_roots,
        })
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    pub fn is_everything(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }

    /// Whether `path` is recorded: it or a directory above it is included (or nothing is named),
    /// and neither it nor a directory above it is excluded.
    pub fn holds(&self, path: &RecPath) -> bool {
        if self.is_everything() {
            return true;
        }
        let bytes = path.as_bytes();
        let mut included = self.include.is_none();
        for prefix in ancestors_and_self(bytes) {
            let p = std::path::Path::new(std::ffi::OsStr::from_bytes(prefix));
            if self.exclude.as_ref().is_some_and(|x| x.is_match(p)) {
                return false;
            }
            if !included && self.include.as_ref().is_some_and(|i| i.is_match(p)) {
                included = true;
            }
        }
        included
    }

    /// Whether a directory outside the scope may still hold paths inside it (an ancestor of an
    /// include): a walk of the tree must go through it without recording it.
    pub fn may_hold_below(&self, dir: &RecPath) -> bool {
        let bytes = dir.as_bytes();
        if let Some(x) = &self.exclude {
            let excluded = ancestors_and_self(bytes)
                .any(|p| x.is_match(std::path::Path::new(std::ffi::OsStr::from_bytes(p))));
            if excluded {
                return false;
            }
        }
        if self.include.is_none() {
            return true;
        }
        let dir: Vec<&[u8]> = components(bytes).collect();
        self.include_roots.iter().any(|root| {
            // One is a prefix of the other: `dir` leads to the include's root, or lies below it
            // where its pattern part may still match.
            root.iter().zip(&dir).all(|(a, b)| a.as_slice() == *b)
        })
    }
}

fn compile(globs: &[String]) -> Result<Option<GlobSet>, ScopeError> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut set = GlobSetBuilder::new();
    for g in globs {
        if !g.starts_with('/') && !g.starts_with("**") {
            return Err(ScopeError::Relative { glob: g.clone() });
        }
        // Recorded paths never end in `/`: `/tmp/` means `/tmp`.
        let trimmed = match g.trim_end_matches('/') {
            "" => "/",
            t => t,
        };
        let glob = GlobBuilder::new(trimmed)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|source| ScopeError::Bad {
                glob: g.clone(),
                source,
            })?;
        set.add(glob);
    }
    set.build().map(Some).map_err(|source| ScopeError::Bad {
        glob: globs.join(" "),
        source,
    })
}

/// `/var/log/*.d/x` -> [var, log]; `**/x` -> [] (matches can be anywhere).
fn literal_root(glob: &str) -> Vec<Vec<u8>> {
    components(glob.as_bytes())
        .take_while(|c| !c.iter().any(|b| PATTERN_CHARS.contains(b)))
        .map(<[u8]>::to_vec)
        .collect()
}

fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

/// `/a/b/c` -> `/a`, `/a/b`, `/a/b/c`.
fn ancestors_and_self(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.iter()
        .enumerate()
        .skip(1)
        .filter(|&(_, &b)| b == b'/')
        .map(|(i, _)| &path[..i])
        .chain(std::iter::once(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(include: &[&str], exclude: &[&str]) -> PathScope {
        PathScope::new(Scope {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    fn p(s: &str) -> RecPath {
        RecPath::normalize(s.as_bytes()).unwrap()
    }

    #[test]
    fn a_matched_directory_takes_in_its_tree() {
        let s = scope(&["/var/log/*.d", "/data"], &["/data/cache", "**/*.tmp"]);
        assert!(s.holds(&p("/var/log/app.d")));
        assert!(s.holds(&p("/var/log/app.d/x/y.log")));
        assert!(!s.holds(&p("/var/log/app")));
        assert!(!s.holds(&p("/var/log")));
        assert!(s.holds(&p("/data/db/file")));
        assert!(!s.holds(&p("/data/cache/blob")));
        assert!(!s.holds(&p("/data/db/file.tmp")));
        assert!(!s.holds(&p("/data/tmpdir.tmp/inside")));
        assert!(!s.holds(&p("/etc/passwd")));
    }

    #[test]
    fn star_stays_in_one_component() {
        let s = scope(&[], &["/tmp/*.log"]);
        assert!(!s.holds(&p("/tmp/a.log")));
        assert!(s.holds(&p("/tmp/sub/a.log")));
        assert!(s.holds(&p("/tmp/a.txt")));
    }

    #[test]
    fn walks_go_through_what_leads_to_an_include() {
        let s = scope(&["/var/log/**/*.log"], &["/var/log/old"]);
        assert!(s.may_hold_below(&p("/var")));
        assert!(s.may_hold_below(&p("/var/log")));
        assert!(s.may_hold_below(&p("/var/log/nginx/deep")));
        assert!(!s.may_hold_below(&p("/var/log/old")));
        assert!(!s.may_hold_below(&p("/var/lib")));
        assert!(!s.may_hold_below(&p("/etc")));
        let anywhere = scope(&["**/*.log"], &[]);
        assert!(anywhere.may_hold_below(&p("/etc/x")));
    }

    #[test]
    fn relative_and_broken_globs_are_refused_with_the_fix() {
        let e = PathScope::new(Scope {
            include: vec!["var/log".into()],
            exclude: vec![],
        })
        .unwrap_err();
        assert!(e.to_string().contains("/var/log or **/var/log"), "{e}");
        let e = PathScope::new(Scope {
            include: vec![],
            exclude: vec!["/tmp/[a".into()],
        })
        .unwrap_err();
        assert!(e.to_string().contains("\"/tmp/[a\""), "{e}");
    }

    #[test]
    fn no_globs_hold_everything() {
        let s = PathScope::everything();
        assert!(s.holds(&p("/anything/at/all")));
        assert!(s.may_hold_below(&p("/x")));
    }
}
