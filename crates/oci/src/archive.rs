//! Image archives: `save` writes one tarball that is both an OCI archive (`oci-layout`,
//! `index.json`, `blobs/`) and a docker-archive (`manifest.json`), as docker 25 does;
//! `load` reads either (and old docker-archives with `<id>/layer.tar`), gzip-compressed or
//! not; `import` turns a root filesystem tarball into a one-layer image.

use crate::digest::Digest;
use crate::image::{self, ImageError, Platform};
use crate::media;
use crate::reference::Reference;
use crate::store::{descriptor_digest, Entry, Store, StoreError, REF_NAME};
use oci_spec::image::{Descriptor, ImageIndex};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};
use std::io::{self, BufRead, BufReader, Read, Write};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot read the archive: {0} (is it a complete tar file?)")]
    Read(#[source] io::Error),
    #[error("cannot write the archive")]
    Write(#[source] io::Error),
    #[error("the archive has neither index.json nor manifest.json (not an OCI archive or a docker-archive)")]
    Unknown,
    #[error("the archive's {file} does not parse")]
    Json {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the archive's manifest.json names {0}, which the archive does not hold")]
    Missing(String),
    #[error("the archive names no images (nothing to load)")]
    Empty,
    #[error("the input is not a tar archive of a root filesystem: {0}")]
    NotTar(#[source] io::Error),
}

fn header(path: &str, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    let _ = h.set_path(path);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    h
}

fn blob_name(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm().as_str(), d.hex())
}

/// Writes `entries` (and every blob they need) to `out`.
pub fn save(store: &Store, entries: &[Entry], out: &mut dyn Write) -> Result<(), ArchiveError> {
    let mut tar = tar::Builder::new(out);
    let mut blobs = BTreeSet::new();
    let mut manifests = Vec::new();
    let mut docker = Vec::new();
    let mut dirs = BTreeSet::new();
    for entry in entries {
        let image = store.image(entry)?;
        blobs.insert(entry.digest());
        blobs.insert(image.manifest_digest.clone());
        blobs.insert(image.id().clone());
        blobs.extend(image.manifest.layers.iter().map(|l| l.digest.clone()));
        if media::is_index(entry.descriptor.media_type().as_ref()) {
            // Keep every platform the index names that the store holds.
            let bytes = store.read_metadata(&entry.digest(), "index")?;
            if let image::Parsed::Index(children) = image::parse(&bytes, &entry.digest(), None)? {
                blobs.extend(
                    children.iter().map(|(b, _)| b.digest.clone()).filter(|d| store.has_blob(d)),
                );
            }
        }
        let mut d = entry.descriptor.clone();
        let mut annotations = d.annotations().clone().unwrap_or_default();
        annotations.insert(REF_NAME.into(), entry.name.to_string());
        annotations.insert("io.containerd.image.name".into(), entry.name.to_string());
        d.set_annotations(Some(annotations));
        manifests.push(d);
        docker.push(json!({
            "Config": blob_name(image.id()),
            "RepoTags": entry.name.tag().map(|_| vec![entry.name.familiar()]).unwrap_or_default(),
            "Layers": image.manifest.layers.iter().map(|l| blob_name(&l.digest)).collect::<Vec<_>>(),
        }));
    }
    let index = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": manifests});
    let small: [(&str, Vec<u8>); 3] = [
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ("index.json", serde_json::to_vec(&index).expect("json")),
        ("manifest.json", serde_json::to_vec(&docker).expect("json")),
    ];
    for (name, bytes) in small {
        tar.append(&header(name, bytes.len() as u64, 0o644), bytes.as_slice())
            .map_err(ArchiveError::Write)?;
    }
    for digest in &blobs {
        let dir = format!("blobs/{}/", digest.algorithm().as_str());
        if dirs.insert(dir.clone()) {
            let mut h = header(&dir, 0, 0o755);
            h.set_entry_type(tar::EntryType::Directory);
            h.set_cksum();
            tar.append(&h, io::empty()).map_err(ArchiveError::Write)?;
        }
        let path = store.blob_path(digest);
        let file =
            std::fs::File::open(&path).map_err(|_| StoreError::MissingBlob(digest.clone()))?;
        let size = file
            .metadata()
            .map_err(|source| StoreError::Io { action: "read", path, source })?
            .len();
        tar.append(&header(&blob_name(digest), size, 0o644), file).map_err(ArchiveError::Write)?;
    }
    tar.finish().map_err(ArchiveError::Write)?;
    Ok(())
}

/// Gzip and zstd input is decompressed; anything else passes through.
fn decompressed<'a>(input: impl Read + 'a) -> Result<Box<dyn Read + 'a>, io::Error> {
    let mut buffered = BufReader::with_capacity(1 << 16, input);
    let magic = buffered.fill_buf()?.get(..4).map(<[u8]>::to_vec).unwrap_or_default();
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(buffered))
    } else if magic == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd_decoder(buffered)?)
    } else {
        Box::new(buffered)
    })
}

fn zstd_decoder<R: BufRead>(r: R) -> io::Result<impl Read> {
    zstd::stream::read::Decoder::with_buffer(r)
}

fn layer_media_type(path: &std::path::Path) -> &'static str {
    let mut magic = [0u8; 4];
    let n = std::fs::File::open(path).and_then(|mut f| f.read(&mut magic)).unwrap_or(0);
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        media::OCI_LAYER_GZIP
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        media::OCI_LAYER_ZSTD
    } else {
        media::OCI_LAYER
    }
}

fn oci_digest(d: &Digest) -> oci_spec::image::Digest {
    oci_spec::image::Digest::try_from(d.to_string()).expect("our digests are valid")
}

/// Loads every image an archive names; returns their names.
pub fn load(store: &Store, input: impl Read) -> Result<Vec<Reference>, ArchiveError> {
    let _lease = store.lease()?;
    let mut archive = tar::Archive::new(decompressed(input).map_err(ArchiveError::Read)?);
    // Every regular file: its digest in the store (and its bytes if small JSON).
    let mut files: HashMap<String, (Digest, u64)> = HashMap::new();
    let mut json_files: HashMap<String, Vec<u8>> = HashMap::new();
    for entry in archive.entries().map_err(ArchiveError::Read)? {
        let mut entry = entry.map_err(ArchiveError::Read)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(ArchiveError::Read)?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let size = entry.header().size().map_err(ArchiveError::Read)?;
        let expected = path
            .strip_prefix("blobs/")
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(alg, hex)| format!("{alg}:{hex}").parse::<Digest>().ok());
        if matches!(path.as_str(), "index.json" | "manifest.json" | "oci-layout" | "repositories") {
            let mut bytes = Vec::new();
            (&mut entry)
                .take(crate::store::MAX_METADATA)
                .read_to_end(&mut bytes)
                .map_err(ArchiveError::Read)?;
            json_files.insert(path, bytes);
            continue;
        }
        let mut writer = store.writer(expected.clone().map(|d| (d, size)))?;
        io::copy(&mut entry, &mut writer).map_err(ArchiveError::Read)?;
        let digest = writer.commit()?;
        files.insert(path, (digest, size));
    }
    let mut loaded = Vec::new();
    if let Some(bytes) = json_files.get("index.json") {
        let index: ImageIndex = serde_json::from_slice(bytes)
            .map_err(|source| ArchiveError::Json { file: "index.json".into(), source })?;
        for d in index.manifests() {
            let annotations = d.annotations().clone().unwrap_or_default();
            let name = annotations
                .get("io.containerd.image.name")
                .or_else(|| annotations.get(REF_NAME))
                .and_then(|n| n.parse::<Reference>().ok());
            let Some(name) = name else { continue };
            let mut d = d.clone();
            d.set_annotations(None);
            let entry = Entry { name: name.clone(), descriptor: d };
            store.image(&entry)?;
            loaded.push(entry);
        }
    } else if let Some(bytes) = json_files.get("manifest.json") {
        let items: Vec<Value> = serde_json::from_slice(bytes)
            .map_err(|source| ArchiveError::Json { file: "manifest.json".into(), source })?;
        for item in items {
            let file = |p: &Value| -> Result<(Digest, u64), ArchiveError> {
                let p = p.as_str().unwrap_or_default();
                files.get(p).cloned().ok_or_else(|| ArchiveError::Missing(p.to_string()))
            };
            let (config, config_size) = file(&item["Config"])?;
            let mut layers = Vec::new();
            for l in item["Layers"].as_array().into_iter().flatten() {
                let (digest, size) = file(l)?;
                let media_type = layer_media_type(&store.blob_path(&digest));
                layers.push(
                    json!({"mediaType": media_type, "digest": digest.to_string(), "size": size}),
                );
            }
            let manifest = json!({
                "schemaVersion": 2,
                "mediaType": media::OCI_MANIFEST,
                "config": {"mediaType": media::OCI_CONFIG, "digest": config.to_string(), "size": config_size},
                "layers": layers,
            });
            let bytes = serde_json::to_vec(&manifest).expect("json");
            let digest = store.put(&bytes, None)?;
            let descriptor = Descriptor::new(
                media::OCI_MANIFEST.into(),
                bytes.len() as u64,
                oci_digest(&digest),
            );
            let mut names: Vec<Reference> = item["RepoTags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str()?.parse().ok())
                .collect();
            if names.is_empty() {
                names.push(format!("localhost/loaded:{}", config.short()).parse().expect("valid"));
            }
            for name in names {
                let entry = Entry { name, descriptor: descriptor.clone() };
                store.image(&entry)?;
                loaded.push(entry);
            }
        }
    } else {
        return Err(ArchiveError::Unknown);
    }
    if loaded.is_empty() {
        return Err(ArchiveError::Empty);
    }
    // Everything checked: only now name the images.
    store.update(|entries| {
        for e in &loaded {
            entries.retain(|old| old.name != e.name);
            entries.push(e.clone());
        }
        Ok(())
    })?;
    Ok(loaded.into_iter().map(|e| e.name).collect())
}

/// Copies what passes through into a second writer.
struct Tee<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Makes a one-layer image named `name` from a root filesystem tarball (plain or gzip);
/// returns its id.
pub fn import(store: &Store, input: impl Read, name: &Reference) -> Result<Digest, ArchiveError> {
    let _lease = store.lease()?;
    let mut writer = store.writer(None)?;
    {
        let reader = decompressed(input).map_err(ArchiveError::Read)?;
        let mut tee = Tee { inner: reader, copy: &mut writer };
        let mut archive = tar::Archive::new(&mut tee);
        let mut count = 0u64;
        for entry in archive.entries().map_err(ArchiveError::NotTar)? {
            let mut entry = entry.map_err(ArchiveError::NotTar)?;
            io::copy(&mut entry, &mut io::sink()).map_err(ArchiveError::NotTar)?;
            count += 1;
        }
        if count == 0 {
            return Err(ArchiveError::NotTar(io::Error::new(
                io::ErrorKind::InvalidData,
                "no entries",
            )));
        }
        io::copy(&mut tee, &mut io::sink()).map_err(ArchiveError::Read)?;
    }
    let size = writer.written();
    let layer = writer.commit()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let created = rfc3339(now);
    let platform = Platform::host();
    let config = json!({
        "created": created,
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.to_string()]},
        "history": [{"created": created, "created_by": "vessel image import"}],
    });
    let config_bytes = serde_json::to_vec(&config).expect("json");
    let config_digest = store.put(&config_bytes, None)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config_bytes.len()},
        "layers": [{"mediaType": media::OCI_LAYER, "digest": layer.to_string(), "size": size}],
    });
    let bytes = serde_json::to_vec(&manifest).expect("json");
    let digest = store.put(&bytes, None)?;
    let descriptor =
        Descriptor::new(media::OCI_MANIFEST.into(), bytes.len() as u64, oci_digest(&digest));
    store.set(name, descriptor)?;
    let _ = descriptor_digest;
    Ok(config_digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn import_save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("a")).unwrap();
        let mut rootfs = tar::Builder::new(Vec::new());
        rootfs
            .append_data(&mut header("etc/hostname", 3, 0o644), "etc/hostname", &b"hi\n"[..])
            .unwrap();
        let rootfs = rootfs.into_inner().unwrap();
        let name: Reference = "localhost/imported:1".parse().unwrap();
        let id = import(&store, rootfs.as_slice(), &name).unwrap();
        assert_eq!(store.find("localhost/imported:1").unwrap().id(), &id);
        assert!(import(&store, &b"not a tar file at all"[..], &name).is_err());
        let mut archive = Vec::new();
        save(&store, &store.entries().unwrap(), &mut archive).unwrap();
        let other = Store::open(dir.path().join("b")).unwrap();
        assert_eq!(load(&other, archive.as_slice()).unwrap(), vec![name]);
        assert_eq!(other.find(&id.to_string()).unwrap().id(), &id);
        let mut truncated = archive.clone();
        truncated.truncate(archive.len() / 2);
        let third = Store::open(dir.path().join("c")).unwrap();
        assert!(load(&third, truncated.as_slice()).is_err());
        assert!(third.entries().unwrap().is_empty());
    }
}
