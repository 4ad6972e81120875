//! `pgkeep restore upload FILE` (local meaning of the seed's restore-from-upload job): copy FILE
//! into `uploads/` on the backups volume (never among the backups) atomically with a checksum check, then restore it. Accepted: a
//! pgkeep bundle, any .tar.gz with a *.dir directory dump or *.sql / *.sql.gz files, a bare
//! .sql, .sql.gz or custom-format .dump; anything else is refused with what was found.
//!
//! `--kube`: the same refusal and the same confirmation before anything is sent; then the
//! backups-loader pod up, FILE streamed into its `uploads/` under its own name with a progress bar (the
//! checksum verified in the pod by `pgkeep receive` before it becomes visible; an identical
//! file already there is reused, a different one refused), then the restore-from-upload Job,
//! pointed at that file and given these options, and its outcome with its last 50 log lines.
//! A file uploaded for this restore is removed by the Job when the restore is refused
//! (`--remove-if-refused`), as the local copy is; a reused one stays.

use std::path::Path;

use k8s_openapi::api::batch::v1::Job;
use pgkeep_engine::logical::{LogicalError, RestoreSource};
use pgkeep_engine::settings::{Settings, Target};
use pgkeep_engine::upload::{self, FileKind};
use pgkeep_kube::manifests::jobs;
use pgkeep_kube::ops::exec::{KubeExec, KubeLogs, UploadPhase, UploadProgress, UploadRequest};
use pgkeep_kube::ops::flows;
use pgkeep_kube::ops::job::JobOutcome;

use crate::cli::Ctx;
use crate::commands::restore_dump::{RestoreArgs, restore};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The dump file: a pgkeep bundle, a .tar.gz with a *.dir dump or *.sql files, .sql, .sql.gz or .dump.
    pub file: std::path::PathBuf,
    #[command(flatten)]
    pub restore: RestoreArgs,
    /// FILE was uploaded into the backups directory for this restore (set by `--kube` for the
    /// restore-from-upload Job): remove it when the restore is refused, as a local copy is.
    #[arg(long, hide = true)]
    pub remove_if_refused: bool,
}

impl Args {
    /// This command's line (after `pgkeep`) with every option as parsed here, for the same
    /// command run in a pod; `cli.rs` tests that it parses back to the same arguments. (The
    /// Job's rendered command has the command words; it gets the options alone.)
    #[cfg(test)]
    pub fn to_argv(&self) -> Vec<String> {
        let mut a = vec![
            "restore".to_owned(),
            "upload".to_owned(),
            self.file.display().to_string(),
        ];
        a.extend(self.restore.options());
        if self.remove_if_refused {
            a.push(jobs::REMOVE_IF_REFUSED.to_owned());
        }
        a
    }
}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if ctx.target() == Target::Kube {
        return upload_kube(args, ctx).await;
    }
    if !args.file.is_file() {
        return Err(LogicalError::NoSuchFile { path: args.file }.into());
    }
    // Refuse what cannot be restored before copying anything.
    if let FileKind::Other(found) = upload::sniff(&args.file)? {
        return Err(LogicalError::Unrecognised {
            path: args.file,
            found,
        }
        .into());
    }
    let uploads = upload::uploads_dir(&ctx.settings().paths.backups)?;
    let (copied, created) = upload::copy_into(&args.file, &uploads)?;
    tracing::info!(path = %copied.display(), "uploaded");
    // When the upload turns out not to be restorable (checked before the database is touched),
    // the copy is removed again: a refused upload leaves the backups directory as it was.
    let remove_on_refusal = (created || args.remove_if_refused).then(|| copied.clone());
    restore(
        RestoreSource::File(copied),
        &args.restore,
        &ctx,
        remove_on_refusal.as_deref(),
    )
    .await
}

/// The file name FILE keeps in the backups directory (refused like the local copy refuses it).
fn upload_name(file: &Path) -> Result<String, LogicalError> {
    file.file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.starts_with('.'))
        .map(str::to_owned)
        .ok_or_else(|| LogicalError::Unrecognised {
            path: file.to_owned(),
            found: "a file name pgkeep cannot use (hidden or not UTF-8)".into(),
        })
}

/// The restore-from-upload Job for the file at `dest` in the pod, with the restore options.
/// The args name the file as $(PGKEEP_UPLOAD_FILE), which the Job's env points at the upload
/// (escaped: a `$(PGPASSWORD)` in its name stays text). `--yes` only when confirmed here.
pub(crate) fn upload_job(s: &Settings, dest: &str, r: &RestoreArgs) -> Job {
    jobs::restore_from_upload(s, Some(dest), &r.options())
}

/// `--kube`; see the module docs.
async fn upload_kube(mut args: Args, ctx: Ctx) -> anyhow::Result<()> {
    if !args.file.is_file() {
        return Err(LogicalError::NoSuchFile { path: args.file }.into());
    }
    if let FileKind::Other(found) = upload::sniff(&args.file)? {
        return Err(LogicalError::Unrecognised {
            path: args.file,
            found,
        }
        .into());
    }
    let name = upload_name(&args.file)?;
    let s = ctx.settings();
    if args.restore.clean {
        // As the local restore asks before --clean drops anything; the Job then has --yes.
        crate::output::confirm(
            &format!(
                "This restores {} with --clean into the database of deployment/{} in namespace {}, replacing the database once the dump has loaded.",
                args.file.display(),
                s.kube.deployment,
                s.kube.namespace
            ),
            args.restore.yes,
        )?;
        args.restore.yes = true;
    }
    // From the first request on, Ctrl-C aborts before the restore Job exists (upload included).
    let mut stop = crate::cluster::Stop::install()?;
    let (cluster, ctx) = crate::cluster::connect_checked_stoppable(
        &ctx,
        pgkeep_kube::ops::deployed::Intent::Destroy("restore an upload into the database".into()),
        &mut stop,
    )
    .await?;
    let s = ctx.settings();
    let dest = format!(
        "{}/{}/{name}",
        s.paths.backups.display(),
        upload::UPLOADS_DIR
    );
    let loader = jobs::backups_loader(s);
    let upload = UploadRequest {
        pod: loader
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| jobs::LOADER.into()),
        container: pgkeep_kube::ops::pods::first_container(&loader),
        program: "pgkeep".into(),
        dest: dest.clone(),
    };
    let size = std::fs::metadata(&args.file)?.len();
    let bar = crate::output::progress(size, &format!("checksumming {name}"), true);
    let mut sending = false;
    let mut on_progress = |p: UploadProgress| {
        if p.phase == UploadPhase::Sending && !sending {
            sending = true;
            bar.set_message(format!("uploading {name}"));
        }
        bar.set_position(p.done);
    };
    let exec = KubeExec {
        cluster: cluster.clone(),
    };
    let logs = KubeLogs {
        cluster: cluster.clone(),
    };
    tracing::info!(
        "uploading {name}, then the restore-from-upload Job runs (its last 50 log lines are shown when it ends)"
    );
    let input = flows::UploadInput {
        loader: &loader,
        loader_wait: crate::cluster::wait_secs(300),
        local: &args.file,
        upload: &upload,
    };
    let run = flows::FlowCtx {
        logs: &logs,
        sink: &mut std::io::sink(),
        stop: stop.into_future(),
        opts: &crate::cluster::job_options(),
    };
    let report = flows::restore_upload(
        &cluster,
        &input,
        &exec,
        &mut on_progress,
        upload_job(s, &dest, &args.restore),
        run,
    )
    .await;
    bar.finish_and_clear();
    let report = report?;
    if report.loader.created {
        println!("pod/{} created", report.loader.pod);
    }
    if report.reused {
        println!(
            "{} is already in pod/{} (same sha256 {}); not sent again",
            report.uploaded.dest, report.loader.pod, report.uploaded.sha256
        );
    } else {
        println!(
            "uploaded {} to pod/{}:{} ({} bytes, sha256 {} verified in the pod)",
            args.file.display(),
            report.loader.pod,
            report.uploaded.dest,
            report.uploaded.size,
            report.uploaded.sha256
        );
    }
    if let JobOutcome::Succeeded { last_lines, .. } = &report.job {
        for l in last_lines {
            println!("{l}");
        }
    }
    println!("{}", report.job);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restore_args(clean: bool, yes: bool) -> RestoreArgs {
        RestoreArgs {
            jobs: Some(4),
            clean,
            keep_old: false,
            yes,
            keep_going: false,
            json: false,
        }
    }

    #[test]
    fn the_job_restores_the_uploaded_file_with_the_options() {
        let s = Settings::default();
        let job = upload_job(
            &s,
            "/backups/uploads/records_dump_20251102.tar.gz",
            &restore_args(true, true),
        );
        let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
        let args = c.args.clone().unwrap();
        assert_eq!(
            args,
            [
                "restore",
                "upload",
                "$(PGKEEP_UPLOAD_FILE)",
                "--jobs",
                "4",
                "--clean",
                "--yes"
            ]
        );
        // The kubelet expands $(PGKEEP_UPLOAD_FILE) from the container's env: it must name the
        // uploaded file, not the rendered placeholder.
        let file: Vec<_> = c
            .env
            .iter()
            .flatten()
            .filter(|e| e.name == jobs::UPLOAD_FILE_ENV)
            .collect();
        assert_eq!(file.len(), 1);
        assert_eq!(
            file[0].value.as_deref(),
            Some("/backups/uploads/records_dump_20251102.tar.gz")
        );
    }

    #[test]
    fn the_jobs_remove_flag_is_the_one_this_command_parses() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "pgkeep",
            "restore",
            "upload",
            "/backups/x.sql",
            jobs::REMOVE_IF_REFUSED,
        ])
        .unwrap();
        let crate::cli::Command::Restore(crate::cli::RestoreCommand::Upload(a)) = cli.command
        else {
            unreachable!()
        };
        assert!(a.remove_if_refused);
    }

    #[test]
    fn without_clean_the_job_is_not_told_yes() {
        assert_eq!(restore_args(false, false).options(), ["--jobs", "4"]);
    }

    #[test]
    fn the_upload_keeps_the_file_name_but_never_a_hidden_one() {
        assert_eq!(
            upload_name(Path::new("./dumps/records_dump_20251102.tar.gz")).unwrap(),
            "records_dump_20251102.tar.gz"
        );
        assert!(upload_name(Path::new("/tmp/.hidden.tar.gz")).is_err());
        assert!(upload_name(Path::new("/")).is_err());
    }
}
