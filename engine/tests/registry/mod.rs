//! Debian's docker-registry (distribution 2.8) for the tests that pull:
//! started on a free port with its storage in a temporary directory, fed
//! with `skopeo copy`, killed when dropped.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use engine::image::Digest;

fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Registry {
    child: Child,
    dir: tempfile::TempDir,
    /// `ip:port`.
    pub domain: String,
}

impl Registry {
    /// Starts docker-registry on a free port of 127.0.0.1, plain HTTP.
    pub fn start() -> Self {
        Self::start_on("127.0.0.1", None)
    }

    /// Starts docker-registry on `ip`, with TLS when `tls` (cert, key) is given.
    pub fn start_on(ip: &str, tls: Option<(&Path, &Path)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port(ip);
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {ip}:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((cert, key)) = tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        let cfg = dir.path().join("config.yml");
        fs::write(&cfg, config).unwrap();
        let log = fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run docker-registry: {e} (scripts/setup.sh installs docker-registry)"
                )
            });
        let domain = format!("{ip}:{port}");
        let up = wait_until(Duration::from_secs(15), || {
            TcpStream::connect((ip, port)).is_ok()
        });
        let reg = Registry { child, dir, domain };
        assert!(
            up,
            "docker-registry did not listen on {}: {}",
            reg.domain,
            fs::read_to_string(reg.dir.path().join("log")).unwrap_or_default()
        );
        reg
    }

    /// `skopeo copy` of `src` (an `oci:` or other transport) to `name:tag`;
    /// returns the pushed manifest digest.
    pub fn push(&self, src: &str, name_tag: &str, extra: &[&str]) -> Digest {
        let digest_file = self.dir.path().join("digest");
        let out = Command::new("skopeo")
            .args(["copy", "-q", "--dest-tls-verify=false", "--digestfile"])
            .arg(&digest_file)
            .args(extra)
            .arg(src)
            .arg(format!("docker://{}/{name_tag}", self.domain))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        fs::read_to_string(digest_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// `http://ip:port` + `path`.
    #[allow(dead_code)]
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.domain)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
