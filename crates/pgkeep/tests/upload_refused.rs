//! What the restore-from-upload Job runs with `--kube`: the file is already on the backups
//! volume (the CLI uploaded it), so `pgkeep restore upload` copies nothing; when the CLI
//! uploaded it for this restore it passes `--remove-if-refused`, and a refused restore removes
//! the file, as a local upload's copy is removed. A file it did not upload stays.

use std::path::Path;

use assert_cmd::Command;
use pgkeep_testkit::{TempCluster, output_text};

fn tar_gz_with_nothing_to_restore(path: &Path) {
    let f = std::fs::File::create(path).unwrap();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        f,
        flate2::Compression::default(),
    ));
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    tar.append_data(&mut h, "notes.txt", &b"hi"[..]).unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn a_refused_upload_in_place_is_removed_only_when_it_was_uploaded_for_this_restore() {
    let c = TempCluster::start();
    c.psql("postgres", "create database records");
    // Where the CLI puts an upload on the backups volume: uploads/, never among the backups.
    std::fs::create_dir_all(c.backups().join("uploads")).unwrap();
    let upload = c.backups().join("uploads/records_dump_20261201.tar.gz");
    for (flag, kept) in [(None, true), (Some("--remove-if-refused"), false)] {
        tar_gz_with_nothing_to_restore(&upload);
        let mut cmd = Command::cargo_bin("pgkeep").unwrap();
        cmd.envs(c.env())
            .env("PGKEEP_DATABASE", "records")
            .args(["restore", "upload"])
            .arg(&upload)
            .args(flag);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
        assert!(output_text(&out).contains("nothing to restore"));
        assert_eq!(upload.exists(), kept, "{flag:?}");
    }
}
