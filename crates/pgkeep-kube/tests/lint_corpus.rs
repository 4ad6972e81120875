//! The lint corpus (issue 20): six hand-written manifests of the kinds people publish
//! (`tests/lint-corpus/`) and the rendered tree, each linted on its own with its findings as
//! an insta snapshot, and the README's table of which rule fires on which pattern checked
//! against them.

use std::path::{Path, PathBuf};

use pgkeep_engine::settings::Settings;
use pgkeep_kube::lint::{self, RULES, Report, Severity};

const CORPUS: &[&str] = &[
    "1-pod-subpath",
    "2-statefulset-pgdata-subdir",
    "3-statefulset-volume-root",
    "4-deployment-rolling-rwo",
    "5-deployment-emptydir",
    "6-statefulset-backup-sidecar",
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lint-corpus")
}

fn lint_fixture(name: &str) -> Report {
    lint::lint_paths(&[corpus_dir().join(format!("{name}.yaml"))]).unwrap()
}

/// The rendered default tree, linted as a directory (its own tempdir removed on return).
fn lint_rendered() -> Report {
    let t = tempfile::tempdir().unwrap();
    pgkeep_kube::manifests::render(&Settings::default())
        .write_to(t.path())
        .unwrap();
    let mut r = lint::lint_paths(&[t.path().to_owned()]).unwrap();
    for f in &mut r.findings {
        f.file = f.file.strip_prefix(t.path()).unwrap().to_owned();
    }
    r
}

/// Exit code of `pgkeep lint` without and with --strict.
fn exits(r: &Report) -> (i32, i32) {
    let plain = i32::from(r.errors() > 0);
    (plain, i32::from(!r.findings.is_empty()))
}

/// One line per finding (the fix paragraphs are the rules', shown by `pgkeep lint`).
fn compact(r: &Report) -> String {
    let (plain, strict) = exits(r);
    let mut out = format!(
        "exit {plain}, with --strict {strict}: {} error(s), {} warning(s)\n",
        r.errors(),
        r.warnings()
    );
    for f in &r.findings {
        out.push_str(&format!(
            "{} {} {}: {}{} ({}:{}): {}\n",
            f.severity.as_str(),
            f.rule,
            f.name,
            f.object,
            f.container
                .as_ref()
                .map(|c| format!(", container {c}"))
                .unwrap_or_default(),
            f.file.file_name().unwrap().to_string_lossy(),
            f.line,
            f.message
        ));
    }
    out
}

#[test]
fn corpus_findings() {
    for name in CORPUS {
        insta::assert_snapshot!(*name, compact(&lint_fixture(name)));
    }
}

#[test]
fn rendered_tree_findings() {
    let r = lint_rendered();
    insta::assert_snapshot!("rendered", compact(&r));
    assert_eq!(exits(&r), (0, 0), "the rendered tree passes --strict");
}

#[test]
fn safe_patterns_pass_and_data_loss_fails_naming_it() {
    for name in [
        "1-pod-subpath",
        "2-statefulset-pgdata-subdir",
        "3-statefulset-volume-root",
        "6-statefulset-backup-sidecar",
    ] {
        let r = lint_fixture(name);
        assert_eq!(r.errors(), 0, "{name}:\n{}", compact(&r));
    }
    for (name, rule) in [
        ("4-deployment-rolling-rwo", "rwo-rolling-update"),
        ("5-deployment-emptydir", "data-not-persistent"),
    ] {
        let r = lint_fixture(name);
        assert!(
            r.findings
                .iter()
                .any(|f| f.name == rule && f.severity == Severity::Error),
            "{name}:\n{}",
            compact(&r)
        );
    }
}

/// The README's table: each rule's count per corpus file and on the rendered tree.
fn count_table() -> String {
    let mut reports: Vec<Report> = CORPUS.iter().map(|n| lint_fixture(n)).collect();
    reports.push(lint_rendered());
    let mut out = String::from("| rule | severity |");
    for i in 1..=CORPUS.len() {
        out.push_str(&format!(" {i} |"));
    }
    out.push_str(" rendered |\n|---|---|");
    out.push_str(&"---:|".repeat(reports.len()));
    out.push('\n');
    for rule in RULES {
        out.push_str(&format!(
            "| {} {} | {} |",
            rule.id,
            rule.name,
            rule.severity.as_str()
        ));
        for r in &reports {
            let n = r.findings.iter().filter(|f| f.rule == rule.id).count();
            if n == 0 {
                out.push_str(" · |");
            } else {
                out.push_str(&format!(" {n} |"));
            }
        }
        out.push('\n');
    }
    out.push_str("| exit code (with `--strict`) | |");
    for r in &reports {
        let (plain, strict) = exits(r);
        out.push_str(&format!(" {plain} ({strict}) |"));
    }
    out.push('\n');
    out
}

#[test]
fn readme_counts_match_the_corpus() {
    let table = count_table();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    assert!(
        readme.contains(&table),
        "README.md's lint section must hold this table (paste it in):\n\n{table}"
    );
}
