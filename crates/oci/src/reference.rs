//! Image references, normalized as docker does: `alpine` is
//! `docker.io/library/alpine:latest`, `host:port/name` names another registry, and
//! `name@sha256:…` pins a digest.

use crate::digest::{Digest, DigestError};
use std::fmt;
use std::str::FromStr;

pub const DEFAULT_REGISTRY: &str = "docker.io";
pub const DEFAULT_TAG: &str = "latest";

/// A fully qualified image reference. Its `Display` is the canonical long form
/// (`registry/repository[:tag][@digest]`), which parses back to the same value.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid image reference {0:?}: empty")]
    Empty(String),
    #[error("invalid image reference {0:?}: repository names must be lowercase")]
    Uppercase(String),
    #[error("invalid image reference {0:?}: expected [registry/]name[:tag][@digest]")]
    Format(String),
    #[error(
        "invalid image reference {0:?}: bad tag (letters, digits, '_', '.', '-'; at most 128)"
    )]
    Tag(String),
    #[error("invalid image reference {reference:?}")]
    Digest {
        reference: String,
        #[source]
        source: DigestError,
    },
    #[error("invalid image reference {0:?}: name is longer than 255 characters")]
    TooLong(String),
}

impl Reference {
    /// `registry/repository` with the given tag, validated.
    pub fn new(
        registry: &str,
        repository: &str,
        tag: Option<&str>,
        digest: Option<Digest>,
    ) -> Result<Reference, ReferenceError> {
        let mut s = format!("{registry}/{repository}");
        if let Some(tag) = tag {
            s = format!("{s}:{tag}");
        }
        if let Some(digest) = &digest {
            s = format!("{s}@{digest}");
        }
        s.parse()
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `registry/repository`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The same repository, pinned to `digest` (the tag kept).
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference { digest: Some(digest), ..self.clone() }
    }

    /// The same repository with `tag` and no digest.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        Reference::new(&self.registry, &self.repository, Some(tag), None)
    }

    /// The short form docker prints: `alpine:latest`, `user/app:1`, `host:5000/x:y`.
    pub fn familiar(&self) -> String {
        let mut name = if self.registry == DEFAULT_REGISTRY {
            let first = self.repository.split('/').next().unwrap_or_default();
            match self.repository.strip_prefix("library/") {
                Some(short) if !short.contains('/') => short.to_string(),
                // `docker.io/a.b/c` shortened to `a.b/c` would name registry `a.b`.
                _ if first.contains('.') || first.contains(':') || first == "localhost" => {
                    self.name()
                }
                _ => self.repository.clone(),
            }
        } else {
            self.name()
        };
        if let Some(tag) = &self.tag {
            name = format!("{name}:{tag}");
        }
        if let Some(digest) = &self.digest {
            name = format!("{name}@{digest}");
        }
        name
    }

    /// The host part of the registry, without a port.
    pub fn host(&self) -> &str {
        host_of(&self.registry)
    }
}

/// `host` of `host:port` (and of `[v6]:port`).
pub fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.split(':').next().unwrap_or(registry)
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One path component: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A registry host: DNS labels (letters, digits, '-') joined by '.', or a bracketed IPv6
/// address, with an optional numeric port.
fn valid_registry(r: &str) -> bool {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else { return false };
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => ("", None),
            p => match p.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return false,
            },
        }
    } else {
        match r.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if r.starts_with('[') {
        return true;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        })
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Reference, ReferenceError> {
        let format = || ReferenceError::Format(input.to_string());
        if input.is_empty() {
            return Err(ReferenceError::Empty(input.into()));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => {
                let digest = digest
                    .parse::<Digest>()
                    .map_err(|source| ReferenceError::Digest { reference: input.into(), source })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &rest[last_slash + i + 1..];
                if !valid_tag(tag) {
                    return Err(ReferenceError::Tag(input.into()));
                }
                (&rest[..last_slash + i], Some(tag.to_string()))
            }
            None => (rest, None),
        };
        if name.is_empty() {
            return Err(format());
        }
        if name.len() > 255 {
            return Err(ReferenceError::TooLong(input.into()));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first.starts_with('[')
                    || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_REGISTRY.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == "registry-1.docker.io" {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry
        };
        if !valid_registry(&registry) {
            return Err(format());
        }
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !repository.split('/').all(valid_component) {
            if repository.bytes().any(|b| b.is_ascii_uppercase())
                && repository.to_ascii_lowercase().split('/').all(valid_component)
            {
                return Err(ReferenceError::Uppercase(input.into()));
            }
            return Err(format());
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (tag, _) => tag,
        };
        Ok(Reference { registry, repository, tag, digest })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn full(s: &str) -> String {
        s.parse::<Reference>().unwrap().to_string()
    }

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(full("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(full("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(full("user/app"), "docker.io/user/app:latest");
        assert_eq!(full("index.docker.io/library/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(full("localhost/app"), "localhost/app:latest");
        assert_eq!(full("localhost:5000/a/b:v1"), "localhost:5000/a/b:v1");
        assert_eq!(full("127.0.0.1:5000/busybox"), "127.0.0.1:5000/busybox:latest");
        assert_eq!(full("quay.io/x/y:z"), "quay.io/x/y:z");
        let d = Digest::sha256(b"x");
        assert_eq!(full(&format!("alpine@{d}")), format!("docker.io/library/alpine@{d}"));
        assert_eq!(full(&format!("alpine:1@{d}")), format!("docker.io/library/alpine:1@{d}"));
        let r: Reference = "alpine".parse().unwrap();
        assert_eq!(r.familiar(), "alpine:latest");
        let r: Reference = "localhost:5000/a".parse().unwrap();
        assert_eq!(r.familiar(), "localhost:5000/a:latest");
        assert_eq!(r.host(), "localhost");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            ":",
            "alpine:",
            "alpine:-x",
            "/alpine",
            "alpine/",
            "a//b",
            "Alpine",
            "alpine@sha256:xyz",
            "alpine@",
            "host:port/x",
            "a b",
            "-a",
            "a..b",
        ] {
            assert!(bad.parse::<Reference>().is_err(), "{bad:?} parsed");
        }
        assert!(matches!("Alpine".parse::<Reference>(), Err(ReferenceError::Uppercase(_))));
    }

    fn component() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,5}((\\.|_|__|-{1,2})[a-z0-9]{1,5}){0,2}"
    }

    fn registry() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("docker.io".to_string()),
            Just("localhost".to_string()),
            "[a-z][a-z0-9-]{0,5}[a-z0-9]\\.[a-z]{2,4}",
            ("[a-z0-9]{1,6}(\\.[a-z0-9]{1,6}){0,2}", 1u16..)
                .prop_map(|(host, port)| format!("{host}:{port}")),
        ]
    }

    proptest! {
        #[test]
        fn display_parses_back(
            registry in registry(),
            path in prop::collection::vec(component(), 1..4),
            tag in prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            digest in prop::option::of(prop::array::uniform32(any::<u8>())),
        ) {
            let digest = digest.map(|bytes| Digest::sha256(&bytes));
            let Ok(r) = Reference::new(&registry, &path.join("/"), tag.as_deref(), digest)
            else {
                // e.g. `docker.io/x` becomes `docker.io/library/x`: build via the parser.
                return Err(TestCaseError::fail("valid parts did not parse"));
            };
            let again: Reference = r.to_string().parse().unwrap();
            prop_assert_eq!(&again, &r);
            let familiar: Reference = r.familiar().parse().unwrap();
            prop_assert_eq!(familiar, r);
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Reference>();
        }
    }
}
