//! `pgkeep lint`: check Kubernetes YAML files or directories (multi-document, kustomization
//! files; rendered by pgkeep or written by hand) for the pitfalls that lose data. Findings go to
//! stdout (human text, `--format json` or `--format sarif`); the exit code is 1 when any
//! finding is an error, or with `--strict` (setting `lint.strict`) any finding at all.

use std::path::PathBuf;

use pgkeep_kube::lint::{self, report};

use crate::cli::Ctx;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Format {
    #[default]
    Human,
    Json,
    Sarif,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// YAML files or directories to check (default: the current directory).
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Fail on warnings too (setting `lint.strict`, PGKEEP_LINT_STRICT).
    #[arg(long)]
    pub strict: bool,
}

/// Lint found errors (exit 1).
#[derive(Debug)]
pub struct LintFailed {
    pub errors: usize,
    /// Counted only under --strict.
    pub warnings: usize,
}

impl std::fmt::Display for LintFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.warnings > 0 {
            write!(
                f,
                "lint found {} error(s) and {} warning(s), and strict mode fails on warnings; each finding above says how to fix it",
                self.errors, self.warnings
            )
        } else {
            write!(
                f,
                "lint found {} error(s); each finding above says how to fix it",
                self.errors
            )
        }
    }
}
impl std::error::Error for LintFailed {}

pub async fn run(args: Args, ctx: Ctx) -> anyhow::Result<()> {
    let strict = args.strict || ctx.settings().lint.strict;
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths
    };
    let r = lint::lint_paths(&paths)?;
    match args.format {
        Format::Human => print!("{}", report::human(&r)),
        Format::Json => crate::output::print_json(&report::json(&r))?,
        Format::Sarif => crate::output::print_json(&report::sarif(&r, env!("CARGO_PKG_VERSION")))?,
    }
    let warnings = if strict { r.warnings() } else { 0 };
    if r.errors() > 0 || warnings > 0 {
        return Err(LintFailed {
            errors: r.errors(),
            warnings,
        }
        .into());
    }
    Ok(())
}
