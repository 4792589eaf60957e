//! The compliance report as one self-contained HTML page (`cbs compliance
//! --html FILE`): no script, no outside resource; every value escaped.

use std::fmt::Write as _;

use super::Report;

/// The page for `report` of the lattice at `lattice` (its NATS URL).
pub fn page(report: &Report, lattice: &str) -> String {
    let verdict = if report.passed {
        "compliant"
    } else {
        "not compliant"
    };
    let failed = report.checks.iter().filter(|c| !c.passed).count();
    let mut rows = String::new();
    for check in &report.checks {
        let (class, result) = if check.passed {
            ("pass", "pass")
        } else {
            ("fail", "FAIL")
        };
        let findings: String = check
            .findings
            .iter()
            .map(|f| format!("<li>{}</li>", escape(f)))
            .collect();
        let _ = writeln!(
            rows,
            "<tr class=\"{class}\"><td><code>{}</code></td><td>{}</td><td>{result}</td><td><ul>{findings}</ul></td></tr>",
            escape(check.id),
            escape(check.title),
        );
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>CBS compliance: {verdict}</title>\
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#1b1b1b}}\
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ccc;padding:.4rem;text-align:left;vertical-align:top}}\
tr.fail td:nth-child(3){{color:#a00000;font-weight:bold}}tr.pass td:nth-child(3){{color:#0a6b0a}}ul{{margin:0;padding-left:1.2rem}}</style>\
</head><body>\n<h1>CBS compliance: {verdict}</h1>\n<p>Lattice {}; {} check(s), {failed} failed; made at {} ms since the Unix epoch.</p>\n\
<table><thead><tr><th>Check</th><th>What it holds</th><th>Result</th><th>Findings</th></tr></thead><tbody>\n{rows}</tbody></table>\n</body></html>\n",
        escape(lattice),
        report.checks.len(),
        report.at_ms,
    )
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compliance::Check;

    #[test]
    fn findings_are_escaped() {
        let report = Report {
            at_ms: 1,
            passed: false,
            checks: vec![Check {
                id: "cells.contracts",
                title: "t",
                passed: false,
                findings: vec!["<script>alert(1)</script> & \"x\"".into()],
            }],
        };
        let page = page(&report, "nats://<h>");
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot;"));
        assert!(page.contains("not compliant") && page.contains("nats://&lt;h&gt;"));
    }
}
