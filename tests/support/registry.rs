//! A real OCI registry for tests: Debian's `docker-registry` (the CNCF
//! distribution registry) on a free port, its storage and log in a temp
//! folder; with TLS and htpasswd users when asked.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::nats_auth::Pki;
use crate::topology::free_port;

pub struct Registry {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    /// The CA that signed its certificate, when it serves TLS.
    pub pki: Option<Pki>,
}

/// A user the registry knows (htpasswd), and its password.
pub const USER: (&str, &str) = ("alice", "open-sesame");

impl Registry {
    /// Plain HTTP, anonymous: `cbs ... --insecure`.
    pub fn start() -> Self {
        Self::spawn(false)
    }

    /// TLS (a test CA: set SSL_CERT_FILE to [`Registry::ca_file`]) and basic
    /// authentication of [`USER`].
    pub fn with_tls_and_users() -> Self {
        Self::spawn(true)
    }

    fn spawn(secure: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let pki = secure.then(Pki::new);
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some(pki) = &pki {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                pki.path("server.pem"),
                pki.path("server-key.pem")
            ));
            let hash = bcrypt::hash(USER.1, 4).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{}:{hash}\n", USER.0)).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: cbs-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let file = dir.path().join("config.yml");
        std::fs::write(&file, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&file)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("docker-registry is not installed: run `make setup` (apt-get install docker-registry)");
        let registry = Self {
            child,
            port,
            dir,
            pki,
        };
        registry.wait_listening();
        registry
    }

    /// Waits until the registry accepts connections (polled, with a deadline).
    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {}: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(crate::POLL);
        }
    }

    /// `127.0.0.1:PORT`, or `localhost:PORT` under TLS (its certificate's name).
    pub fn host(&self) -> String {
        let name = if self.pki.is_some() {
            "localhost"
        } else {
            "127.0.0.1"
        };
        format!("{name}:{}", self.port)
    }

    /// `HOST/cells/NAME`.
    pub fn reference(&self, name: &str) -> String {
        format!("{}/cells/{name}", self.host())
    }

    pub fn ca_file(&self) -> String {
        self.pki.as_ref().expect("a TLS registry").path("ca.pem")
    }

    /// Everything the registry logged, access log included.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The file holding a blob in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A docker `config.json` in `dir` with basic credentials for `host`.
pub fn auth_file(dir: &Path, host: &str, user: (&str, &str)) -> PathBuf {
    let auth = data_encoding::BASE64.encode(format!("{}:{}", user.0, user.1).as_bytes());
    let path = dir.join("auth.json");
    std::fs::write(
        &path,
        serde_json::json!({"auths": {host: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    path
}
