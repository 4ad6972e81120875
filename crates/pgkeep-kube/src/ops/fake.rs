//! Recording fakes of [`Exec`] and [`LogStream`], for testing flows without a kubelet (used by
//! this crate's tests and by the binary's command tests).
//!
//! [`FakeExec`] records every call with its stdin and answers from a script; a
//! `pgkeep receive --size N --sha256 H DEST` command is decoded like the real receiver would:
//! it reads exactly N bytes, checks that no byte follows, checks the SHA-256, and "writes" the
//! file into [`FakeExec::files`] (exit 0) or fails like the receiver (exit 1, message on stderr).
//! [`FakeLogStream`] replays canned lines per pod and records which pods were followed; a pod
//! can be made to "hang" after its lines, to test that Ctrl-C stops following.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::OpsError;
use super::exec::{Exec, ExecOutput, ExecRequest, LogStream};

/// One recorded exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCall {
    pub request: ExecRequest,
    /// Everything read from stdin (`None` without stdin).
    pub stdin: Option<Vec<u8>>,
}

/// A recording [`Exec`].
#[derive(Debug, Default)]
pub struct FakeExec {
    pub calls: Mutex<Vec<ExecCall>>,
    /// Answers for commands other than `receive`, in order; when empty: exit 0, no output.
    pub script: Mutex<VecDeque<ExecOutput>>,
    /// Files received with `receive`: destination → bytes.
    pub files: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl FakeExec {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue the answer to the next non-`receive` command.
    pub fn answer(&self, out: ExecOutput) -> &Self {
        self.script.lock().unwrap().push_back(out);
        self
    }

    pub fn calls(&self) -> Vec<ExecCall> {
        self.calls.lock().unwrap().clone()
    }
}

fn failed(code: i32, stderr: &str) -> ExecOutput {
    ExecOutput {
        stdout: Vec::new(),
        stderr: stderr.as_bytes().to_vec(),
        exit_code: Some(code),
        message: format!("command terminated with non-zero exit code: exit status {code}"),
    }
}

/// The receiver's arguments, when `command` is `PROGRAM receive --size N --sha256 H DEST`.
pub fn parse_receive(command: &[String]) -> Option<(u64, String, String)> {
    match command {
        [_, receive, size_flag, size, sha_flag, sha, dest]
            if receive == "receive" && size_flag == "--size" && sha_flag == "--sha256" =>
        {
            Some((size.parse().ok()?, sha.clone(), dest.clone()))
        }
        _ => None,
    }
}

impl Exec for FakeExec {
    async fn exec(
        &self,
        req: &ExecRequest,
        stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
    ) -> Result<ExecOutput, OpsError> {
        if let Some((size, sha, dest)) = parse_receive(&req.command) {
            let Some(stdin) = stdin else {
                self.calls.lock().unwrap().push(ExecCall {
                    request: req.clone(),
                    stdin: None,
                });
                return Ok(failed(2, "receive: no data on stdin"));
            };
            // Like the receiver: exactly `size` bytes, never waiting for EOF...
            let mut data = Vec::new();
            let n = (&mut *stdin)
                .take(size)
                .read_to_end(&mut data)
                .await
                .map_err(|e| OpsError::Exec {
                    pod: req.pod.clone(),
                    command: req.command.join(" "),
                    message: e.to_string(),
                    hint: "fake exec: reading stdin failed".into(),
                })?;
            // ...but the fake also checks that the sender had nothing more to send.
            let mut extra = Vec::new();
            let _ = stdin.read_to_end(&mut extra).await;
            let mut recorded = data.clone();
            recorded.extend_from_slice(&extra);
            self.calls.lock().unwrap().push(ExecCall {
                request: req.clone(),
                stdin: Some(recorded),
            });
            if (n as u64) != size || !extra.is_empty() {
                return Ok(failed(
                    1,
                    &format!(
                        "receive: size mismatch: announced {size} bytes, got {}",
                        n + extra.len()
                    ),
                ));
            }
            let got = hex::encode(Sha256::digest(&data));
            if got != sha {
                return Ok(failed(
                    1,
                    &format!("receive: checksum mismatch: announced {sha}, got {got}"),
                ));
            }
            let msg = format!("received {size} bytes, sha256 {sha}, saved as {dest}\n");
            self.files.lock().unwrap().insert(dest, data);
            return Ok(ExecOutput {
                stdout: msg.into_bytes(),
                stderr: Vec::new(),
                exit_code: Some(0),
                message: String::new(),
            });
        }
        let stdin_bytes = match stdin {
            Some(r) => {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v).await;
                Some(v)
            }
            None => None,
        };
        self.calls.lock().unwrap().push(ExecCall {
            request: req.clone(),
            stdin: stdin_bytes,
        });
        Ok(self
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(ExecOutput {
                exit_code: Some(0),
                ..ExecOutput::default()
            }))
    }
}

/// A replaying [`LogStream`].
#[derive(Debug, Default)]
pub struct FakeLogStream {
    /// `pod/container` or `pod` → lines (the container-specific key wins).
    pub lines: Mutex<BTreeMap<String, Vec<String>>>,
    /// Pods that never end after their lines (a long-running Job).
    pub hang: Mutex<Vec<String>>,
    /// Pods followed, in order, with the container.
    pub followed: Mutex<Vec<(String, Option<String>)>>,
}

impl FakeLogStream {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_lines<I, S>(self, pod: &str, lines: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.lines
            .lock()
            .unwrap()
            .insert(pod.into(), lines.into_iter().map(Into::into).collect());
        self
    }

    /// After its lines, `pod`'s log never ends.
    pub fn hanging(self, pod: &str) -> Self {
        self.hang.lock().unwrap().push(pod.into());
        self
    }

    pub fn followed(&self) -> Vec<(String, Option<String>)> {
        self.followed.lock().unwrap().clone()
    }

    fn lines_of(&self, pod: &str, container: Option<&str>) -> Vec<String> {
        let map = self.lines.lock().unwrap();
        container
            .and_then(|c| map.get(&format!("{pod}/{c}")))
            .or_else(|| map.get(pod))
            .cloned()
            .unwrap_or_default()
    }
}

impl LogStream for FakeLogStream {
    async fn follow(
        &self,
        pod: &str,
        container: Option<&str>,
        on_line: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), OpsError> {
        self.followed
            .lock()
            .unwrap()
            .push((pod.into(), container.map(Into::into)));
        let lines = self.lines_of(pod, container);
        for l in &lines {
            on_line(l);
            tokio::task::yield_now().await;
        }
        if self.hang.lock().unwrap().iter().any(|p| p == pod) {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn tail(
        &self,
        pod: &str,
        container: Option<&str>,
        lines: i64,
    ) -> Result<Vec<String>, OpsError> {
        let all = self.lines_of(pod, container);
        let skip = all
            .len()
            .saturating_sub(usize::try_from(lines).unwrap_or(0));
        Ok(all.into_iter().skip(skip).collect())
    }
}
