//! Phase 2, the server side: required parameters, the recovery settings block, starting
//! PostgreSQL, waiting for recovery to end and turning its log into a clear error.

use std::collections::BTreeMap;

use super::*;
use crate::db::query_err;

/// Settings that must be at least the values the backed-up server ran with.
pub(super) const REQUIRED_PARAMETERS: [(&str, &str); 5] = [
    ("max_connections", "max_connections setting:"),
    ("max_worker_processes", "max_worker_processes setting:"),
    ("max_wal_senders", "max_wal_senders setting:"),
    ("max_prepared_transactions", "max_prepared_xacts setting:"),
    ("max_locks_per_transaction", "max_locks_per_xact setting:"),
];

/// The values pg_controldata reports for the settings hot standby needs, by setting name.
pub fn parse_controldata(text: &str) -> Vec<(&'static str, i64)> {
    REQUIRED_PARAMETERS
        .iter()
        .filter_map(|(name, label)| {
            text.lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .and_then(|v| v.trim().parse().ok())
                .map(|v| (*name, v))
        })
        .collect()
}

/// Which settings to raise: (name, value) where the configured value is below pg_control's.
pub fn overrides_needed(
    control: &[(&'static str, i64)],
    configured: impl Fn(&str) -> Option<i64>,
) -> Vec<(&'static str, i64)> {
    control
        .iter()
        .filter(|(name, want)| configured(name).is_none_or(|have| have < *want))
        .copied()
        .collect()
}

/// Step: compare pg_controldata's values with the restored configuration.
pub(super) fn required_parameter_overrides(
    pg: &PgBin,
    pgdata: &Path,
    run_as: Option<RunAs>,
) -> Result<Vec<(&'static str, i64)>, RecoveryError> {
    // pg_controldata and one `postgres -C` per setting (it reads one per run), side by side:
    // each spends most of its time starting up.
    let mut asked =
        vec![RunAs::apply(run_as, pg.cmd("pg_controldata").arg(pgdata)).env("LC_ALL", "C")];
    asked.extend(REQUIRED_PARAMETERS.iter().map(|(name, _)| {
        RunAs::apply(
            run_as,
            pg.cmd("postgres").arg("-D").arg(pgdata).arg("-C").arg(name),
        )
    }));
    let mut answers = Cmd::output_strings_together(asked).into_iter();
    let text = answers.next().expect("one answer per command")?;
    let control = parse_controldata(&text);
    // A setting `postgres -C` could not read counts as too low: it is raised.
    let configured: BTreeMap<&str, i64> = REQUIRED_PARAMETERS
        .iter()
        .zip(answers)
        .filter_map(|((name, _), a)| Some((*name, a.ok()?.trim().parse().ok()?)))
        .collect();
    let needed = overrides_needed(&control, |name| configured.get(name).copied());
    for (name, v) in &needed {
        tracing::info!("raising {name} to {v}, the value the backed-up server ran with");
    }
    Ok(needed)
}

/// The restore_command pgkeep writes: every segment is checked to belong to `system`. Each word
/// is quoted for PostgreSQL's `%` expansion as well as for the shell.
pub fn restore_command(pgkeep: &Path, archive: &Path, system: &str) -> String {
    spooled_restore_command(pgkeep, archive, system, None)
}

/// [`restore_command`], and with `spool`, segments are first looked for in the replay
/// prefetcher's spool ([`crate::wal::prefetch`]).
pub fn spooled_restore_command(
    pgkeep: &Path,
    archive: &Path,
    system: &str,
    spool: Option<&Path>,
) -> String {
    let q = |s: &str| crate::tools::shell_quote_for_pg_command(s);
    let spool = spool
        .map(|p| format!(" --spool {}", q(&p.to_string_lossy())))
        .unwrap_or_default();
    format!(
        "{} wal fetch --archive {} --sysid {}{spool} %f %p",
        q(&pgkeep.to_string_lossy()),
        q(&archive.to_string_lossy()),
        q(system)
    )
}

pub(super) fn conf_line(k: &str, v: &str) -> String {
    crate::server::conf_line(k, v)
}

/// Step: recovery.signal and the recovery settings (a marked block in postgresql.auto.conf,
/// read last, so it wins over the restored configuration).
pub(super) fn write_recovery_settings(
    req: &BootstrapRequest,
    plan: &Plan,
    overrides: &[(&'static str, i64)],
    spool: Option<&Path>,
) -> Result<(), RecoveryError> {
    let mut block = format!("{BLOCK_BEGIN}\n");
    block.push_str(&conf_line(
        "restore_command",
        &spooled_restore_command(
            &req.pgkeep_exe,
            &plan.restore_from,
            &plan.facts.system_identifier,
            spool,
        ),
    ));
    block.push_str(&conf_line("recovery_target_action", "promote"));
    block.push_str(&conf_line(
        "recovery_target_timeline",
        &plan.target_timeline.to_string(),
    ));
    block.push_str(&conf_line("hot_standby", "on"));
    if let Some(t) = &plan.target {
        for (k, v) in t.settings() {
            block.push_str(&conf_line(k, &v));
        }
        block.push_str(&conf_line("recovery_target_inclusive", "on"));
    }
    for (k, v) in overrides {
        block.push_str(&conf_line(k, &v.to_string()));
    }
    block.push_str(BLOCK_END);
    block.push('\n');
    let auto = req.pgdata.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text = strip_block(&text);
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let mut written = vec![auto.clone()];
    if let Some(sandbox) = &req.sandbox {
        // Outside the recovery block: these stay for as long as the throwaway server runs.
        text.push_str(SANDBOX_HEADER);
        text.push('\n');
        for (k, v) in sandbox.settings(&req.pgdata) {
            text.push_str(&conf_line(k, &v));
        }
        let hba = req.pgdata.join("pg_hba.conf");
        fsutil::write_atomic(&hba, Sandbox::HBA.as_bytes(), 0o600, true)?;
        written.push(hba);
    }
    text.push_str(&block);
    fsutil::write_atomic(&auto, text.as_bytes(), 0o600, true)?;
    let signal = req.pgdata.join("recovery.signal");
    fsutil::write_atomic(&signal, b"", 0o600, true)?;
    written.push(signal);
    if fsutil::is_root() {
        for p in &written {
            fsutil::chown(p, req.uid, req.gid)?;
        }
    }
    Ok(())
}

pub(super) const SANDBOX_HEADER: &str =
    "# pgkeep restore drill: a throwaway server (private socket only, never archives)";

/// postgresql.auto.conf without pgkeep's recovery block.
pub fn strip_block(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line == BLOCK_BEGIN {
            inside = true;
            continue;
        }
        if inside {
            if line == BLOCK_END {
                inside = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Step (after recovery): remove the recovery block again.
pub(super) fn remove_recovery_settings(pgdata: &Path) -> Result<(), RecoveryError> {
    let auto = pgdata.join("postgresql.auto.conf");
    let text = std::fs::read_to_string(&auto).fs_ctx("read", &auto)?;
    let stripped = strip_block(&text);
    if stripped != text {
        let meta = std::fs::metadata(&auto).fs_ctx("stat", &auto)?;
        fsutil::write_atomic(&auto, stripped.as_bytes(), 0o600, true)?;
        if fsutil::is_root() {
            fsutil::chown(&auto, meta.uid(), meta.gid())?;
        }
    }
    Ok(())
}

/// Step: the server log for this bootstrap, beside PGDATA (else in the temp dir), owned by the
/// data owner so pg_ctl can append to it. Always a new, empty file: the outcome is read from
/// this log, so two bootstraps in the same second must not share one (the second would read the
/// first one's verdict). `pgkeep-bootstrap-STAMP.log`, then `-2`, `-3`, ... when taken.
pub(super) fn open_log_file(
    req: &BootstrapRequest,
    run_as: Option<RunAs>,
) -> Result<PathBuf, RecoveryError> {
    let stamp = crate::clock::now()
        .to_zoned_datetime(jiff::tz::TimeZone::UTC)
        .strftime("%Y%m%d-%H%M%S")
        .to_string();
    let name = |n: u32| match n {
        1 => format!("pgkeep-bootstrap-{stamp}.log"),
        n => format!("pgkeep-bootstrap-{stamp}-{n}.log"),
    };
    let parent = req.pgdata.parent().unwrap_or(Path::new("/")).to_owned();
    for dir in [parent, std::env::temp_dir()] {
        for n in 1..=100 {
            let path = dir.join(name(n));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(_) => {
                    if let Some(r) = run_as {
                        fsutil::chown(&path, r.uid, r.gid)?;
                    }
                    return Ok(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(_) => break,
            }
        }
    }
    Err(FsError::new(
        "create log file",
        req.pgdata.join(name(1)),
        std::io::Error::other("no writable directory"),
    )
    .into())
}

/// Step: start the recovered database as configured, detached with pg_ctl (it outlives this
/// run), as the data owner, without waiting (see [`wait_started`]).
pub(super) fn start_postgres(
    pg: &PgBin,
    pgdata: &Path,
    log_file: &Path,
    run_as: Option<RunAs>,
) -> Result<(), RecoveryError> {
    tracing::info!(log = %log_file.display(), "starting PostgreSQL");
    let cmd = pg
        .cmd("pg_ctl")
        .arg("-D")
        .arg(pgdata)
        .arg("-l")
        .arg(log_file);
    RunAs::apply(run_as, cmd.args(["-W", "start"])).run()?;
    Ok(())
}

/// After a start without waiting: whether the postmaster came up and accepts connections
/// (postmaster.pid's status line says `ready`) within a minute.
pub(super) async fn wait_started(pgdata: &Path) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let pid_file = std::fs::read_to_string(pgdata.join("postmaster.pid")).unwrap_or_default();
        if datadir::running_postmaster(pgdata).is_some()
            && pid_file.lines().nth(7).is_some_and(|l| l.trim() == "ready")
        {
            return true;
        }
        if datadir::running_postmaster(pgdata).is_none()
            && started.elapsed() > Duration::from_secs(10)
        {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

pub(super) struct Ended {
    pub(super) end_lsn: Option<String>,
    pub(super) timeline: Option<u32>,
    pub(super) last_xact_time: Option<String>,
}

pub(super) struct RecoveryState {
    pub(super) in_recovery: bool,
    pub(super) paused: bool,
    pub(super) replay_lsn: Option<String>,
    pub(super) xact_time: Option<String>,
    pub(super) timeline: Option<u32>,
}

impl Db {
    async fn recovery_state(&self) -> Result<RecoveryState, DbError> {
        let row = self
            .client()
            .query_one(
                "select pg_is_in_recovery(), \
                 case when pg_is_in_recovery() then pg_is_wal_replay_paused() else false end, \
                 pg_last_wal_replay_lsn()::text, \
                 to_char(pg_last_xact_replay_timestamp() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
                 case when pg_is_in_recovery() then null \
                      else ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int4 end",
                &[],
            )
            .await
            .map_err(query_err("reading the recovery state"))?;
        Ok(RecoveryState {
            in_recovery: row.get(0),
            paused: row.get(1),
            replay_lsn: row.get(2),
            xact_time: row.get(3),
            timeline: row.get::<_, Option<i32>>(4).map(|t| t as u32),
        })
    }

    async fn resume_replay(&self) -> Result<(), DbError> {
        self.client()
            .batch_execute("select pg_wal_replay_resume()")
            .await
            .map_err(query_err("resuming WAL replay"))
    }

    pub(super) async fn reload_conf(&self) -> Result<(), DbError> {
        self.client()
            .batch_execute("select pg_reload_conf()")
            .await
            .map_err(query_err("reloading the configuration"))
    }
}

/// Step: wait until PostgreSQL has left recovery; turn its failures into clear errors.
pub(super) async fn wait_for_recovery_end(
    conn: &ConnParams,
    req: &BootstrapRequest,
    plan: &Plan,
    log_file: &Path,
    server: &mut ChildServer,
) -> Result<Ended, RecoveryError> {
    let deadline = Instant::now() + req.timeout;
    let params = conn.with_db("postgres");
    let mut db: Option<Db> = None;
    let mut last_note = Instant::now();
    loop {
        if Instant::now() > deadline {
            return Err(RecoveryError::Timeout {
                seconds: req.timeout.as_secs(),
                log_file: log_file.to_owned(),
            });
        }
        // Our own child: an exit is seen at once (and reaped), never mistaken for a live pid.
        if server.exited() {
            return Err(classify_failure(log_file, plan));
        }
        if db.is_none() {
            db = Db::connect(&params).await.ok();
        }
        if let Some(d) = &db {
            match d.recovery_state().await {
                Ok(s) if !s.in_recovery => {
                    return Ok(Ended {
                        end_lsn: s.replay_lsn,
                        timeline: s.timeline,
                        last_xact_time: s.xact_time,
                    });
                }
                Ok(s) => {
                    if s.paused {
                        tracing::info!(
                            "recovery paused at the target; resuming so it ends and promotes"
                        );
                        d.resume_replay().await?;
                    }
                    if last_note.elapsed() > Duration::from_secs(10) {
                        tracing::info!(replayed = ?s.replay_lsn, "replaying WAL");
                        last_note = Instant::now();
                    }
                }
                Err(_) => db = None,
            }
        }
        // Connected: every 50 ms (the end of recovery is noticed within a twentieth of a
        // second; a query that cheap costs replay nothing measurable). Not yet: every 200 ms,
        // since each refused attempt is a line in the server log.
        let pause = if db.is_some() { 50 } else { 200 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// Turn PostgreSQL's last words into an error.
pub(super) fn classify_failure(log_file: &Path, plan: &Plan) -> RecoveryError {
    let text = std::fs::read_to_string(log_file).unwrap_or_default();
    let log = crate::server::log_tail(log_file, 25);
    let target = plan
        .target
        .as_ref()
        .map(|t| t.to_string())
        .unwrap_or_else(|| "(none)".into());
    if text.contains("recovery ended before configured recovery target was reached") {
        return RecoveryError::TargetNotReached { target, log };
    }
    if text.contains("requested recovery stop point is before consistent recovery point") {
        return RecoveryError::TargetBeforeConsistency { target, log };
    }
    if text.contains("could not restore file") && text.contains("from archive") {
        return RecoveryError::ArchiveDamaged { log };
    }
    if text.contains("WAL ends before consistent recovery point")
        || text.contains("WAL ends before end of online backup")
        || text.contains("could not locate required checkpoint record")
    {
        let segment = next_needed_segment(&text, &plan.facts)
            .map(|s| format!(" (segment {s})"))
            .unwrap_or_default();
        return RecoveryError::MissingWal { segment, log };
    }
    RecoveryError::ServerDied { log }
}

/// The segment after the last one PostgreSQL restored, within the backup's range.
pub(super) fn next_needed_segment(log: &str, facts: &PhysicalFacts) -> Option<String> {
    let seg = facts.wal_segment_size;
    let last = log
        .lines()
        .filter_map(|l| l.split("restored log file \"").nth(1))
        .filter_map(|r| r.split('"').next())
        .filter_map(wal::parse_name)
        .map(|w| w.segment_no(seg))
        .max();
    let next = match last {
        Some(n) => n + 1,
        None => facts.start_lsn.segment(seg),
    };
    Some(wal::segment_file_name(facts.timeline, next, seg))
}

/// PostgreSQL's "recovery stopping ..." line from the log.
pub(super) fn stop_reason(log_file: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log_file).ok()?;
    text.lines()
        .rfind(|l| l.contains("recovery stopping"))
        .map(|l| l.split("LOG:  ").nth(1).unwrap_or(l).trim().to_owned())
}
