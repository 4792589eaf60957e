//! Contracts: each cell's input and output JSON Schemas, compiled once at
//! load and checked on every message in and out.

pub mod cases;
pub mod compat;
pub mod diff;
pub mod expectations;
pub mod testing;

use std::path::Path;

use anyhow::Context as _;
use serde_json::{json, Value};

use crate::envelope::{BusError, ErrorCode};
use crate::manifest::{CellSpec, SchemaRef};

/// At most this many violations are listed in a reply.
const MAX_REPORTED: usize = 10;

/// A compiled JSON Schema and the contract id it stands for.
pub struct Schema {
    id: String,
    /// The schema as written (for documents such as OpenAPI).
    value: Value,
    validator: jsonschema::Validator,
}

impl Schema {
    pub fn compile(id: &str, schema: &Value) -> anyhow::Result<Self> {
        let validator = jsonschema::validator_for(schema)
            .map_err(|e| anyhow::anyhow!("schema {id} does not compile: {e}"))?;
        Ok(Self {
            id: id.to_owned(),
            value: schema.clone(),
            validator,
        })
    }

    pub fn load(schema_ref: &SchemaRef, path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read schema {}", path.display()))?;
        let value: Value = serde_json::from_str(&text)
            .with_context(|| format!("schema {} is not JSON", path.display()))?;
        Self::compile(&schema_ref.id, &value).with_context(|| format!("in {}", path.display()))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The JSON Schema as written.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Checks `instance`; a violation names each failing JSON pointer and rule.
    pub fn check(&self, what: &str, instance: &Value) -> Result<(), BusError> {
        if self.validator.is_valid(instance) {
            return Ok(());
        }
        let errors: Vec<Value> = self
            .validator
            .iter_errors(instance)
            .take(MAX_REPORTED)
            .map(|e| {
                json!({
                    "pointer": e.instance_path().to_string(),
                    "rule": e.schema_path().to_string(),
                    "message": e.to_string(),
                })
            })
            .collect();
        let first = &errors[0];
        let pointer = first["pointer"].as_str().unwrap_or_default();
        let message = format!(
            "{what} breaks contract {} at {}: {} (rule {})",
            self.id,
            if pointer.is_empty() { "/" } else { pointer },
            first["message"].as_str().unwrap_or_default(),
            first["rule"].as_str().unwrap_or_default(),
        );
        Err(BusError::new(ErrorCode::ContractViolation, message)
            .with_details(json!({ "schema": self.id, "errors": errors })))
    }
}

/// The names in a schema's `required` keyword (none when absent or not
/// an array of strings).
pub fn required_properties(required: Option<&Value>) -> Vec<String> {
    required
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A cell's contract: both directions are optional (a bare component has none).
#[derive(Default)]
pub struct Contract {
    pub input: Option<Schema>,
    pub output: Option<Schema>,
}

impl Contract {
    pub fn load(spec: &CellSpec) -> anyhow::Result<Self> {
        let load = |r: &Option<SchemaRef>| {
            r.as_ref()
                .map(|r| Schema::load(r, &spec.resolve(&r.schema)))
                .transpose()
        };
        Ok(Self {
            input: load(&spec.manifest.input)?,
            output: load(&spec.manifest.output)?,
        })
    }

    /// Validates a request payload (raw JSON text).
    pub fn check_input(&self, payload: &str) -> Result<(), BusError> {
        check(self.input.as_ref(), "input payload", payload)
    }

    /// Validates a reply payload (raw JSON text).
    pub fn check_output(&self, payload: &str) -> Result<(), BusError> {
        check(self.output.as_ref(), "output payload", payload)
    }
}

fn check(schema: Option<&Schema>, what: &str, payload: &str) -> Result<(), BusError> {
    let Some(schema) = schema else {
        return Ok(());
    };
    let value: Value = serde_json::from_str(payload).map_err(|e| {
        BusError::new(
            ErrorCode::ContractViolation,
            format!("{what} is not JSON: {e}"),
        )
    })?;
    schema.check(what, &value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greet() -> Schema {
        Schema::compile(
            "logic.greet/request@1",
            &json!({
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}}
            }),
        )
        .unwrap()
    }

    #[test]
    fn valid_passes() {
        greet().check("input", &json!({"name": "Ada"})).unwrap();
    }

    #[test]
    fn violation_names_pointer_and_rule() {
        let err = greet()
            .check("input payload", &json!({"name": 42}))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::ContractViolation);
        assert!(err.message.contains("at /name"), "{}", err.message);
        assert!(
            err.message.contains("/properties/name/type"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("logic.greet/request@1"),
            "{}",
            err.message
        );
        let details = err.details.unwrap();
        assert_eq!(details["errors"][0]["pointer"], "/name");
    }

    #[test]
    fn missing_property_points_at_root() {
        let err = greet().check("input payload", &json!({})).unwrap_err();
        assert!(err.message.contains("at /:"), "{}", err.message);
        assert!(err.message.contains("required"), "{}", err.message);
    }

    #[test]
    fn bad_schema_is_a_load_error() {
        assert!(Schema::compile("x", &json!({"type": 12})).is_err());
    }
}
