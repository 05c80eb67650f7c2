//! Manifests, indexes and configs as stored: parsing (never panicking on what a registry
//! sends), platform selection, and looking images up in the store by name or id.

use crate::digest::Digest;
use crate::media;
use crate::reference::Reference;
use crate::store::{descriptor_digest, Entry, Store, StoreError};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the {what} {digest} does not parse (the registry or archive sent bad JSON)")]
    Parse {
        what: &'static str,
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("unsupported {what} media type {media_type:?} (vessel handles OCI and docker schema 2 images)")]
    MediaType { what: &'static str, media_type: String },
    #[error("bad digest in the {what} {digest}: {value:?}")]
    BadDigest { what: &'static str, digest: Digest, value: String },
    #[error("{reference} has no image for {platform} (available: {available}; choose one with --platform)")]
    NoPlatform { reference: String, platform: Platform, available: String },
    #[error("image not found: {0} (try `vessel image pull {0}`)")]
    NotFound(String),
    #[error("{query} matches several images ({names}): use a longer id or a full name")]
    Ambiguous { query: String, names: String },
    #[error("invalid platform {0:?} (expected os/arch[/variant], e.g. linux/amd64)")]
    BadPlatform(String),
}

/// An OS and architecture, as in `--platform linux/arm64/v8`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The host's platform, in OCI's names.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Platform { os: "linux".into(), architecture: architecture.into(), variant: None }
    }

    /// Whether an index entry's platform fits this one (no variant asked: any variant).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        os == self.os
            && architecture == self.architecture
            && (self.variant.is_none() || self.variant.as_deref() == variant)
    }
}

impl FromStr for Platform {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Platform, ImageError> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(ImageError::BadPlatform(s.into()));
        }
        Ok(Platform {
            os: parts[0].to_string(),
            architecture: parts[1].to_string(),
            variant: parts.get(2).map(|v| v.to_string()),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A descriptor with its digest checked.
#[derive(Debug, Clone)]
pub struct Blob {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub urls: Option<Vec<String>>,
}

fn blob(d: &Descriptor, what: &'static str, parent: &Digest) -> Result<Blob, ImageError> {
    let value = d.digest().to_string();
    let digest = value.parse().map_err(|_| ImageError::BadDigest {
        what,
        digest: parent.clone(),
        value: value.clone(),
    })?;
    Ok(Blob {
        media_type: d.media_type().to_string(),
        digest,
        size: d.size(),
        urls: d.urls().clone(),
    })
}

/// A single-platform image manifest, checked: known media types, valid digests.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    pub config: Blob,
    pub layers: Vec<Blob>,
}

/// What a manifest request can return.
#[derive(Debug, Clone)]
pub enum Parsed {
    Manifest(Manifest),
    /// An index: its entries, each with the platform it names.
    Index(Vec<(Blob, Option<Platform>)>),
}

/// The media type a manifest declares, else the one the transport gave.
pub fn declared_media_type(bytes: &[u8], fallback: Option<&str>) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    match value.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => Some(m.to_string()),
        None if value.get("manifests").is_some() => {
            Some(fallback.filter(|f| media::is_index(f)).unwrap_or(media::OCI_INDEX).to_string())
        }
        None if value.get("layers").is_some() => Some(
            fallback.filter(|f| media::is_manifest(f)).unwrap_or(media::OCI_MANIFEST).to_string(),
        ),
        None => fallback.map(str::to_string),
    }
}

/// Parses a manifest or index (`digest` names it in errors).
pub fn parse(bytes: &[u8], digest: &Digest, fallback: Option<&str>) -> Result<Parsed, ImageError> {
    let parse_err = |source| ImageError::Parse { what: "manifest", digest: digest.clone(), source };
    let media_type = declared_media_type(bytes, fallback).unwrap_or_default();
    if media::is_index(&media_type) {
        let index: ImageIndex = serde_json::from_slice(bytes).map_err(parse_err)?;
        let mut entries = Vec::new();
        for d in index.manifests() {
            let b = blob(d, "index", digest)?;
            let platform = d.platform().as_ref().map(|p| Platform {
                os: p.os().to_string(),
                architecture: p.architecture().to_string(),
                variant: p.variant().clone(),
            });
            entries.push((b, platform));
        }
        return Ok(Parsed::Index(entries));
    }
    if !media::is_manifest(&media_type) {
        return Err(ImageError::MediaType { what: "manifest", media_type });
    }
    let manifest: ImageManifest = serde_json::from_slice(bytes).map_err(parse_err)?;
    let config = blob(manifest.config(), "manifest", digest)?;
    if !media::is_config(&config.media_type) {
        return Err(ImageError::MediaType { what: "config", media_type: config.media_type });
    }
    let mut layers = Vec::new();
    for l in manifest.layers() {
        let l = blob(l, "manifest", digest)?;
        if !media::is_layer(&l.media_type) {
            return Err(ImageError::MediaType { what: "layer", media_type: l.media_type });
        }
        layers.push(l);
    }
    Ok(Parsed::Manifest(Manifest { media_type, config, layers }))
}

/// Picks `platform` from an index's entries.
pub fn select<'a>(
    entries: &'a [(Blob, Option<Platform>)],
    platform: &Platform,
    reference: &str,
) -> Result<&'a Blob, ImageError> {
    entries
        .iter()
        .find(|(b, p)| {
            media::is_manifest(&b.media_type)
                && p.as_ref()
                    .is_some_and(|p| platform.matches(&p.os, &p.architecture, p.variant.as_deref()))
        })
        .map(|(b, _)| b)
        .ok_or_else(|| ImageError::NoPlatform {
            reference: reference.to_string(),
            platform: platform.clone(),
            available: entries
                .iter()
                .filter_map(|(_, p)| p.as_ref().map(|p| p.to_string()))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Parses an image config.
pub fn parse_config(bytes: &[u8], digest: &Digest) -> Result<ImageConfiguration, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Parse {
        what: "config",
        digest: digest.clone(),
        source,
    })
}

/// A stored image: its name, manifest and config.
#[derive(Debug, Clone)]
pub struct Image {
    pub entry: Entry,
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub config: ImageConfiguration,
}

impl Image {
    /// The image id, as docker shows it: the config's digest.
    pub fn id(&self) -> &Digest {
        &self.manifest.config.digest
    }

    /// Layer diff ids (uncompressed digests), in order.
    pub fn diff_ids(&self) -> Vec<String> {
        self.config.rootfs().diff_ids().clone()
    }

    /// Compressed size of config and layers.
    pub fn size(&self) -> u64 {
        self.manifest.layers.iter().fold(self.manifest.config.size, |a, l| a.saturating_add(l.size))
    }
}

impl Store {
    /// Loads the image an entry names.
    pub fn image(&self, entry: &Entry) -> Result<Image, ImageError> {
        let digest = descriptor_digest(&entry.descriptor);
        let bytes = self.read_metadata(&digest, "manifest")?;
        let manifest = match parse(&bytes, &digest, Some(entry.descriptor.media_type().as_ref()))? {
            Parsed::Manifest(m) => m,
            Parsed::Index(entries) => {
                let child = select(&entries, &Platform::host(), &entry.name.to_string())?.clone();
                let bytes = self.read_metadata(&child.digest, "manifest")?;
                match parse(&bytes, &child.digest, Some(&child.media_type))? {
                    Parsed::Manifest(m) => m,
                    Parsed::Index(_) => {
                        return Err(ImageError::MediaType {
                            what: "nested index",
                            media_type: child.media_type,
                        })
                    }
                }
            }
        };
        let config_bytes = self.read_metadata(&manifest.config.digest, "config")?;
        let config = parse_config(&config_bytes, &manifest.config.digest)?;
        Ok(Image { entry: entry.clone(), manifest_digest: digest, manifest, config })
    }

    /// All named images (skipping none: a broken one is an error).
    pub fn images(&self) -> Result<Vec<Image>, ImageError> {
        self.entries()?.iter().map(|e| self.image(e)).collect()
    }

    /// The entries `query` names: a reference (`alpine`, `host:5000/x:1`, `x@sha256:…`),
    /// or an image id or its prefix (`3f5a…`, `sha256:3f5a…`), which may name several.
    pub fn lookup(&self, query: &str) -> Result<Vec<Entry>, ImageError> {
        let entries = self.entries()?;
        if let Ok(reference) = query.parse::<Reference>() {
            if let Some(e) = entries.iter().find(|e| e.name == reference) {
                return Ok(vec![e.clone()]);
            }
            if let Some(digest) = reference.digest() {
                let found: Vec<Entry> = entries
                    .iter()
                    .filter(|e| {
                        let source = e
                            .descriptor
                            .annotations()
                            .as_ref()
                            .and_then(|a| a.get(SOURCE_DIGEST))
                            .is_some_and(|s| s == &digest.to_string());
                        e.name.name() == reference.name() && (&e.digest() == digest || source)
                    })
                    .cloned()
                    .collect();
                if !found.is_empty() {
                    return Ok(found);
                }
            }
        }
        let hex = query.strip_prefix("sha256:").unwrap_or(query);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hex = hex.to_ascii_lowercase();
            let mut found = Vec::new();
            let mut ids = std::collections::BTreeSet::new();
            for e in &entries {
                let image = self.image(e)?;
                if image.id().hex().starts_with(&hex) {
                    ids.insert(image.id().clone());
                    found.push(e.clone());
                }
            }
            if ids.len() > 1 {
                return Err(ImageError::Ambiguous {
                    query: query.into(),
                    names: found.iter().map(|e| e.name.familiar()).collect::<Vec<_>>().join(", "),
                });
            }
            if !found.is_empty() {
                return Ok(found);
            }
        }
        Err(ImageError::NotFound(query.to_string()))
    }

    /// One image for `query`: by name, or by id when every name with that id is the same
    /// image (the first name is returned).
    pub fn find(&self, query: &str) -> Result<Image, ImageError> {
        let entries = self.lookup(query)?;
        self.image(&entries[0])
    }
}

/// The annotation keeping a converted manifest's digest in the registry.
pub const SOURCE_DIGEST: &str = "org.vessel.image.source-digest";

/// A docker schema 2 manifest rewritten with OCI media types (as `skopeo copy … oci:`
/// does), so that OCI tools reading the store see it; `None` if it is not one.
/// Configs and layers are unchanged: only their declared types move to OCI's names.
pub fn docker_to_oci(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if value.get("mediaType")?.as_str()? != media::DOCKER_MANIFEST {
        return None;
    }
    value["mediaType"] = media::OCI_MANIFEST.into();
    value["config"]["mediaType"] = media::OCI_CONFIG.into();
    for layer in value.get_mut("layers")?.as_array_mut()? {
        let oci = match layer.get("mediaType")?.as_str()? {
            media::DOCKER_LAYER_GZIP => media::OCI_LAYER_GZIP,
            media::DOCKER_LAYER => media::OCI_LAYER,
            media::DOCKER_FOREIGN_LAYER => {
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            }
            other if media::is_layer(other) => continue,
            _ => return None,
        };
        layer["mediaType"] = oci.into();
    }
    serde_json::to_vec(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//".parse::<Platform>().is_err());
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!("linux/arm64".parse::<Platform>().unwrap().matches("linux", "arm64", Some("v8")));
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
                                json in "\\{\"(mediaType|schemaVersion|layers|config|manifests)\": ?[\\[\\]{}0-9\"a-z./+,:]{0,80}\\}") {
            let d = Digest::sha256(&bytes);
            let _ = parse(&bytes, &d, None);
            let _ = parse(json.as_bytes(), &d, Some(media::OCI_MANIFEST));
            let _ = parse(json.as_bytes(), &d, Some(media::DOCKER_LIST));
            let _ = parse_config(json.as_bytes(), &d);
            let _ = docker_to_oci(json.as_bytes());
        }
    }

    #[test]
    fn bad_manifests_are_errors() {
        let d = Digest::sha256(b"x");
        assert!(matches!(parse(b"{", &d, None), Err(ImageError::MediaType { .. })));
        assert!(matches!(
            parse(br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#, &d, None),
            Err(ImageError::Parse { .. })
        ));
        assert!(matches!(
            parse(br#"{"mediaType":"text/html"}"#, &d, None),
            Err(ImageError::MediaType { .. })
        ));
        let weird_layer = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": d.to_string(), "size": 2},
            "layers": [{"mediaType": "application/x-foo", "digest": d.to_string(), "size": 5}],
        });
        let bytes = serde_json::to_vec(&weird_layer).unwrap();
        assert!(matches!(
            parse(&bytes, &d, None),
            Err(ImageError::MediaType { what: "layer", .. })
        ));
    }
}
