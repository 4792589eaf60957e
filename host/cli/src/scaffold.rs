//! `cbs new`: a cell folder that builds, tests and loads unchanged — a Cargo
//! project on the Rust guest SDK (or a Python module on the Python SDK,
//! built into a component: [`python`]; or a Dart sidecar: [`dart`]),
//! `cell.toml`, input and output schemas, and a unit test of the handler.

mod dart;
mod python;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use cbs_host::manifest::{check_cell_id, Lang};

/// The guest SDK for `lang` of this source tree, when `cbs` runs from one.
pub fn default_sdk(lang: Lang) -> Option<PathBuf> {
    let (folder, marker) = match lang {
        Lang::Python => ("python", "pyproject.toml"),
        Lang::Dart => ("dart", "pubspec.yaml"),
        Lang::Rust => ("rust", "Cargo.toml"),
    };
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../guest-sdk")
        .join(folder);
    sdk.join(marker)
        .is_file()
        .then(|| sdk.canonicalize().ok())
        .flatten()
}

fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Dart => "Dart",
    }
}

/// Writes a new cell `id` into `dir` (which must not exist) and returns the
/// files written.
pub fn new_cell(
    id: &str,
    lang: Lang,
    dir: &Path,
    sdk: Option<&Path>,
) -> anyhow::Result<Vec<PathBuf>> {
    check_cell_id(id)?;
    let sdk = match sdk.map(Path::to_path_buf).or_else(|| default_sdk(lang)) {
        Some(sdk) => sdk,
        None => bail!(
            "cannot find the CBS {} SDK (guest-sdk/{} of the CBS source tree): pass --sdk PATH",
            lang_name(lang),
            lang_name(lang).to_ascii_lowercase()
        ),
    };
    if dir.exists() {
        bail!(
            "{} already exists: pick another folder with --dir",
            dir.display()
        );
    }
    let files = match lang {
        Lang::Python => python::files(id, &sdk),
        Lang::Dart => dart::files(id, &sdk),
        Lang::Rust => rust_files(id, &id.replace(['.', '_'], "-"), &sdk),
    };
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// `text.upper` → `TextUpper`: a type name for the cell.
fn type_name(id: &str) -> String {
    id.split(['.', '_', '-'])
        .map(|t| {
            let mut c = t.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

fn rust_files(id: &str, crate_name: &str, sdk: &Path) -> Vec<(String, String)> {
    let wasm = format!("{}.wasm", crate_name.replace('-', "_"));
    let struct_name = type_name(id);
    let fill = |template: &str| {
        template
            .replace("{id}", id)
            .replace("{crate}", crate_name)
            .replace("{wasm}", &wasm)
            .replace("{Struct}", &struct_name)
            .replace("{sdk}", &sdk.display().to_string())
    };
    [
        ("Cargo.toml", fill(CARGO_TOML)),
        ("src/lib.rs", fill(LIB_RS)),
        ("cell.toml", fill(&RUST_CELL_TOML.template())),
        ("schemas/input.json", fill(INPUT_SCHEMA)),
        ("schemas/output.json", fill(OUTPUT_SCHEMA)),
        (".gitignore", "/target\n*.wasm\n*.cbs\n".to_owned()),
        ("README.md", fill(README)),
    ]
    .into_iter()
    .map(|(name, text)| (name.to_owned(), text))
    .collect()
}

const CARGO_TOML: &str = r#"[package]
name = "{crate}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
cbs-cell = { path = "{sdk}" }
serde = { version = "1", features = ["derive"] }

# Its own workspace, wherever the folder is.
[workspace]

# Components are shipped: small and stripped.
[profile.release]
opt-level = "s"
strip = true
"#;

const LIB_RS: &str = r#"//! `{id}`: replies to `{"text": "..."}` with the text in upper case and its length.

use cbs_cell::{Cell, CellError, Context};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
pub struct Input {
    pub text: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Output {
    pub text: String,
    pub length: usize,
}

pub struct {Struct};

impl Cell for {Struct} {
    const ID: &'static str = "{id}";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const INPUT_SCHEMA: Option<&'static str> = Some("{id}/request@1");
    const OUTPUT_SCHEMA: Option<&'static str> = Some("{id}/reply@1");
    type Input = Input;
    type Output = Output;

    fn handle(input: Input, _ctx: &Context) -> Result<Output, CellError> {
        if input.text.trim().is_empty() {
            return Err(CellError::invalid_input("`text` is blank"));
        }
        Ok(Output {
            length: input.text.chars().count(),
            text: input.text.to_uppercase(),
        })
    }
}

cbs_cell::export_cell!({Struct});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_in_upper_case() {
        let input = Input { text: "hello".into() };
        let output = {Struct}::handle(input, &Context::for_test()).unwrap();
        assert_eq!(output, Output { text: "HELLO".into(), length: 5 });
    }

    #[test]
    fn blank_text_is_invalid_input() {
        let input = Input { text: " ".into() };
        assert!({Struct}::handle(input, &Context::for_test()).is_err());
    }
}
"#;

/// What differs between the languages' `cell.toml`; the rest is
/// [`CELL_TOML`]. Placeholders (`{id}`, …) are filled afterwards, as in
/// every other template.
struct CellToml {
    /// What the cell is, after `# {id}: `: a comment, more lines each
    /// starting with `# `.
    about: &'static str,
    /// `runtime` and what goes with it: the component, or a `[python]` or
    /// `[sidecar]` section.
    runtime: &'static str,
    /// The keys of `[limits]`.
    limits: &'static str,
    /// Warm instances kept (`[instances] policy = "pooled"`): components.
    pooled: bool,
}

const CELL_TOML: &str = r#"# {id}: {about}
id = "{id}"
version = "0.1.0"
{runtime}
[input]
id = "{id}/request@1"
schema = "schemas/input.json"

[output]
id = "{id}/reply@1"
schema = "schemas/output.json"

[limits]
{limits}{instances}"#;

impl CellToml {
    /// The `cell.toml` template of a language.
    fn template(&self) -> String {
        let instances = if self.pooled {
            "\n[instances]\npolicy = \"pooled\"\n"
        } else {
            ""
        };
        CELL_TOML
            .replace("{about}", self.about)
            .replace("{runtime}", self.runtime)
            .replace("{limits}", self.limits)
            .replace("{instances}", instances)
    }
}

const RUST_CELL_TOML: CellToml = CellToml {
    about: r#"a CBS cell. Every field is described in the CBS README ("Writing a cell")."#,
    runtime: r#"runtime = "wasm"
# Written by `cbs build` (cargo build --release --target wasm32-wasip2).
component = "{wasm}"
"#,
    limits: "memory_mb = 16\ntimeout_ms = 1000\nconcurrency = 16\n",
    pooled: true,
};

const INPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "{id} request",
  "type": "object",
  "required": ["text"],
  "properties": {
    "text": { "type": "string", "maxLength": 10000 }
  },
  "additionalProperties": false
}
"#;

const OUTPUT_SCHEMA: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "title": "{id} reply",
  "type": "object",
  "required": ["text", "length"],
  "properties": {
    "text": { "type": "string" },
    "length": { "type": "integer", "minimum": 0 }
  },
  "additionalProperties": false
}
"#;

const README: &str = r#"# {id}

A CBS cell. `{"text": "hi"}` → `{"text": "HI", "length": 2}`.

    cargo test                       # the handler's unit tests
    cbs build . -o {id}.cbs          # component + bundle
    cbs-host load {id}.cbs           # check it loads
    cbs-host run --start {id} --input '{"text":"hi"}' {id}.cbs
"#;
