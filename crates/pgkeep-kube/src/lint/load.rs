//! Reading the inputs: YAML files, and directories walked for `*.yaml` / `*.yml`.

use std::path::{Path, PathBuf};

use crate::yaml::{self, Document, YamlError};

#[derive(Debug, thiserror::Error)]
pub enum LintError {
    #[error("could not read {path}: {source}\nhint: pass YAML files or directories that exist")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Yaml(#[from] YamlError),
    #[error(
        "no YAML files (*.yaml, *.yml) under {0}\nhint: pass the directory of your manifests, e.g. `pgkeep lint deploy/`"
    )]
    Empty(String),
}

/// One input file and its documents.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    pub path: PathBuf,
    pub docs: Vec<Document>,
}

impl Source {
    pub fn parse(path: impl Into<PathBuf>, text: &str) -> Result<Source, LintError> {
        let path = path.into();
        let docs = yaml::parse_documents(&path.display().to_string(), text)?;
        Ok(Source { path, docs })
    }

    pub fn read(path: &Path) -> Result<Source, LintError> {
        let text = std::fs::read_to_string(path).map_err(|source| LintError::Read {
            path: path.to_owned(),
            source,
        })?;
        Source::parse(path, &text)
    }
}

fn is_yaml(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    )
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LintError> {
    let read = |e| LintError::Read {
        path: dir.to_owned(),
        source: e,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(read)?;
    entries.sort();
    for p in entries {
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            walk(&p, out)?;
        } else if is_yaml(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Load files and directories (recursively), in a stable order, each file once.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<Source>, LintError> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|source| LintError::Read {
            path: p.clone(),
            source,
        })?;
        if meta.is_dir() {
            let before = files.len();
            walk(p, &mut files)?;
            if files.len() == before {
                return Err(LintError::Empty(p.display().to_string()));
            }
        } else {
            files.push(p.clone());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    files.retain(|f| seen.insert(f.canonicalize().unwrap_or_else(|_| f.clone())));
    files.iter().map(|f| Source::read(f)).collect()
}
