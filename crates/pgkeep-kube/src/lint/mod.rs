//! `pgkeep lint`: checks Kubernetes YAML, rendered by pgkeep or written by a person, for the
//! pitfalls that lose PostgreSQL data or weaken the pod, and reports each finding with a rule
//! id, a severity, the object and file, and a one-paragraph fix. The safe patterns people
//! publish (a `subPath` mount, PGDATA in a subdirectory of the mount, the official image's
//! entrypoint switching to postgres, a sidecar reading the data volume) are not errors.
//!
//! The checks work on untyped documents (a hand-written file need not match any schema to be
//! checked) and are pure functions of the loaded files, except that a kustomization's
//! `resources` are read from disk when they are not among the inputs.

pub mod load;
pub mod report;
pub mod rules;
mod workload;

use std::path::PathBuf;

use serde::Serialize;

pub use load::{LintError, Source, load_paths};
pub use rules::{RULES, Rule};

/// How bad a finding is. `Error` is kept for configurations that lose data or block
/// recovery (they fail `pgkeep lint`); everything else is a `Warning` (fails only `--strict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// The object a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub object: ObjectRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
    pub fix: &'static str,
}

/// The result of a lint run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub files: usize,
    pub objects: usize,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn errors(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }

    pub fn warnings(&self) -> usize {
        self.findings.len() - self.errors()
    }
}

/// Lint loaded sources.
pub fn lint(sources: &[Source]) -> Report {
    let mut findings = rules::check_all(sources);
    findings.sort_by(|a, b| {
        (&a.file, a.line, a.rule, &a.container).cmp(&(&b.file, b.line, b.rule, &b.container))
    });
    findings.dedup();
    Report {
        files: sources.len(),
        objects: sources.iter().map(|s| s.docs.len()).sum(),
        findings,
    }
}

/// Load and lint files and directories.
pub fn lint_paths(paths: &[PathBuf]) -> Result<Report, LintError> {
    Ok(lint(&load_paths(paths)?))
}

#[cfg(test)]
mod tests;

/// The major version in an official postgres image reference (`postgres:18-bookworm` → 18).
pub fn workload_image_major(image: &str) -> Option<u32> {
    let i = workload::ImageInfo::parse(image);
    i.official_postgres.then_some(i.major).flatten()
}
