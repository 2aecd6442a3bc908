//! Image references: `[registry/]repository[:tag][@digest]` as Docker writes them,
//! and `<transport>:<path>[:tag]` for stages that are not registries (for
//! example `oci:path/to/layout:1.0`, an OCI image-layout directory).

use std::fmt;

use crate::digest::{Digest, DigestParseError};

/// The registry a reference without a host means.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed image reference. Fields keep the spelling of the input, so that
/// target names follow the source "as written".
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// `None` for registry references; `Some("oci")` for `oci:PATH` and other transports.
    transport: Option<String>,
    /// Registry host (with port) as written; `None` when the reference names none (Docker Hub).
    registry: Option<String>,
    /// Repository path as written (registry references) or the location (transports).
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a string is not a valid image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefParseError {
    #[error("the reference is empty")]
    Empty,
    #[error("`{reference}`: repository path `{path}` is invalid: {why}")]
    Repository {
        reference: String,
        path: String,
        why: &'static str,
    },
    #[error("`{reference}`: tag `{tag}` is invalid: a tag is 1 to 128 characters of [A-Za-z0-9_.-] and does not start with `.` or `-`")]
    Tag { reference: String, tag: String },
    #[error("`{reference}`: {source}")]
    Digest {
        reference: String,
        source: DigestParseError,
    },
    #[error("`{reference}`: registry host `{host}` is invalid")]
    Host { reference: String, host: String },
    #[error("`{reference}`: the {transport}: location is empty")]
    EmptyLocation {
        reference: String,
        transport: String,
    },
    #[error("`{reference}`: the name is longer than 255 characters")]
    TooLong { reference: String },
}

impl ImageRef {
    /// Parses a Docker-style registry reference.
    pub fn parse(s: &str) -> Result<ImageRef, RefParseError> {
        Self::parse_with_transports(s, &[])
    }

    /// Parses a reference; a reference starting with `<t>:` for one of `transports`
    /// is a transport reference `<t>:<location>[:tag][@digest]`.
    pub fn parse_with_transports(s: &str, transports: &[&str]) -> Result<ImageRef, RefParseError> {
        if s.is_empty() {
            return Err(RefParseError::Empty);
        }
        for t in transports {
            if let Some(rest) = s.strip_prefix(t).and_then(|r| r.strip_prefix(':')) {
                return Self::parse_transport(s, t, rest);
            }
        }
        let (name, digest) = split_digest(s)?;
        let (name, tag) = split_tag(name);
        if let Some(tag) = tag {
            check_tag(s, tag)?;
        }
        let (registry, path) = split_host(name);
        if let Some(host) = registry {
            check_host(s, host)?;
        }
        check_repository(s, path)?;
        if name.len() > 255 {
            return Err(RefParseError::TooLong {
                reference: s.to_string(),
            });
        }
        Ok(ImageRef {
            transport: None,
            registry: registry.map(str::to_string),
            repository: path.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    fn parse_transport(s: &str, transport: &str, rest: &str) -> Result<ImageRef, RefParseError> {
        let (rest, digest) = split_digest_with(s, rest)?;
        // The tag is what follows the last `:` when it holds no path separator.
        let (location, tag) = match rest.rsplit_once(':') {
            Some((loc, tag)) if !tag.contains('/') && !tag.contains('\\') => (loc, Some(tag)),
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            check_tag(s, tag)?;
        }
        if location.is_empty() {
            return Err(RefParseError::EmptyLocation {
                reference: s.to_string(),
                transport: transport.to_string(),
            });
        }
        Ok(ImageRef {
            transport: Some(transport.to_string()),
            registry: None,
            repository: location.to_string(),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// Builds a registry reference from parts (already validated by the caller's parse).
    pub fn with_parts(
        registry: Option<String>,
        repository: String,
        tag: Option<String>,
        digest: Option<Digest>,
    ) -> ImageRef {
        ImageRef {
            transport: None,
            registry,
            repository,
            tag,
            digest,
        }
    }

    pub fn transport(&self) -> Option<&str> {
        self.transport.as_deref()
    }

    /// The registry host as written, if any.
    pub fn registry_as_written(&self) -> Option<&str> {
        self.registry.as_deref()
    }

    /// The registry host, `docker.io` when the reference names none.
    pub fn registry(&self) -> &str {
        self.registry.as_deref().unwrap_or(DOCKER_HUB)
    }

    /// The repository path as written (`busybox`, `bitnami/postgres-exporter`) or,
    /// for a transport reference, its location.
    pub fn repository_as_written(&self) -> &str {
        &self.repository
    }

    /// The repository path as the registry knows it: Docker Hub's single-segment
    /// names gain `library/`.
    pub fn repository(&self) -> String {
        if self.transport.is_none()
            && (self.registry.is_none() || is_docker_hub(self.registry()))
            && !self.repository.contains('/')
        {
            format!("library/{}", self.repository)
        } else {
            self.repository.clone()
        }
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository with another tag and no digest.
    pub fn with_tag(&self, tag: &str) -> ImageRef {
        ImageRef {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same repository pinned to `digest`. The tag, if any, is kept as
    /// context (a transport may use it to locate the image); the digest wins.
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// Whether both name the same image: registry (Docker Hub aliases equal),
    /// repository (`library/` normalised), tag and digest.
    pub fn same_image(&self, other: &ImageRef) -> bool {
        let host = |r: &ImageRef| {
            if is_docker_hub(r.registry()) {
                DOCKER_HUB.to_string()
            } else {
                r.registry().to_string()
            }
        };
        self.transport == other.transport
            && host(self) == host(other)
            && self.repository() == other.repository()
            && self.tag == other.tag
            && self.digest == other.digest
    }

    /// `registry/repository` without tag or digest, Docker Hub names normalised.
    pub fn repository_name(&self) -> String {
        match &self.transport {
            Some(t) => format!("{t}:{}", self.repository),
            None => format!("{}/{}", self.registry(), self.repository()),
        }
    }
}

/// `docker.io` and its aliases.
pub fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(t) = &self.transport {
            write!(f, "{t}:")?;
        }
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn split_digest(s: &str) -> Result<(&str, Option<Digest>), RefParseError> {
    split_digest_with(s, s)
}

fn split_digest_with<'a>(
    whole: &str,
    s: &'a str,
) -> Result<(&'a str, Option<Digest>), RefParseError> {
    match s.split_once('@') {
        None => Ok((s, None)),
        Some((name, d)) => {
            let digest = d.parse().map_err(|source| RefParseError::Digest {
                reference: whole.to_string(),
                source,
            })?;
            Ok((name, Some(digest)))
        }
    }
}

fn split_tag(name: &str) -> (&str, Option<&str>) {
    let last_slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name[last_slash..].rfind(':') {
        Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
        None => (name, None),
    }
}

fn split_host(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.')
                || first.contains(':')
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// Whether `host` is a valid registry `host[:port]` (no scheme, no path).
pub fn is_valid_host(host: &str) -> bool {
    check_host(host, host).is_ok()
}

fn check_tag(reference: &str, tag: &str) -> Result<(), RefParseError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
        && !tag.starts_with('.')
        && !tag.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(RefParseError::Tag {
            reference: reference.to_string(),
            tag: tag.to_string(),
        })
    }
}

fn check_host(reference: &str, host: &str) -> Result<(), RefParseError> {
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.parse::<u16>().is_ok());
    if name_ok && port_ok {
        Ok(())
    } else {
        Err(RefParseError::Host {
            reference: reference.to_string(),
            host: host.to_string(),
        })
    }
}

/// Distribution's grammar: components of `[a-z0-9]+` joined by `.`, `_`, `__` or `-+`.
fn check_repository(reference: &str, path: &str) -> Result<(), RefParseError> {
    let err = |why| RefParseError::Repository {
        reference: reference.to_string(),
        path: path.to_string(),
        why,
    };
    if path.is_empty() {
        return Err(err("it is empty"));
    }
    for component in path.split('/') {
        if component.is_empty() {
            return Err(err("it has an empty path component"));
        }
        if component.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(err("repository names must be lowercase"));
        }
        let bytes = component.as_bytes();
        if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
            return Err(err(
                "each path component starts and ends with a lowercase letter or digit",
            ));
        }
        let mut i = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                i += 1;
                continue;
            }
            // A separator run: `.`, `_`, `__` or one or more `-`.
            let start = i;
            while i < bytes.len() && !(bytes[i].is_ascii_lowercase() || bytes[i].is_ascii_digit()) {
                i += 1;
            }
            let sep = &component[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.chars().all(|c| c == '-');
            if !ok {
                return Err(err(
                    "only lowercase letters, digits and the separators `.`, `_`, `__`, `-` are allowed",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_forms() {
        let r = ImageRef::parse("busybox:1.36").unwrap();
        assert_eq!(r.registry_as_written(), None);
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.tag(), Some("1.36"));

        let r = ImageRef::parse("localhost:5000/a/b").unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), None);

        let r = ImageRef::parse("gcr.io/google-containers/pause:3.2").unwrap();
        assert_eq!(r.registry(), "gcr.io");
        assert_eq!(r.repository_as_written(), "google-containers/pause");

        let r = ImageRef::parse(
            "busybox@sha256:31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab",
        )
        .unwrap();
        assert_eq!(r.tag(), None);
        assert!(r.digest().is_some());
        assert_eq!(
            r.to_string(),
            "busybox@sha256:31a54a0cf86d7354788a8265f60ae6acb4b348a67efbcf7c1007dd3cf7af05ab"
        );
        let r = ImageRef::parse("docker.io/nginx:1").unwrap();
        assert_eq!(r.repository(), "library/nginx");
    }

    #[test]
    fn parses_transport_refs() {
        let r = ImageRef::parse_with_transports("oci:some/dir:1.0", &["oci"]).unwrap();
        assert_eq!(r.transport(), Some("oci"));
        assert_eq!(r.repository_as_written(), "some/dir");
        assert_eq!(r.tag(), Some("1.0"));
        let r = ImageRef::parse_with_transports("oci:some/dir", &["oci"]).unwrap();
        assert_eq!(r.tag(), None);
        // Without the transport known, `oci:` reads as a Docker reference with a tag.
        assert!(ImageRef::parse("oci:some/dir").is_err());
    }

    #[test]
    fn rejects_invalid() {
        let cases = [
            "",
            "Busybox:1",
            "busybox:",
            "busybox:-x",
            "a//b",
            "a/b-/c",
            "busybox@sha256:zz",
            "host:99999/a",
        ];
        for c in cases {
            assert!(ImageRef::parse(c).is_err(), "{c} accepted");
        }
    }
}
