//! A real registry for tests: Debian's `docker-registry` on 127.0.0.1 with a free port,
//! its own config file and storage directory, started and stopped by the test. Optional
//! TLS (a CA and server certificate made with openssl) and basic auth (htpasswd).
//! Missing tools fail the test with the package to install.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub fn need(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} is missing: install {package} (scripts/deps does)");
}

pub fn sh(command: &mut Command) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub struct Registry {
    child: Child,
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// The CA that signed the server's certificate, with TLS.
    pub ca: Option<PathBuf>,
    pub auth: Option<(String, String)>,
}

pub struct Setup {
    pub tls: bool,
    pub auth: Option<(&'static str, &'static str)>,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::with(Setup { tls: false, auth: None })
    }

    pub fn with(setup: Setup) -> Registry {
        need("docker-registry", "docker-registry");
        let dir = tempfile::Builder::new().prefix("vessel-registry-").tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        let mut ca = None;
        if setup.tls {
            need("openssl", "openssl");
            let d = dir.path();
            let run = |args: &[&str]| sh(Command::new("openssl").current_dir(d).args(args));
            run(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=vessel test ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ]);
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ]);
            std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
                .unwrap();
            run(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.crt",
            ]);
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                d.join("server.crt").display(),
                d.join("server.key").display()
            ));
            ca = Some(d.join("ca.crt"));
        }
        if let Some((user, password)) = setup.auth {
            need("htpasswd", "apache2-utils");
            let htpasswd = dir.path().join("htpasswd");
            sh(Command::new("htpasswd").arg("-Bbc").arg(&htpasswd).arg(user).arg(password));
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: vessel-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start docker-registry");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            dir,
            addr,
            ca,
            auth: setup.auth.map(|(u, p)| (u.to_string(), p.to_string())),
        }
    }

    /// skopeo's flags to reach this registry.
    /// `side` is `Some("src")` or `Some("dest")` for `skopeo copy`, `None` for inspect.
    pub fn skopeo_flags(&self, side: Option<&str>) -> Vec<String> {
        let side = side.map(|s| format!("{s}-")).unwrap_or_default();
        let mut flags = Vec::new();
        match &self.ca {
            Some(ca) => {
                // skopeo wants a directory of certificates.
                let dir = ca.parent().unwrap().join("certs");
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::copy(ca, dir.join("ca.crt")).unwrap();
                flags.push(format!("--{side}cert-dir={}", dir.display()));
            }
            None => flags.push(format!("--{side}tls-verify=false")),
        }
        if let Some((u, p)) = &self.auth {
            flags.push(format!("--{side}creds={u}:{p}"));
        }
        flags
    }

    /// `skopeo copy SRC docker://ADDR/NAME` with extra flags (e.g. `--format v2s2`).
    pub fn push(&self, source: &str, name: &str, extra: &[&str]) {
        need("skopeo", "skopeo");
        sh(Command::new("skopeo")
            .arg("copy")
            .arg("--quiet")
            .args(self.skopeo_flags(Some("dest")))
            .args(extra)
            .arg(source)
            .arg(format!("docker://{}/{name}", self.addr)));
    }

    /// `skopeo inspect --raw docker://ADDR/NAME`, parsed.
    pub fn inspect_raw(&self, name: &str) -> serde_json::Value {
        let out = sh(Command::new("skopeo")
            .args(["inspect", "--raw"])
            .args(self.skopeo_flags(None))
            .arg(format!("docker://{}/{name}", self.addr)));
        serde_json::from_str(&out).unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The busybox test images (OCI archives for amd64 and arm64), built with
/// tests/images/busybox and cached in $VESSEL_CACHE/test-images (default
/// /var/cache/vessel), keyed by the script and the busybox binary.
pub fn busybox() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        need("busybox", "busybox-static");
        let script = repo().join("tests/images/busybox");
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::fs::read(&script).unwrap().hash(&mut hasher);
        std::fs::read("/bin/busybox").unwrap_or_default().hash(&mut hasher);
        let cache = std::env::var_os("VESSEL_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/vessel"))
            .join("test-images");
        let dir = cache.join(format!("busybox-{:016x}", hasher.finish()));
        if !dir.join("busybox-arm64.tar").is_file() {
            std::fs::create_dir_all(&cache).unwrap();
            let tmp = tempfile::Builder::new().prefix(".busybox-").tempdir_in(&cache).unwrap();
            sh(Command::new(&script).arg(tmp.path()));
            // Another test binary may have won the race: either copy is fine.
            let kept = tmp.keep();
            if std::fs::rename(&kept, &dir).is_err() {
                let _ = std::fs::remove_dir_all(&kept);
            }
        }
        dir
    })
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A tiny HTTP server that answers `/v2/` and serves one fixed manifest for any
/// `/v2/…/manifests/…`, whatever it holds (docker-registry refuses to serve bad ones).
pub struct FakeRegistry {
    pub addr: String,
}

impl FakeRegistry {
    pub fn serving(manifest: Vec<u8>, content_type: &'static str) -> FakeRegistry {
        use std::io::{BufRead, BufReader, Write};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                let (status, body, kind): (&str, &[u8], &str) = if path == "/v2/" {
                    ("200 OK", b"{}", "application/json")
                } else if path.contains("/manifests/") {
                    ("200 OK", &manifest, content_type)
                } else {
                    (
                        "404 Not Found",
                        b"{\"errors\":[{\"code\":\"BLOB_UNKNOWN\",\"message\":\"no\"}]}",
                        "application/json",
                    )
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(body);
            }
        });
        FakeRegistry { addr }
    }
}
