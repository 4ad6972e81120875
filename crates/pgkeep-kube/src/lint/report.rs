//! Writing a lint report: for people (default), as JSON, and as SARIF 2.1.0 (code scanning).

use serde_json::{Value, json};

use super::rules::RULES;
use super::{Report, Severity};

/// Human-readable text: one block per finding, then a summary line.
pub fn human(report: &Report) -> String {
    let mut out = String::new();
    for f in &report.findings {
        let container = f
            .container
            .as_ref()
            .map(|c| format!(", container {c}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{}[{} {}]: {}{}: {}\n  --> {}:{}\n  fix: {}\n\n",
            f.severity.as_str(),
            f.rule,
            f.name,
            f.object,
            container,
            f.message,
            f.file.display(),
            f.line,
            f.fix
        ));
    }
    let (e, w) = (report.errors(), report.warnings());
    if report.findings.is_empty() {
        out.push_str(&format!(
            "no findings in {} file(s), {} object(s)\n",
            report.files, report.objects
        ));
    } else {
        out.push_str(&format!(
            "{e} error(s), {w} warning(s) in {} file(s), {} object(s)\n",
            report.files, report.objects
        ));
    }
    out
}

/// JSON: the report as a document (`findings`, `files`, `objects`, `errors`, `warnings`).
pub fn json(report: &Report) -> Value {
    json!({
        "files": report.files,
        "objects": report.objects,
        "errors": report.errors(),
        "warnings": report.warnings(),
        "findings": report.findings,
    })
}

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// SARIF 2.1.0 with every rule described and one result per finding.
pub fn sarif(report: &Report, tool_version: &str) -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.name,
                "shortDescription": {"text": r.summary},
                "fullDescription": {"text": r.summary},
                "help": {"text": r.fix},
                "defaultConfiguration": {"level": level(r.severity)},
            })
        })
        .collect();
    let results: Vec<Value> = report
        .findings
        .iter()
        .map(|f| {
            let mut logical = format!(
                "{}/{}{}",
                f.object.kind,
                f.object
                    .namespace
                    .as_ref()
                    .map(|n| format!("{n}/"))
                    .unwrap_or_default(),
                f.object.name
            );
            if let Some(c) = &f.container {
                logical.push_str(&format!("/{c}"));
            }
            json!({
                "ruleId": f.rule,
                "ruleIndex": RULES.iter().position(|r| r.id == f.rule),
                "level": level(f.severity),
                "message": {"text": format!("{}: {}", logical, f.message)},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": {"uri": f.file.display().to_string().trim_start_matches("./")},
                        "region": {"startLine": f.line},
                    },
                    "logicalLocations": [{"fullyQualifiedName": logical}],
                }],
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "pgkeep",
                "version": tool_version,
                "informationUri": "https://example.invalid/pgkeep",
                "rules": rules,
            }},
            "results": results,
        }],
    })
}
