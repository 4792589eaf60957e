//! `cbs new --lang python`: a Python cell built into a component by
//! componentize-py (`cbs build`), with a unit test run by `unittest`.

use std::path::Path;

use super::CellToml;

/// The files of Python cell `id`, on the Python SDK at `sdk`.
pub fn files(id: &str, sdk: &Path) -> Vec<(String, String)> {
    let module = id.replace(['.', '-'], "_");
    let fill = |template: &str| {
        template
            .replace("{id}", id)
            .replace("{module}", &module)
            .replace("{sdk}", &sdk.display().to_string())
    };
    vec![
        ("cell.toml".into(), fill(&CELL_TOML.template())),
        (format!("{module}.py"), fill(HANDLER)),
        (format!("test_{module}.py"), fill(TEST)),
        ("schemas/input.json".into(), fill(super::INPUT_SCHEMA)),
        ("schemas/output.json".into(), fill(super::OUTPUT_SCHEMA)),
        (
            ".gitignore".into(),
            "*.wasm\n*.cbs\n__pycache__/\n".to_owned(),
        ),
        ("README.md".into(), fill(README)),
    ]
}

const CELL_TOML: CellToml = CellToml {
    about: r#"a CBS cell in Python, built into a WebAssembly component by
# componentize-py (`cbs build`). Every field is described in the CBS README
# ("Python cells")."#,
    runtime: r#"runtime = "wasm"
lang = "python"
component = "{module}.wasm"

[python]
module = "{module}"      # {module}.py, function `handle`
"#,
    limits: "memory_mb = 128          # CPython in a component needs more than a Rust cell
timeout_ms = 5000
concurrency = 8
",
    pooled: true,
};

const HANDLER: &str = r#""""{id}: replies to {"text": "..."} with the text in upper case and its length."""

from cbs_cell import Context, InvalidInput


def handle(payload: dict, ctx: Context) -> dict:
    text = payload["text"]
    if not text.strip():
        raise InvalidInput("text is blank")
    ctx.log.debug("upper-casing %d characters", len(text))
    return {"text": text.upper(), "length": len(text)}
"#;

const TEST: &str = r#""""Unit tests of {id}'s handler: `python3 -m unittest` in this folder."""

import sys
import unittest

# The CBS Python SDK this cell was made with.
sys.path.insert(0, "{sdk}")

from cbs_cell import InvalidInput  # noqa: E402
from cbs_cell.testing import TestContext  # noqa: E402

from {module} import handle  # noqa: E402


class HandleTest(unittest.TestCase):
    def test_replies_in_upper_case(self):
        self.assertEqual(handle({"text": "hi"}, TestContext("{id}")), {"text": "HI", "length": 2})

    def test_blank_text_is_invalid_input(self):
        with self.assertRaises(InvalidInput):
            handle({"text": "  "}, TestContext("{id}"))


if __name__ == "__main__":
    unittest.main()
"#;

const README: &str = r#"# {id}

A CBS cell in Python. `{"text": "hi"}` → `{"text": "HI", "length": 2}`.

    python3 -m unittest              # the handler's unit tests
    cbs build . -o {id}.cbs          # component (componentize-py) + bundle
    cbs-host load {id}.cbs           # check it loads
    cbs-host run --start {id} --input '{"text":"hi"}' {id}.cbs
"#;
