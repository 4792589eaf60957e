//! A `BusError` as an HTTP response: the status of its code and an RFC 9457
//! `application/problem+json` body naming the code, the message and, for
//! a contract violation, each failing JSON pointer and schema rule.

use serde_json::{json, Value};

use crate::envelope::{BusError, ErrorCode};

pub const CONTENT_TYPE: &str = "application/problem+json";
/// Seconds a client should wait before retrying a `capacity`,
/// `unavailable` or `circuit_open` answer (`Retry-After`).
pub const RETRY_AFTER_S: u32 = 1;

/// One problem response: its status, whether it asks for a retry later,
/// and the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub status: u16,
    pub retry_after: Option<u32>,
    pub body: Value,
}

impl Problem {
    /// The problem for `error` answering a request for `instance` (its
    /// path) in flow `correlation_id`.
    pub fn of(error: &BusError, instance: &str, correlation_id: Option<&str>) -> Self {
        let status = status_of(error.code);
        let mut body = json!({
            "type": type_uri(error.code),
            "title": title(error.code),
            "status": status,
            "detail": error.message,
            "instance": instance,
            "code": error.code.as_str(),
        });
        if let Some(id) = correlation_id {
            body["correlation_id"] = id.into();
        }
        if let Some(errors) = error.details.as_ref().and_then(|d| d.get("errors")) {
            body["errors"] = errors.clone();
        }
        // A wait the error names (a tenant over its rate), in whole
        // seconds up, else the default.
        let named = error
            .details
            .as_ref()
            .and_then(|d| d.get("retry_after_ms"))
            .and_then(serde_json::Value::as_u64)
            .map(|ms| u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX).max(1));
        let retry_after = matches!(
            error.code,
            ErrorCode::Capacity | ErrorCode::Unavailable | ErrorCode::CircuitOpen
        )
        .then_some(named.unwrap_or(RETRY_AFTER_S));
        Self {
            status,
            retry_after,
            body,
        }
    }

    /// A problem the HTTP layer finds itself (no route, bad method, too
    /// large, unauthorized), outside the closed set of `BusError` codes.
    pub fn http(status: u16, title: &str, detail: impl Into<String>, instance: &str) -> Self {
        Self {
            status,
            retry_after: None,
            body: json!({
                "type": "about:blank",
                "title": title,
                "status": status,
                "detail": detail.into(),
                "instance": instance,
            }),
        }
    }
}

/// The HTTP status of each code (the NATS micro-service convention CBS
/// already uses in its error headers).
pub fn status_of(code: ErrorCode) -> u16 {
    code.status()
}

/// `urn:cbs:problem:<code>`: a stable name per code.
pub fn type_uri(code: ErrorCode) -> String {
    format!("urn:cbs:problem:{}", code.as_str())
}

fn title(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidInput => "The request is malformed",
        ErrorCode::ContractViolation => "The payload breaks its contract",
        ErrorCode::NotFound => "Nothing serves this cell",
        ErrorCode::Timeout => "No reply within the deadline",
        ErrorCode::Unavailable => "The cell is unavailable",
        ErrorCode::CircuitOpen => "The cell's circuit is open",
        ErrorCode::Capacity => "The cell is at its limits",
        ErrorCode::CellFailed => "The cell failed",
        ErrorCode::Internal => "Internal error",
    }
}

/// The JSON Schema of every problem body, for the OpenAPI document.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "code": {"type": "string", "enum": ErrorCode::all().map(ErrorCode::as_str).collect::<Vec<_>>()},
            "correlation_id": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"pointer": {"type": "string"}, "rule": {"type": "string"}}
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::EnumCount;

    #[test]
    fn each_code_has_its_status() {
        let expect = [
            (ErrorCode::InvalidInput, 400),
            (ErrorCode::ContractViolation, 422),
            (ErrorCode::NotFound, 404),
            (ErrorCode::Timeout, 504),
            (ErrorCode::Unavailable, 503),
            (ErrorCode::CircuitOpen, 503),
            (ErrorCode::Capacity, 429),
            (ErrorCode::CellFailed, 500),
            (ErrorCode::Internal, 500),
        ];
        assert_eq!(expect.len(), ErrorCode::COUNT);
        for (code, status) in expect {
            let p = Problem::of(&BusError::new(code, "x"), "/greet", Some("c1"));
            assert_eq!(p.status, status, "{code}");
            assert_eq!(p.body["code"], code.as_str());
            assert_eq!(p.body["correlation_id"], "c1");
            let retry = matches!(
                code,
                ErrorCode::Capacity | ErrorCode::Unavailable | ErrorCode::CircuitOpen
            );
            assert_eq!(p.retry_after.is_some(), retry, "{code}");
        }
    }

    #[test]
    fn a_wait_the_error_names_becomes_retry_after_rounded_up() {
        let over = |ms: u64| {
            let error = BusError::new(ErrorCode::Capacity, "over its rate")
                .with_details(json!({"tenant": "shop", "retry_after_ms": ms}));
            Problem::of(&error, "/cart", None).retry_after
        };
        assert_eq!(over(40), Some(1));
        assert_eq!(over(1500), Some(2));
        assert_eq!(over(u64::MAX), Some(u32::MAX));
        let plain = Problem::of(&BusError::new(ErrorCode::Capacity, "full"), "/cart", None);
        assert_eq!(plain.retry_after, Some(RETRY_AFTER_S));
    }

    #[test]
    fn a_violation_names_pointer_and_rule() {
        let error = BusError::new(ErrorCode::ContractViolation, "bad").with_details(
            json!({"schema": "s", "errors": [{"pointer": "/name", "rule": "/properties/name/type"}]}),
        );
        let p = Problem::of(&error, "/greet", None);
        assert_eq!(p.body["errors"][0]["pointer"], "/name");
        assert_eq!(p.body["type"], "urn:cbs:problem:contract_violation");
    }
}
