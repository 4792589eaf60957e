//! Contract tests: each generated case ([`super::cases`]) sent to a cell
//! over a bus, its reply checked, and a failing valid input shrunk to a
//! small one that still fails the same way.
//!
//! A valid input passes with a reply the output schema accepts, or with
//! the cell's own typed refusal (`invalid_input`); a reply the host
//! refused as breaking the output schema, an input the host refused as
//! breaking the input schema, a crash or a timeout fail. An invalid input
//! passes when the answer is `invalid_input` or `contract_violation` and
//! names the pointer of the rule broken.

use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::cases::{display, Case, Expect};
use crate::bus::BodyBus;
use crate::envelope::{BusError, Envelope, ErrorCode};

/// How many simpler inputs are tried when shrinking one failure.
const SHRINK_TRIES: usize = 200;

/// Where the cases go: a cell on a bus.
pub struct Target<'a> {
    pub bus: &'a dyn BodyBus,
    pub cell: &'a str,
    pub timeout: Duration,
    /// Sent to the version on trial (`cbs.~p.<cell>`: a canary, or a
    /// blue-green release before its switch) instead of the cell.
    pub trial: bool,
}

/// One case's result.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub label: String,
    /// `valid` or `invalid`.
    pub kind: &'static str,
    pub input: Value,
    pub passed: bool,
    /// What came back, or why it fails.
    pub detail: String,
    /// A smaller input that fails the same way (failing valid cases).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shrunk: Option<Value>,
}

impl Target<'_> {
    /// One request with `input`; the reply payload, or the error.
    pub async fn call(&self, input: &Value) -> Result<Value, BusError> {
        let payload = RawValue::from_string(input.to_string())
            .map_err(|e| BusError::internal(format!("cannot encode the input: {e}")))?;
        let subject = match self.trial {
            true => crate::subjects::trial_subject(self.cell),
            false => crate::subjects::subject_of(self.cell),
        };
        let envelope = Envelope::new(subject, payload);
        let reply = crate::call::call(self.bus, &envelope, self.timeout).await?;
        serde_json::from_str(reply.get()).map_err(|e| {
            BusError::new(
                ErrorCode::ContractViolation,
                format!("the reply is not JSON: {e}"),
            )
        })
    }

    /// Runs every case; `output` is the output schema, when known here (a
    /// host checks it too and refuses a reply that breaks it).
    pub async fn run(&self, cases: Vec<Case>, output: Option<&Value>) -> Vec<Outcome> {
        let output = output.and_then(|s| jsonschema::validator_for(s).ok());
        let mut outcomes = Vec::with_capacity(cases.len());
        for case in cases {
            let answer = self.call(&case.input).await;
            let verdict = judge(&case.expect, &answer, output.as_ref());
            let shrunk = match (&verdict, &case.expect) {
                (Err(why), Expect::Valid) => self.shrink(&case.input, why, output.as_ref()).await,
                _ => None,
            };
            outcomes.push(Outcome {
                kind: match case.expect {
                    Expect::Valid => "valid",
                    Expect::Invalid { .. } => "invalid",
                },
                label: case.label,
                input: case.input,
                passed: verdict.is_ok(),
                detail: verdict.unwrap_or_else(|why| why),
                shrunk,
            });
        }
        outcomes
    }

    /// A smaller input that still fails the same way, and that the host
    /// still takes as valid: properties and items dropped, strings and
    /// numbers halved, one step at a time while each step still fails.
    async fn shrink(
        &self,
        input: &Value,
        why: &str,
        output: Option<&jsonschema::Validator>,
    ) -> Option<Value> {
        let kind = failure_kind(why);
        let mut best = input.clone();
        let mut tries = 0;
        'smaller: loop {
            for candidate in simpler(&best) {
                if tries >= SHRINK_TRIES {
                    break 'smaller;
                }
                tries += 1;
                let answer = self.call(&candidate).await;
                // Still a valid input (the host did not refuse it as
                // such), failing the same way.
                if let Err(again) = judge(&Expect::Valid, &answer, output) {
                    if failure_kind(&again) == kind && !is_input_refusal(&answer) {
                        best = candidate;
                        continue 'smaller;
                    }
                }
            }
            break;
        }
        (best != *input).then_some(best)
    }
}

/// Whether the host refused the input itself as breaking the contract.
fn is_input_refusal(answer: &Result<Value, BusError>) -> bool {
    matches!(answer, Err(e) if e.code == ErrorCode::ContractViolation && e.message.starts_with("input"))
}

/// The first words of a failure: what kind of failure it is.
fn failure_kind(why: &str) -> &str {
    why.split(':').next().unwrap_or(why)
}

/// Whether the answer is what `expect` asks for: `Ok` with what came back,
/// or `Err` with why not.
fn judge(
    expect: &Expect,
    answer: &Result<Value, BusError>,
    output: Option<&jsonschema::Validator>,
) -> Result<String, String> {
    match (expect, answer) {
        (Expect::Valid, Ok(reply)) => match output.map(|o| o.iter_errors(reply).next()) {
            Some(Some(e)) => Err(format!(
                "the reply breaks the output schema: at {} {e}",
                display(&e.instance_path().to_string())
            )),
            _ => Ok("a reply the output schema accepts".into()),
        },
        (Expect::Valid, Err(e)) if e.code == ErrorCode::InvalidInput => {
            Ok(format!("refused by the cell itself: {}", e.message))
        }
        (Expect::Valid, Err(e)) if e.code == ErrorCode::ContractViolation => {
            if e.message.starts_with("input") {
                Err(format!("a valid input was refused: {}", e.message))
            } else {
                Err(format!("the reply breaks the output schema: {}", e.message))
            }
        }
        (Expect::Valid, Err(e)) => Err(format!("{}: {}", e.code, e.message)),
        (Expect::Invalid { .. }, Ok(reply)) => {
            Err(format!("an invalid input was accepted: {reply}"))
        }
        (Expect::Invalid { pointer, keyword }, Err(e)) => {
            let refusal = matches!(
                e.code,
                ErrorCode::InvalidInput | ErrorCode::ContractViolation
            );
            if refusal && names(e, pointer) {
                Ok(format!("{}: {}", e.code, e.message))
            } else if refusal {
                Err(format!(
                    "refused without naming {} ({keyword}): {}",
                    display(pointer),
                    e.message
                ))
            } else {
                Err(format!("{}: {}", e.code, e.message))
            }
        }
    }
}

/// Whether a refusal names `pointer`: in its details' errors, or its message.
fn names(e: &BusError, pointer: &str) -> bool {
    let listed = e
        .details
        .as_ref()
        .and_then(|d| d["errors"].as_array())
        .is_some_and(|errors| errors.iter().any(|x| x["pointer"] == pointer));
    listed || e.message.contains(&format!("at {}:", display(pointer)))
}

/// Inputs one step simpler than `value`: a property or an item less, a
/// string halved, a number nearer zero.
fn simpler(value: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    match value {
        Value::Object(map) => {
            for key in map.keys() {
                let mut less = map.clone();
                less.remove(key);
                out.push(Value::Object(less));
            }
            for (key, inner) in map {
                for smaller in simpler(inner) {
                    let mut changed = map.clone();
                    changed.insert(key.clone(), smaller);
                    out.push(Value::Object(changed));
                }
            }
        }
        Value::Array(items) => {
            for i in 0..items.len() {
                let mut less = items.clone();
                less.remove(i);
                out.push(Value::Array(less));
            }
        }
        Value::String(text) if !text.is_empty() => {
            let half: String = text.chars().take(text.chars().count() / 2).collect();
            out.push(Value::String(half));
        }
        Value::Number(n) if n.as_f64().is_some_and(|f| f != 0.0) => {
            let f = n.as_f64().unwrap_or_default();
            out.push(serde_json::json!((f / 2.0).trunc()));
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_pointer_in_its_details_or_its_message() {
        let in_details = BusError::new(ErrorCode::ContractViolation, "input breaks")
            .with_details(serde_json::json!({"errors": [{"pointer": "/name"}]}));
        assert!(names(&in_details, "/name"));
        assert!(!names(&in_details, "/kind"));
        let in_message = BusError::new(
            ErrorCode::InvalidInput,
            "input payload breaks contract x at /kind: bad (rule /enum)",
        );
        assert!(names(&in_message, "/kind"));
        let root = BusError::new(ErrorCode::InvalidInput, "input breaks contract x at /: no");
        assert!(names(&root, ""));
    }

    #[test]
    fn an_output_violation_on_a_valid_input_fails_and_a_typed_refusal_passes() {
        let output = BusError::new(
            ErrorCode::ContractViolation,
            "output payload breaks contract x at /n: bad",
        );
        assert!(judge(&Expect::Valid, &Err(output), None).is_err());
        let refused = BusError::new(ErrorCode::InvalidInput, "no such user");
        assert!(judge(&Expect::Valid, &Err(refused), None).is_ok());
        let invalid = Expect::Invalid {
            pointer: "/n".into(),
            keyword: "type".into(),
        };
        assert!(judge(&invalid, &Ok(serde_json::json!({})), None).is_err());
    }

    #[test]
    fn simpler_inputs_drop_keys_and_halve_values() {
        let smaller = simpler(&serde_json::json!({"a": "abcd", "b": 8}));
        assert!(smaller.contains(&serde_json::json!({"b": 8})));
        assert!(smaller.contains(&serde_json::json!({"a": "ab", "b": 8})));
        assert!(smaller.contains(&serde_json::json!({"a": "abcd", "b": 4.0})));
    }
}
