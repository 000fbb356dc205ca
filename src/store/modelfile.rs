//! Creating a model from a Modelfile (Ollama's subset: `FROM`, `PARAMETER`, `TEMPLATE`,
//! `SYSTEM`, `ADAPTER`, `LICENSE`) or from the same fields of `POST /api/create`.
//!
//! `FROM` names a model (whose overrides are inherited), a blob digest, or, on the command line
//! only, a GGUF path. Everything is checked before the manifest is written: the weights and the
//! adapter are validated as GGUF, the template compiles, the parameters are valid options.

use std::path::Path;

use serde_json::{Map, Value};

use super::gguf::read_gguf;
use super::{digest_hex, normalize_name, Manifest, ModelStore, StoreError};
use crate::spec::options::OptionPatch;

/// What to create: the parsed Modelfile or API fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateSpec {
    pub from: String,
    pub template: Option<String>,
    pub system: Option<String>,
    pub license: Option<String>,
    pub parameters: Map<String, Value>,
    pub adapters: Vec<String>,
}

fn bad(line: usize, msg: impl std::fmt::Display) -> StoreError {
    StoreError::Modelfile(format!("line {line}: {msg}"))
}

/// Parses a Modelfile.
pub fn parse(text: &str) -> Result<CreateSpec, StoreError> {
    let mut spec = CreateSpec::default();
    let mut from = None;
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l));
    while let Some((n, line)) = lines.next() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let instruction = word.to_ascii_uppercase();
        let rest = rest.trim_start();
        match instruction.as_str() {
            "FROM" => {
                if from.is_some() {
                    return Err(bad(n, "FROM given twice"));
                }
                let v = value(n, rest, &mut lines)?;
                if v.is_empty() {
                    return Err(bad(n, "FROM needs a model name or a GGUF path"));
                }
                from = Some(v);
            }
            "PARAMETER" => {
                let (key, raw) = rest.split_once(char::is_whitespace).ok_or_else(|| bad(n, "PARAMETER needs a name and a value"))?;
                let raw = value(n, raw.trim_start(), &mut lines)?;
                add_parameter(&mut spec.parameters, key, &raw).map_err(|e| bad(n, e))?;
            }
            "TEMPLATE" => spec.template = Some(value(n, rest, &mut lines)?),
            "SYSTEM" => spec.system = Some(value(n, rest, &mut lines)?),
            "ADAPTER" => spec.adapters.push(value(n, rest, &mut lines)?),
            "LICENSE" => {
                let v = value(n, rest, &mut lines)?;
                spec.license = Some(match spec.license.take() {
                    Some(prev) => format!("{prev}\n\n{v}"),
                    None => v,
                });
            }
            "MESSAGE" | "REQUIRES" => return Err(bad(n, format!("{instruction} is not supported by hearth"))),
            _ => return Err(bad(n, format!("unknown instruction {word:?}; use FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER or LICENSE"))),
        }
    }
    spec.from = from.ok_or_else(|| StoreError::Modelfile("no FROM line".into()))?;
    Ok(spec)
}

/// An instruction's value: `"""multi-line"""`, `"quoted"`, or the rest of the line.
fn value<'a>(n: usize, rest: &str, lines: &mut impl Iterator<Item = (usize, &'a str)>) -> Result<String, StoreError> {
    if let Some(body) = rest.strip_prefix("\"\"\"") {
        if let Some(end) = body.find("\"\"\"") {
            return Ok(body[..end].to_string());
        }
        let mut out = body.to_string();
        for (_, line) in lines.by_ref() {
            out.push('\n');
            if let Some(end) = line.find("\"\"\"") {
                out.push_str(&line[..end]);
                return Ok(out.trim_start_matches('\n').to_string());
            }
            out.push_str(line);
        }
        return Err(bad(n, "unterminated \"\"\""));
    }
    if rest.starts_with('"') {
        return serde_json::from_str::<String>(rest.trim_end()).map_err(|_| bad(n, "unterminated or malformed quoted value"));
    }
    Ok(rest.trim_end().to_string())
}

/// Adds `key value` to the parameters: `stop` collects into a list, numbers and booleans are
/// typed, and the whole set must stay valid options.
pub fn add_parameter(params: &mut Map<String, Value>, key: &str, raw: &str) -> Result<(), String> {
    let v = if key == "stop" {
        Value::from(raw)
    } else {
        serde_json::from_str::<Value>(raw)
            .ok()
            .filter(|v| v.is_number() || v.is_boolean())
            .unwrap_or_else(|| Value::from(raw))
    };
    if key == "stop" {
        match params.entry("stop").or_insert_with(|| Value::Array(Vec::new())) {
            Value::Array(a) => a.push(v),
            other => *other = Value::Array(vec![v]),
        }
    } else {
        params.insert(key.to_string(), v);
    }
    check_parameters(params)
}

/// Fails with the offending name unless `params` are valid request options.
pub fn check_parameters(params: &Map<String, Value>) -> Result<(), String> {
    OptionPatch::from_map(params).map(|_| ()).map_err(|e| e.to_string())
}

impl ModelStore {
    /// Creates (or replaces) the model `name` from `spec`. `local_dir` is the directory
    /// relative paths start from, for the local user; requests from the network pass `None`
    /// and may only name models and uploaded blobs.
    pub fn create(&self, name: &str, spec: &CreateSpec, local_dir: Option<&Path>) -> Result<Manifest, StoreError> {
        let name = normalize_name(name)?;
        if spec.adapters.len() > 1 {
            return Err(StoreError::Modelfile("hearth applies at most one ADAPTER per model".into()));
        }
        let mut manifest = match self.blob_or_file(&spec.from, local_dir)? {
            Some((digest, size)) => Manifest::for_weights(digest, size, Some(spec.from.clone())),
            None => {
                let base = self.resolve(&spec.from)?;
                self.manifest_for(&base, Some(base.name.clone()))?
            }
        };
        let weights = self.blob_path(&manifest.model)?;
        let info = read_gguf(&weights).map_err(|source| StoreError::Gguf { what: spec.from.clone(), source })?;
        if info.get_str("general.type") == Some("adapter") {
            return Err(StoreError::Invalid(format!("FROM {} is a LoRA adapter; use it with ADAPTER", spec.from)));
        }
        if let Some(t) = &spec.template {
            crate::spec::template::check_template(t).map_err(|e| StoreError::Modelfile(format!("TEMPLATE: {e}")))?;
            manifest.template = Some(t.clone());
        }
        if spec.system.is_some() {
            manifest.system = spec.system.clone();
        }
        if spec.license.is_some() {
            manifest.license = spec.license.clone();
        }
        for (k, v) in &spec.parameters {
            manifest.parameters.insert(k.clone(), v.clone());
        }
        check_parameters(&manifest.parameters).map_err(|e| StoreError::Modelfile(format!("PARAMETER: {e}")))?;
        if let Some(adapter) = spec.adapters.first() {
            let (digest, _) = self
                .blob_or_file(adapter, local_dir)?
                .ok_or_else(|| StoreError::Modelfile(format!("ADAPTER {adapter:?}: give a GGUF file or an uploaded blob digest")))?;
            let path = self.blob_path(&digest)?;
            let a = read_gguf(&path).map_err(|source| StoreError::Gguf { what: adapter.clone(), source })?;
            if a.get_str("general.type") != Some("adapter") {
                return Err(StoreError::Invalid(format!("ADAPTER {adapter} is not a LoRA adapter GGUF (general.type is not \"adapter\")")));
            }
            if a.architecture() != info.architecture() {
                return Err(StoreError::Invalid(format!(
                    "ADAPTER {adapter} is for {} but the model is {}",
                    a.architecture(),
                    info.architecture()
                )));
            }
            manifest.adapters = vec![digest];
        }
        manifest.created_at = super::manifest::now();
        self.write_manifest(&name, &manifest)?;
        Ok(manifest)
    }

    /// A blob digest, or (locally) a file path imported into the blobs; `None` for a name.
    fn blob_or_file(&self, from: &str, local_dir: Option<&Path>) -> Result<Option<(String, u64)>, StoreError> {
        if from.starts_with("sha256:") {
            digest_hex(from)?;
            let path = self.blob_path(from)?;
            let size = std::fs::metadata(&path).map_err(|_| StoreError::BlobNotFound(from.to_string()))?.len();
            return Ok(Some((from.to_string(), size)));
        }
        let looks_like_path = from.ends_with(".gguf") || from.contains('/') || from.starts_with('.') || from.starts_with('~');
        if !looks_like_path {
            return Ok(None);
        }
        let Some(dir) = local_dir else {
            return Err(StoreError::Invalid(format!(
                "{from:?}: over HTTP, FROM must be a model name or an uploaded blob (sha256:...), not a path"
            )));
        };
        let path = match from.strip_prefix("~/") {
            Some(rest) => dirs::home_dir().unwrap_or_default().join(rest),
            None => dir.join(from),
        };
        if !path.is_file() {
            return Err(StoreError::NotFound(path.display().to_string()));
        }
        read_gguf(&path).map_err(|source| StoreError::Gguf { what: path.display().to_string(), source })?;
        self.import_file(&path).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_subset() {
        let spec = parse(
            "# a bot\nFROM smollm2:135m\nPARAMETER temperature 0\nPARAMETER stop \"<|im_end|>\"\nparameter stop END\nSYSTEM \"\"\"You are Bob.\nAlways brief.\"\"\"\nTEMPLATE {{ .Prompt }}\nLICENSE MIT\n",
        )
        .expect("parses");
        assert_eq!(spec.from, "smollm2:135m");
        assert_eq!(spec.parameters["temperature"], serde_json::json!(0));
        assert_eq!(spec.parameters["stop"], serde_json::json!(["<|im_end|>", "END"]));
        assert_eq!(spec.system.as_deref(), Some("You are Bob.\nAlways brief."));
        assert_eq!(spec.template.as_deref(), Some("{{ .Prompt }}"));
        assert_eq!(spec.license.as_deref(), Some("MIT"));
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("FROM x\nPARAMETER temprature 0\n").expect_err("bad name");
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = parse("FROM x\nPARAMETER top_k -5\n").expect_err("bad value");
        assert!(err.to_string().contains("top_k"), "{err}");
        assert!(parse("SYSTEM hi\n").expect_err("no FROM").to_string().contains("FROM"));
        assert!(parse("FROM x\nSYSTEM \"\"\"never closed\n").is_err());
        assert!(parse("FROM x\nBOGUS y\n").is_err());
    }
}
