//! Overlayfs's own extended attributes (`overlay.opaque`, `overlay.whiteout`, `overlay.redirect`)
//! as a layer directory holds them: read by the recorder (a container's upper dir, its baseline)
//! and by export (the image's lower dirs), so both read them the same way.

/// The value of overlay xattr `name` (`opaque`, `whiteout`, `redirect`), in the `trusted.`
/// namespace (root-mounted overlays) or the `user.` one (rootless overlays mounted with
/// `userxattr`). `get` reads one attribute into a buffer (e.g. `rustix::fs::fgetxattr` on an
/// fd, or `lgetxattr` on a path, never a symlink's target) and returns its length; absent or
/// unsupported in both namespaces is None.
pub fn overlay_xattr<E>(
    name: &str,
    get: impl Fn(&str, &mut [u8]) -> Result<usize, E>,
) -> Option<Vec<u8>> {
    for namespace in ["trusted", "user"] {
        // Overlay's flags are a byte; a redirect is a path, so room for one.
        let mut value = vec![0u8; libc::PATH_MAX as usize];
        if let Ok(len) = get(&format!("{namespace}.overlay.{name}"), &mut value) {
            value.truncate(len);
            return Some(value);
        }
        // Absent (ENODATA) or unsupported by the file system: not set in this namespace.
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_first_then_user_and_absent_is_none() {
        let only_user = |attr: &str, buf: &mut [u8]| -> Result<usize, ()> {
            match attr {
                "user.overlay.opaque" => {
                    buf[0] = b'y';
                    Ok(1)
                }
                _ => Err(()),
            }
        };
        assert_eq!(overlay_xattr("opaque", only_user), Some(b"y".to_vec()));
        assert_eq!(overlay_xattr("whiteout", only_user), None);
        let both = |attr: &str, buf: &mut [u8]| -> Result<usize, ()> {
            buf[0] = if attr.starts_with("trusted.") {
                b'x'
            } else {
                b'y'
            };
            Ok(1)
        };
        assert_eq!(overlay_xattr("opaque", both), Some(b"x".to_vec()));
    }
}
