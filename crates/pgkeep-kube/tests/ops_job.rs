//! The Job runner: unique name, pod wait, log streaming into a sink, the Job's result; failures
//! carry the last 50 lines and events; Ctrl-C (the `stop` future) detaches without deleting
//! the Job. Plus Jobs from CronJob templates (batch/v1 and batch/v1beta1).

mod ops_support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use ops_support::*;
use pgkeep_kube::ops::fake::FakeLogStream;
use pgkeep_kube::ops::job::{
    JobOutcome, JobRunOptions, fetch_cronjob, job_from_cronjob, run_job, unique_name,
};
use pgkeep_kube::ops::{OpsError, Wait};
use serde_json::{Value, json};

const JOBS: &str = "/apis/batch/v1/namespaces/record-platform/jobs";
const PODS: &str = "/api/v1/namespaces/record-platform/pods";

fn job(prefix: &str) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": prefix, "labels": { "app": "postgres" } },
        "spec": { "backoffLimit": 0, "template": { "spec": { "restartPolicy": "Never",
            "containers": [ { "name": "restore", "image": "pgkeep:test", "args": ["restore", "dump"] } ] } } }
    }))
    .unwrap()
}

fn opts() -> JobRunOptions {
    JobRunOptions {
        wait: Wait::new(Duration::from_secs(6), Duration::from_secs(2)),
        ..JobRunOptions::default()
    }
}

fn job_status(name: &str, condition: Option<(&str, &str, &str)>) -> Value {
    let mut j = json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": name, "namespace": NS },
                        "spec": { "template": { "spec": { "containers": [] } } }, "status": { "active": 1 } });
    if let Some((ty, reason, message)) = condition {
        j["status"] = json!({ "conditions": [ { "type": ty, "status": "True", "reason": reason, "message": message } ] });
    }
    j
}

/// Expect the Job's creation; returns its generated name.
async fn expect_create(h: &mut Handle, prefix: &str) -> String {
    let x = expect(h, "POST", JOBS).await;
    x.assert_query_is(&[]);
    let name = x.body["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with(&format!("{prefix}-")), "{name}");
    assert!(name.len() <= 63);
    assert_eq!(x.body["metadata"]["namespace"], NS);
    assert_eq!(
        x.body["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["restore", "dump"])
    );
    // Finished one-off Jobs are removed by the TTL controller after a week.
    assert_eq!(x.body["spec"]["ttlSecondsAfterFinished"], 604_800);
    let body = x.body.clone();
    x.created(body);
    name
}

async fn expect_pods(h: &mut Handle, job: &str, pods: Vec<Value>) {
    let x = expect(h, "GET", PODS).await;
    x.assert_query("labelSelector", &format!("job-name={job}"));
    x.ok(list("PodList", pods));
}

async fn expect_job(h: &mut Handle, job: &str, condition: Option<(&str, &str, &str)>) {
    expect(h, "GET", &format!("{JOBS}/{job}"))
        .await
        .ok(job_status(job, condition));
}

#[tokio::test(start_paused = true)]
async fn successful_job_streams_its_log_and_completes() {
    let logs = FakeLogStream::new().with_lines(
        "restore-1",
        ["restoring globals.sql", "pg_restore -j 2", "ANALYZE done"],
    );
    let (outcome, sink, logs) = run(
        |c| async move {
            let mut sink = Vec::new();
            let r = run_job(
                &c,
                job("pgkeep-restore-dump"),
                &logs,
                &mut sink,
                std::future::pending(),
                &opts(),
            )
            .await;
            (r, sink, logs)
        },
        |mut h| async move {
            let name = expect_create(&mut h, "pgkeep-restore-dump").await;
            let labels = json!({ "job-name": name });
            expect_pods(
                &mut h,
                &name,
                vec![pod("restore-1", labels.clone(), "Pending", false)],
            )
            .await;
            expect_job(&mut h, &name, None).await;
            expect_pods(
                &mut h,
                &name,
                vec![pod("restore-1", labels, "Running", true)],
            )
            .await;
            expect_job(&mut h, &name, Some(("Complete", "", ""))).await;
            done(&mut h).await;
        },
    )
    .await;
    let outcome = outcome.unwrap();
    let JobOutcome::Succeeded { job, pods, .. } = &outcome else {
        panic!("{outcome:?}")
    };
    assert!(job.starts_with("pgkeep-restore-dump-"));
    assert_eq!(pods, &["restore-1"]);
    assert_eq!(
        String::from_utf8(sink).unwrap(),
        "restoring globals.sql\npg_restore -j 2\nANALYZE done\n"
    );
    assert_eq!(logs.followed(), [("restore-1".to_string(), None)]);
}

#[tokio::test(start_paused = true)]
async fn failed_job_returns_its_last_50_lines_and_events() {
    let lines: Vec<String> = (1..=80).map(|i| format!("line {i}")).collect();
    let logs = FakeLogStream::new().with_lines("restore-1", lines);
    let (outcome, sink) = run(
        |c| async move {
            let mut sink = Vec::new();
            let r = run_job(
                &c,
                job("pgkeep-restore-dump"),
                &logs,
                &mut sink,
                std::future::pending(),
                &opts(),
            )
            .await;
            (r, sink)
        },
        |mut h| async move {
            let name = expect_create(&mut h, "pgkeep-restore-dump").await;
            expect_pods(
                &mut h,
                &name,
                vec![pod(
                    "restore-1",
                    json!({ "job-name": name }),
                    "Failed",
                    false,
                )],
            )
            .await;
            expect_job(
                &mut h,
                &name,
                Some((
                    "Failed",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )),
            )
            .await;
            expect_events(
                &mut h,
                "Pod",
                "restore-1",
                vec![event(
                    "Pod",
                    "restore-1",
                    "Normal",
                    "Started",
                    "Started container restore",
                )],
            )
            .await;
            expect_events(
                &mut h,
                "Job",
                &name,
                vec![event(
                    "Job",
                    &name,
                    "Warning",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )],
            )
            .await;
            done(&mut h).await;
        },
    )
    .await;
    // Every line was streamed as it came.
    assert_eq!(String::from_utf8(sink).unwrap().lines().count(), 80);
    let err = outcome.unwrap_err();
    let OpsError::JobFailed(f) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(f.last_lines.len(), 50);
    assert_eq!(f.last_lines.first().unwrap(), "line 31");
    assert_eq!(f.last_lines.last().unwrap(), "line 80");
    assert_eq!(f.pod.as_deref(), Some("restore-1"));
    assert_eq!(f.events.len(), 2);
    let text = err.to_string();
    assert!(text.contains("failed: BackoffLimitExceeded: Job has reached the specified backoff limit (pod restore-1)"), "{text}");
    assert!(
        text.contains("--- last 50 log lines ---\nline 31\n"),
        "{text}"
    );
    assert!(!text.contains("line 30\n"), "{text}");
    assert!(
        text.contains("Warning BackoffLimitExceeded job/pgkeep-restore-dump-"),
        "{text}"
    );
    assert!(
        text.contains("\nhint: the Job is kept for inspection"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_pod_that_never_starts_times_out_with_its_events() {
    let logs = FakeLogStream::new();
    let outcome = run(
        |c| async move {
            let mut sink = Vec::new();
            run_job(
                &c,
                job("pgkeep-wipe"),
                &logs,
                &mut sink,
                std::future::pending(),
                &opts(),
            )
            .await
        },
        |mut h| async move {
            let name = expect_create(&mut h, "pgkeep-wipe").await;
            let mut pending = pod("wipe-1", json!({ "job-name": name }), "Pending", false);
            pending["status"]["conditions"] =
                json!([{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable" }]);
            // t = 0, 2, 4, 6 s.
            for _ in 0..4 {
                expect_pods(&mut h, &name, vec![pending.clone()]).await;
                expect_job(&mut h, &name, None).await;
            }
            expect_events(
                &mut h,
                "Pod",
                "wipe-1",
                vec![event(
                    "Pod",
                    "wipe-1",
                    "Warning",
                    "FailedScheduling",
                    "0/1 nodes are available: 1 node(s) had volume node affinity conflict.",
                )],
            )
            .await;
            expect_events(&mut h, "Job", &name, vec![]).await;
            done(&mut h).await;
        },
    )
    .await;
    let err = outcome.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("timed out after 6s waiting for job pgkeep-wipe-"),
        "{text}"
    );
    assert!(
        text.contains("pod wipe-1: Pending, PodScheduled=False Unschedulable"),
        "{text}"
    );
    assert!(
        text.contains("Warning FailedScheduling pod/wipe-1 (x3): 0/1 nodes are available"),
        "{text}"
    );
    assert!(text.contains("hint: the Job is left in place"), "{text}");
}

#[tokio::test(start_paused = true)]
async fn stop_detaches_and_leaves_the_job_running() {
    let logs = FakeLogStream::new()
        .with_lines("restore-1", ["step 1"])
        .hanging("restore-1");
    let (outcome, sink) = run(
        |c| async move {
            let mut sink = Vec::new();
            // Ctrl-C after 30 s of following.
            let stop = tokio::time::sleep(Duration::from_secs(30));
            let r = run_job(
                &c,
                job("pgkeep-restore-dump"),
                &logs,
                &mut sink,
                stop,
                &opts(),
            )
            .await;
            (r, sink)
        },
        |mut h| async move {
            let name = expect_create(&mut h, "pgkeep-restore-dump").await;
            expect_pods(
                &mut h,
                &name,
                vec![pod(
                    "restore-1",
                    json!({ "job-name": name }),
                    "Running",
                    true,
                )],
            )
            .await;
            // No DELETE of the Job, nothing else.
            done(&mut h).await;
        },
    )
    .await;
    let outcome = outcome.unwrap();
    assert!(
        matches!(outcome, JobOutcome::Detached { .. }),
        "{outcome:?}"
    );
    assert_eq!(String::from_utf8(sink).unwrap(), "step 1\n");
    let text = outcome.to_string();
    assert!(
        text.contains("the Job keeps running in the cluster"),
        "{text}"
    );
    assert!(
        text.contains(&format!("kubectl -n {NS} logs -f job/{}", outcome.job())),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_running_pod_whose_log_stream_ended_does_not_time_out() {
    // The stream ends at once although the pod keeps running (a proxy cut it).
    let logs = FakeLogStream::new().with_lines("restore-1", ["step 1"]);
    let outcome = run(
        |c| async move {
            let mut sink = Vec::new();
            run_job(
                &c,
                job("pgkeep-restore-dump"),
                &logs,
                &mut sink,
                std::future::pending(),
                &opts(),
            )
            .await
        },
        |mut h| async move {
            let name = expect_create(&mut h, "pgkeep-restore-dump").await;
            let running = pod("restore-1", json!({ "job-name": name }), "Running", true);
            // t = 0 .. 10 s: longer than the 6 s wait, but the pod is running.
            for _ in 0..6 {
                expect_pods(&mut h, &name, vec![running.clone()]).await;
                expect_job(&mut h, &name, None).await;
            }
            expect_pods(
                &mut h,
                &name,
                vec![pod(
                    "restore-1",
                    json!({ "job-name": name }),
                    "Succeeded",
                    false,
                )],
            )
            .await;
            expect_job(&mut h, &name, Some(("Complete", "", ""))).await;
            done(&mut h).await;
        },
    )
    .await;
    assert!(
        matches!(outcome, Ok(JobOutcome::Succeeded { .. })),
        "{outcome:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn forbidden_job_creation_is_named() {
    let logs = FakeLogStream::new();
    let err = run(
        |c| async move {
            let mut sink = Vec::new();
            run_job(
                &c,
                job("pgkeep-wipe"),
                &logs,
                &mut sink,
                std::future::pending(),
                &opts(),
            )
            .await
        },
        |mut h| async move {
            expect(&mut h, "POST", JOBS)
                .await
                .forbidden("create", "jobs", "x");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("forbidden: cannot create jobs in namespace record-platform\nhint: "),
        "{err}"
    );
}

fn cronjob(api_version: &str) -> Value {
    json!({
        "apiVersion": api_version, "kind": "CronJob",
        "metadata": { "name": "pgkeep-backup-logical", "namespace": NS, "uid": "cj-uid-1" },
        "spec": { "schedule": "0 10 * * *",
            "jobTemplate": {
                "metadata": { "labels": { "app": "postgres", "pgkeep/job": "backup-logical" },
                              "annotations": { "pgkeep/kind": "logical" } },
                "spec": { "backoffLimit": 1, "template": { "spec": { "restartPolicy": "Never",
                    "containers": [ { "name": "backup", "image": "pgkeep:test", "args": ["backup", "logical"] } ] } } } } }
    })
}

#[test]
fn job_from_cronjob_like_kubectl_create_job_from() {
    for api_version in ["batch/v1", "batch/v1beta1"] {
        let job = job_from_cronjob(&cronjob(api_version), "pgkeep-backup-logical-manual").unwrap();
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["apiVersion"], "batch/v1");
        assert_eq!(v["kind"], "Job");
        assert_eq!(v["metadata"]["name"], "pgkeep-backup-logical-manual");
        assert_eq!(v["metadata"]["namespace"], NS);
        assert_eq!(
            v["metadata"]["labels"],
            json!({ "app": "postgres", "pgkeep/job": "backup-logical" })
        );
        assert_eq!(
            v["metadata"]["annotations"],
            json!({ "pgkeep/kind": "logical", "cronjob.kubernetes.io/instantiate": "manual" })
        );
        assert_eq!(
            v["metadata"]["ownerReferences"],
            json!([{ "apiVersion": api_version, "kind": "CronJob", "name": "pgkeep-backup-logical",
                     "uid": "cj-uid-1", "controller": true, "blockOwnerDeletion": true }])
        );
        assert_eq!(
            v["spec"],
            cronjob(api_version)["spec"]["jobTemplate"]["spec"]
        );
    }
    // A rendered CronJob (no uid yet) gives a Job without owner.
    let mut rendered = cronjob("batch/v1");
    rendered["metadata"].as_object_mut().unwrap().remove("uid");
    let job = job_from_cronjob(&rendered, "x").unwrap();
    assert!(job.metadata.owner_references.is_none());
    // Not a CronJob.
    let err = job_from_cronjob(
        &json!({ "apiVersion": "batch/v1", "kind": "Job", "metadata": { "name": "j" } }),
        "x",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("expected a batch/v1 or batch/v1beta1 CronJob, got batch/v1 Job j"),
        "{err}"
    );
}

#[tokio::test]
async fn fetch_cronjob_falls_back_to_v1beta1() {
    let cj = run(
        |c| async move { fetch_cronjob(&c, "pgkeep-backup-logical").await },
        |mut h| async move {
            expect(
                &mut h,
                "GET",
                "/apis/batch/v1/namespaces/record-platform/cronjobs/pgkeep-backup-logical",
            )
            .await
            .reply(404, json!("404 page not found"));
            expect(
                &mut h,
                "GET",
                "/apis/batch/v1beta1/namespaces/record-platform/cronjobs/pgkeep-backup-logical",
            )
            .await
            .ok(cronjob("batch/v1beta1"));
            done(&mut h).await;
        },
    )
    .await
    .unwrap();
    assert_eq!(cj["apiVersion"], "batch/v1beta1");
    let job = job_from_cronjob(&cj, "pgkeep-backup-logical").unwrap();
    assert_eq!(
        job.metadata.owner_references.unwrap()[0].api_version,
        "batch/v1beta1"
    );
}

#[tokio::test]
async fn fetch_cronjob_missing_everywhere_says_to_deploy() {
    let err = run(
        |c| async move { fetch_cronjob(&c, "pgkeep-backup-logical").await },
        |mut h| async move {
            expect(
                &mut h,
                "GET",
                "/apis/batch/v1/namespaces/record-platform/cronjobs/pgkeep-backup-logical",
            )
            .await
            .not_found("cronjobs.batch", "pgkeep-backup-logical");
            expect(
                &mut h,
                "GET",
                "/apis/batch/v1beta1/namespaces/record-platform/cronjobs/pgkeep-backup-logical",
            )
            .await
            .not_found("cronjobs.batch", "pgkeep-backup-logical");
            done(&mut h).await;
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("hint: `pgkeep deploy` creates the backup CronJobs"),
        "{err}"
    );
}

#[test]
fn unique_names_fit_a_label_and_differ() {
    let a = unique_name("pgkeep-restore-dump");
    let b = unique_name("pgkeep-restore-dump");
    assert!(
        a.starts_with("pgkeep-restore-dump-") && a.len() <= 63,
        "{a}"
    );
    let suffix = a.rsplit('-').next().unwrap();
    assert!(
        suffix
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()),
        "{a}"
    );
    assert!(suffix.len() >= 8, "{a}");
    assert_ne!(a, b);
    let long = unique_name(&"x".repeat(100));
    assert_eq!(long.len(), 63, "{long}");
}
