//! `pgkeep debug perms`: the seed's pg.debug.perms on this machine: effective uid/gid, the mount
//! covering each of the volume root, PGDATA, WAL archive, backups and socket dir, each
//! directory's owner and mode, the mount guard's verdict, and an unfinished bootstrap's marker.
//!
//! `--kube`: the seed's pg.debug.perms against the newest db pod, Ready or not (it is most
//! needed on a crash-looping one): the db container's volume mounts with a verdict on the
//! double mount, this command's local meaning run in the db container, the last 100 lines of
//! each init container (`fix-run`, `prep-dirs`), and the pod's events. Each part says why when
//! it could not be read. `--json` gives the same as one document, the pod's own `--json`
//! report embedded.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pgkeep_engine::mountinfo::{self, Mount};
use pgkeep_engine::settings::Target;
use pgkeep_kube::ops::exec::{KubeExec, KubeLogs};
use pgkeep_kube::ops::flows::{self, DebugPermsReport};
use pgkeep_kube::ops::pods::MountVerdict;
use serde::Serialize;
use serde_json::{Value, json};

use crate::cli::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// This command's line (after `pgkeep`) with every option as parsed here, for the same command
    /// run in the db container; `cli.rs` tests that it parses back to the same arguments.
    pub fn to_argv(&self) -> Vec<String> {
        let mut a = vec!["debug".to_owned(), "perms".to_owned()];
        if self.json {
            a.push("--json".to_owned());
        }
        a
    }
}

#[derive(Debug, Serialize)]
struct DirInfo {
    role: &'static str,
    path: PathBuf,
    exists: bool,
    uid: Option<u32>,
    gid: Option<u32>,
    mode: Option<String>,
    mount: Option<Mount>,
}

#[derive(Debug, Serialize)]
struct Report {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
    dirs: Vec<DirInfo>,
    guard_ok: bool,
    guard: String,
    /// The marker of an unfinished bootstrap in the volume root (`bootmark`).
    bootstrap_unfinished: Option<PathBuf>,
}

fn dir_info(role: &'static str, path: &Path, mounts: &[Mount]) -> DirInfo {
    let meta = std::fs::metadata(path).ok();
    let resolved = mountinfo::resolve_path(path);
    DirInfo {
        role,
        path: path.to_owned(),
        exists: meta.is_some(),
        uid: meta.as_ref().map(|m| m.uid()),
        gid: meta.as_ref().map(|m| m.gid()),
        mode: meta
            .as_ref()
            .map(|m| format!("{:04o}", m.permissions().mode() & 0o7777)),
        mount: mountinfo::covering(mounts, &resolved).cloned(),
    }
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        return perms_kube(args, ctx).await;
    }
    let s = ctx.settings();
    let mounts = mountinfo::read_self()?;
    let (guard_ok, guard) = match mountinfo::check(&mounts, &s.paths.pgroot, &s.paths.pgdata) {
        Ok(r) => (r.ok(), r.to_string()),
        Err(e) => (false, format!("refused: {e}")),
    };
    let report = Report {
        uid: rustix::process::geteuid().as_raw(),
        gid: rustix::process::getegid().as_raw(),
        groups: rustix::process::getgroups()
            .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
            .unwrap_or_default(),
        dirs: vec![
            dir_info("volume root", &s.paths.pgroot, &mounts),
            dir_info("PGDATA", &s.paths.pgdata, &mounts),
            dir_info("WAL archive", &s.paths.wal_archive, &mounts),
            dir_info("backups", &s.paths.backups, &mounts),
            dir_info("socket dir", &s.paths.run_dir, &mounts),
        ],
        guard_ok,
        guard,
        bootstrap_unfinished: pgkeep_engine::bootmark::present(&s.paths.pgroot),
    };
    if args.json {
        return crate::output::print_json(&report);
    }
    println!(
        "running as uid {} gid {} (groups {:?}); expected data owner {}:{}",
        report.uid, report.gid, report.groups, s.postgres.uid, s.postgres.gid
    );
    println!();
    println!(
        "{:<12} {:<36} {:>9} {:>6}  mount",
        "role", "path", "owner", "mode"
    );
    for d in &report.dirs {
        let owner = match (d.uid, d.gid) {
            (Some(u), Some(g)) => format!("{u}:{g}"),
            _ => "-".into(),
        };
        let mount = d
            .mount
            .as_ref()
            .map(|m| format!("{} on {} ({})", m.source, m.mount_point.display(), m.fstype))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<12} {:<36} {:>9} {:>6}  {}",
            d.role,
            d.path.display().to_string() + if d.exists { "" } else { " (missing)" },
            owner,
            d.mode.as_deref().unwrap_or("-"),
            mount
        );
    }
    println!();
    println!("mount guard: {}", report.guard.trim_end());
    if let Some(m) = &report.bootstrap_unfinished {
        println!(
            "bootstrap:   UNFINISHED ({} is there): `serve` refuses to initdb; rerun the bootstrap, or remove the file knowingly",
            m.display()
        );
    }
    Ok(())
}

/// Lines of each init container's log shown (the seed's `--tail=100`).
const INIT_LOG_LINES: usize = 100;

/// The verdict on the db container's mounts: (healthy, explanation).
fn verdict_text(v: &MountVerdict, pgroot: &str, pgdata: &str) -> (bool, String) {
    match v {
        MountVerdict::Ok => (
            true,
            format!(
                "ok: the data volume is mounted only at {pgroot}; PGDATA {pgdata} is a directory on it"
            ),
        ),
        MountVerdict::PgdataIsAMount { volumes } => (
            false,
            format!(
                "DOUBLE MOUNT: {} mounted at PGDATA {pgdata} itself; initdb cannot empty a mount point, and data written there \
                 may not be where you think\nhint: mount the data volume ONLY at {pgroot} (`pgkeep render` / `pgkeep deploy`), then `pgkeep wipe` and `pgkeep scale 1`",
                volumes.join(", ")
            ),
        ),
        MountVerdict::RootNotMounted => (
            false,
            format!(
                "NOT MOUNTED: nothing is mounted at {pgroot}; PGDATA lives in the container's filesystem and is lost when it restarts\n\
                 hint: mount the data volume at {pgroot} (`pgkeep deploy` applies the rendered Deployment)"
            ),
        ),
        MountVerdict::NoSuchContainer => (
            false,
            "the pod has no container of that name\nhint: check the kube.container setting"
                .to_owned(),
        ),
    }
}

/// The report as text, in the seed's order.
fn render_kube(r: &DebugPermsReport, container: &str, pgroot: &str, pgdata: &str) -> String {
    let mut out = format!("pod {} ({})\n\n", r.pod, r.phase);
    out.push_str(&format!("volume mounts of container {container}:\n"));
    if r.mounts.is_empty() {
        out.push_str("  (none)\n");
    }
    for (volume, path) in &r.mounts {
        out.push_str(&format!("  {volume} -> {path}\n"));
    }
    out.push_str(&format!(
        "verdict: {}\n",
        verdict_text(&r.verdict, pgroot, pgdata).1
    ));
    out.push_str(&format!(
        "\n`pgkeep debug perms --local` in container {container}:\n"
    ));
    match &r.local {
        Ok(o) => {
            out.push_str(&String::from_utf8_lossy(&o.stdout));
            let stderr = String::from_utf8_lossy(&o.stderr);
            if !stderr.trim().is_empty() {
                out.push_str(&stderr);
            }
            if !o.success() {
                out.push_str(&format!(
                    "(exited with {})\n",
                    o.exit_code
                        .map_or_else(|| o.message.clone(), |c| format!("code {c}"))
                ));
            }
        }
        Err(why) => out.push_str(&format!("  could not run: {why}\n")),
    }
    for (c, lines) in &r.init_logs {
        out.push_str(&format!(
            "\ninit container {c} (last {INIT_LOG_LINES} lines):\n"
        ));
        match lines {
            Ok(l) if l.is_empty() => out.push_str("  (no output)\n"),
            Ok(l) => {
                for line in l {
                    out.push_str(&format!("  {line}\n"));
                }
            }
            Err(why) => out.push_str(&format!("  could not read its log: {why}\n")),
        }
    }
    out.push_str("\nevents:\n");
    if r.events.is_empty() {
        out.push_str("  (none)\n");
    }
    for e in &r.events {
        out.push_str(&format!("  {e}\n"));
    }
    out
}

/// The report as one JSON document; the pod's own `--json` output is embedded as JSON when it
/// parses, else as text.
fn kube_json(r: &DebugPermsReport, pgroot: &str, pgdata: &str) -> Value {
    let (ok, verdict) = verdict_text(&r.verdict, pgroot, pgdata);
    let local = match &r.local {
        Ok(o) => json!({
            "exit_code": o.exit_code,
            "report": serde_json::from_slice::<Value>(&o.stdout)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&o.stdout).into_owned())),
            "stderr": String::from_utf8_lossy(&o.stderr),
        }),
        Err(why) => json!({ "error": why }),
    };
    let init_logs: serde_json::Map<String, Value> = r
        .init_logs
        .iter()
        .map(|(c, l)| {
            let v = match l {
                Ok(lines) => json!({ "lines": lines }),
                Err(why) => json!({ "error": why }),
            };
            (c.clone(), v)
        })
        .collect();
    json!({
        "pod": r.pod,
        "phase": r.phase,
        "mounts": r.mounts.iter().map(|(v, p)| json!({ "volume": v, "path": p })).collect::<Vec<_>>(),
        "mounts_ok": ok,
        "verdict": verdict,
        "local": local,
        "init_logs": init_logs,
        "events": r.events,
    })
}

/// `--kube`; see the module docs.
async fn perms_kube(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    let s = ctx.settings();
    let (cluster, _server) = crate::cluster::connect(&ctx).await?;
    let pod = pgkeep_kube::manifests::deployment::pod_spec(s);
    let init: Vec<String> = pod
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    let init: Vec<&str> = init.iter().map(String::as_str).collect();
    let mut command = vec!["pgkeep".to_owned()];
    command.extend(args.to_argv());
    command.push("--local".to_owned());
    let pgroot = s.paths.pgroot.display().to_string();
    let pgdata = s.paths.pgdata.display().to_string();
    let input = flows::DebugPermsInput {
        app: &s.kube.app,
        container: &s.kube.container,
        init_containers: &init,
        pgroot: &pgroot,
        pgdata: &pgdata,
        local_command: command,
    };
    let report = flows::debug_perms(
        &cluster,
        input,
        &KubeExec {
            cluster: cluster.clone(),
        },
        &KubeLogs {
            cluster: cluster.clone(),
        },
    )
    .await?;
    if args.json {
        return crate::output::print_json(&kube_json(&report, &pgroot, &pgdata));
    }
    print!(
        "{}",
        render_kube(&report, &s.kube.container, &pgroot, &pgdata)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use pgkeep_kube::ops::exec::ExecOutput;

    use super::*;

    fn report(verdict: MountVerdict) -> DebugPermsReport {
        DebugPermsReport {
            pod: "postgres-abc".into(),
            phase: "Running".into(),
            mounts: vec![
                ("data".into(), "/var/lib/postgresql".into()),
                ("data".into(), "/var/lib/postgresql/data".into()),
            ],
            verdict,
            local: Ok(ExecOutput {
                stdout: br#"{"uid": 999, "guard_ok": false}"#.to_vec(),
                stderr: Vec::new(),
                exit_code: Some(0),
                message: String::new(),
            }),
            init_logs: vec![
                (
                    "fix-run".into(),
                    Ok(vec!["chown 999:999 /var/run/postgresql".into()]),
                ),
                (
                    "prep-dirs".into(),
                    Err("container \"prep-dirs\" is waiting to start".into()),
                ),
            ],
            events: vec![
                "Warning BackOff pod/postgres-abc (x3): Back-off restarting failed container"
                    .into(),
            ],
        }
    }

    const ROOT: &str = "/var/lib/postgresql";
    const DATA: &str = "/var/lib/postgresql/data";

    #[test]
    fn text_shows_every_part_in_the_seeds_order() {
        let r = report(MountVerdict::PgdataIsAMount {
            volumes: vec!["data".into()],
        });
        let t = render_kube(&r, "db", ROOT, DATA);
        let at = |needle: &str| {
            t.find(needle)
                .unwrap_or_else(|| panic!("{needle} not in\n{t}"))
        };
        let order = [
            at("pod postgres-abc (Running)"),
            at("  data -> /var/lib/postgresql\n"),
            at("  data -> /var/lib/postgresql/data\n"),
            at("verdict: DOUBLE MOUNT: data mounted at PGDATA /var/lib/postgresql/data"),
            at("`pgkeep debug perms --local` in container db:\n{\"uid\": 999"),
            at("init container fix-run (last 100 lines):\n  chown 999:999"),
            at("init container prep-dirs (last 100 lines):\n  could not read its log: container"),
            at("events:\n  Warning BackOff"),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{t}");
    }

    #[test]
    fn verdicts_say_what_is_wrong_and_what_to_do() {
        let (ok, text) = verdict_text(&MountVerdict::Ok, ROOT, DATA);
        assert!(ok);
        assert!(text.starts_with("ok: "), "{text}");
        for v in [
            MountVerdict::PgdataIsAMount {
                volumes: vec!["data".into()],
            },
            MountVerdict::RootNotMounted,
            MountVerdict::NoSuchContainer,
        ] {
            let (ok, text) = verdict_text(&v, ROOT, DATA);
            assert!(!ok, "{v:?}");
            assert!(text.contains("\nhint: "), "{text}");
        }
    }

    #[test]
    fn json_embeds_the_pods_own_report() {
        let r = report(MountVerdict::PgdataIsAMount {
            volumes: vec!["data".into()],
        });
        let v = kube_json(&r, ROOT, DATA);
        assert_eq!(v["mounts_ok"], false);
        assert_eq!(v["local"]["report"]["uid"], 999);
        assert_eq!(v["local"]["exit_code"], 0);
        assert_eq!(
            v["init_logs"]["fix-run"]["lines"][0],
            "chown 999:999 /var/run/postgresql"
        );
        assert!(v["init_logs"]["prep-dirs"]["error"].is_string());
        assert_eq!(v["mounts"][1]["path"], DATA);
        let mut r = r;
        r.local = Err("the pod is Pending, so nothing can run in it".into());
        assert_eq!(
            kube_json(&r, ROOT, DATA)["local"]["error"],
            "the pod is Pending, so nothing can run in it"
        );
    }
}
