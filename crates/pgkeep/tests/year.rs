//! A year in fast-forward (issue 14, item 5): 400 simulated days against a real small
//! PostgreSQL, every pgkeep run on the engine's test-only clock (`PGKEEP_TEST_NOW`, see
//! `pgkeep_engine::clock`). Each day writes a row, a restore point and two WAL switches (1 MiB
//! segments, so the archive stays cheap) and takes the nightly logical backup; every seventh day
//! a base backup; every thirteen weeks a drill. At the end: the bundles kept are exactly the
//! retention, the WAL archive starts at the oldest kept base backup's start segment, the
//! recovery-window metric is that base backup's stop, the volumes stopped growing, and a
//! point-in-time recovery from the oldest kept base backup to a restore point inside the window
//! works. Run with `--nocapture` for the figures.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use pgkeep_engine::wal::{Archive, WalKind};
use pgkeep_testkit::{TempCluster, file_names, output_text, pgkeep, pgkeep_bin};

const DAYS: i64 = 400;
const NIGHTLY: usize = 7;
const BASEBACKUPS: usize = 3;
const DAY: i64 = 86400;
/// A Monday, 00:00 UTC: simulated day 0.
const START: &str = "2027-01-04T00:00:00Z";

fn start() -> jiff::Timestamp {
    START.parse().unwrap()
}

/// Simulated day `d` at `secs` past midnight.
fn at(d: i64, secs: i64) -> jiff::Timestamp {
    start()
        .checked_add(jiff::SignedDuration::from_secs(d * DAY + secs))
        .unwrap()
}

fn pgkeep_at(c: &TempCluster, config: &Path, now: jiff::Timestamp, args: &[&str]) -> Output {
    pgkeep(c)
        .env("PGKEEP_CONFIG", config)
        .env("PGKEEP_TEST_NOW", now.to_string())
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bundles(c: &TempCluster, prefix: &str) -> Vec<String> {
    file_names(&c.backups())
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn tree_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            tree_bytes(&e.path())
        } else {
            m.len()
        };
    }
    n
}

fn metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse().unwrap())
        })
        .collect()
}

fn day_of(epoch: f64) -> f64 {
    (epoch - start().as_second() as f64) / DAY as f64
}

#[test]
fn a_simulated_year_keeps_the_retention_the_wal_the_window_and_the_volumes_bounded() {
    let c = TempCluster::options()
        .archive_command(&format!(
            "{} wal push --archive ../../wal-archive %p",
            pgkeep_bin().display()
        ))
        .wal_segsize_mb(1)
        .setting("autovacuum", "off")
        .setting("checkpoint_timeout", "1d")
        .setting("min_wal_size", "2MB")
        .setting("max_wal_size", "16MB")
        .start();
    let config = c.root().join("pgkeep.toml");
    std::fs::write(
        &config,
        format!("[retention]\nnightly = {NIGHTLY}\nbasebackups = {BASEBACKUPS}\n"),
    )
    .unwrap();
    c.psql("postgres", "create database records");
    c.psql_script(
        "records",
        "create table days (d int primary key, note text);
         create table filler as select g, md5(g::text) m from generate_series(1, 2000) g;",
    );

    let started = std::time::Instant::now();
    // Base backup name -> its start WAL segment; bytes in use after each weekly backup.
    let mut starts: BTreeMap<String, String> = BTreeMap::new();
    let mut usage: Vec<(i64, u64, u64)> = Vec::new();
    let mut drills = 0;
    let mut spent = [std::time::Duration::ZERO; 4];
    let mut timed = |i: usize, t: std::time::Instant| spent[i] += t.elapsed();
    for d in 0..DAYS {
        // The day's writes: a row, a restore point naming the day, two WAL switches.
        let t = std::time::Instant::now();
        c.psql_script(
            "records",
            &format!(
                "insert into days values ({d}, repeat('x', 200));
                 select pg_create_restore_point('day-{d}');
                 select pg_logical_emit_message(false, 'year', 'a'), pg_switch_wal();
                 select pg_logical_emit_message(false, 'year', 'b'), pg_switch_wal();"
            ),
        );
        timed(0, t);
        let t = std::time::Instant::now();
        ok(pgkeep_at(&c, &config, at(d, 3600), &["backup", "logical"]));
        timed(1, t);
        if d % 7 == 6 {
            let t = std::time::Instant::now();
            let v: serde_json::Value = serde_json::from_str(&ok(pgkeep_at(
                &c,
                &config,
                at(d, 3 * 3600),
                &["backup", "physical", "--json"],
            )))
            .unwrap();
            starts.insert(
                v["name"].as_str().unwrap().to_owned(),
                v["facts"]["start_wal_file"].as_str().unwrap().to_owned(),
            );
            timed(2, t);
            usage.push((d, tree_bytes(&c.backups()), tree_bytes(&c.wal_archive())));
        }
        if d % 91 == 6 {
            let t = std::time::Instant::now();
            let v: serde_json::Value = serde_json::from_str(&ok(pgkeep_at(
                &c,
                &config,
                at(d, 6 * 3600),
                &["drill", "--json"],
            )))
            .unwrap();
            assert_eq!(v["logical"]["passed"], true, "{v:#}");
            assert_eq!(v["physical"]["passed"], true, "{v:#}");
            drills += 1;
            timed(3, t);
        }
    }
    c.switch_wal_and_wait_archived();
    let real_seconds = started.elapsed().as_secs();
    let end = at(DAYS - 1, 7 * 3600);

    // Bundles: exactly the retention, named on the simulated clock.
    let nightly = bundles(&c, "nightly-");
    let base = bundles(&c, "basebackup-");
    assert_eq!(nightly.len(), NIGHTLY, "{nightly:?}");
    assert_eq!(base.len(), BASEBACKUPS, "{base:?}");
    let last_day = at(DAYS - 1, 0).strftime("%Y%m%d").to_string();
    assert!(
        nightly.iter().any(|n| n.contains(&last_day)),
        "the newest nightly bundle is named for simulated day {last_day}: {nightly:?}"
    );
    let first_kept_base_day = (DAYS - 1) / 7 * 7 - 1 - 7 * (BASEBACKUPS as i64 - 1);
    assert!(
        base[0].contains(&at(first_kept_base_day, 0).strftime("%Y%m%d").to_string()),
        "the oldest kept base backup is from day {first_kept_base_day}: {base:?}"
    );

    // The WAL archive: nothing older than the oldest kept base backup's start segment, and that
    // segment is there.
    let archive = Archive::new(c.wal_archive()).list().unwrap();
    let segments: Vec<&str> = archive
        .iter()
        .filter(|f| f.wal.kind == WalKind::Segment)
        .map(|f| f.name.as_str())
        .collect();
    let oldest_start = &starts[&base[0]];
    assert_eq!(
        segments.first().copied(),
        Some(oldest_start.as_str()),
        "the archive starts at the oldest kept base backup's start segment ({} segments)",
        segments.len()
    );
    let archive_bytes: u64 = archive.iter().map(|f| f.size).sum();

    // Metrics at the end of the year: counts, the window, the newest runs.
    let m = metrics(&ok(pgkeep_at(&c, &config, end, &["metrics"])));
    assert_eq!(m[r#"pgkeep_backups{kind="logical"}"#], NIGHTLY as f64);
    assert_eq!(m[r#"pgkeep_backups{kind="physical"}"#], BASEBACKUPS as f64);
    let window = m["pgkeep_recovery_window_start_timestamp_seconds"];
    let oldest_record = std::fs::read_dir(c.backups().join("results"))
        .unwrap()
        .map(|e| {
            serde_json::from_slice::<serde_json::Value>(&std::fs::read(e.unwrap().path()).unwrap())
                .unwrap()
        })
        .find(|r| r["bundle"] == base[0].as_str())
        .expect("the oldest kept base backup's result record");
    let stop: jiff::Timestamp = oldest_record["stop"].as_str().unwrap().parse().unwrap();
    assert!(
        (window - stop.as_millisecond() as f64 / 1000.0).abs() < 0.01,
        "window {window} = the oldest kept base backup's stop {stop}"
    );
    let window_day = day_of(window);
    assert!(
        window_day >= first_kept_base_day as f64 + 0.125
            && window_day < first_kept_base_day as f64 + 0.25,
        "the window starts on simulated day {first_kept_base_day} after 03:00: {window_day}"
    );
    let logical_day = day_of(m[r#"pgkeep_backup_last_success_timestamp_seconds{kind="logical"}"#]);
    assert!(
        logical_day >= (DAYS - 1) as f64 && logical_day < DAYS as f64,
        "{logical_day}"
    );
    assert_eq!(m["pgkeep_drill_last_result"], 1.0);
    let drill_day = day_of(m["pgkeep_drill_last_success_timestamp_seconds"]);
    assert!(drill_day > (DAYS - 92) as f64, "{drill_day}");
    let results = file_names(&c.backups().join("results")).len();
    assert!(
        results <= 3 * 64 + 3,
        "result records are bounded: {results}"
    );

    // Volumes: after retention reached its steady state (day 41), the last weeks use no more
    // than 1.5 times what the first steady weeks did.
    let total = |u: &(i64, u64, u64)| u.1 + u.2;
    let steady = usage
        .iter()
        .filter(|u| (41..=90).contains(&u.0))
        .map(total)
        .max()
        .unwrap();
    let late = usage
        .iter()
        .filter(|u| u.0 >= DAYS - 60)
        .map(total)
        .max()
        .unwrap();
    let peak = usage.iter().map(total).max().unwrap();
    assert!(
        late * 2 <= steady * 3,
        "volume use grew: days 41-90 at most {steady} bytes, the last 60 days {late}"
    );

    // PITR from the oldest kept base backup to a restore point two days before the end.
    let target_day = DAYS - 3;
    c.stop();
    ok(pgkeep_at(
        &c,
        &config,
        end,
        &[
            "bootstrap",
            "basebackup",
            "--from",
            &base[0],
            "--target-name",
            &format!("day-{target_day}"),
            "--yes",
        ],
    ));
    c.restart();
    assert_eq!(
        c.psql("records", "select max(d) from days"),
        target_day.to_string(),
        "replayed to the restore point, not past it"
    );
    assert_eq!(
        c.psql("records", "select count(*) from days"),
        (target_day + 1).to_string()
    );

    println!(
        "year: {DAYS} simulated days ({START} .. {}) in {real_seconds} s real time; {} logical + {} physical backups, {drills} drills",
        at(DAYS - 1, 0),
        DAYS,
        DAYS / 7
    );
    println!(
        "year: real seconds in writes {:.0}, logical {:.0}, physical {:.0}, drills {:.0}",
        spent[0].as_secs_f64(),
        spent[1].as_secs_f64(),
        spent[2].as_secs_f64(),
        spent[3].as_secs_f64()
    );
    println!("year: kept nightly {nightly:?}");
    println!("year: kept base backups {base:?}");
    println!(
        "year: WAL archive {} segments from {oldest_start}, {} files, {archive_bytes} bytes",
        segments.len(),
        archive.len()
    );
    println!(
        "year: recovery window starts {stop} (simulated day {window_day:.3}); end {end}; result records {results}"
    );
    println!(
        "year: backups+WAL bytes: days 41-90 max {steady}, last 60 days max {late}, peak {peak}; by week (day backups wal): {:?}",
        usage
            .iter()
            .filter(|u| u.0 % 56 == 55 || u.0 >= DAYS - 7)
            .collect::<Vec<_>>()
    );
    println!("year: PITR from {} to day-{target_day}: ok", base[0]);
}
