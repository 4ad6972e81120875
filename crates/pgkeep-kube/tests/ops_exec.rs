//! Exec, logs and uploads: the upload protocol (`pgkeep receive --size N --sha256 H DEST`,
//! size and checksum before the bytes, stdin never closed early) checked through the recording
//! fake, receiver failures, and the kube implementations' requests through the verifier.

mod ops_support;

use std::io::Write;
use std::sync::Mutex;

use ops_support::*;
use pgkeep_kube::ops::OpsError;
use pgkeep_kube::ops::exec::{
    Exec, ExecOutput, ExecRequest, KubeExec, KubeLogs, LogStream, UploadPhase, UploadProgress,
    UploadRequest, receive_command, upload_file,
};
use pgkeep_kube::ops::fake::{FakeExec, FakeLogStream, parse_receive};
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;

fn upload_request() -> UploadRequest {
    UploadRequest {
        pod: "backups-loader".into(),
        container: Some("loader".into()),
        program: "pgkeep".into(),
        dest: "/backups/records_dump_20251102.tar.gz".into(),
    }
}

fn temp_file(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&data).unwrap();
    f.flush().unwrap();
    (f, data)
}

#[tokio::test]
async fn upload_announces_size_and_checksum_then_sends_exactly_the_file() {
    let (file, data) = temp_file(3 * (1 << 20) + 17);
    let fake = FakeExec::new();
    let mut events: Vec<UploadProgress> = Vec::new();
    let uploaded = upload_file(&fake, file.path(), &upload_request(), &mut |p| {
        events.push(p)
    })
    .await
    .unwrap();

    let sha = hex::encode(Sha256::digest(&data));
    assert_eq!(uploaded.size, data.len() as u64);
    assert_eq!(uploaded.sha256, sha);
    assert!(
        uploaded
            .receiver_output
            .starts_with("received 3145745 bytes"),
        "{}",
        uploaded.receiver_output
    );

    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].request.pod, "backups-loader");
    assert_eq!(calls[0].request.container.as_deref(), Some("loader"));
    assert_eq!(
        calls[0].request.command,
        [
            "pgkeep",
            "receive",
            "--size",
            "3145745",
            "--sha256",
            sha.as_str(),
            "/backups/records_dump_20251102.tar.gz"
        ]
    );
    // The fake decoded the stream like the receiver: exactly the file, nothing after it.
    assert_eq!(calls[0].stdin.as_deref(), Some(data.as_slice()));
    assert_eq!(
        fake.files
            .lock()
            .unwrap()
            .get("/backups/records_dump_20251102.tar.gz"),
        Some(&data)
    );

    // Progress: hashing then sending, each monotonic up to the total.
    let total = data.len() as u64;
    let hashing: Vec<u64> = events
        .iter()
        .filter(|e| e.phase == UploadPhase::Hashing)
        .map(|e| e.done)
        .collect();
    let sending: Vec<u64> = events
        .iter()
        .filter(|e| e.phase == UploadPhase::Sending)
        .map(|e| e.done)
        .collect();
    assert!(events.iter().all(|e| e.total == total));
    assert_eq!(hashing.first(), Some(&0));
    assert_eq!(hashing.last(), Some(&total));
    assert_eq!(sending.last(), Some(&total));
    assert!(hashing.windows(2).all(|w| w[0] <= w[1]) && sending.windows(2).all(|w| w[0] < w[1]));
    let first_send = events
        .iter()
        .position(|e| e.phase == UploadPhase::Sending)
        .unwrap();
    assert!(
        events[..first_send]
            .iter()
            .all(|e| e.phase == UploadPhase::Hashing)
    );
}

#[tokio::test]
async fn an_empty_file_uploads_too() {
    let (file, _) = temp_file(0);
    let fake = FakeExec::new();
    let up = upload_file(&fake, file.path(), &upload_request(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(up.size, 0);
    assert_eq!(up.sha256, hex::encode(Sha256::digest(b"")));
    assert_eq!(fake.calls()[0].stdin.as_deref(), Some(&[][..]));
}

/// A receiver that fails like a full volume.
struct FullDisk(Mutex<Vec<ExecRequest>>);

impl Exec for FullDisk {
    async fn exec(
        &self,
        req: &ExecRequest,
        _stdin: Option<&mut (dyn AsyncRead + Unpin + Send)>,
    ) -> Result<ExecOutput, OpsError> {
        self.0.lock().unwrap().push(req.clone());
        Ok(ExecOutput {
            stdout: vec![],
            stderr: b"receive: writing /backups/x.partial\nreceive: No space left on device (os error 28)\n".to_vec(),
            exit_code: Some(1),
            message: "command terminated with non-zero exit code: exit status 1".into(),
        })
    }
}

#[tokio::test]
async fn a_failing_receiver_is_an_upload_error_with_its_message() {
    let (file, _) = temp_file(1000);
    let exec = FullDisk(Mutex::new(Vec::new()));
    let err = upload_file(&exec, file.path(), &upload_request(), &mut |_| {})
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with(&format!(
        "upload of {} to pod backups-loader:/backups/records_dump_20251102.tar.gz failed: the receiver exited with code 1: receive: No space left on device (os error 28)\nhint: ",
        file.path().display()
    )), "{text}");
    assert_eq!(exec.0.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_missing_local_file_is_named_and_nothing_is_executed() {
    let fake = FakeExec::new();
    let err = upload_file(
        &fake,
        std::path::Path::new("/nonexistent/dump.tar.gz"),
        &upload_request(),
        &mut |_| {},
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("could not read /nonexistent/dump.tar.gz: "),
        "{err}"
    );
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn the_fake_receiver_checks_size_checksum_and_trailing_bytes() {
    let data = b"hello world".to_vec();
    let sha = hex::encode(Sha256::digest(&data));
    let fake = FakeExec::new();
    let req = |size: u64, sha: &str| ExecRequest {
        pod: "p".into(),
        container: None,
        command: receive_command("pgkeep", size, sha, "/backups/f"),
    };
    // Right size and checksum.
    let out = fake
        .exec(&req(11, &sha), Some(&mut &data[..]))
        .await
        .unwrap();
    assert!(out.success(), "{out:?}");
    // Wrong checksum.
    let out = fake
        .exec(&req(11, &"0".repeat(64)), Some(&mut &data[..]))
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("checksum mismatch"));
    // Fewer bytes than announced, and more.
    let out = fake
        .exec(&req(12, &sha), Some(&mut &data[..]))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("size mismatch: announced 12 bytes, got 11")
    );
    let out = fake
        .exec(&req(5, &sha), Some(&mut &data[..]))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("size mismatch: announced 5 bytes, got 11")
    );
    assert_eq!(fake.files.lock().unwrap().len(), 1);
    assert_eq!(
        parse_receive(&receive_command("pgkeep", 5, "ab", "/d")),
        Some((5, "ab".into(), "/d".into()))
    );
    assert_eq!(parse_receive(&["pgkeep".into(), "sanity".into()]), None);
}

#[tokio::test]
async fn the_fake_exec_answers_other_commands_from_its_script() {
    let fake = FakeExec::new();
    fake.answer(ExecOutput {
        stdout: b"{\"ok\":true}".to_vec(),
        exit_code: Some(0),
        ..ExecOutput::default()
    });
    let req = ExecRequest {
        pod: "postgres-abc".into(),
        container: Some("db".into()),
        command: vec!["pgkeep".into(), "sanity".into(), "--json".into()],
    };
    let out = fake.exec(&req, None).await.unwrap();
    assert_eq!(out.stdout, b"{\"ok\":true}");
    assert_eq!(fake.calls()[0].stdin, None);
    assert_eq!(fake.calls()[0].request, req);
}

#[tokio::test]
async fn kube_exec_sends_the_command_and_names_a_forbidden_exec() {
    let err = run(
        |c| async move {
            let exec = KubeExec { cluster: c };
            let req = ExecRequest {
                pod: "backups-loader".into(),
                container: Some("loader".into()),
                command: receive_command("pgkeep", 11, "abc", "/backups/f"),
            };
            exec.exec(&req, Some(&mut &b"hello world"[..])).await
        },
        |mut h| async move {
            let x = expect(
                &mut h,
                "GET",
                "/api/v1/namespaces/record-platform/pods/backups-loader/exec",
            )
            .await;
            let commands: Vec<&str> = x
                .raw_query
                .split('&')
                .filter_map(|p| p.strip_prefix("command="))
                .collect();
            assert_eq!(
                commands,
                [
                    "pgkeep",
                    "receive",
                    "--size",
                    "11",
                    "--sha256",
                    "abc",
                    "%2Fbackups%2Ff"
                ]
            );
            x.assert_query("container", "loader")
                .assert_query("stdin", "true")
                .assert_query("stdout", "true")
                .assert_query("stderr", "true");
            assert_eq!(x.headers.get("upgrade").unwrap(), "websocket");
            let protocols = x
                .headers
                .get("sec-websocket-protocol")
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            assert!(protocols.contains("v4.channel.k8s.io"), "{protocols}");
            x.forbidden("create", "pods/exec", "backups-loader");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("forbidden: cannot create pods/exec in namespace record-platform\nhint: "),
        "{err}"
    );
}

#[tokio::test]
async fn kube_logs_follow_streams_lines_and_tail_asks_for_n_lines() {
    let (lines, tail) = run(
        |c| async move {
            let logs = KubeLogs { cluster: c };
            let mut lines = Vec::new();
            logs.follow("restore-1", Some("restore"), &mut |l| {
                lines.push(l.to_string())
            })
            .await
            .unwrap();
            let tail = logs
                .tail("postgres-abc", Some("prep-dirs"), 100)
                .await
                .unwrap();
            (lines, tail)
        },
        |mut h| async move {
            let x = expect(
                &mut h,
                "GET",
                "/api/v1/namespaces/record-platform/pods/restore-1/log",
            )
            .await;
            x.assert_query_is(&[("follow", "true"), ("container", "restore")]);
            x.send_text("BEFORE\n/var/lib/postgresql/data\nAFTER");
            let x = expect(
                &mut h,
                "GET",
                "/api/v1/namespaces/record-platform/pods/postgres-abc/log",
            )
            .await;
            x.assert_query_is(&[("tailLines", "100"), ("container", "prep-dirs")]);
            x.send_text("mkdir -p /var/lib/postgresql/data\nchmod 0700\n");
            done(&mut h).await;
        },
    )
    .await;
    assert_eq!(lines, ["BEFORE", "/var/lib/postgresql/data", "AFTER"]);
    assert_eq!(tail, ["mkdir -p /var/lib/postgresql/data", "chmod 0700"]);
}

#[tokio::test]
async fn kube_logs_of_a_missing_pod_is_not_found() {
    let err = run(
        |c| async move {
            KubeLogs { cluster: c }
                .follow("gone", None, &mut |_| {})
                .await
        },
        |mut h| async move {
            expect(
                &mut h,
                "GET",
                "/api/v1/namespaces/record-platform/pods/gone/log",
            )
            .await
            .not_found("pods", "gone");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("pods/log gone not found in namespace record-platform"),
        "{err}"
    );
}

#[tokio::test]
async fn fake_log_stream_replays_and_tails() {
    let logs = FakeLogStream::new().with_lines("p", ["a", "b", "c"]);
    let mut got = Vec::new();
    logs.follow("p", Some("c1"), &mut |l| got.push(l.to_string()))
        .await
        .unwrap();
    assert_eq!(got, ["a", "b", "c"]);
    assert_eq!(logs.tail("p", None, 2).await.unwrap(), ["b", "c"]);
    assert_eq!(logs.followed(), [("p".to_string(), Some("c1".to_string()))]);
}
