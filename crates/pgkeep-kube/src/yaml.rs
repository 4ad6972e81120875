//! YAML in and out: objects to YAML text (serde-saphyr), and multi-document YAML files to
//! untyped JSON values with the line each document starts on (for lint and round-trip tests).

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    #[error("could not write {what} as YAML: {message}")]
    Serialize { what: String, message: String },
    #[error("{source_name}: document {index} (line {line}) is not valid YAML: {message}")]
    Parse {
        source_name: String,
        index: usize,
        line: usize,
        message: String,
    },
}

/// Serialise one value as a YAML document (no leading `---`).
pub fn to_yaml<T: Serialize>(what: &str, value: &T) -> Result<String, YamlError> {
    // Through serde_json::Value first: k8s-openapi types serialise their apiVersion/kind there,
    // and map keys come out in a stable (sorted) order.
    let v = serde_json::to_value(value).map_err(|e| YamlError::Serialize {
        what: what.to_owned(),
        message: e.to_string(),
    })?;
    serde_saphyr::to_string(&v).map_err(|e| YamlError::Serialize {
        what: what.to_owned(),
        message: e.to_string(),
    })
}

/// One YAML document of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// 0-based index in the file.
    pub index: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    pub value: serde_json::Value,
}

/// Split a YAML stream into documents on `---` lines, keeping each one's start line.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_end();
        if trimmed == "---" || trimmed.starts_with("--- ") || trimmed == "..." {
            docs.push((start, std::mem::take(&mut current)));
            start = n + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs
}

/// Parse every non-empty document of a YAML stream into JSON values.
pub fn parse_documents(source_name: &str, text: &str) -> Result<Vec<Document>, YamlError> {
    let mut out = Vec::new();
    for (start, body) in split_documents(text) {
        let meaningful = body
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if !meaningful {
            continue;
        }
        let index = out.len();
        let value: serde_json::Value =
            serde_saphyr::from_str(&body).map_err(|e| YamlError::Parse {
                source_name: source_name.to_owned(),
                index,
                line: start,
                message: e.to_string(),
            })?;
        if value.is_null() {
            continue;
        }
        // The first line of the document that carries content (past comments).
        let skip = body
            .lines()
            .take_while(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
            .count();
        out.push(Document {
            index,
            line: start + skip,
            value,
        });
    }
    Ok(out)
}

/// Parse one YAML document into a type.
pub fn from_yaml<T: DeserializeOwned>(source_name: &str, text: &str) -> Result<T, YamlError> {
    serde_saphyr::from_str(text).map_err(|e| YamlError::Parse {
        source_name: source_name.to_owned(),
        index: 0,
        line: 1,
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_start_lines() {
        let text = "# header\n# more\na: 1\n---\n\n---\nb: \"2\"\nc: [x]\n---\n# only a comment\n";
        let docs = parse_documents("t.yaml", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].line, 3);
        assert_eq!(docs[0].value, serde_json::json!({"a": 1}));
        assert_eq!(docs[1].line, 7);
        assert_eq!(docs[1].value, serde_json::json!({"b": "2", "c": ["x"]}));
    }

    #[test]
    fn bad_yaml_names_file_and_line() {
        let err = parse_documents("f.yaml", "a: 1\n---\nb: [unclosed\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("f.yaml"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn strings_that_look_like_numbers_stay_strings() {
        let v = serde_json::json!({"uid": "999", "cron": "0 6 * * *", "yes": "on", "n": 5432});
        let text = to_yaml("test", &v).unwrap();
        let back = parse_documents("t", &text).unwrap();
        assert_eq!(back[0].value, v, "{text}");
    }
}
