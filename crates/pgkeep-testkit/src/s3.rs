//! A real S3 server for tests: `moto_server` (PyPI `moto[server]`) on a free loopback port,
//! started by [`S3Server::start`] with one bucket and killed on drop. The raw HTTP helpers read
//! and write objects as they are stored (no client library in between), so a test sees exactly
//! what an attacker holding the bucket would see. When `moto_server` is missing the constructor
//! panics with how to install it: tests never skip.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto S3 server with one bucket.
pub struct S3Server {
    host: String,
    child: Child,
    port: u16,
    bucket: String,
    log: tempfile::NamedTempFile,
}

/// `MOTO_SERVER` (a path), else `moto_server` on PATH.
fn moto_server() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER") {
        return p.into();
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("moto_server"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "moto_server (a local S3 server) is not installed; install it with \
             `python3 -m pip install 'moto[server]'` (or set MOTO_SERVER to its path). \
             .ci/run does this when it is missing."
        )
    })
}

impl S3Server {
    /// Start moto on 127.0.0.1 and create `bucket`.
    /// A port picked free can be taken by another test's server before moto binds it; moto
    /// then exits with "Address already in use" and the start is retried on a new port.
    pub fn start(bucket: &str) -> S3Server {
        for _ in 0..5 {
            if let Some(s) = Self::try_start("127.0.0.1", crate::free_port(), bucket) {
                return s;
            }
        }
        panic!("moto_server found its port taken five times in a row");
    }

    /// Start moto on `host:port` (e.g. kubebox's pod bridge address and one of its
    /// `KUBEBOX_HOST_PORTS`, so pods reach it) and create `bucket`.
    pub fn start_at(host: &str, port: u16, bucket: &str) -> S3Server {
        Self::try_start(host, port, bucket)
            .unwrap_or_else(|| panic!("moto_server: port {host}:{port} is in use"))
    }

    /// None when moto could not bind `port` (it is in use).
    fn try_start(host: &str, port: u16, bucket: &str) -> Option<S3Server> {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(moto_server())
            .args(["-H", host, "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.reopen().expect("log"))
            .stderr(log.reopen().expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("start moto_server: {e}"));
        let mut s = S3Server {
            child,
            host: host.to_owned(),
            port,
            bucket: bucket.to_owned(),
            log,
        };
        if !s.wait_ready() {
            return None;
        }
        let (status, body) = s.request("PUT", &format!("/{bucket}"), &[]);
        assert!(
            status == 200,
            "create bucket {bucket}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        );
        Some(s)
    }

    /// Wait until moto says it listens on our port: a connection alone could reach another
    /// process that holds the port (a test's PostgreSQL, another test's moto). False when moto
    /// exited because the port was in use.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        // werkzeug names the address, or for 0.0.0.0 each of the machine's: the port is ours.
        let listening = format!(":{} ", self.port);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                let log = self.log_text();
                if log.contains("Address already in use") || log.contains("is in use") {
                    return false;
                }
                panic!("moto_server exited ({st}) before it was ready:\n{log}");
            }
            if self
                .log_text()
                .lines()
                .any(|l| l.contains("Running on http") && format!("{l} ").contains(&listening))
                && TcpStream::connect((self.host.as_str(), self.port)).is_ok()
            {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on port {} within 60 s:\n{}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// `http://HOST:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Environment for a pgkeep process talking to this server (dummy credentials: moto
    /// accepts any).
    pub fn env(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            (
                "PGKEEP_OFFSITE_URL".into(),
                format!("s3://{}/{prefix}", self.bucket),
            ),
            ("PGKEEP_OFFSITE_ENDPOINT".into(), self.endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing-secret".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }

    /// One HTTP/1.1 request with a dummy signature (moto does not check them, but refuses
    /// anonymous object reads); (status, body).
    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut c = TcpStream::connect((self.host.as_str(), self.port)).expect("connect to moto");
        write!(
            c,
            "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nContent-Length: {}\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\n\
             Connection: close\r\n\r\n",
            self.host,
            self.port,
            body.len()
        )
        .expect("send");
        c.write_all(body).expect("send");
        let mut raw = Vec::new();
        c.read_to_end(&mut raw).expect("read response");
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP response");
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status");
        let mut body = raw[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        (status, body)
    }

    /// Every key in the bucket (of completed objects).
    pub fn keys(&self) -> Vec<String> {
        let (status, body) = self.request(
            "GET",
            &format!("/{}?list-type=2&max-keys=1000", self.bucket),
            &[],
        );
        assert_eq!(status, 200, "list: {}", String::from_utf8_lossy(&body));
        let text = String::from_utf8_lossy(&body);
        let mut keys: Vec<String> = text
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(|s| s.replace("&amp;", "&"))
            .collect();
        keys.sort();
        keys
    }

    /// Multipart uploads started and not completed or aborted.
    pub fn open_uploads(&self) -> usize {
        let (status, body) = self.request("GET", &format!("/{}?uploads", self.bucket), &[]);
        assert_eq!(
            status,
            200,
            "list uploads: {}",
            String::from_utf8_lossy(&body)
        );
        String::from_utf8_lossy(&body).matches("<UploadId>").count()
    }

    /// The stored bytes of `key`.
    pub fn get(&self, key: &str) -> Vec<u8> {
        let (status, body) = self.request("GET", &format!("/{}/{key}", self.bucket), &[]);
        assert_eq!(status, 200, "get {key}: {}", String::from_utf8_lossy(&body));
        body
    }

    /// Replace the stored bytes of `key` (to damage an object; user metadata is dropped).
    pub fn put(&self, key: &str, data: &[u8]) {
        let (status, body) = self.request("PUT", &format!("/{}/{key}", self.bucket), data);
        assert_eq!(status, 200, "put {key}: {}", String::from_utf8_lossy(&body));
    }

    /// Freeze (SIGSTOP) or thaw (SIGCONT) the server process.
    pub fn freeze(&self, frozen: bool) {
        let sig = if frozen {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig)
            .expect("signal moto_server");
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGCONT,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
