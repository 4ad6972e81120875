//! Exec into pods and follow pod logs, behind two small traits so the flows can be tested
//! without a kubelet: [`Exec`] and [`LogStream`], implemented for the API by [`KubeExec`] and
//! [`KubeLogs`], and by recording fakes in `fake` (tests only).
//!
//! # Uploads on Kubernetes 1.20
//!
//! Exec over websocket on servers before 1.29 speaks `v4.channel.k8s.io`, which has no way to
//! close stdin alone: closing stdin closes the whole connection, and the command's output and
//! exit status are lost. So a command must never need stdin's EOF. [`upload_file`] therefore
//! hashes the file first and runs `pgkeep receive --size N --sha256 H DEST` in the pod: the
//! receiver reads exactly N bytes, checks the checksum, renames the file into place and exits;
//! [`KubeExec`] keeps stdin open until the exit status has arrived.
//!
//! The receiver's contract (what `pgkeep receive` in the pod must do; `fake::FakeExec`
//! checks the sender against the same rules): read exactly N bytes from stdin, never waiting
//! for EOF; write them to `DEST.partial` (0600) while hashing; on a short read or a checksum
//! mismatch remove the partial file, print the reason on stderr and exit 1; otherwise fsync,
//! rename to DEST, fsync the directory, print `received N bytes, sha256 H, saved as DEST` and
//! exit 0. The restore Job only runs after that exit 0.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, LogParams};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use super::error::{Op, classify, error_chain};
use super::{Cluster, OpsError};

/// A command to run in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub pod: String,
    /// `None`: the pod's default container.
    pub container: Option<String>,
    pub command: Vec<String>,
}

/// What a command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The exit code: 0 on success; `None` when the server did not say (e.g. killed).
    pub exit_code: Option<i32>,
    /// The server's status message for a failure ("command terminated with non-zero exit code").
    pub message: String,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }
}

/// Runs commands in pods.
pub trait Exec: Sync {
    /// Run `req.command`; with `stdin`, copy it to the command's stdin. Implementations must
    /// not close stdin before the command has exited (see the module docs). An error means
    /// the command could not be run or its status was lost; a command that ran and failed is
    /// `Ok` with a non-zero [`ExecOutput::exit_code`].
    fn exec(
        &self,
        req: &ExecRequest,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
    ) -> impl Future<Output = Result<ExecOutput, OpsError>> + Send;
}

/// Reads pod logs.
pub trait LogStream: Sync {
    /// Follow the logs of `pod` (`container`: `None` for the only/default one) from the start,
    /// calling `on_line` for each line as it arrives, until the container exits.
    fn follow(
        &self,
        pod: &str,
        container: Option<&str>,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> impl Future<Output = Result<(), OpsError>> + Send;

    /// The last `lines` lines of a container's log (e.g. an init container's).
    fn tail(
        &self,
        pod: &str,
        container: Option<&str>,
        lines: i64,
    ) -> impl Future<Output = Result<Vec<String>, OpsError>> + Send;
}

/// [`Exec`] through the API server (websocket exec).
#[derive(Debug, Clone)]
pub struct KubeExec {
    pub cluster: Cluster,
}

impl Exec for KubeExec {
    async fn exec(
        &self,
        req: &ExecRequest,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
    ) -> Result<ExecOutput, OpsError> {
        let api = self.cluster.api::<Pod>();
        let mut ap = AttachParams::default()
            .stdin(stdin.is_some())
            .stdout(true)
            .stderr(true);
        if let Some(c) = &req.container {
            ap = ap.container(c.clone());
        }
        let mut proc = api
            .exec(&req.pod, req.command.clone(), &ap)
            .await
            .map_err(|e| classify(e, &self.cluster, Op::new("create", "pods/exec", &req.pod)))?;
        let mut out = proc.stdout().expect("stdout requested");
        let mut err = proc.stderr().expect("stderr requested");
        let status = proc.take_status().expect("status taken once");
        // Keep the writer alive (not shut down) until the status arrived: on v4 closing stdin
        // closes the whole connection.
        let mut writer = proc.stdin();
        let feed = async {
            if let (Some(r), Some(w)) = (stdin, writer.as_mut()) {
                // A command that exits early closes its end: the copy then fails, and the
                // exit status says why.
                let _ = tokio::io::copy(r, w).await;
            }
        };
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let (_, r1, r2, status) = tokio::join!(
            feed,
            out.read_to_end(&mut stdout),
            err.read_to_end(&mut stderr),
            status
        );
        let command = req.command.join(" ");
        r1.and(r2).map_err(|e| OpsError::Exec {
            pod: req.pod.clone(),
            command: command.clone(),
            message: format!("reading its output failed: {e}"),
            hint: "retry; check the connection to the API server".into(),
        })?;
        drop(writer);
        let _ = proc.join().await;
        let Some(status) = status else {
            return Err(OpsError::Exec {
                pod: req.pod.clone(),
                command,
                message: "the connection ended without an exit status".into(),
                hint: "the container may have been restarted; check `kubectl describe pod`".into(),
            });
        };
        Ok(exec_output(stdout, stderr, &status))
    }
}

/// The exit code from an exec's final Status (`NonZeroExitCode` carries it as a cause).
fn exec_output(
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Status,
) -> ExecOutput {
    let success = status.status.as_deref() == Some("Success");
    let exit_code = if success {
        Some(0)
    } else {
        status
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
            .and_then(|c| c.message.as_deref())
            .and_then(|m| m.parse().ok())
    };
    ExecOutput {
        stdout,
        stderr,
        exit_code,
        message: if success {
            String::new()
        } else {
            status.message.clone().unwrap_or_default()
        },
    }
}

/// [`LogStream`] through the API server (`GET .../pods/NAME/log?follow=true`).
#[derive(Debug, Clone)]
pub struct KubeLogs {
    pub cluster: Cluster,
}

impl LogStream for KubeLogs {
    async fn follow(
        &self,
        pod: &str,
        container: Option<&str>,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), OpsError> {
        let lp = LogParams {
            follow: true,
            container: container.map(Into::into),
            ..LogParams::default()
        };
        let reader = self
            .cluster
            .api::<Pod>()
            .log_stream(pod, &lp)
            .await
            .map_err(|e| classify(e, &self.cluster, Op::new("get", "pods/log", pod)))?;
        let mut lines = reader.lines();
        while let Some(line) = lines.try_next().await.map_err(|e| OpsError::Logs {
            pod: pod.into(),
            message: error_chain(&e),
            hint: format!(
                "the Job keeps running; follow it with `kubectl -n {} logs -f {pod}`",
                self.cluster.namespace
            ),
        })? {
            on_line(&line);
        }
        Ok(())
    }

    async fn tail(
        &self,
        pod: &str,
        container: Option<&str>,
        lines: i64,
    ) -> Result<Vec<String>, OpsError> {
        let lp = LogParams {
            container: container.map(Into::into),
            tail_lines: Some(lines),
            ..LogParams::default()
        };
        let text = self
            .cluster
            .api::<Pod>()
            .logs(pod, &lp)
            .await
            .map_err(|e| classify(e, &self.cluster, Op::new("get", "pods/log", pod)))?;
        Ok(text.lines().map(str::to_string).collect())
    }
}

/// The phase of an upload, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadPhase {
    /// Reading the local file to compute its checksum.
    Hashing,
    /// Sending it to the pod.
    Sending,
}

/// Progress of [`upload_file`]: `done` of `total` bytes in `phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadProgress {
    pub phase: UploadPhase,
    pub done: u64,
    pub total: u64,
}

/// Where and how to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadRequest {
    pub pod: String,
    pub container: Option<String>,
    /// The receiving program in the pod (`pgkeep`).
    pub program: String,
    /// The destination path in the pod (e.g. `/backups/records_dump_20251102.tar.gz`).
    pub dest: String,
}

/// A finished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub dest: String,
    pub size: u64,
    pub sha256: String,
    /// What the receiver printed (its confirmation).
    pub receiver_output: String,
}

/// The command that receives an upload: `PROGRAM receive --size N --sha256 H DEST`.
pub fn receive_command(program: &str, size: u64, sha256: &str, dest: &str) -> Vec<String> {
    vec![
        program.to_string(),
        "receive".into(),
        "--size".into(),
        size.to_string(),
        "--sha256".into(),
        sha256.to_string(),
        dest.to_string(),
    ]
}

/// SHA-256 (hex) and size of a local file, reporting progress.
pub async fn hash_file(
    path: &Path,
    progress: &mut (dyn FnMut(UploadProgress) + Send),
) -> Result<(u64, String), OpsError> {
    let io = |source| OpsError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    let total = file.metadata().await.map_err(io)?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    progress(UploadProgress {
        phase: UploadPhase::Hashing,
        done,
        total,
    });
    loop {
        let n = file.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        progress(UploadProgress {
            phase: UploadPhase::Hashing,
            done,
            total,
        });
    }
    Ok((done, hex::encode(hasher.finalize())))
}

/// Stream `local` into the pod with `pgkeep receive --size N --sha256 H DEST` (see the module
/// docs). The size and checksum travel in the command line (neither is secret), the bytes on
/// stdin; the receiver verifies both before the file appears at DEST.
pub async fn upload_file<E: Exec>(
    exec: &E,
    local: &Path,
    req: &UploadRequest,
    progress: &mut (dyn FnMut(UploadProgress) + Send),
) -> Result<Uploaded, OpsError> {
    let (size, sha256) = hash_file(local, progress).await?;
    let file = tokio::fs::File::open(local)
        .await
        .map_err(|source| OpsError::Io {
            path: local.display().to_string(),
            source,
        })?;
    let mut reader = Counting {
        inner: file.take(size),
        done: 0,
        total: size,
        progress,
    };
    let command = receive_command(&req.program, size, &sha256, &req.dest);
    let er = ExecRequest {
        pod: req.pod.clone(),
        container: req.container.clone(),
        command,
    };
    let out = exec.exec(&er, Some(&mut reader)).await?;
    let fail = |message: String, hint: &str| OpsError::Upload {
        path: local.display().to_string(),
        pod: req.pod.clone(),
        dest: req.dest.clone(),
        message,
        hint: hint.into(),
    };
    if !out.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(fail(
            format!(
                "the receiver exited with {}: {}",
                out.exit_code
                    .map_or("no exit code".to_string(), |c| format!("code {c}")),
                stderr.trim().lines().last().unwrap_or(out.message.as_str())
            ),
            "nothing was restored; check the free space on the backups volume (`pgkeep space`) and retry",
        ));
    }
    if reader.done != size {
        return Err(fail(
            format!(
                "sent {} of {size} bytes (the file changed while uploading?)",
                reader.done
            ),
            "make sure nothing writes to the file, and retry",
        ));
    }
    Ok(Uploaded {
        dest: req.dest.clone(),
        size,
        sha256,
        receiver_output: String::from_utf8_lossy(&out.stdout).trim().to_string(),
    })
}

/// A reader that reports how many bytes went through it.
struct Counting<'a, R> {
    inner: R,
    done: u64,
    total: u64,
    progress: &'a mut (dyn FnMut(UploadProgress) + Send),
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = (buf.filled().len() - before) as u64;
            if n > 0 {
                self.done += n;
                let p = UploadProgress {
                    phase: UploadPhase::Sending,
                    done: self.done,
                    total: self.total,
                };
                (self.progress)(p);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};

    use super::exec_output;

    #[test]
    fn exit_codes_from_the_final_status() {
        let ok = Status {
            status: Some("Success".into()),
            ..Status::default()
        };
        assert_eq!(exec_output(vec![], vec![], &ok).exit_code, Some(0));
        let failed = Status {
            status: Some("Failure".into()),
            message: Some("command terminated with non-zero exit code: exit status 3".into()),
            reason: Some("NonZeroExitCode".into()),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".into()),
                    message: Some("3".into()),
                    field: None,
                }]),
                ..StatusDetails::default()
            }),
            ..Status::default()
        };
        let out = exec_output(vec![], b"boom".to_vec(), &failed);
        assert_eq!(out.exit_code, Some(3));
        assert!(!out.success());
        assert!(out.message.contains("exit status 3"));
        let killed = Status {
            status: Some("Failure".into()),
            message: Some("error executing command".into()),
            ..Status::default()
        };
        assert_eq!(exec_output(vec![], vec![], &killed).exit_code, None);
    }
}
