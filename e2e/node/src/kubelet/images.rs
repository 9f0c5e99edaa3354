//! Image names from pod specs mapped to the images in the runtime. There is no registry to pull
//! from: `scripts/e2e-runtime.sh start` imports a busybox image, and later steps import others, so
//! a pod asking for `busybox:1.36` or `docker.io/library/busybox` runs the imported busybox.

use std::fmt;

/// The busybox image `scripts/e2e-runtime.sh start` imports (its `DK_E2E_BUSYBOX_IMAGE`).
pub const E2E_BUSYBOX_IMAGE: &str = "docker.io/library/diffkeeper-busybox:e2e";

/// `NAME=REF` rules, first match wins. `NAME` matches an image that equals it, or whose
/// repository (the image less its `:tag` and `@digest`) equals it or ends in `/NAME`: `busybox`
/// matches `busybox`, `busybox:1.36`, `docker.io/library/busybox@sha256:...` and
/// `registry.k8s.io/busybox`, not `busybox-extra`. An image no rule matches is used as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageAliases {
    rules: Vec<(String, String)>,
}

impl Default for ImageAliases {
    /// `busybox` → [`E2E_BUSYBOX_IMAGE`].
    fn default() -> Self {
        ImageAliases {
            rules: vec![("busybox".into(), E2E_BUSYBOX_IMAGE.into())],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAlias(pub String);

impl fmt::Display for BadAlias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "image alias {:?} is not NAME=REF", self.0)
    }
}

impl std::error::Error for BadAlias {}

impl ImageAliases {
    /// No rules at all: every image is used as written.
    pub fn none() -> Self {
        ImageAliases { rules: Vec::new() }
    }

    /// Adds a rule ahead of the existing ones (so `--image-alias busybox=...` overrides the
    /// default).
    pub fn add(&mut self, name: impl Into<String>, image: impl Into<String>) {
        self.rules.insert(0, (name.into(), image.into()));
    }

    /// Parses `NAME=REF` and adds it.
    pub fn add_rule(&mut self, rule: &str) -> Result<(), BadAlias> {
        match rule.split_once('=') {
            Some((name, image)) if !name.is_empty() && !image.is_empty() => {
                self.add(name, image);
                Ok(())
            }
            _ => Err(BadAlias(rule.to_string())),
        }
    }

    /// The runtime's image for the pod's `image`.
    pub fn resolve(&self, image: &str) -> String {
        let repository = repository_of(image);
        self.rules
            .iter()
            .find(|(name, _)| {
                image == name
                    || repository == name
                    || repository
                        .strip_suffix(name.as_str())
                        .is_some_and(|head| head.ends_with('/'))
            })
            .map(|(_, target)| target.clone())
            .unwrap_or_else(|| image.to_string())
    }
}

/// `registry:5000/a/b:tag@sha256:x` → `registry:5000/a/b` (a colon before the last `/` is a port).
fn repository_of(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(head, _)| head);
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].find(':') {
        Some(colon) => &image[..last_slash + colon],
        None => image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busybox_names_map_to_the_e2e_image() {
        let aliases = ImageAliases::default();
        for image in [
            "busybox",
            "busybox:1.36",
            "docker.io/library/busybox:latest",
            "busybox@sha256:abc",
            "localhost:5000/busybox",
        ] {
            assert_eq!(aliases.resolve(image), E2E_BUSYBOX_IMAGE, "{image}");
        }
        assert_eq!(aliases.resolve("busybox-extra"), "busybox-extra");
        assert_eq!(aliases.resolve("nginx"), "nginx");
    }

    #[test]
    fn added_rules_come_first() {
        let mut aliases = ImageAliases::default();
        aliases
            .add_rule("ghcr.io/diffkeeper/diffkeeper=docker.io/library/dk:e2e")
            .unwrap();
        aliases.add_rule("busybox=mine").unwrap();
        assert_eq!(
            aliases.resolve("ghcr.io/diffkeeper/diffkeeper:v1"),
            "docker.io/library/dk:e2e"
        );
        assert_eq!(aliases.resolve("busybox"), "mine");
        assert!(aliases.add_rule("novalue=").is_err());
        assert!(aliases.add_rule("plain").is_err());
    }
}
