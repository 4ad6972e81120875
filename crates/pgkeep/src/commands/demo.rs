//! `pgkeep demo`: the main job on a throwaway local site. It lays out a site like the pod's
//! (data volume root with PGDATA below it, WAL archive, backups and socket directories), runs
//! prep-dirs behind the mount guard, initdb and PostgreSQL as a non-root account, loads a small
//! sample database (with WAL archiving through `pgkeep wal push`), prints the sanity summary,
//! takes a logical bundle, drops the database and restores it (and compares), takes a physical
//! base backup, writes more, wipes the data volume, bootstraps from the base backup with WAL
//! replay, checks the later writes are back, and stops cleanly. Each stage is one function below,
//! run in order by [`run`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::{Context, bail};
use pgkeep_engine::bundle::Level;
use pgkeep_engine::datadir::{self, PrepMode};
use pgkeep_engine::db::{ConnParams, Db};
use pgkeep_engine::server::{self, InitDb, ManagedConf, RunAs};
use pgkeep_engine::settings::Settings;
use pgkeep_engine::tools::{PgBin, shell_quote_for_pg_command};
use pgkeep_engine::{logical, physical, recovery};

use crate::cli::Ctx;

const SAMPLE_SQL: &str = include_str!("demo.sql");

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Site directory (created; default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the site (and leave nothing running) instead of removing it at the end.
    #[arg(long)]
    pub keep: bool,
    /// When run as root: the non-root account that owns the data and runs PostgreSQL.
    #[arg(long, default_value = "postgres")]
    pub run_as: String,
}

/// The demo's throwaway site and the settings pointing at it.
struct Site {
    root: PathBuf,
    /// A copy of this program the data owner can execute (archive and restore commands).
    exe: PathBuf,
    settings: Settings,
    run_as: Option<RunAs>,
    pg: PgBin,
    log_file: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Site {
    fn params(&self) -> ConnParams {
        ConnParams::from_settings(&self.settings).with_password(None)
    }
}

/// A stage's name and timing, printed as the demo goes.
fn stage(n: usize, what: &str) -> Instant {
    println!("\n== {n}. {what}");
    Instant::now()
}

fn done(t: Instant) {
    println!("   done in {:.1}s", t.elapsed().as_secs_f64());
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    let t = stage(1, "lay out a throwaway site");
    let site = lay_out(&args, ctx.settings())?;
    println!("   site: {}", site.root.display());
    done(t);

    let t = stage(2, "prep-dirs (mount guard, socket dir 0775, PGDATA 0700)");
    prep(&site)?;
    done(t);

    let t = stage(3, "initdb and start PostgreSQL as the data owner");
    start(&site)?;
    done(t);

    let result = async {
        let t = stage(4, "load the sample database");
        load_sample(&site).await?;
        done(t);

        let t = stage(5, "sanity summary");
        summary(&site).await?;
        done(t);

        let t = stage(6, "logical backup, drop the database, restore it, compare");
        logical_round_trip(&site).await?;
        done(t);

        let t = stage(7, "physical base backup, then more writes (archived WAL)");
        let later = physical_backup_then_write(&site).await?;
        done(t);

        let t = stage(8, "stop PostgreSQL and wipe the data volume");
        server::pg_ctl_stop(&site.pg, &site.settings.paths.pgdata, site.run_as)?;
        wipe(&site)?;
        done(t);

        let t = stage(9, "bootstrap from the base backup with WAL replay");
        bootstrap(&site, later).await?;
        done(t);
        anyhow::Ok(())
    }
    .await;

    let t = stage(10, "stop PostgreSQL");
    let stopped = if datadir::running_postmaster(&site.settings.paths.pgdata).is_some() {
        server::pg_ctl_stop(&site.pg, &site.settings.paths.pgdata, site.run_as)
    } else {
        Ok(())
    };
    done(t);
    result?;
    stopped?;
    if args.keep {
        println!("\nsite kept at {}", site.root.display());
        if let Some(temp) = site._temp {
            let _ = temp.keep();
        }
    }
    println!("\ndemo finished in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn lay_out(args: &Args, base: &Settings) -> anyhow::Result<Site> {
    let pg = PgBin::locate()?;
    let (temp, root) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("create {}", d.display()))?;
            if std::fs::read_dir(d)?.next().is_some() {
                bail!(
                    "{} is not empty\nhint: give a new or empty directory to --dir",
                    d.display()
                );
            }
            (None, d.canonicalize()?)
        }
        None => {
            let t = tempfile::Builder::new().prefix("pgkeep-demo-").tempdir()?;
            let p = t.path().to_owned();
            (Some(t), p)
        }
    };
    let (uid, gid) = if pgkeep_engine::fsutil::is_root() {
        server::account_ids(&args.run_as).with_context(|| {
            format!(
                "running as root: PostgreSQL needs a non-root account and `{}` does not exist\nhint: create it (useradd --system postgres) or pass --run-as USER",
                args.run_as
            )
        })?
    } else {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    };
    let mut s = base.clone();
    s.paths.pgroot = root.join("volume");
    s.paths.pgdata = root.join("volume/data");
    s.paths.wal_archive = root.join("wal-archive");
    s.paths.backups = root.join("backups");
    s.paths.run_dir = root.join("run");
    s.postgres.uid = uid;
    s.postgres.gid = gid;
    s.postgres.host = String::new();
    s.postgres.port = free_port()?;
    s.postgres.user = "postgres".into();
    for d in [
        &s.paths.pgroot,
        &s.paths.wal_archive,
        &s.paths.backups,
        &root.join("log"),
    ] {
        std::fs::create_dir_all(d)?;
    }
    if pgkeep_engine::fsutil::is_root() {
        // The temp dir is 0700 root: the data owner must be able to reach its site.
        pgkeep_engine::fsutil::set_mode(&root, 0o755)?;
        for d in [
            &s.paths.pgroot,
            &s.paths.wal_archive,
            &s.paths.backups,
            &root.join("log"),
        ] {
            pgkeep_engine::fsutil::chown(d, uid, gid)?;
        }
    }
    let run_as = RunAs::data_owner(uid, gid)?;
    // The checkout may be private to root: PostgreSQL runs archive_command as the data owner.
    let exe = root.join("bin/pgkeep");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy(std::env::current_exe()?, &exe).context("copy pgkeep into the site")?;
    pgkeep_engine::fsutil::set_mode(&exe, 0o755)?;
    Ok(Site {
        exe,
        log_file: root.join("log/postgresql.log"),
        root,
        settings: s,
        run_as,
        pg,
        _temp: temp,
    })
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn prep(site: &Site) -> anyhow::Result<()> {
    let s = &site.settings;
    let steps = datadir::prep_dirs(
        &s.paths.pgroot,
        &s.paths.pgdata,
        &s.paths.run_dir,
        s.postgres.uid,
        s.postgres.gid,
        PrepMode::All,
    )?;
    for step in steps {
        println!("   {}: {}", step.path.display(), step.action);
    }
    Ok(())
}

fn start(site: &Site) -> anyhow::Result<()> {
    let s = &site.settings;
    let password = random_password()?;
    server::initdb(
        &site.pg,
        &InitDb {
            pgdata: &s.paths.pgdata,
            superuser: &s.postgres.user,
            password: Some(&password),
            data_checksums: true,
            run_as: site.run_as,
        },
    )?;
    let conf = ManagedConf::default()
        .set("port", s.postgres.port)
        .set("unix_socket_directories", s.paths.run_dir.display())
        .set("listen_addresses", "")
        .set("wal_level", "replica")
        .set("max_wal_senders", 4)
        .set("max_replication_slots", 4)
        .set("archive_mode", "on")
        .set(
            "archive_command",
            format!(
                "{} wal push --archive {} %p",
                shell_quote_for_pg_command(&site.exe.to_string_lossy()),
                shell_quote_for_pg_command(&s.paths.wal_archive.to_string_lossy())
            ),
        );
    server::write_managed_conf(&s.paths.pgdata, &conf, site.run_as)?;
    server::pg_ctl_start(
        &site.pg,
        &s.paths.pgdata,
        &site.log_file,
        Duration::from_secs(60),
        site.run_as,
    )?;
    println!(
        "   PostgreSQL is up on socket {} port {}",
        s.paths.run_dir.display(),
        s.postgres.port
    );
    Ok(())
}

fn random_password() -> anyhow::Result<String> {
    use std::io::Read;
    let mut buf = [0u8; 24];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

async fn load_sample(site: &Site) -> anyhow::Result<()> {
    let db_name = &site.settings.postgres.database;
    let admin = Db::connect(&site.params().with_db("postgres")).await?;
    if !admin.database_exists(db_name).await? {
        admin.create_database(db_name).await?;
    }
    let script = site.root.join("sample.sql");
    std::fs::write(&script, SAMPLE_SQL)?;
    pgkeep_engine::fsutil::set_mode(&script, 0o644)?;
    site.params()
        .with_db(db_name)
        .apply(site.pg.cmd("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(&script)
        .run()?;
    println!("   loaded {} into database {db_name}", script.display());
    Ok(())
}

async fn summary(site: &Site) -> anyhow::Result<()> {
    let db = Db::connect(&site.params()).await?;
    let info = db.server_info().await?;
    println!(
        "   server {} (system identifier {})",
        info.version, info.system_identifier
    );
    print_counts(&db.table_counts().await?);
    Ok(())
}

fn print_counts(counts: &[pgkeep_engine::db::TableCount]) {
    println!("   {:<14} {:<20} {:>10}", "schema", "table", "rows");
    for c in counts {
        println!("   {:<14} {:<20} {:>10}", c.schema, c.table, c.rows);
    }
}

async fn logical_round_trip(site: &Site) -> anyhow::Result<()> {
    let rt = logical::round_trip(
        site.pg.clone(),
        site.params(),
        site.settings.paths.backups.clone(),
        logical::default_jobs(),
        Arc::new(logical::NoProgress),
    )
    .await?;
    println!(
        "   backup {} ({} bytes), restored {} tables with {} rows",
        rt.backup.name, rt.backup.size, rt.restore.tables, rt.restore.rows
    );
    if !rt.identical() {
        bail!(
            "the restored database differs from the original:\n  {}",
            rt.differences.join("\n  ")
        );
    }
    println!("   identical: tables, row counts, materialized views and extensions");
    Ok(())
}

/// Take a base backup, then write rows that only WAL replay can bring back; returns their count.
async fn physical_backup_then_write(site: &Site) -> anyhow::Result<i64> {
    let report = physical::take(physical::BackupRequest {
        incremental: physical::Incremental::Off,
        pg: &site.pg,
        conn: &site.params(),
        backups_dir: &site.settings.paths.backups,
        level: Level::Fast,
        on_progress: None,
        on_estimate: None,
    })
    .await?;
    println!(
        "   {} ({} bytes, start LSN {}, timeline {})",
        report.name, report.size, report.facts.start_lsn, report.facts.timeline
    );
    let db = Db::connect(&site.params()).await?;
    let later = db.demo_write_after_backup().await?;
    let segment = db.demo_switch_wal().await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while db.demo_last_archived().await?.as_deref() < Some(segment.as_str()) {
        if Instant::now() > deadline {
            bail!(
                "WAL segment {segment} was not archived within 2 minutes\nhint: see {}",
                site.log_file.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("   wrote {later} rows after the backup; WAL archived up to {segment}");
    Ok(later)
}

fn wipe(site: &Site) -> anyhow::Result<()> {
    let s = &site.settings;
    let report = datadir::wipe(
        &s.paths.pgroot,
        &s.paths.pgdata,
        s.postgres.uid,
        s.postgres.gid,
        &datadir::Protected {
            wal_archive: &s.paths.wal_archive,
            backups: &s.paths.backups,
        },
    )?;
    println!(
        "   removed {} entries; {}",
        report.removed,
        datadir::format_listing(&s.paths.pgroot, &report.after).trim_end()
    );
    Ok(())
}

async fn bootstrap(site: &Site, later: i64) -> anyhow::Result<()> {
    let s = &site.settings;
    let report = recovery::bootstrap(
        &site.pg,
        &site.params(),
        &recovery::BootstrapRequest {
            pgroot: s.paths.pgroot.clone(),
            pgdata: s.paths.pgdata.clone(),
            wal_archive: s.paths.wal_archive.clone(),
            backups: s.paths.backups.clone(),
            uid: s.postgres.uid,
            gid: s.postgres.gid,
            run_dir: s.paths.run_dir.clone(),
            port: s.postgres.port,
            from: None,
            target: None,
            target_timeline: None,
            keep_old: false,
            leave_running: true,
            pgkeep_exe: site.exe.clone(),
            timeout: Duration::from_secs(300),
            sandbox: None,
        },
    )
    .await?;
    println!("   {}", crate::output::bootstrap_summary(&report));
    let db = Db::connect(&site.params()).await?;
    let found = db.demo_count_after_backup().await?;
    if found != later {
        bail!(
            "after WAL replay the table written after the backup has {found} rows, expected {later}"
        );
    }
    println!("   the {later} rows written after the base backup are back");
    summary(site).await
}
