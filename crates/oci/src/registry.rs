//! The registry client: pulls into the store (platform selection, concurrent verified
//! layer downloads, blobs already present skipped) and pushes from it (existence checks,
//! cross-repository mounts). HTTP is `oci-client`'s; the policy is ours: HTTPS verified
//! with the system CAs (plus `certs.d/<registry>/*.crt`), plain HTTP only for loopback
//! registries and those named with `--insecure`.

use crate::auth::Credentials;
use crate::digest::Digest;
use crate::image::{self, Blob, ImageError, Manifest, Parsed, Platform};
use crate::media;
use crate::reference::{host_of, Reference};
use crate::store::{Staged, Store, StoreError};
use crate::transport::{HttpError, Transport};
use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::RegistryOperation;
use oci_spec::image::Descriptor;
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("cannot reach registry {registry}: {detail} (check the address and that it is running; plain HTTP needs --insecure)")]
    Unreachable { registry: String, detail: String },
    #[error(
        "authentication failed for {registry} (log in with `vessel registry login {registry}`)"
    )]
    Auth { registry: String },
    #[error("not found in the registry: {0} (check the name and tag)")]
    NotFound(String),
    #[error("registry {registry} failed: {detail}")]
    Protocol { registry: String, detail: String },
    #[error("cannot download {digest}: {detail} (nothing was stored; try again)")]
    Download { digest: Digest, detail: String },
    #[error(
        "{reference} is pinned to {expected} but the registry sent {actual} (nothing was stored)"
    )]
    ManifestDigest { reference: String, expected: Digest, actual: Digest },
    #[error("cannot read the certificate {path}")]
    Certificate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How to talk to registries.
#[derive(Debug, Clone)]
pub struct Options {
    /// Registries (`host[:port]`) allowed over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    pub max_concurrent_downloads: usize,
    pub platform: Platform,
    /// Directories holding `<registry>/*.crt` CA certificates (docker's `certs.d` layout).
    pub certs_dirs: Vec<PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            insecure: Vec::new(),
            max_concurrent_downloads: 3,
            platform: Platform::host(),
            certs_dirs: vec![
                PathBuf::from("/etc/docker/certs.d"),
                PathBuf::from("/etc/containers/certs.d"),
            ],
        }
    }
}

/// What a pull or push reports as it goes, for progress bars.
#[derive(Debug, Clone)]
pub enum Event {
    /// Talking plain HTTP to `registry`.
    PlainHttp {
        registry: String,
    },
    /// The manifest is known: these layers follow.
    Resolved {
        digest: Digest,
        layers: Vec<(Digest, u64)>,
    },
    /// A blob was already there (pull) or in the registry (push).
    Exists {
        digest: Digest,
    },
    /// A blob was mounted from another repository (push).
    Mounted {
        digest: Digest,
        from: String,
    },
    Progress {
        digest: Digest,
        done: u64,
        total: u64,
    },
    Done {
        digest: Digest,
    },
}

pub type Reporter = Arc<dyn Fn(Event) + Send + Sync>;

/// What a pull stored.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub reference: Reference,
    /// The manifest's digest (of the platform's manifest).
    pub digest: Digest,
    /// The image id (config digest).
    pub id: Digest,
    /// The digest of the index the manifest was chosen from, if any.
    pub index: Option<Digest>,
    /// What the name meant before, to put back if the caller gives up on the image.
    pub previous: Option<crate::store::Entry>,
}

impl Pulled {
    /// Gives the name back its previous meaning (or removes it), as if the pull had not
    /// happened; the blobs go at the next garbage collection.
    pub fn undo(&self, store: &Store) -> Result<(), StoreError> {
        match &self.previous {
            Some(entry) => store.set(&entry.name, entry.descriptor.clone()).map(drop),
            None => store.remove(&self.reference).map(drop),
        }
    }
}

/// Where a registry's API answers: Docker Hub's is not at `docker.io`.
pub fn api_host(registry: &str) -> &str {
    if registry == crate::reference::DEFAULT_REGISTRY {
        "registry-1.docker.io"
    } else {
        registry
    }
}

/// True for `localhost` and 127.0.0.0/8 (and ::1).
pub fn is_loopback(registry: &str) -> bool {
    let host = host_of(registry);
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A client for one registry.
pub struct Client {
    registry: String,
    /// For pushes and logins, made on first use (see [`crate::transport`] for why).
    inner: std::sync::OnceLock<oci_client::Client>,
    config: Box<dyn Fn() -> oci_client::Client + Send + Sync>,
    /// For pulls.
    transport: Transport,
    auth: RegistryAuth,
    plain_http: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("registry", &self.registry).finish_non_exhaustive()
    }
}

fn certificates(opts: &Options, registry: &str) -> Result<Vec<Certificate>, RegistryError> {
    let mut certs = Vec::new();
    for dir in &opts.certs_dirs {
        let dir = dir.join(registry);
        let Ok(read) = std::fs::read_dir(&dir) else { continue };
        for entry in read.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "crt" || e == "pem") {
                let data = std::fs::read(&path)
                    .map_err(|source| RegistryError::Certificate { path: path.clone(), source })?;
                certs.push(Certificate { encoding: CertificateEncoding::Pem, data });
            }
        }
    }
    Ok(certs)
}

/// Turns oci-client's errors into ours: one clear line each.
fn classify(registry: &str, what: &str, err: OciDistributionError) -> RegistryError {
    use OciDistributionError as E;
    let registry = registry.to_string();
    match err {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => {
            RegistryError::Auth { registry }
        }
        E::ServerError { code: 401 | 403, .. } => RegistryError::Auth { registry },
        E::ImageManifestNotFoundError(_) | E::ServerError { code: 404, .. } => {
            RegistryError::NotFound(what.to_string())
        }
        E::RegistryError { envelope, .. } => {
            let codes: Vec<String> =
                envelope.errors.iter().map(|e| format!("{:?}", e.code)).collect();
            if codes.iter().any(|c| c == "Unauthorized" || c == "Denied") {
                RegistryError::Auth { registry }
            } else if codes.iter().any(|c| c.contains("Unknown") || c == "NotFound") {
                RegistryError::NotFound(what.to_string())
            } else {
                RegistryError::Protocol {
                    registry,
                    detail: envelope
                        .errors
                        .iter()
                        .map(|e| e.message.clone())
                        .collect::<Vec<_>>()
                        .join("; "),
                }
            }
        }
        E::RequestError(e) => RegistryError::Unreachable { registry, detail: deepest(&e) },
        other => RegistryError::Protocol { registry, detail: other.to_string() },
    }
}

impl Client {
    /// A client for `registry`. Loopback registries are tried over HTTPS first and fall
    /// back to plain HTTP, as are those in `opts.insecure`.
    pub async fn connect(
        registry: &str,
        opts: &Options,
        credentials: &Credentials,
        report: &Reporter,
    ) -> Result<Client, RegistryError> {
        let certs = certificates(opts, registry)?;
        let auth = match credentials.get(registry) {
            Some((user, password)) => RegistryAuth::Basic(user, password),
            None => RegistryAuth::Anonymous,
        };
        let make =
            move |plain: bool, certs: Vec<Certificate>, registry: String, downloads: usize| {
                let (protocol, tls_certs_only, extra_root_certificates) = if plain {
                    let only = vec![Certificate {
                        encoding: CertificateEncoding::Pem,
                        data: NO_TRUST_PEM.as_bytes().to_vec(),
                    }];
                    (ClientProtocol::HttpsExcept(vec![registry]), only, Vec::new())
                } else {
                    (ClientProtocol::Https, Vec::new(), certs)
                };
                oci_client::Client::new(ClientConfig {
                    protocol,
                    tls_certs_only,
                    extra_root_certificates,
                    max_concurrent_download: downloads,
                    connect_timeout: Some(std::time::Duration::from_secs(15)),
                    read_timeout: Some(std::time::Duration::from_secs(120)),
                    ..Default::default()
                })
            };
        let loopback = is_loopback(registry);
        let insecure = opts.insecure.iter().any(|r| r == registry);
        let mut plain_http = false;
        // Each HTTP client costs ~70 ms of CA loading with native-tls: make at most one
        // of each kind and use it for the pings and the pulls alike.
        let mut plain_client = None;
        let mut tls_client = None;
        if loopback || insecure {
            // Loopback: plain HTTP first (nothing leaves the host, and a TLS server
            // answers it with 400); --insecure: HTTPS first, as docker does.
            let order = if loopback { [true, false] } else { [false, true] };
            let mut first_error = None;
            for plain in order {
                let client = http_client(&certs, plain)?;
                let result = ping(&client, registry, plain).await;
                if plain {
                    plain_client = Some(client);
                } else {
                    tls_client = Some(client);
                }
                match result {
                    Ok(()) => {
                        plain_http = plain;
                        first_error = None;
                        break;
                    }
                    Err(e) => {
                        // Report HTTPS's failure: it is the one users should fix.
                        if !plain || first_error.is_none() {
                            first_error = Some(e);
                        }
                    }
                }
            }
            if let Some(detail) = first_error {
                return Err(RegistryError::Unreachable { registry: registry.to_string(), detail });
            }
            if plain_http {
                report(Event::PlainHttp { registry: registry.to_string() });
            }
        }
        let basic = match &auth {
            RegistryAuth::Basic(user, password) => Some((user.clone(), password.clone())),
            _ => None,
        };
        let scheme = if plain_http { "http" } else { "https" };
        let client = match (plain_http, plain_client, tls_client) {
            (true, Some(c), _) | (false, _, Some(c)) => c,
            _ => http_client(&certs, plain_http)?,
        };
        let transport = Transport::new(client, scheme, api_host(registry), basic);
        let (name, downloads) = (registry.to_string(), opts.max_concurrent_downloads.max(1));
        let config = Box::new(move || make(plain_http, certs.clone(), name.clone(), downloads));
        Ok(Client {
            registry: registry.to_string(),
            inner: std::sync::OnceLock::new(),
            config,
            transport,
            auth,
            plain_http,
        })
    }

    pub fn plain_http(&self) -> bool {
        self.plain_http
    }

    fn remote(reference: &Reference) -> oci_client::Reference {
        let registry = reference.registry().to_string();
        let repository = reference.repository().to_string();
        match (reference.tag(), reference.digest()) {
            (Some(tag), Some(d)) => oci_client::Reference::with_tag_and_digest(
                registry,
                repository,
                tag.into(),
                d.to_string(),
            ),
            (_, Some(d)) => oci_client::Reference::with_digest(registry, repository, d.to_string()),
            (tag, None) => oci_client::Reference::with_tag(
                registry,
                repository,
                tag.unwrap_or(crate::reference::DEFAULT_TAG).to_string(),
            ),
        }
    }

    /// Checks the credentials: lists the tags of a repository that need not exist, which
    /// needs a token (bearer registries) or accepted basic credentials; "no such
    /// repository" means the credentials were fine.
    pub async fn check_login(&self) -> Result<(), RegistryError> {
        let probe = oci_client::Reference::with_tag(
            self.registry.clone(),
            "vessel/login-check".into(),
            "latest".into(),
        );
        match self.oci().list_tags(&probe, &self.auth, Some(1), None).await {
            Ok(_) => Ok(()),
            Err(e) => match classify(&self.registry, "login", e) {
                RegistryError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    fn oci(&self) -> &oci_client::Client {
        self.inner.get_or_init(|| (self.config)())
    }

    fn http_error(&self, what: &str, e: HttpError) -> RegistryError {
        let registry = self.registry.clone();
        match e {
            HttpError::Connect(detail) => RegistryError::Unreachable { registry, detail },
            HttpError::Auth => RegistryError::Auth { registry },
            HttpError::NotFound => RegistryError::NotFound(what.to_string()),
            HttpError::Status(code, body) => RegistryError::Protocol {
                registry,
                detail: format!("HTTP {code} for {what}: {body}"),
            },
        }
    }

    /// The manifest `reference` names: its bytes, digest and declared content type.
    async fn manifest(
        &self,
        reference: &Reference,
    ) -> Result<(Vec<u8>, Digest, Option<String>), RegistryError> {
        let what = reference.to_string();
        let target = match (reference.digest(), reference.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => crate::reference::DEFAULT_TAG.to_string(),
        };
        let mut response = self
            .transport
            .get(reference.repository(), &format!("manifests/{target}"), media::ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| self.http_error(&what, e))?;
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.split(';').next().unwrap_or(h).trim().to_string());
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| RegistryError::Unreachable {
            registry: self.registry.clone(),
            detail: deepest(&e),
        })? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > crate::store::MAX_METADATA {
                return Err(RegistryError::Protocol {
                    registry: self.registry.clone(),
                    detail: format!(
                        "the manifest of {what} is larger than {} bytes",
                        crate::store::MAX_METADATA
                    ),
                });
            }
        }
        let digest = Digest::sha256(&bytes);
        if let Some(expected) = reference.digest() {
            let mut h = expected.hasher();
            h.update(&bytes);
            let actual = h.finish();
            if &actual != expected {
                return Err(RegistryError::ManifestDigest {
                    reference: what,
                    expected: expected.clone(),
                    actual,
                });
            }
            return Ok((bytes, expected.clone(), content_type));
        }
        Ok((bytes, digest, content_type))
    }

    /// Pulls `reference` for `opts.platform` into `store` and names it `reference`.
    pub async fn pull(
        &self,
        store: &Store,
        reference: &Reference,
        opts: &Options,
        report: &Reporter,
    ) -> Result<Pulled, RegistryError> {
        let _lease = store.lease()?;
        let (bytes, digest, content_type) = self.manifest(reference).await?;
        let (manifest_bytes, manifest_digest, manifest, index, platform) =
            match image::parse(&bytes, &digest, content_type.as_deref())? {
                Parsed::Manifest(m) => (bytes, digest, m, None, None),
                Parsed::Index(entries) => {
                    let child =
                        image::select(&entries, &opts.platform, &reference.familiar())?.clone();
                    let platform = entries
                        .iter()
                        .find(|(b, _)| b.digest == child.digest)
                        .and_then(|(_, p)| p.clone());
                    let pinned = reference.with_digest(child.digest.clone());
                    let (child_bytes, child_digest, _) = self.manifest(&pinned).await?;
                    match image::parse(&child_bytes, &child_digest, Some(&child.media_type))? {
                        Parsed::Manifest(m) => {
                            (child_bytes, child_digest, m, Some(digest), platform)
                        }
                        Parsed::Index(_) => {
                            return Err(ImageError::MediaType {
                                what: "nested index",
                                media_type: child.media_type,
                            }
                            .into())
                        }
                    }
                }
            };
        report(Event::Resolved {
            digest: manifest_digest.clone(),
            layers: manifest.layers.iter().map(|l| (l.digest.clone(), l.size)).collect(),
        });
        self.fetch_blobs(store, reference, &manifest, opts, report).await?;
        // Docker schema 2 is kept in OCI's media types, so OCI tools can read the store;
        // the registry's digest stays in an annotation.
        let (manifest_bytes, manifest_digest, manifest, source_digest) =
            match image::docker_to_oci(&manifest_bytes) {
                Some(converted) => {
                    let digest = Digest::sha256(&converted);
                    let parsed = match image::parse(&converted, &digest, None)? {
                        Parsed::Manifest(m) => m,
                        Parsed::Index(_) => {
                            return Err(ImageError::MediaType {
                                what: "manifest",
                                media_type: media::DOCKER_MANIFEST.into(),
                            }
                            .into())
                        }
                    };
                    (converted, digest, parsed, Some(manifest_digest))
                }
                None => (manifest_bytes, manifest_digest, manifest, None),
            };
        store.put(&manifest_bytes, Some(&manifest_digest))?;
        let mut descriptor = Descriptor::new(
            manifest.media_type.as_str().into(),
            manifest_bytes.len() as u64,
            oci_spec::image::Digest::try_from(manifest_digest.to_string())
                .expect("our digests are valid"),
        );
        let platform = platform.unwrap_or_else(|| opts.platform.clone());
        let built = oci_spec::image::PlatformBuilder::default()
            .os(platform.os.as_str())
            .architecture(platform.architecture.as_str());
        let built = match &platform.variant {
            Some(variant) => built.variant(variant.clone()),
            None => built,
        };
        descriptor.set_platform(built.build().ok());
        if let Some(source) = &source_digest {
            descriptor.set_annotations(Some(
                [(image::SOURCE_DIGEST.to_string(), source.to_string())].into_iter().collect(),
            ));
        }
        let previous = store.set(reference, descriptor)?;
        Ok(Pulled {
            reference: reference.clone(),
            digest: manifest_digest,
            id: manifest.config.digest.clone(),
            index,
            previous,
        })
    }

    async fn fetch_blobs(
        &self,
        store: &Store,
        reference: &Reference,
        manifest: &Manifest,
        opts: &Options,
        report: &Reporter,
    ) -> Result<(), RegistryError> {
        let mut blobs: Vec<&Blob> = manifest.layers.iter().collect();
        blobs.push(&manifest.config);
        let remote = Client::remote(reference);
        // Verified blobs stay in ingest/ until every one of them is: a failed pull then
        // leaves nothing behind.
        let staged = futures_util::stream::iter(
            blobs.into_iter().map(|b| self.fetch(store, &remote, b, report)),
        )
        .buffer_unordered(opts.max_concurrent_downloads.max(1))
        .try_collect::<Vec<Option<Staged>>>()
        .await?;
        // The config must parse before anything lands.
        let config = &manifest.config;
        let bytes = match staged.iter().flatten().find(|s| s.digest() == &config.digest) {
            Some(s) => std::fs::read(s.path()).map_err(|source| StoreError::Io {
                action: "read",
                path: s.path().to_path_buf(),
                source,
            })?,
            None => store.read_metadata(&config.digest, "config")?,
        };
        image::parse_config(&bytes, &config.digest)?;
        for blob in staged.into_iter().flatten() {
            blob.commit()?;
        }
        Ok(())
    }

    async fn fetch(
        &self,
        store: &Store,
        remote: &oci_client::Reference,
        blob: &Blob,
        report: &Reporter,
    ) -> Result<Option<Staged>, RegistryError> {
        if store.has_blob(&blob.digest) {
            report(Event::Exists { digest: blob.digest.clone() });
            return Ok(None);
        }
        let download =
            |detail: String| RegistryError::Download { digest: blob.digest.clone(), detail };
        let what = blob.digest.to_string();
        let mut response =
            self.transport.get(remote.repository(), &format!("blobs/{what}"), &[]).await.map_err(
                |e| match self.http_error(&what, e) {
                    RegistryError::Protocol { detail, .. } => download(detail),
                    other => other,
                },
            )?;
        let mut writer = store.writer(Some((blob.digest.clone(), blob.size)))?;
        let mut last = 0;
        while let Some(chunk) = response.chunk().await.map_err(|e| download(deepest(&e)))? {
            writer.write_all(&chunk).map_err(|e| download(e.to_string()))?;
            let done = writer.written();
            if done - last >= 256 << 10 || done == blob.size {
                last = done;
                report(Event::Progress { digest: blob.digest.clone(), done, total: blob.size });
            }
        }
        let staged = writer.verify()?;
        report(Event::Done { digest: blob.digest.clone() });
        Ok(Some(staged))
    }

    /// Pushes a stored image to `target`: blobs the registry has are skipped, blobs from
    /// another repository of the same registry are mounted, the rest uploaded.
    pub async fn push(
        &self,
        store: &Store,
        image: &image::Image,
        target: &Reference,
        mount_from: &[Reference],
        report: &Reporter,
    ) -> Result<Digest, RegistryError> {
        let remote = Client::remote(target);
        let what = target.to_string();
        self.oci()
            .auth(&remote, &self.auth, RegistryOperation::Push)
            .await
            .map_err(|e| classify(&self.registry, &what, e))?;
        let manifest = &image.manifest;
        report(Event::Resolved {
            digest: image.manifest_digest.clone(),
            layers: manifest.layers.iter().map(|l| (l.digest.clone(), l.size)).collect(),
        });
        let sources: Vec<oci_client::Reference> = mount_from
            .iter()
            .filter(|r| r.registry() == target.registry() && r.repository() != target.repository())
            .take(3)
            .map(Client::remote)
            .collect();
        let mut blobs: Vec<&Blob> = manifest.layers.iter().collect();
        blobs.push(&manifest.config);
        for blob in blobs {
            let digest = blob.digest.to_string();
            let exists = self
                .oci()
                .blob_exists(&remote, &digest)
                .await
                .map_err(|e| classify(&self.registry, &what, e))?;
            if exists {
                report(Event::Exists { digest: blob.digest.clone() });
                continue;
            }
            let mut mounted = false;
            for source in &sources {
                if self.oci().mount_blob(&remote, source, &digest).await.is_ok()
                    && self.oci().blob_exists(&remote, &digest).await.unwrap_or(false)
                {
                    report(Event::Mounted {
                        digest: blob.digest.clone(),
                        from: source.repository().to_string(),
                    });
                    mounted = true;
                    break;
                }
            }
            if mounted {
                continue;
            }
            let path = store.blob_path(&blob.digest);
            let file = tokio::fs::File::open(&path).await.map_err(|source| StoreError::Io {
                action: "read",
                path: path.clone(),
                source,
            })?;
            let stream = upload_stream(file, blob.digest.clone(), blob.size, report.clone());
            self.oci()
                .push_blob_stream(&remote, stream, &digest, Some(blob.size))
                .await
                .map_err(|e| classify(&self.registry, &what, e))?;
            report(Event::Done { digest: blob.digest.clone() });
        }
        let bytes = store.read_metadata(&image.manifest_digest, "manifest")?;
        let content_type = manifest.media_type.parse().map_err(|_| ImageError::MediaType {
            what: "manifest",
            media_type: manifest.media_type.clone(),
        })?;
        self.oci()
            .push_manifest_raw(&remote, bytes, content_type)
            .await
            .map_err(|e| classify(&self.registry, &what, e))?;
        Ok(image.manifest_digest.clone())
    }
}

/// A blob file as a stream of 1 MiB chunks, reporting progress as they go.
fn upload_stream(
    file: tokio::fs::File,
    digest: Digest,
    total: u64,
    report: Reporter,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, OciDistributionError>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some((file, 0u64)), move |state| {
        let (digest, report) = (digest.clone(), report.clone());
        async move {
            let (mut file, done) = state?;
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    let done = done + n as u64;
                    report(Event::Progress { digest, done, total });
                    Some((Ok(bytes::Bytes::from(buf)), Some((file, done))))
                }
                Err(e) => Some((Err(OciDistributionError::IoError(e)), None)),
            }
        }
    })
}

/// A CA certificate whose private key was thrown away when it was made. Given as the only
/// root to clients that speak plain HTTP, it keeps reqwest from loading the system's CA
/// bundle (about 100 ms with OpenSSL 3) for a client that never verifies anything.
const NO_TRUST_PEM: &str = include_str!("no-trust.pem");

fn http_client(certs: &[Certificate], plain: bool) -> Result<reqwest::Client, RegistryError> {
    let builder = reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(10));
    let pem = |data: &[u8]| reqwest::Certificate::from_pem(data).ok();
    let builder = if plain {
        builder.tls_certs_only(pem(NO_TRUST_PEM.as_bytes()))
    } else {
        builder.tls_certs_merge(certs.iter().filter_map(|c| pem(&c.data)))
    };
    builder
        .build()
        .map_err(|e| RegistryError::Protocol { registry: String::new(), detail: e.to_string() })
}

/// `GET /v2/`: a 200 or 401 answer means a registry speaks this protocol.
async fn ping(client: &reqwest::Client, registry: &str, plain: bool) -> Result<(), String> {
    let scheme = if plain { "http" } else { "https" };
    let host = api_host(registry);
    match client.get(format!("{scheme}://{host}/v2/")).send().await {
        Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::UNAUTHORIZED => {
            Ok(())
        }
        Ok(r) => Err(format!("GET /v2/ answered {} (is this a registry?)", r.status())),
        Err(e) => Err(deepest(&e)),
    }
}

/// The innermost cause's message ("Connection refused", "certificate verify failed").
pub(crate) fn deepest(e: &dyn std::error::Error) -> String {
    let mut detail = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    detail
}
