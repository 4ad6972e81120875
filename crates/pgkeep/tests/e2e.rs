//! End-to-end on a real Kubernetes cluster: the seed's flows, driven through the pgkeep binary as
//! a user would drive them, against real pods running real PostgreSQL.
//!
//! Built only with `--features e2e` (`cargo test -p pgkeep --features e2e --test e2e`). It needs
//! (and fails saying which is missing):
//! - `KUBECONFIG`: a reachable cluster (kubebox, or kind/k3d);
//! - `PGKEEP_E2E_IMAGE`: an image with pgkeep and PostgreSQL already present on the node
//!   (`e2e/kubebox-image.sh` builds and imports one for kubebox);
//! - `PGKEEP_E2E_PV_ROOT`: a directory the node's hostPath volumes see and this process can
//!   read, under which the suite creates the static PersistentVolumes (kubebox:
//!   `$KUBEBOX_STATE/pv`); the suite checks ownership and modes there;
//! - `kubectl` on PATH (the suite uses it only to look, to create its PVs and namespaces, and
//!   to patch a deployment into the double-mount shape);
//! - `PGKEEP_E2E_PG_MAJOR`: the PostgreSQL major the image runs (e2e/kubebox.sh: 18, the
//!   default image's), which the flows check the server reports.
//!
//! Each test works in its own namespace (`pgkeep-e2e-<random>`), with PVs pre-bound to its
//! claims, and deletes both at the end. Each flow's wall time is printed (`--nocapture`).

#![cfg(feature = "e2e")]

use std::fmt::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pgkeep_testkit::TempCluster;

/// The three claims of the rendered base, as the settings name them.
const CLAIMS: [&str; 3] = ["pgdata-big", "pg-wal-archive", "pgbackups"];

fn required_env(name: &str, what: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: the e2e suite needs {what}.\n\
             With kubebox: `kubebox up && eval \"$(kubebox env)\" && \
             export PGKEEP_E2E_PG_MAJOR=18 PGKEEP_E2E_IMAGE=$(e2e/kubebox-image.sh) \
             PGKEEP_E2E_PV_ROOT=$KUBEBOX_STATE/pv`"
        ),
    }
}

/// A namespace with its own PVs and settings file; deleted (without waiting) on drop.
struct Site {
    ns: String,
    pv_root: PathBuf,
    config_dir: tempfile::TempDir,
    /// Flow name and wall time, printed at the end.
    timings: std::cell::RefCell<Vec<(String, Duration)>>,
}

fn random_suffix() -> String {
    let mut b = [0u8; 4];
    getrandom(&mut b);
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("reading /dev/urandom");
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn kubectl() -> Command {
    Command::new(std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into()))
}

/// Run kubectl, panic with its output when it fails, return stdout.
fn kubectl_ok(args: &[&str]) -> String {
    let out = run(kubectl().args(args));
    assert!(
        out.status.success(),
        "kubectl {} failed: {}{}",
        args.join(" "),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn kubectl_apply(yaml: &str) {
    let mut child = kubectl()
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning kubectl apply");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kubectl apply failed: {}{}\n{yaml}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

impl Site {
    /// A fresh namespace, three hostPath PVs pre-bound to its claims, and a pgkeep.toml that
    /// points pgkeep at them with the e2e image.
    fn new(tag: &str) -> Site {
        required_env("KUBECONFIG", "a kubeconfig for the cluster to test against");
        let image = required_env(
            "PGKEEP_E2E_IMAGE",
            "the image to deploy (pgkeep + PostgreSQL, present on the node)",
        );
        let pv_root = PathBuf::from(required_env(
            "PGKEEP_E2E_PV_ROOT",
            "a host directory for the hostPath PersistentVolumes",
        ));
        let ns = format!("pgkeep-e2e-{tag}-{}", random_suffix());
        kubectl_ok(&["create", "namespace", &ns]);
        let class = format!("pgkeep-e2e-{ns}");
        for claim in CLAIMS {
            let dir = pv_root.join(&ns).join(claim);
            std::fs::create_dir_all(&dir).unwrap();
            // hostPath directories are created root-owned and fsGroup does not apply to them;
            // a provisioned volume would be group-writable through fsGroup. Give the volume
            // root to the data owner, as a provisioner with fsGroup support effectively does.
            std::os::unix::fs::chown(&dir, Some(999), Some(999)).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            kubectl_apply(&format!(
                "apiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {ns}-{claim}\n  \
                 labels: {{pgkeep-e2e: \"{ns}\"}}\nspec:\n  capacity: {{storage: 2Gi}}\n  \
                 accessModes: [ReadWriteOnce]\n  persistentVolumeReclaimPolicy: Retain\n  \
                 storageClassName: {class}\n  hostPath: {{path: {}, type: Directory}}\n  \
                 claimRef: {{namespace: {ns}, name: {claim}}}\n",
                dir.display()
            ));
        }
        let config_dir = tempfile::tempdir().unwrap();
        std::fs::write(
            config_dir.path().join("pgkeep.toml"),
            format!(
                "[kube]\nnamespace = \"{ns}\"\nimage = \"{image}\"\nimage_pull_policy = \
                 \"IfNotPresent\"\nstorage_class = \"{class}\"\nmemory_request = \"128Mi\"\n\
                 cpu_request = \"50m\"\n\n[pvc.data]\nsize = \"1Gi\"\n\n[pvc.wal_archive]\n\
                 size = \"1Gi\"\n\n[pvc.backups]\nsize = \"1Gi\"\n"
            ),
        )
        .unwrap();
        println!(
            "e2e site: namespace {ns}, volumes under {}",
            pv_root.join(&ns).display()
        );
        Site {
            ns,
            pv_root,
            config_dir,
            timings: Default::default(),
        }
    }

    fn config(&self) -> PathBuf {
        self.config_dir.path().join("pgkeep.toml")
    }

    /// The host directory behind a claim.
    fn volume(&self, claim: &str) -> PathBuf {
        self.pv_root.join(&self.ns).join(claim)
    }

    /// `pgkeep --kube ARGS` with this site's settings; output is printed, returned, and timed.
    fn pgkeep(&self, flow: &str, args: &[&str]) -> Output {
        self.pgkeep_env(flow, args, &[])
    }

    fn pgkeep_env(&self, flow: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        println!("\n=== {flow}: pgkeep --kube {}", args.join(" "));
        let started = Instant::now();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgkeep"));
        cmd.arg("--kube")
            .args(args)
            .env("PGKEEP_CONFIG", self.config())
            .env_remove("PGKEEP_TARGET")
            .env_remove("PGPASSWORD")
            .current_dir(self.config_dir.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = run(&mut cmd);
        let took = started.elapsed();
        print!("{}", text(&out.stdout));
        eprint!("{}", text(&out.stderr));
        println!(
            "=== {flow}: exit {:?} after {:.1}s",
            out.status.code(),
            took.as_secs_f64()
        );
        self.timings.borrow_mut().push((flow.to_owned(), took));
        out
    }

    /// [`Self::pgkeep`], asserting success; returns stdout + stderr.
    fn pgkeep_ok(&self, flow: &str, args: &[&str]) -> String {
        let out = self.pgkeep(flow, args);
        assert!(
            out.status.success(),
            "`pgkeep --kube {}` failed with {:?}",
            args.join(" "),
            out.status.code()
        );
        text(&out.stdout) + &text(&out.stderr)
    }

    /// SQL in the running db container (psql over the socket as the postgres account).
    fn sql(&self, sql: &str) -> String {
        let out = run(kubectl().args([
            "-n",
            &self.ns,
            "exec",
            "deploy/postgres",
            "-c",
            "db",
            "--",
            "psql",
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "records",
            "-c",
            sql,
        ]));
        assert!(
            out.status.success(),
            "psql -c {sql:?} in the db pod failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_owned()
    }

    /// `kubectl get pod POD -o jsonpath=PATH` in this namespace.
    fn pod_jsonpath(&self, pod: &str, path: &str) -> String {
        kubectl_ok(&[
            "-n",
            &self.ns,
            "get",
            "pod",
            pod,
            "-o",
            &format!("jsonpath={path}"),
        ])
    }

    fn db_pod(&self) -> String {
        kubectl_ok(&[
            "-n",
            &self.ns,
            "get",
            "pods",
            "-l",
            "app=postgres",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
    }

    /// Wait until `check` holds, polling every second, or panic with `what` after `secs`.
    fn wait_for(&self, what: &str, secs: u64, mut check: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(secs);
        while !check() {
            assert!(
                Instant::now() < until,
                "timed out after {secs}s waiting for {what}"
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Wait until the db pod is Ready (`kubectl wait`), e.g. after the bootstrap Job scaled it
    /// up; panics after `secs`.
    fn wait_db_ready(&self, when: &str, secs: u64) {
        self.wait_for(&format!("the db pod to be Ready {when}"), secs, || {
            run(kubectl().args([
                "-n",
                &self.ns,
                "wait",
                "--for=condition=Ready",
                "pod",
                "-l",
                "app=postgres",
                "--timeout=5s",
            ]))
            .status
            .success()
        });
    }

    /// `GET /metrics` on the db pod's metrics port (9187), from its db container (bash's
    /// /dev/tcp: the pod shares one network namespace); the body, after checking the status.
    fn scrape_metrics(&self) -> String {
        let out = run(kubectl().args([
            "-n",
            &self.ns,
            "exec",
            "deploy/postgres",
            "-c",
            "db",
            "--",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9187 && printf 'GET /metrics HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && timeout 30 cat <&3",
        ]));
        let all = text(&out.stdout);
        assert!(
            out.status.success() && all.starts_with("HTTP/1.1 200"),
            "scraping :9187/metrics failed: {all}{}",
            text(&out.stderr)
        );
        println!("e2e: scraped {} bytes from :9187/metrics", all.len());
        all
    }

    fn print_timings(&self) {
        println!("\nflow wall times on namespace {}:", self.ns);
        for (flow, took) in self.timings.borrow().iter() {
            println!("  {flow:<40} {:>7.1}s", took.as_secs_f64());
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Leave a trail for the failure: what the namespace looked like.
            let out = run(kubectl().args(["-n", &self.ns, "get", "all,pvc,events", "-o", "wide"]));
            eprintln!(
                "--- namespace {} at failure:\n{}{}",
                self.ns,
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        let _ = run(kubectl().args(["delete", "namespace", &self.ns, "--wait=false"]));
        let _ = run(kubectl().args([
            "delete",
            "pv",
            "-l",
            &format!("pgkeep-e2e={}", self.ns),
            "--wait=false",
        ]));
    }
}

/// The value of an unlabelled sample in an exposition text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in: {text}"))
}

fn mode_and_owner(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

/// Names in the backups volume ending with `suffix`.
fn bundles(site: &Site, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(site.volume("pgbackups"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// `pgkeep --local backups verify` on this host, against the backups volume the cluster wrote.
fn verify_on_host(site: &Site) -> String {
    let out = run(Command::new(env!("CARGO_BIN_EXE_pgkeep"))
        .args(["--local", "backups", "verify"])
        .env("PGKEEP_BACKUPS", site.volume("pgbackups"))
        .env_remove("PGKEEP_CONFIG")
        .current_dir(site.config_dir.path()));
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(
        out.status.success(),
        "backups verify on the host failed:\n{all}"
    );
    all
}

#[test]
fn seed_flows_in_order() {
    let site = Site::new("flows");

    // --- pg.deploy: PVCs bound, Secret, Deployment Ready; init containers as the seed says.
    let out = site.pgkeep_ok("deploy", &["deploy", "--wait"]);
    assert!(
        out.contains("CronJob"),
        "deploy reports the CronJobs: {out}"
    );
    let pod = site.db_pod();
    let users = site.pod_jsonpath(
        &pod,
        "{range .spec.initContainers[*]}{.name}={.securityContext.runAsUser} {end}",
    );
    assert_eq!(
        users.trim(),
        "fix-run=0 prep-dirs=999",
        "init containers' users"
    );
    let exits = site.pod_jsonpath(
        &pod,
        "{range .status.initContainerStatuses[*]}{.name}={.state.terminated.exitCode} {end}",
    );
    assert_eq!(
        exits.trim(),
        "fix-run=0 prep-dirs=0",
        "init containers' exit codes"
    );
    let pgdata = site.volume("pgdata-big").join("data");
    assert_eq!(
        mode_and_owner(&pgdata),
        (0o700, 999, 999),
        "PGDATA on the PV"
    );
    assert!(pgdata.join("PG_VERSION").is_file(), "initdb ran on the PV");

    // --- pg.sanity, then a fixture.
    let out = site.pgkeep_ok("sanity", &["sanity"]);
    assert!(out.contains("records"), "sanity names the database: {out}");
    // The server is the major the image was built for (18 for the default image).
    let major = required_env(
        "PGKEEP_E2E_PG_MAJOR",
        "the PostgreSQL major the image runs (18 or 15)",
    );
    let version_num = site.sql("SHOW server_version_num");
    assert_eq!(
        version_num.parse::<u32>().map(|n| (n / 10000).to_string()),
        Ok(major),
        "server_version_num {version_num}"
    );
    site.sql(
        "CREATE TABLE fixture(id int PRIMARY KEY, note text);
         INSERT INTO fixture SELECT g, 'row ' || g FROM generate_series(1, 1000) g;",
    );

    // --- pg.backup.logical / pg.backup.physical as Jobs from the CronJobs' templates.
    // Each backup Job applies retention right after publishing its bundle (its log says so).
    let out = site.pgkeep_ok("backup logical", &["backup", "logical"]);
    assert!(out.contains("retention: kept"), "{out}");
    let out = site.pgkeep_ok("backup physical", &["backup", "physical"]);
    assert!(out.contains("retention: kept"), "{out}");
    // Complete bundles: verified by this host's pgkeep reading the volume directly, and by
    // `backups verify --kube` in the loader pod.
    let nightly = bundles(&site, ".tar.gz")
        .into_iter()
        .filter(|n| n.starts_with("nightly-"))
        .collect::<Vec<_>>();
    let base = bundles(&site, ".bundle.tar.zst");
    assert_eq!(
        (nightly.len(), base.len()),
        (1, 1),
        "{:?}",
        bundles(&site, "")
    );
    let verified = verify_on_host(&site);
    assert!(
        verified.contains(&format!("ok      {}", nightly[0]))
            && verified.contains(&format!("ok      {}", base[0])),
        "{verified}"
    );
    let listed = site.pgkeep_ok("backups list (loader pod)", &["backups", "list"]);
    assert!(
        listed.contains(&nightly[0]) && listed.contains(&base[0]),
        "{listed}"
    );
    let verified = site.pgkeep_ok("backups verify (loader pod)", &["backups", "verify"]);
    assert!(
        verified.contains(&format!("ok      {}", base[0])),
        "{verified}"
    );
    // Restore drills of both bundles, in a Job made from the physical CronJob: the live
    // database is untouched, the restored copy has the fixture's 1000 rows.
    let drilled = site.pgkeep_ok("drill (Job)", &["drill"]);
    assert!(
        drilled.contains("drill passed")
            && drilled.contains(&nightly[0])
            && drilled.contains(&base[0])
            && drilled.contains("1000"),
        "{drilled}"
    );
    // A real prune (a Job made from the physical CronJob, which mounts both volumes): both
    // bundles are kept, and the bootstrap below proves it kept the WAL the base backup needs.
    let pruned = site.pgkeep_ok("backups prune (Job)", &["backups", "prune"]);
    assert!(
        pruned.contains("keeping 2 backups") && pruned.contains("older than"),
        "{pruned}"
    );

    // --- writes after the base backup; T; later writes; PITR to T.
    site.sql("INSERT INTO fixture SELECT g, 'before T' FROM generate_series(1001, 1100) g;");
    std::thread::sleep(Duration::from_millis(1500));
    let t =
        site.sql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    std::thread::sleep(Duration::from_millis(1500));
    site.sql("INSERT INTO fixture SELECT g, 'after T' FROM generate_series(1101, 1200) g;");
    site.sql("SELECT pg_switch_wal()");
    // The segment holding the later writes must be in the archive before recovery can pass T.
    site.wait_for("the switched segment to be archived", 60, || {
        site.sql("SELECT last_archived_wal IS NOT NULL AND last_archived_wal >= pg_walfile_name(pg_current_wal_lsn() - 1) FROM pg_stat_archiver") == "t"
    });
    site.pgkeep_ok(
        "bootstrap basebackup --target-time T",
        &["bootstrap", "basebackup", "--target-time", &t, "--yes"],
    );
    site.wait_db_ready("after bootstrap", 180);
    assert_eq!(
        site.sql("SELECT pg_is_in_recovery()"),
        "f",
        "promoted after PITR"
    );
    assert_eq!(
        site.sql("SELECT count(*) FROM fixture"),
        "1100",
        "T's data, not later writes"
    );
    assert_eq!(
        site.sql("SELECT count(*) FROM fixture WHERE note = 'after T'"),
        "0"
    );

    // --- pg.wipe, then pg.restore.dump from the nightly bundle.
    let out = site.pgkeep_ok("wipe", &["wipe", "--yes"]);
    assert!(
        out.contains("BEFORE") && out.contains("AFTER"),
        "wipe shows its listings: {out}"
    );
    assert_eq!(
        std::fs::read_dir(&pgdata).map(|d| d.count()).unwrap_or(0),
        0,
        "PGDATA empty after wipe"
    );
    site.pgkeep_ok("scale 1 (after wipe)", &["scale", "1"]);
    site.pgkeep_ok("restore dump", &["restore", "dump", "--yes"]);
    assert_eq!(
        site.sql("SELECT count(*) FROM fixture"),
        "1000",
        "the nightly's rows are back"
    );
    // The fresh system (initdb after the wipe) archives into the root without clashing with the
    // earlier system's segments, which `serve` moved aside.
    site.sql("SELECT pg_switch_wal()");
    site.wait_for("the fresh system to archive a segment", 60, || {
        site.sql("SELECT archived_count > 0 FROM pg_stat_archiver") == "t"
    });
    assert_eq!(site.sql("SELECT failed_count FROM pg_stat_archiver"), "0");
    assert!(
        site.volume("pg-wal-archive").join("superseded").is_dir(),
        "the earlier system's WAL is kept aside"
    );

    // --- pg.restore.upload with a dump made on this host.
    let host = TempCluster::start();
    host.psql_script("postgres", "CREATE DATABASE records;");
    host.psql_script(
        "records",
        "CREATE TABLE from_host(id int); INSERT INTO from_host SELECT generate_series(1, 77);",
    );
    let dump_dir = tempfile::tempdir().unwrap();
    let dump = dump_dir.path().join("records.dump");
    std::os::unix::fs::chown(dump_dir.path(), Some(host.uid()), Some(host.gid())).unwrap();
    let out = run(host.server_cmd("pg_dump").args([
        "-Fc",
        "-d",
        "records",
        "-f",
        dump.to_str().unwrap(),
    ]));
    assert!(
        out.status.success(),
        "pg_dump on the host: {}",
        text(&out.stderr)
    );
    // Into a database that is not empty: refused by the restore Job, nothing changed ...
    let refused = site.pgkeep(
        "restore upload FILE (not empty: refused)",
        &["restore", "upload", dump.to_str().unwrap(), "--yes"],
    );
    let all = text(&refused.stdout) + &text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{all}");
    assert!(
        all.contains("is not empty"),
        "the Job's last lines say why: {all}"
    );
    assert_eq!(site.sql("SELECT count(*) FROM fixture"), "1000");
    // ... then with --clean, reusing the identical file already uploaded.
    site.pgkeep_ok(
        "restore upload FILE --clean",
        &[
            "restore",
            "upload",
            dump.to_str().unwrap(),
            "--clean",
            "--yes",
        ],
    );
    assert_eq!(
        site.sql("SELECT count(*) FROM from_host"),
        "77",
        "the host's dump is restored"
    );
    // --clean replaces the whole database (loaded into a scratch database, then swapped in):
    // what the dump does not have is gone, and no scratch or old database is left.
    assert_eq!(
        site.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'fixture'"),
        "0",
        "the database is exactly the dump"
    );
    assert_eq!(
        site.sql("SELECT count(*) FROM pg_database WHERE datname LIKE '%\\_\\_pgkeep\\_%'"),
        "0",
        "no scratch or replaced database left behind"
    );

    // --- pg.debug.perms, pg.space, status.
    let out = site.pgkeep_ok("debug perms", &["debug", "perms"]);
    assert!(
        out.contains("/var/lib/postgresql"),
        "debug perms shows the mounts: {out}"
    );
    let out = site.pgkeep_ok("space", &["space"]);
    for want in [
        "/var/lib/postgresql",
        "/wal-archive",
        "public.from_host",
        "records",
    ] {
        assert!(out.contains(want), "space shows {want}: {out}");
    }
    // Backups and a drill have run (their records are on the backups volume, read by the
    // metrics container): healthy, exit 0. The hostPath volumes share this machine's disk, so
    // the free-space floor is lowered here.
    let out = site.pgkeep("status", &["status", "--min-free-percent", "0"]);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "status: {all}");
    assert!(
        all.contains("server:      up")
            && all.contains("primary")
            && all.contains("health:      ok"),
        "status: {all}"
    );
    // The metrics container's exposition shows the backups and the drill.
    let m = site.pgkeep_ok("metrics (metrics container)", &["metrics"]);
    for want in [
        "pgkeep_up 1.0",
        "pgkeep_backup_last_success_timestamp_seconds{kind=\"logical\"}",
        "pgkeep_backup_last_success_timestamp_seconds{kind=\"physical\"}",
        "pgkeep_drill_last_result 1.0",
        "pgkeep_volume_free_bytes{volume=\"backups\"}",
    ] {
        assert!(m.contains(want), "metrics lack {want}: {m}");
    }
    // The drill CronJob was deployed with the base.
    kubectl_ok(&["-n", &site.ns, "get", "cronjob", "postgres-drill"]);

    // --- the metrics port, scraped as Prometheus does (GET /metrics on 9187 over the pod's
    // network, from the db container), then archiving broken on purpose and repaired.
    let scraped = site.scrape_metrics();
    for want in [
        "pgkeep_up 1",
        "pgkeep_backup_last_success_timestamp_seconds{kind=\"logical\"}",
        "pgkeep_backup_last_success_timestamp_seconds{kind=\"physical\"}",
        "pgkeep_backups{kind=\"physical\"} 1",
        "pgkeep_drill_last_result 1",
        "pgkeep_recovery_window_start_timestamp_seconds",
    ] {
        assert!(scraped.contains(want), "the scrape lacks {want}: {scraped}");
    }
    let failed_before = metric(&scraped, "pgkeep_wal_failed_total");
    let archive = site.volume("pg-wal-archive");
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o555)).unwrap();
    site.sql("INSERT INTO from_host VALUES (0)");
    site.sql("SELECT pg_switch_wal()");
    site.wait_for("archive_command to fail", 60, || {
        site.sql("SELECT failed_count > 0 FROM pg_stat_archiver") == "t"
    });
    let out = site.pgkeep(
        "status (archiving broken)",
        &["status", "--min-free-percent", "0"],
    );
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "status: {all}");
    assert!(all.contains("archiving_failing"), "status: {all}");
    let failed_after = metric(&site.scrape_metrics(), "pgkeep_wal_failed_total");
    assert!(
        failed_after > failed_before,
        "pgkeep_wal_failed_total rose: {failed_before} -> {failed_after}"
    );
    println!(
        "e2e: pgkeep_wal_failed_total {failed_before} -> {failed_after} with the archive unwritable"
    );
    std::fs::set_permissions(&archive, std::fs::Permissions::from_mode(0o755)).unwrap();
    // PostgreSQL retries a failing archive_command after a minute.
    site.wait_for("archiving to recover", 180, || {
        site.sql("SELECT last_archived_time > last_failed_time FROM pg_stat_archiver") == "t"
    });
    let out = site.pgkeep(
        "status (archiving repaired)",
        &["status", "--min-free-percent", "0"],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "status: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // --- pvc ensure against bound claims whose desired size differs: reported, not patched.
    let cfg = std::fs::read_to_string(site.config()).unwrap();
    std::fs::write(
        site.config(),
        cfg.replace("[pvc.data]\nsize = \"1Gi\"", "[pvc.data]\nsize = \"2Gi\""),
    )
    .unwrap();
    // A drift the user must act on: reported with the migration path, exit 1, nothing patched.
    let out = site.pgkeep("pvc ensure (size differs)", &["pvc", "ensure"]);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "pvc ensure reports the drift as a failure: {all}"
    );
    assert!(
        all.contains("wanted 2Gi, the claim has 1Gi") && all.contains("immutable"),
        "pvc ensure explains: {all}"
    );
    let size = kubectl_ok(&[
        "-n",
        &site.ns,
        "get",
        "pvc",
        "pgdata-big",
        "-o",
        "jsonpath={.spec.resources.requests.storage}",
    ]);
    assert_eq!(size, "1Gi", "the bound claim was not patched");

    site.print_timings();
}

#[test]
fn double_mount_never_starts_postgres() {
    let site = Site::new("double");
    // Claims, Secret and objects as `deploy` makes them, but scaled to 0 first so that no pod
    // touches the volume before the deployment has the bad shape.
    site.pgkeep_ok("pvc ensure", &["pvc", "ensure"]);
    let out_dir = tempfile::tempdir().unwrap();
    let rendered = run(Command::new(env!("CARGO_BIN_EXE_pgkeep"))
        .args(["render", "--out", out_dir.path().to_str().unwrap()])
        .env("PGKEEP_CONFIG", site.config()));
    assert!(
        rendered.status.success(),
        "render: {}",
        text(&rendered.stderr)
    );
    // The seed's pitfall: the data volume mounted at the volume root AND at PGDATA, as a user's
    // kustomize patch of the rendered Deployment (alone: kubectl 1.20 knows CronJob only as
    // batch/v1beta1, which `pgkeep deploy` adapts to and plain kubectl does not).
    let kz = out_dir.path().join("infra/k8s/overlays/doublemount");
    std::fs::create_dir_all(&kz).unwrap();
    // With the settings ConfigMap, which every pgkeep container mounts (not optional).
    for f in ["deploy.yaml", "configmap-settings.yaml"] {
        std::fs::copy(
            out_dir.path().join("infra/k8s/base/postgres").join(f),
            kz.join(f),
        )
        .unwrap();
    }
    std::fs::write(
        kz.join("kustomization.yaml"),
        "resources:\n- configmap-settings.yaml\n- deploy.yaml\npatchesJson6902:\n- target: {group: apps, version: v1, kind: Deployment, name: postgres}\n  path: double.yaml\n",
    )
    .unwrap();
    std::fs::write(
        kz.join("double.yaml"),
        "- op: add\n  path: /spec/template/spec/initContainers/1/volumeMounts/-\n  value: {name: data, mountPath: /var/lib/postgresql/data}\n\
         - op: add\n  path: /spec/template/spec/containers/0/volumeMounts/-\n  value: {name: data, mountPath: /var/lib/postgresql/data}\n",
    )
    .unwrap();
    let started = Instant::now();
    kubectl_ok(&["apply", "-k", kz.to_str().unwrap()]);
    // prep-dirs must fail on the guard: wait for its terminated state.
    let mut log = String::new();
    site.wait_for("prep-dirs to fail", 120, || {
        let code = kubectl_ok(&[
            "-n", &site.ns, "get", "pods", "-l", "app=postgres", "-o",
            "jsonpath={.items[0].status.initContainerStatuses[1].lastState.terminated.exitCode}{.items[0].status.initContainerStatuses[1].state.terminated.exitCode}",
        ]);
        if code.trim().is_empty() {
            return false;
        }
        log = kubectl_ok(&["-n", &site.ns, "logs", &site.db_pod(), "-c", "prep-dirs"]);
        true
    });
    site.timings
        .borrow_mut()
        .push(("double mount: prep-dirs refused".into(), started.elapsed()));
    println!("prep-dirs log:\n{log}");
    assert!(
        log.contains("refused: PGDATA /var/lib/postgresql/data is a mount point of its own")
            && log.contains("Nothing was written"),
        "the guard's message names PGDATA and the mount: {log}"
    );
    let running = kubectl_ok(&[
        "-n",
        &site.ns,
        "get",
        "pods",
        "-l",
        "app=postgres",
        "-o",
        "jsonpath={.items[0].status.containerStatuses[0].state.running}",
    ]);
    assert!(
        running.trim().is_empty(),
        "the db container never ran: {running}"
    );
    // The only entry is the runtime's mount point for the second mount (`data`, empty):
    // PGDATA, which is the volume root seen through that mount, got nothing.
    let data = site.volume("pgdata-big");
    let entries: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        entries.iter().all(|e| e == "data"),
        "nothing but the mount point in the data volume: {entries:?}"
    );
    if entries.len() == 1 {
        let inner = std::fs::read_dir(data.join("data")).unwrap().count();
        assert_eq!(inner, 0, "the mount point is empty");
    }
    site.print_timings();
}

/// Issue 21: flows under drift and hostile input. `deploy` while the database is scaled to 0
/// keeps 0 replicas; an upload named `x$(PGPASSWORD).sql` never expands into the password (not
/// in any output, nor in any pod's log), and when its restore is refused the upload is removed
/// from the backups volume; a PGDATA emptied by an unfinished bootstrap (its marker in the
/// volume root, as a bootstrap Job killed mid-extraction leaves it) is not initialized into an
/// empty database when the Deployment is scaled up.
#[test]
fn drift_and_hostile_input_never_change_what_they_must_not() {
    let site = Site::new("drift");
    site.pgkeep_ok("deploy", &["deploy", "--wait"]);
    let replicas = || {
        kubectl_ok(&[
            "-n",
            &site.ns,
            "get",
            "deployment",
            "postgres",
            "-o",
            "jsonpath={.spec.replicas}",
        ])
    };

    // --- deploy during a scale-down keeps 0 replicas.
    site.pgkeep_ok("scale 0", &["scale", "0"]);
    let out = site.pgkeep_ok("deploy (scaled to 0)", &["deploy"]);
    assert!(out.contains("replicas kept at 0"), "deploy says so: {out}");
    assert_eq!(replicas(), "0", "deploy kept 0 replicas");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(replicas(), "0", "still 0");
    site.pgkeep_ok("scale 1", &["scale", "1"]);

    // --- an upload named with $(PGPASSWORD): refused (the database is not empty), no trace of
    // the password anywhere, and the refused upload does not stay on the backups volume.
    site.sql("CREATE TABLE keep_me(x int); INSERT INTO keep_me VALUES (1);");
    let password = kubectl_ok(&[
        "-n",
        &site.ns,
        "get",
        "secret",
        "postgres-superuser",
        "-o",
        "go-template={{.data.password | base64decode}}",
    ]);
    assert!(password.len() >= 16, "read the password from the Secret");
    let dir = tempfile::tempdir().unwrap();
    let name = "x$(PGPASSWORD).sql";
    let file = dir.path().join(name);
    std::fs::write(&file, "CREATE TABLE from_upload(x int);\n").unwrap();
    let out = site.pgkeep(
        "restore upload x$(PGPASSWORD).sql (not empty: refused)",
        &["restore", "upload", file.to_str().unwrap()],
    );
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("is not empty"), "refused by the Job: {all}");
    assert!(
        all.contains(name),
        "the name is passed on as written: {all}"
    );
    assert!(
        !all.contains(&password),
        "the password leaked into the output"
    );
    let pods = kubectl_ok(&[
        "-n",
        &site.ns,
        "get",
        "pods",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name} {end}",
    ]);
    for pod in pods.split_whitespace() {
        let logs = run(kubectl().args(["-n", &site.ns, "logs", pod, "--all-containers"]));
        let logs = text(&logs.stdout) + &text(&logs.stderr);
        assert!(
            !logs.contains(&password),
            "the password leaked into pod/{pod}'s log"
        );
    }
    let jobs = kubectl_ok(&["-n", &site.ns, "get", "jobs", "-o", "yaml"]);
    assert!(
        !jobs.contains(&password),
        "the password is in a Job's spec or status"
    );
    assert!(
        jobs.contains("x$$(PGPASSWORD).sql"),
        "the Job's env holds the escaped name"
    );
    assert!(
        !site.volume("pgbackups").join(name).exists(),
        "the refused upload was removed from the backups volume"
    );
    assert_eq!(site.sql("SELECT count(*) FROM keep_me"), "1");

    // --- an unfinished bootstrap's marker: no initdb on the empty PGDATA at scale-up.
    site.pgkeep_ok("scale 0 (before the simulated bootstrap)", &["scale", "0"]);
    let pgroot = site.volume("pgdata-big");
    let pgdata = pgroot.join("data");
    for e in std::fs::read_dir(&pgdata).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let marker = pgroot.join(".pgkeep-bootstrap-in-progress");
    std::fs::write(&marker, "left by a killed bootstrap\n").unwrap();
    std::os::unix::fs::chown(&marker, Some(999), Some(999)).unwrap();
    kubectl_ok(&[
        "-n",
        &site.ns,
        "scale",
        "deployment/postgres",
        "--replicas=1",
    ]);
    let mut db_log = String::new();
    site.wait_for("the db container to refuse and exit", 180, || {
        let pods = kubectl_ok(&[
            "-n",
            &site.ns,
            "get",
            "pods",
            "-l",
            "app=postgres",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        let Some(pod) = pods.split_whitespace().next() else {
            return false;
        };
        let code = site.pod_jsonpath(
            pod,
            "{.status.containerStatuses[?(@.name==\"db\")].lastState.terminated.exitCode}{.status.containerStatuses[?(@.name==\"db\")].state.terminated.exitCode}",
        );
        if code.trim().is_empty() {
            return false;
        }
        assert!(code.trim().starts_with('3'), "the db container exits 3: {code}");
        db_log.clear();
        for previous in [false, true] {
            let mut cmd = kubectl();
            cmd.args(["-n", &site.ns, "logs", pod, "-c", "db"]);
            if previous {
                cmd.arg("--previous");
            }
            let out = run(&mut cmd);
            db_log.push_str(&text(&out.stdout));
            db_log.push_str(&text(&out.stderr));
        }
        true
    });
    assert!(
        db_log.contains(".pgkeep-bootstrap-in-progress"),
        "serve names the marker: {db_log}"
    );
    assert!(
        !pgdata.join("PG_VERSION").exists(),
        "no empty database was initialized"
    );
    site.print_timings();
}

/// Issue 21 items 1 and 3: a real SIGINT two seconds into `wipe --yes` (the db pod is still
/// going away) aborts before the wipe Job exists, scales back and leaves the data; the settings
/// of pgkeep.toml reach the pods through the deployed ConfigMap, and a local change not
/// deployed refuses a real prune, naming the key.
#[test]
fn ctrl_c_before_the_wipe_job_leaves_the_data_and_settings_reach_the_pods() {
    let site = Site::new("sigint");
    let toml = std::fs::read_to_string(site.config()).unwrap();
    std::fs::write(
        site.config(),
        format!("{toml}\n[retention]\nnightly = 30\n"),
    )
    .unwrap();
    site.pgkeep_ok("deploy", &["deploy", "--wait"]);
    site.sql("CREATE TABLE keep_me(x int); INSERT INTO keep_me VALUES (1);");

    // --- the prune Job reads the deployed retention (30, not the built-in 7).
    let out = site.pgkeep_ok("prune --dry-run", &["backups", "prune", "--dry-run"]);
    assert!(
        out.contains("retention: 30 nightly"),
        "the pod applies the deployed retention: {out}"
    );
    // --- a local change that was not deployed: a real prune is refused, naming the key.
    std::fs::write(
        site.config(),
        format!("{toml}\n[retention]\nnightly = 12\n"),
    )
    .unwrap();
    let out = site.pgkeep("prune (settings differ)", &["backups", "prune"]);
    let all = text(&out.stdout) + &text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{all}");
    assert!(
        all.contains("retention.nightly: here 12, deployed 30"),
        "{all}"
    );
    std::fs::write(
        site.config(),
        format!("{toml}\n[retention]\nnightly = 30\n"),
    )
    .unwrap();

    // --- Ctrl-C (a real SIGINT) two seconds into `wipe --yes`.
    println!("\n=== wipe --yes, SIGINT after 2 s");
    let child = Command::new(env!("CARGO_BIN_EXE_pgkeep"))
        .args(["--kube", "wipe", "--yes"])
        .env("PGKEEP_CONFIG", site.config())
        .env_remove("PGKEEP_TARGET")
        .current_dir(site.config_dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let kill = run(Command::new("kill").args(["-INT", &child.id().to_string()]));
    assert!(kill.status.success(), "kill -INT: {}", text(&kill.stderr));
    let out = child.wait_with_output().unwrap();
    let all = text(&out.stdout) + &text(&out.stderr);
    print!("{all}");
    assert_eq!(out.status.code(), Some(130), "{all}");
    assert!(
        all.contains("interrupted (Ctrl-C) before the pgdata-wipe-full Job was created"),
        "{all}"
    );
    let jobs = kubectl_ok(&[
        "-n",
        &site.ns,
        "get",
        "jobs",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    assert!(!jobs.contains("pgdata-wipe-full"), "no wipe Job: {jobs}");
    assert_eq!(
        kubectl_ok(&[
            "-n",
            &site.ns,
            "get",
            "deployment",
            "postgres",
            "-o",
            "jsonpath={.spec.replicas}",
        ]),
        "1",
        "scaled back to the replica it had"
    );
    site.pgkeep_ok("scale 1 (after the interrupted wipe)", &["scale", "1"]);
    assert_eq!(
        site.sql("SELECT count(*) FROM keep_me"),
        "1",
        "the data is there"
    );
    assert!(site.volume("pgdata-big").join("data/PG_VERSION").exists());
    site.print_timings();
}

/// The site's off-site settings and the two Secrets a user creates for them (from files, so no
/// value is on a command line): the S3 credentials (dummy ones: moto accepts any) and the age
/// identity.
fn offsite_site(tag: &str, endpoint: &str, recipient: &str, identity: &Path) -> Site {
    let site = Site::new(tag);
    let mut toml = std::fs::read_to_string(site.config()).unwrap();
    write!(
        toml,
        "\n[offsite]\nurl = \"s3://pgkeep-disaster/site\"\nendpoint = \"{endpoint}\"\n\
         recipients = \"{recipient}\"\nallow_http = true\ncredentials_secret = \"s3-keys\"\n\
         identity_secret = \"offsite-identity\"\n"
    )
    .unwrap();
    std::fs::write(site.config(), toml).unwrap();
    let keys = site.config_dir.path().join("s3-keys.env");
    std::fs::write(
        &keys,
        "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing-secret\nAWS_REGION=us-east-1\n",
    )
    .unwrap();
    kubectl_ok(&[
        "-n",
        &site.ns,
        "create",
        "secret",
        "generic",
        "s3-keys",
        &format!("--from-env-file={}", keys.display()),
    ]);
    kubectl_ok(&[
        "-n",
        &site.ns,
        "create",
        "secret",
        "generic",
        "offsite-identity",
        &format!("--from-file=identity={}", identity.display()),
    ]);
    site
}

/// The disaster: the namespace and every volume of the database are deleted; a fresh
/// deployment is bootstrapped to a point in time from the bucket and the identity alone.
#[test]
fn a_deleted_namespace_comes_back_from_the_bucket_alone() {
    let addr = required_env(
        "PGKEEP_E2E_S3_ADDR",
        "HOST:PORT for an S3 server the pods can reach (kubebox: 10.88.0.1 and a port in \
         KUBEBOX_HOST_PORTS, as e2e/kubebox.sh sets it)",
    );
    let (host, port) = addr
        .rsplit_once(':')
        .expect("PGKEEP_E2E_S3_ADDR is HOST:PORT");
    let s3 = pgkeep_testkit::s3::S3Server::start_at(host, port.parse().unwrap(), "pgkeep-disaster");
    let keys_dir = tempfile::tempdir().unwrap();
    let identity = keys_dir.path().join("offsite.key");
    let out = run(Command::new(env!("CARGO_BIN_EXE_pgkeep"))
        .args(["offsite", "keygen", "--out"])
        .arg(&identity));
    assert!(out.status.success(), "keygen: {}", text(&out.stderr));
    let recipient = text(&out.stdout).trim().to_owned();

    let old = offsite_site("offsite", &s3.endpoint(), &recipient, &identity);
    let out = old.pgkeep_ok("deploy (with off-site copies)", &["deploy", "--wait"]);
    assert!(out.contains("CronJob"), "{out}");
    let containers = old.pod_jsonpath(&old.db_pod(), "{.spec.containers[*].name}");
    assert!(
        containers.contains("offsite"),
        "the follower runs: {containers}"
    );
    old.sql("CREATE TABLE t (id int PRIMARY KEY, note text); INSERT INTO t VALUES (1, 'before the base backup')");
    old.pgkeep_ok(
        "backup physical (uploads its bundle)",
        &["backup", "physical"],
    );
    let sysid = old.sql("SELECT system_identifier FROM pg_control_system()");
    let uploaded_bundle = s3
        .keys()
        .into_iter()
        .find(|k| k.starts_with(&format!("site/{sysid}/backups/basebackup-")));
    assert!(
        uploaded_bundle.is_some(),
        "the backup Job copied its bundle off-site: {:?}",
        s3.keys()
    );
    old.sql("INSERT INTO t VALUES (2, 'before T')");
    let t =
        old.sql("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')");
    std::thread::sleep(Duration::from_millis(1500));
    old.sql("INSERT INTO t VALUES (3, 'after T')");
    let segment = old.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    old.sql("SELECT pg_switch_wal()");
    old.wait_for(
        "the follower to copy the switched segment off-site",
        180,
        || {
            s3.keys()
                .iter()
                .any(|k| k.starts_with(&format!("site/{sysid}/wal/{segment}")))
        },
    );
    // The follower's status reaches the metrics.
    old.wait_for("the off-site metrics to show a completed round", 60, || {
        let m = old.scrape_metrics();
        m.lines().any(|l| {
            l.starts_with("pgkeep_offsite_last_sync_timestamp_seconds ") && !l.ends_with(" 0")
        }) && m.contains("pgkeep_offsite_backups{kind=\"physical\"} 1")
    });
    let objects = s3.keys().len();

    // The disaster: the namespace with every claim, and the volumes' data.
    let started = Instant::now();
    kubectl_ok(&["delete", "namespace", &old.ns, "--timeout=300s"]);
    kubectl_ok(&["delete", "pv", "-l", &format!("pgkeep-e2e={}", old.ns)]);
    std::fs::remove_dir_all(old.pv_root.join(&old.ns)).unwrap();
    old.timings.borrow_mut().push((
        "disaster: namespace and volumes deleted".into(),
        started.elapsed(),
    ));
    old.print_timings();
    drop(old);

    let new = offsite_site("offsite-new", &s3.endpoint(), &recipient, &identity);
    new.pgkeep_ok("deploy (fresh, after the disaster)", &["deploy", "--wait"]);
    assert_eq!(
        new.sql("SELECT count(*) FROM pg_tables WHERE tablename = 't'"),
        "0"
    );
    let out = new.pgkeep_ok(
        "bootstrap basebackup --offsite --target-time T",
        &[
            "bootstrap",
            "basebackup",
            "--offsite",
            "--target-time",
            &t,
            "--yes",
        ],
    );
    println!("bootstrap from off-site:\n{out}");
    new.wait_db_ready("after bootstrap", 240);
    assert_eq!(new.sql("SELECT pg_is_in_recovery()"), "f", "promoted");
    assert_eq!(
        new.sql("SELECT string_agg(note, ',' ORDER BY id) FROM t"),
        "before the base backup,before T",
        "T's data, nothing later"
    );
    assert_eq!(
        new.sql("SELECT system_identifier FROM pg_control_system()"),
        sysid,
        "the lost system is back"
    );
    assert!(s3.keys().len() >= objects, "nothing off-site was lost");
    new.print_timings();
}

/// Issue 18: `wal.stream = sync` on a real cluster. The db pod's `walstream` container streams
/// as the synchronous standby; after a base backup, single-row commits (each acknowledged) land
/// only in the stream's partial segment (archive_timeout off, no segment switch); then the data
/// is lost (scaled to 0, PGDATA's contents deleted on the PV) and `bootstrap basebackup`
/// recovers from the base backup, the archive and the streamed partial: no acknowledged row is
/// missing.
#[test]
fn synchronous_stream_loses_no_acknowledged_commit_with_the_data() {
    let site = Site::new("rpo");
    let mut toml = std::fs::read_to_string(site.config()).unwrap();
    toml.push_str("\n[wal]\nstream = \"sync\"\narchive_timeout = 0\n");
    std::fs::write(site.config(), toml).unwrap();
    site.pgkeep_ok("deploy (wal.stream = sync)", &["deploy", "--wait"]);
    let streaming = || {
        site.sql(
            "SELECT coalesce(max(sync_state), '') FROM pg_stat_replication \
             WHERE application_name = 'pgkeep' AND state = 'streaming'",
        ) == "sync"
    };
    site.wait_for(
        "the walstream container to stream as the synchronous standby",
        180,
        streaming,
    );
    assert_eq!(site.sql("SHOW synchronous_standby_names"), "pgkeep");
    site.sql("CREATE TABLE acked(id int PRIMARY KEY)");
    site.pgkeep_ok("backup physical", &["backup", "physical"]);

    let mut acked = 0;
    for id in 1..=20 {
        site.sql(&format!("INSERT INTO acked VALUES ({id})"));
        acked = id;
    }
    let last_archived = site.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
    let current = site.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    println!(
        "e2e rpo: {acked} commits acknowledged; current segment {current}, last archived {last_archived}"
    );

    assert!(
        last_archived.as_str() < current.as_str(),
        "the commits' segment must not be archived yet, or the stream proves nothing"
    );

    // The data is lost, as with a dead node and its disk: PGDATA's contents deleted on the PV
    // and every server process SIGKILLed (no shutdown, so no last segment switch and archive).
    // The marker an unfinished bootstrap leaves keeps the restarted db container from
    // initializing a new database on the empty PGDATA (it exits 3) until the bootstrap.
    let pgroot = site.volume("pgdata-big");
    let marker = pgroot.join(".pgkeep-bootstrap-in-progress");
    std::fs::write(&marker, "the data volume was lost\n").unwrap();
    std::os::unix::fs::chown(&marker, Some(999), Some(999)).unwrap();
    let pgdata = pgroot.join("data");
    for e in std::fs::read_dir(&pgdata).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
    }
    // Every process of the db container but its PID 1 (serve) and this shell.
    let _ = run(kubectl().args([
        "-n",
        &site.ns,
        "exec",
        "deploy/postgres",
        "-c",
        "db",
        "--",
        "sh",
        "-c",
        "kill -9 -1",
    ]));
    let spooled: Vec<String> = std::fs::read_dir(site.volume("pg-wal-archive").join("stream"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    println!("e2e rpo: the stream's spool holds {spooled:?}");

    site.pgkeep_ok(
        "bootstrap basebackup",
        &["bootstrap", "basebackup", "--yes"],
    );
    site.wait_db_ready("after bootstrap", 240);
    let back = site.sql("SELECT count(*) FROM acked WHERE id BETWEEN 1 AND 20");
    let missing = acked - back.parse::<i32>().unwrap();
    println!("e2e rpo: wal.stream = sync: {acked} acknowledged, {back} back, {missing} lost");
    assert_eq!(
        missing, 0,
        "acknowledged commits lost with synchronous streaming"
    );
    site.print_timings();
}
