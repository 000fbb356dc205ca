//! Where in the YAML text a bad value is: serde_yaml's own location, or the line of a key
//! path found by a plain scan, so every config error names its line.

use super::*;

/// Turns a serde_yaml error (whose message is `path: problem at line L column C`) into ours.
pub(super) fn yaml_error(origin: &str, e: &serde_yaml::Error) -> ConfigError {
    let mut message = e.to_string();
    let (line, column) = match e.location() {
        Some(loc) => {
            message = message.replacen(&format!(" at line {} column {}", loc.line(), loc.column()), "", 1);
            (Some(loc.line()), Some(loc.column()))
        }
        None => (None, None),
    };
    // serde_yaml prefixes the dotted path of the value unless it is the root.
    let key = message.split_once(": ").and_then(|(head, _)| {
        let looks_like_path = !head.is_empty() && !head.contains(char::is_whitespace) && !head.contains('`');
        looks_like_path.then(|| head.to_string())
    });
    if let Some(k) = &key {
        message = message[k.len() + 2..].to_string();
    }
    ConfigError::Invalid {
        origin: origin.to_string(),
        line,
        column,
        key,
        message,
    }
}

pub(super) fn invalid_at(text: &str, origin: &str, path: &[&str], message: String) -> ConfigError {
    let position = find_key(text, path);
    ConfigError::Invalid {
        origin: origin.to_string(),
        line: position.map(|p| p.0),
        column: position.map(|p| p.1),
        key: Some(path.join(".")),
        message,
    }
}

/// The 1-based (line, column) of the deepest key of `path` found in block-style YAML, by
/// indentation: each key must sit at the first indentation seen inside its parent. A key
/// inside a flow mapping (`{ a: 1 }`) is reported at its parent's line.
pub(super) fn find_key(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let mut found = None;
    let mut depth = 0;
    let mut parent_indent: Option<usize> = None;
    let mut child_indent: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if parent_indent.is_some_and(|p| indent <= p) {
            break;
        }
        if indent != *child_indent.get_or_insert(indent) {
            continue;
        }
        let Some(segment) = path.get(depth) else { break };
        if is_key(trimmed, segment) {
            found = Some((n + 1, indent + 1));
            depth += 1;
            if depth == path.len() {
                break;
            }
            parent_indent = Some(indent);
            child_indent = None;
        }
    }
    found
}

pub(super) fn is_key(line: &str, key: &str) -> bool {
    [format!("{key}:"), format!("\"{key}\":"), format!("'{key}':")]
        .iter()
        .any(|k| line.strip_prefix(k.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t'])))
}
