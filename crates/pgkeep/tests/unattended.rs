//! Unattended operation against a real PostgreSQL archiving through `pgkeep wal push`: every
//! backup and drill leaves a result record (successful or not); `pgkeep metrics` reports them,
//! the archiver and the volumes (parsed here, value by value), also when the server is down;
//! `pgkeep status` exits 0 when healthy and 1 with the reasons when not.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use pgkeep_testkit::{TempCluster, archiving_cluster, output_text, pgkeep_bin, pgkeep_output};

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn records(c: &TempCluster) -> Vec<serde_json::Value> {
    let dir = c.backups().join("results");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut recs: Vec<serde_json::Value> = names
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    // In the order they finished, as the engine reads them: two runs in one second have names
    // (`…Z.json`, `…Z-2.json`) whose byte order is not their order.
    recs.sort_by_key(|r| {
        r["stop"]
            .as_str()
            .map(|t| t.parse::<jiff::Timestamp>().unwrap())
    });
    recs
}

/// `name{labels}` → value, from the exposition text; checks the format as it goes.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF: {text}"
    );
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        assert!(out.insert(series.to_owned(), v).is_none(), "{series} twice");
    }
    out
}

fn metrics(c: &TempCluster) -> BTreeMap<String, f64> {
    parse(&ok(pgkeep_output(c, &["metrics"])))
}

fn epoch(v: &serde_json::Value) -> f64 {
    let t: jiff::Timestamp = v.as_str().unwrap().parse().unwrap();
    t.as_millisecond() as f64 / 1000.0
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() < 0.01
}

#[test]
fn records_metrics_and_status_follow_backups_drills_and_failures() {
    let c = archiving_cluster(&pgkeep_bin());
    // Nothing writes WAL behind the test's back, so "everything archived" can be asserted.
    c.psql("postgres", "alter system set autovacuum = off");
    c.psql("postgres", "alter system set checkpoint_timeout = '1d'");
    c.psql("postgres", "select pg_reload_conf()");
    c.psql("postgres", "create database records");
    c.psql(
        "records",
        "create table t as select g from generate_series(1, 1000) g",
    );

    // Backups that succeed leave success records naming their bundles.
    let l: serde_json::Value =
        serde_json::from_str(&ok(pgkeep_output(&c, &["backup", "logical", "--json"]))).unwrap();
    let p: serde_json::Value =
        serde_json::from_str(&ok(pgkeep_output(&c, &["backup", "physical", "--json"]))).unwrap();
    let recs = records(&c);
    assert_eq!(recs.len(), 2, "{recs:#?}");
    let by_kind = |kind: &str| -> Vec<serde_json::Value> {
        records(&c)
            .into_iter()
            .filter(|r| r["kind"] == kind)
            .collect()
    };
    let lr = &by_kind("logical")[0];
    assert_eq!(lr["outcome"], "success");
    assert_eq!(lr["bundle"], l["name"]);
    assert_eq!(lr["size"], l["size"]);
    assert!(lr.get("error").is_none());
    assert!(lr["usage"]["backups"].as_u64().unwrap() > 0, "{lr:#}");
    assert!(lr["usage"]["data"].as_u64().unwrap() > 0, "{lr:#}");
    let pr = &by_kind("physical")[0];
    assert_eq!(pr["outcome"], "success");
    assert_eq!(pr["bundle"], p["name"]);

    // A backup that fails (the server is down) leaves a failure record with the error.
    c.stop();
    let out = pgkeep_output(&c, &["backup", "logical"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let logical = by_kind("logical");
    assert_eq!(logical.len(), 2);
    let failed = logical.iter().find(|r| r["outcome"] == "failure").unwrap();
    assert!(failed.get("bundle").is_none(), "{failed:#}");
    assert!(
        failed["error"].as_str().unwrap().contains("connect")
            || failed["error"].as_str().unwrap().contains("server"),
        "{failed:#}"
    );
    assert!(!failed["error"].as_str().unwrap().contains(c.password()));

    // PostgreSQL down: pgkeep_up 0, the file-based metrics still there.
    let m = metrics(&c);
    assert_eq!(m["pgkeep_up"], 0.0);
    assert!(!m.contains_key("pgkeep_wal_archived_total"), "{m:?}");
    assert_eq!(m[r#"pgkeep_backups{kind="logical"}"#], 1.0);
    assert!(near(
        m[r#"pgkeep_backup_last_failure_timestamp_seconds{kind="logical"}"#],
        epoch(&failed["stop"])
    ));
    assert!(m[r#"pgkeep_volume_free_bytes{volume="backups"}"#] > 0.0);

    // Back up; a logical backup that succeeds again; a drill; then every value.
    c.restart();
    let l: serde_json::Value =
        serde_json::from_str(&ok(pgkeep_output(&c, &["backup", "logical", "--json"]))).unwrap();
    c.switch_wal_and_wait_archived();
    ok(pgkeep_output(&c, &["drill"]));
    let drill = by_kind("drill");
    assert_eq!(drill.len(), 1);
    assert_eq!(drill[0]["outcome"], "success");
    let bundles = drill[0]["bundle"].as_str().unwrap();
    assert!(
        bundles.contains(l["name"].as_str().unwrap())
            && bundles.contains(p["name"].as_str().unwrap()),
        "{bundles}"
    );

    c.switch_wal_and_wait_archived();
    let m = metrics(&c);
    assert_eq!(m["pgkeep_up"], 1.0);
    let lsucc = &by_kind("logical")
        .into_iter()
        .rfind(|r| r["outcome"] == "success")
        .unwrap();
    assert_eq!(lsucc["bundle"], l["name"]);
    for (kind, rec, bundle, kept) in [("logical", lsucc, &l, 2.0), ("physical", pr, &p, 1.0)] {
        assert!(near(
            m[&format!(r#"pgkeep_backup_last_success_timestamp_seconds{{kind="{kind}"}}"#)],
            epoch(&rec["stop"])
        ));
        assert_eq!(
            m[&format!(r#"pgkeep_backup_last_size_bytes{{kind="{kind}"}}"#)],
            bundle["size"].as_f64().unwrap()
        );
        assert_eq!(m[&format!(r#"pgkeep_backups{{kind="{kind}"}}"#)], kept);
        let d = m[&format!(r#"pgkeep_backup_last_duration_seconds{{kind="{kind}"}}"#)];
        assert!(near(d, epoch(&rec["stop"]) - epoch(&rec["start"])), "{d}");
    }
    assert!(!m.contains_key(r#"pgkeep_backup_last_failure_timestamp_seconds{kind="physical"}"#));
    assert_eq!(m["pgkeep_drill_last_result"], 1.0);
    assert!(near(
        m["pgkeep_drill_last_success_timestamp_seconds"],
        epoch(&drill[0]["stop"])
    ));
    let archived: f64 = c
        .psql("postgres", "select archived_count from pg_stat_archiver")
        .parse()
        .unwrap();
    assert!(archived >= 2.0);
    assert_eq!(m["pgkeep_wal_archived_total"], archived);
    assert_eq!(m["pgkeep_wal_failed_total"], 0.0);
    assert!(m["pgkeep_wal_last_archived_timestamp_seconds"] > epoch(&lr["start"]) - 1.0);
    assert_eq!(m["pgkeep_wal_ready_segments"], 0.0);
    // Everything committed is archived (the switch above). The lag is 0, or, when the server
    // wrote background WAL since the switch (PostgreSQL 18 logs running transactions right
    // after it), the age of that just-archived segment: seconds, not the test's minutes.
    let lag = m["pgkeep_wal_archive_lag_seconds"];
    assert!((0.0..30.0).contains(&lag), "archive lag {lag}");
    // The window starts where the only base backup becomes consistent (its manifest's stop).
    let start = m["pgkeep_recovery_window_start_timestamp_seconds"];
    assert!(
        start >= epoch(&pr["start"]) - 1.0 && start <= epoch(&pr["stop"]) + 1.0,
        "{start} within the base backup's run"
    );
    for v in ["data", "wal_archive", "backups"] {
        let size = m[&format!(r#"pgkeep_volume_size_bytes{{volume="{v}"}}"#)];
        let free = m[&format!(r#"pgkeep_volume_free_bytes{{volume="{v}"}}"#)];
        assert!(size > 0.0 && free > 0.0 && free < size, "{v}");
        // All history is minutes old: no forecast yet.
        assert!(!m.contains_key(&format!(
            r#"pgkeep_volume_full_forecast_seconds{{volume="{v}"}}"#
        )));
    }

    // Healthy: exit 0 (this machine's shared disk may be nearly full, so the free-space floor
    // is lowered here; the default is tested as a unit).
    let out = pgkeep_output(&c, &["status", "--json", "--min-free-percent", "0"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(v["health"]["healthy"], true, "{v:#}");

    // The last logical backup failed: exit 1, the reason named, in text and JSON.
    c.stop();
    let out = pgkeep_output(&c, &["backup", "logical"]);
    assert_eq!(out.status.code(), Some(1));
    c.restart();
    let out = pgkeep_output(&c, &["status", "--min-free-percent", "0"]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("UNHEALTHY") && text.contains("backup_failed"),
        "{text}"
    );
    let out = pgkeep_output(&c, &["status", "--json", "--min-free-percent", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["health"]["healthy"], false);
    let checks: Vec<&str> = v["health"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["check"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["backup_failed"], "{v:#}");

    // Two days ago the backups volume held nothing: at that growth it fills up within days,
    // the forecast says so, and status names it.
    plant_old_record(&c.backups(), 2 * 86400);
    let m = metrics(&c);
    let f = m[r#"pgkeep_volume_full_forecast_seconds{volume="backups"}"#];
    let free = m[r#"pgkeep_volume_free_bytes{volume="backups"}"#];
    assert!(f > 0.0, "{f}");
    // Used (statvfs: blocks - free blocks) grew from 0 to what it is now in two days.
    let st = rustix::fs::statvfs(c.backups()).unwrap();
    let used = ((st.f_blocks - st.f_bfree) * st.f_frsize) as f64;
    let expect = free / (used / (2.0 * 86400.0));
    assert!(f > expect * 0.5 && f < expect * 2.0, "{f} vs {expect}");
    // `space` shows the same forecast per volume.
    let v: serde_json::Value =
        serde_json::from_str(&ok(pgkeep_output(&c, &["space", "--json"]))).unwrap();
    let sf = v["full_forecast_seconds"]["backups"].as_f64().unwrap();
    assert!(sf > expect * 0.5 && sf < expect * 2.0, "{sf} vs {expect}");
    let text = ok(pgkeep_output(&c, &["space"]));
    assert!(text.contains("backups      full in about"), "{text}");
    let ok_backup = ok(pgkeep_output(&c, &["backup", "logical", "--no-prune"]));
    assert!(!ok_backup.is_empty());
    let out = pgkeep_output(&c, &["status", "--json", "--min-free-percent", "0"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let forecast_flagged = v["health"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["check"] == "volume_forecast");
    assert_eq!(forecast_flagged, f < 3.0 * 86400.0, "{v:#}");
    assert_eq!(
        out.status.code(),
        Some(if forecast_flagged { 1 } else { 0 })
    );
}

/// A physical-backup record from `age` seconds ago that saw the volumes empty.
fn plant_old_record(backups: &Path, age: i64) {
    let stop = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(age);
    let rec = serde_json::json!({
        "kind": "physical",
        "start": (stop - jiff::SignedDuration::from_secs(60)).to_string(),
        "stop": stop.to_string(),
        "outcome": "success",
        "size": 1,
        "bundle": "basebackup-20000101-0000.bundle.tar.gz",
        "usage": {"backups": 0, "wal_archive": 0, "data": 0},
    });
    let name = format!("physical-{}.json", stop.strftime("%Y%m%dT%H%M%SZ"));
    std::fs::write(
        backups.join("results").join(name),
        serde_json::to_vec(&rec).unwrap(),
    )
    .unwrap();
}

fn http_get(port: u16, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[test]
fn listen_serves_metrics_per_scrape_and_stops_on_sigterm() {
    let c = TempCluster::start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(pgkeep_bin())
        .envs(c.env())
        .args(["metrics", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it accepts (it binds right after start).
    let mut tries = 0;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        tries += 1;
        assert!(tries < 600, "metrics --listen never accepted");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (head, body) = http_get(port, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert_eq!(parse(&body)["pgkeep_up"], 1.0);
    // Each scrape looks again: the server stopped, the next scrape says so.
    c.stop();
    let (_, body) = http_get(port, "/metrics");
    let m = parse(&body);
    assert_eq!(m["pgkeep_up"], 0.0);
    assert!(m.contains_key(r#"pgkeep_volume_free_bytes{volume="backups"}"#));
    let (head, _) = http_get(port, "/");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM ends it cleanly: {status:?}");
}

#[test]
fn bundles_without_records_count_as_successes() {
    // Bundles taken before result records existed (an upgrade): the newest one is the last
    // success, so neither the metric nor the alert says "no backup".
    let c = TempCluster::start();
    c.psql("postgres", "create database records");
    let l: serde_json::Value = serde_json::from_str(&ok(pgkeep_output(
        &c,
        &["backup", "logical", "--json", "--no-prune"],
    )))
    .unwrap();
    std::fs::remove_dir_all(c.backups().join("results")).unwrap();
    let m = metrics(&c);
    let t = m[r#"pgkeep_backup_last_success_timestamp_seconds{kind="logical"}"#];
    let finished = epoch(&l["finished_at"]);
    // The manifest's stop time, or at worst the minute in the bundle's name.
    assert!(
        t <= finished + 0.01 && t > finished - 61.0,
        "{t} vs {finished}"
    );
    assert_eq!(
        m[r#"pgkeep_backup_last_size_bytes{kind="logical"}"#],
        l["size"].as_f64().unwrap()
    );
    assert!(!m.contains_key(r#"pgkeep_backup_last_success_timestamp_seconds{kind="physical"}"#));
}
