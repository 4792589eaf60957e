//! axe-core, Deque's accessibility rules engine, run in a page through
//! WebDriver. `make test` installs it from npm into
//! `<target>/axe-core` (pinned in the Makefile); the console never serves
//! or fetches it: only the test injects it.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::json;

use crate::browser::Browser;

/// The rules run: WCAG 2.0, 2.1 and 2.2, levels A and AA.
pub const TAGS: [&str; 5] = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"];

/// `axe.min.js` under the target dir the tests were built in.
pub fn script_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    // <target>/debug/deps/<test>
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test executable is in <target>/debug/deps");
    target.join("axe-core/node_modules/axe-core/axe.min.js")
}

/// The script's text, or a panic saying how to install it.
pub fn script() -> String {
    let path = script_path();
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}. `make test` installs axe-core there (make setup-axe: \
             npm install --prefix <target>/axe-core axe-core@<version>)",
            path.display()
        )
    })
}

/// What axe found on one page.
#[derive(Debug, Deserialize)]
pub struct Audit {
    pub version: String,
    /// Rules that applied and passed.
    pub passes: Vec<String>,
    /// Rules axe could not decide without a person (not failures).
    pub incomplete: Vec<String>,
    pub violations: Vec<Violation>,
}

/// A rule the page breaks, with the elements that break it.
#[derive(Debug, Deserialize)]
pub struct Violation {
    pub id: String,
    pub impact: Option<String>,
    pub help: String,
    /// CSS selectors of the elements.
    pub targets: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let impact = self.impact.as_deref().unwrap_or("unknown");
        write!(
            f,
            "{} ({impact}): {} at {}",
            self.id,
            self.help,
            self.targets.join(", ")
        )
    }
}

/// Injects axe (`script`) into the page and runs the [`TAGS`] rules on it
/// right after the page draws its next snapshot, so that no redraw (one a
/// second) replaces the nodes under it while it runs.
pub async fn audit(browser: &Browser, script: &str) -> Audit {
    // The page's Content-Security-Policy refuses inline scripts, but not
    // WebDriver's: the script runs in the page's window.
    browser
        .client()
        .execute(script, vec![])
        .await
        .expect("axe-core loads into the page");
    let run = r#"
        const [tags, done] = arguments;
        const go = () => axe.run(document, { runOnly: { type: "tag", values: tags } })
            .then((r) => done({
                version: axe.version,
                passes: r.passes.map((p) => p.id),
                incomplete: r.incomplete.map((i) => i.id),
                violations: r.violations.map((v) => ({
                    id: v.id, impact: v.impact, help: v.help,
                    targets: v.nodes.map((n) => n.target.join(" ")),
                })),
            }), (e) => done({ error: String(e) }));
        const observer = new MutationObserver(() => { observer.disconnect(); go(); });
        observer.observe(document.getElementById("view"), { childList: true });
    "#;
    let answer = browser
        .client()
        .execute_async(run, vec![json!(TAGS)])
        .await
        .expect("axe runs");
    if let Some(error) = answer.get("error") {
        panic!("axe failed: {error}");
    }
    serde_json::from_value(answer.clone()).unwrap_or_else(|e| panic!("{e}: {answer}"))
}
