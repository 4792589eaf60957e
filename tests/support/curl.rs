//! `curl`, as HTTP clients use it: the tests of the HTTP server drive it
//! with the real command-line client.

use std::process::Command;

use serde_json::Value;

/// One HTTP response as curl printed it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The status line's protocol, e.g. `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {}", self.body))
    }
}

/// Runs `curl -sS -i ARGS` and parses what it printed.
pub fn curl(args: &[&str]) -> Response {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "30"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// A response as printed on the wire (or by `curl -i`): status line,
/// headers, body.
pub fn parse(text: &str) -> Response {
    // Interim responses (100 Continue) come first; the last head is the answer.
    let mut rest = text;
    loop {
        let (head, body) = rest.split_once("\r\n\r\n").expect("an HTTP response");
        let mut lines = head.lines();
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.split_whitespace();
        let protocol = parts.next().unwrap_or_default().to_owned();
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).expect("a status");
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        return Response {
            status,
            protocol,
            headers,
            body: body.to_owned(),
        };
    }
}
