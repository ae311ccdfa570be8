//! `tapio profile validate | compile | diff`: Evidence Profiles on the command line.
//!
//! A profile argument is a file (YAML `.yaml`/`.yml` or JSON `.json`, by extension, like
//! the controller's `--profile`) or `builtin:NAME`. The config hash is tapio-wire's
//! `config_hash_with` over the canonical bytes, with sha2's SHA-256: the same function the
//! controller uses, so the hash printed here is the hash the fleet will report.

use std::path::Path;
use std::process::ExitCode;

use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};
use tapio_profile::{Builtin, CompiledConfig, Document, FieldValue, Profile, ProfileError};

use crate::{out, table};

/// Largest profile file read.
const MAX_PROFILE_BYTES: u64 = 1 << 20;

/// `sha256:<hex>` of the config's canonical bytes.
pub fn config_hash(config: &CompiledConfig) -> String {
    config.config_hash_with(|bytes| Sha256::digest(bytes).into())
}

/// Why a profile argument gave no profile.
enum LoadError {
    /// The file could not be read, or the argument is malformed.
    Io(String),
    /// A file that was read but is not a valid profile: its code (a [`ProfileError`]'s, or
    /// `PARSE` for a file that is not YAML or JSON), the field's path ("" for `PARSE`) and the
    /// message.
    Invalid(&'static str, String, String),
}

fn load(arg: &str) -> Result<Profile, LoadError> {
    if let Some(name) = arg.strip_prefix("builtin:") {
        return Builtin::from_name(name).map(Profile::builtin).ok_or_else(|| {
            LoadError::Io(format!("{arg}: no such builtin; builtins: {}", Builtin::names().join(", ")))
        });
    }
    let path = Path::new(arg);
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let yaml = match ext.as_deref() {
        Some("yaml" | "yml") => true,
        Some("json") => false,
        _ => return Err(LoadError::Io(format!("{arg}: unknown file type; name it .yaml, .yml or .json"))),
    };
    let bytes = tapio_wire::capped::read_capped(path, MAX_PROFILE_BYTES).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            LoadError::Io(format!("{arg} is larger than {MAX_PROFILE_BYTES} bytes"))
        } else {
            LoadError::Io(format!("cannot read {arg}: {e}"))
        }
    })?;
    let parse = |m: String| LoadError::Invalid("PARSE", String::new(), m);
    let doc: Document = if yaml {
        serde_yaml_ng::from_slice(&bytes).map_err(|e| parse(format!("not valid YAML: {e}")))?
    } else {
        serde_json::from_slice(&bytes).map_err(|e| parse(format!("not valid JSON: {e}")))?
    };
    tapio_profile::validate(&doc)
        .map_err(|e: ProfileError| LoadError::Invalid(e.code(), e.path().into(), e.to_string()))
}

/// Loads for compile/diff, where an invalid profile is an error of the command.
fn load_or_fail(arg: &str) -> Result<Profile, String> {
    load(arg).map_err(|e| match e {
        LoadError::Io(m) => m,
        LoadError::Invalid(_, _, m) => format!("{arg}: {m}"),
    })
}

/// `tapio profile validate FILE`.
pub fn validate(arg: &str, as_json: bool) -> Result<ExitCode, String> {
    match load(arg) {
        Ok(p) => {
            let hash = config_hash(&p.compile());
            if as_json {
                out(&format!(
                    "{}\n",
                    json!({"valid": true, "file": arg, "name": p.name, "base": p.base.name(),
                           "overrides": p.overridden, "config_hash": hash})
                ));
            } else {
                let overrides = if p.overridden.is_empty() {
                    "no overrides".to_string()
                } else {
                    format!("{} overrides: {}", p.overridden.len(), p.overridden.join(", "))
                };
                out(&format!(
                    "{arg}: valid Evidence Profile {:?} (base {}, {overrides})\nconfig_hash: {hash}\n",
                    p.name,
                    p.base.name()
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(LoadError::Invalid(code, path, message)) => {
            if as_json {
                let error = json!({"code": code, "path": path, "message": message});
                out(&format!("{}\n", json!({"valid": false, "file": arg, "error": error})));
            } else {
                eprintln!("{arg}: invalid: {message}");
            }
            Ok(ExitCode::from(1))
        }
        Err(LoadError::Io(m)) => Err(m),
    }
}

/// `tapio profile compile FILE`.
pub fn compile(arg: &str, as_json: bool) -> Result<ExitCode, String> {
    let p = load_or_fail(arg)?;
    let config = p.compile();
    let hash = config_hash(&config);
    if as_json {
        let v = json!({"name": p.name, "base": p.base.name(), "config_hash": hash, "config": config});
        out(&format!("{v}\n"));
    } else {
        let pretty = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
        out(&format!("{pretty}\nconfig_hash: {hash}\n"));
    }
    Ok(ExitCode::SUCCESS)
}

fn to_json(v: &FieldValue) -> Json {
    match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::Int(n) => json!(n),
        FieldValue::List(items) => json!(items),
    }
}

/// `tapio profile diff A B`: exit 0 when they compile to the same config, 1 when not.
pub fn diff(a: &str, b: &str, as_json: bool) -> Result<ExitCode, String> {
    let (pa, pb) = (load_or_fail(a)?, load_or_fail(b)?);
    let (ca, cb) = (pa.compile(), pb.compile());
    let (ha, hb) = (config_hash(&ca), config_hash(&cb));
    let diffs = tapio_profile::diff(&ca, &cb);
    if as_json {
        let items: Vec<Json> =
            diffs.iter().map(|d| json!({"field": d.path, "a": to_json(&d.a), "b": to_json(&d.b)})).collect();
        let v =
            json!({"a": {"source": a, "config_hash": ha}, "b": {"source": b, "config_hash": hb}, "differences": items});
        out(&format!("{v}\n"));
    } else if diffs.is_empty() {
        out(&format!("no differences: both compile to {ha}\n"));
    } else {
        let rows: Vec<Vec<String>> =
            diffs.iter().map(|d| vec![d.path.clone(), d.a.to_string(), d.b.to_string()]).collect();
        let (head_a, head_b) = (format!("A ({})", pa.name), format!("B ({})", pb.name));
        let mut text = table::render(&["FIELD", &head_a, &head_b], &rows);
        let n = diffs.len();
        text.push_str(&format!("{n} field{} differ\nA: {a} {ha}\nB: {b} {hb}\n", if n == 1 { "" } else { "s" }));
        out(&text);
    }
    Ok(if diffs.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
