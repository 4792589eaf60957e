//! Consumer expectations ([`crate::manifest::expects`]) checked against a
//! version of the callee: each example request must be answered, and each
//! field the consumer reads must be in the reply.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::testing::Target;
use crate::manifest::expects::Expectation;

/// One expectation a callee's version does not meet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broken {
    pub consumer: String,
    /// The example's name, or `example N`.
    pub example: String,
    /// The field missing from the reply; `None` when the call failed.
    pub field: Option<String>,
    pub why: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(
                f,
                "{} ({}) reads {field}: {}",
                self.consumer, self.example, self.why
            ),
            None => write!(f, "{} ({}): {}", self.consumer, self.example, self.why),
        }
    }
}

/// Sends each of `consumer`'s examples to `target` and lists what breaks.
pub async fn check(
    target: &Target<'_>,
    consumer: &str,
    expectations: &[Expectation],
) -> Vec<Broken> {
    let mut broken = Vec::new();
    for (i, expectation) in expectations.iter().enumerate() {
        let example = expectation.title(i);
        let broke = |field: Option<&str>, why: String| Broken {
            consumer: consumer.to_owned(),
            example: example.clone(),
            field: field.map(str::to_owned),
            why,
        };
        match target.call(&expectation.example).await {
            Err(e) => broken.push(broke(
                None,
                format!("the call failed: {}: {}", e.code, e.message),
            )),
            Ok(reply) => broken.extend(
                expectation
                    .reads
                    .iter()
                    .filter(|p| reply.pointer(p).is_none_or(Value::is_null))
                    .map(|p| broke(Some(p), "not in the reply".to_owned())),
            ),
        }
    }
    broken
}

/// How long one example may take.
pub const TIMEOUT: Duration = Duration::from_secs(10);
