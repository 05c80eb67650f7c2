//! Bearer-token auth as Docker Hub does it, against a small fake registry: `/v2/` answers
//! 401 with a `Bearer realm=…` challenge, the realm hands out a token only for the right
//! basic credentials, and manifests and blobs need that token.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use vessel_oci::auth::Credentials;
use vessel_oci::registry::{Client, Event, Options, Reporter};
use vessel_oci::{media, Digest, Reference, Store};

struct Blobs {
    manifest: Vec<u8>,
    config: Vec<u8>,
    layer: Vec<u8>,
}

fn blobs() -> Blobs {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(2);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "hello", &b"hi"[..]).unwrap();
    let layer = tar.into_inner().unwrap();
    let diff = Digest::sha256(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [diff.to_string()]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": Digest::sha256(&config).to_string(), "size": config.len()},
        "layers": [{"mediaType": media::OCI_LAYER, "digest": diff.to_string(), "size": layer.len()}],
    }))
    .unwrap();
    Blobs { manifest, config, layer }
}

/// Serves until the test ends; returns its address and a log of request lines.
fn serve(blobs: Blobs) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (realm, seen) = (format!("http://{addr}/token"), log.clone());
    std::thread::spawn(move || {
        let good_basic = format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "user:pw")
        );
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            let _ = reader.read_line(&mut request);
            let mut authorization = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line
                    .strip_prefix("authorization: ")
                    .or_else(|| line.strip_prefix("Authorization: "))
                {
                    authorization = v.trim().to_string();
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            seen.lock().unwrap().push(format!("{path} [{authorization}]"));
            let challenge =
                format!("Bearer realm=\"{realm}\",service=\"fake\",scope=\"repository:app:pull\"");
            let (status, headers, body): (&str, String, Vec<u8>) = if path.starts_with("/token") {
                if authorization == good_basic && path.contains("scope=repository%3Aapp%3Apull") {
                    ("200 OK", String::new(), br#"{"token":"good-token"}"#.to_vec())
                } else {
                    ("401 Unauthorized", String::new(), b"{}".to_vec())
                }
            } else if authorization != "Bearer good-token" {
                ("401 Unauthorized", format!("WWW-Authenticate: {challenge}\r\n"), b"{}".to_vec())
            } else if path.contains("/manifests/") {
                (
                    "200 OK",
                    format!("Content-Type: {}\r\n", media::OCI_MANIFEST),
                    blobs.manifest.clone(),
                )
            } else if path.ends_with(&Digest::sha256(&blobs.config).to_string()) {
                ("200 OK", String::new(), blobs.config.clone())
            } else if path.ends_with(&Digest::sha256(&blobs.layer).to_string()) {
                ("200 OK", String::new(), blobs.layer.clone())
            } else {
                ("404 Not Found", String::new(), b"{}".to_vec())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
    });
    (addr, log)
}

fn pull(addr: &str, creds: Option<(&str, &str)>) -> Result<vessel_oci::registry::Pulled, String> {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("images")).unwrap();
    let credentials = Credentials { file: dir.path().join("auth.json"), docker: None };
    if let Some((u, p)) = creds {
        credentials.store(addr, u, p).unwrap();
    }
    let reference: Reference = format!("{addr}/app:1").parse().unwrap();
    let opts = Options::default();
    let report: Reporter = Arc::new(|_: Event| {});
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client =
            Client::connect(addr, &opts, &credentials, &report).await.map_err(|e| e.to_string())?;
        let pulled =
            client.pull(&store, &reference, &opts, &report).await.map_err(|e| e.to_string())?;
        assert!(store.find(&reference.to_string()).is_ok());
        Ok(pulled)
    })
}

#[test]
fn bearer_tokens_from_the_challenge_realm() {
    let (addr, log) = serve(blobs());
    let pulled = pull(&addr, Some(("user", "pw"))).unwrap();
    assert_eq!(pulled.reference.tag(), Some("1"));
    let log = log.lock().unwrap().clone();
    assert!(log.iter().any(|l| l.starts_with("/token")), "{log:?}");
    // One token is fetched and reused for the manifest and both blobs.
    assert_eq!(log.iter().filter(|l| l.starts_with("/token")).count(), 1, "{log:?}");

    let err = pull(&addr, Some(("user", "wrong"))).unwrap_err();
    assert!(err.starts_with("authentication failed for"), "{err}");
    let err = pull(&addr, None).unwrap_err();
    assert!(err.starts_with("authentication failed for"), "{err}");
}
