//! `cbs new --lang dart`: a Dart sidecar cell on the Dart SDK, compiled
//! with `dart compile exe`, with a unit test run by `dart test`.

use std::path::Path;

use super::CellToml;

/// The files of Dart cell `id`, on the Dart SDK at `sdk`.
pub fn files(id: &str, sdk: &Path) -> Vec<(String, String)> {
    let package = id.replace(['.', '-'], "_");
    let class = super::type_name(id);
    let fill = |template: &str| {
        template
            .replace("{id}", id)
            .replace("{package}", &package)
            .replace("{Class}", &class)
            .replace("{sdk}", &sdk.display().to_string())
    };
    vec![
        ("pubspec.yaml".into(), fill(PUBSPEC)),
        (format!("lib/{package}.dart"), fill(CELL)),
        ("bin/main.dart".into(), fill(MAIN)),
        ("test/cell_test.dart".into(), fill(TEST)),
        ("cell.toml".into(), fill(&CELL_TOML.template())),
        ("schemas/input.json".into(), fill(super::INPUT_SCHEMA)),
        ("schemas/output.json".into(), fill(super::OUTPUT_SCHEMA)),
        (
            ".gitignore".into(),
            fill(".dart_tool/\npubspec.lock\nbin/{package}\n*.cbs\n"),
        ),
        ("README.md".into(), fill(README)),
    ]
}

const PUBSPEC: &str = r#"name: {package}
description: The CBS cell {id}, run as a sidecar.
version: 0.1.0
publish_to: none

environment:
  sdk: ">=3.0.0 <4.0.0"

dependencies:
  cbs_cell:
    path: {sdk}

dev_dependencies:
  test: ^1.24.0
"#;

const CELL: &str = r#"// {id}: replies to {"text": "..."} with the text in upper case and its length.
import 'package:cbs_cell/cbs_cell.dart';

class {Class} extends Cell {
  @override
  String get id => '{id}';
  @override
  String get version => '0.1.0';
  @override
  String? get inputSchema => '{id}/request@1';
  @override
  String? get outputSchema => '{id}/reply@1';

  @override
  Future<Map<String, Object?>> handle(Map<String, Object?> payload, Context ctx) async {
    final text = payload['text'] as String;
    if (text.trim().isEmpty) throw CellError.invalidInput('text is blank');
    return {'text': text.toUpperCase(), 'length': text.length};
  }
}
"#;

const MAIN: &str = r#"import 'package:cbs_cell/cbs_cell.dart';
import 'package:{package}/{package}.dart';

Future<void> main() => runCell({Class}());
"#;

const TEST: &str = r#"import 'package:cbs_cell/cbs_cell.dart';
import 'package:{package}/{package}.dart';
import 'package:test/test.dart';

/// A context with nothing behind it: this cell calls no other cell.
Context context() => Context(
      correlationId: 'c1',
      messageId: 'm1',
      headers: const {},
      request: (cell, payload, timeout) async => throw CellError.invalidInput('no calls in tests'),
      publish: (subject, payload) async {},
      log: (level, message) {},
    );

void main() {
  test('replies in upper case', () async {
    expect(await {Class}().handle({'text': 'hi'}, context()), {'text': 'HI', 'length': 2});
  });

  test('blank text is invalid input', () async {
    expect(() => {Class}().handle({'text': '  '}, context()), throwsA(isA<CellError>()));
  });
}
"#;

const CELL_TOML: CellToml = CellToml {
    about: r#"a CBS cell in Dart, run as a supervised sidecar process. Every
# field is described in the CBS README ("Cells in any language")."#,
    runtime: r#"runtime = "sidecar"

[sidecar]
# `dart compile exe bin/main.dart -o bin/{package}`: a native executable,
# so a restart does not compile and nothing but frames reaches stdout.
command = ["bin/{package}"]
processes = 1
"#,
    limits: "timeout_ms = 5000\nconcurrency = 16\n",
    pooled: false,
};

const README: &str = r#"# {id}

A CBS cell in Dart, run as a sidecar. `{"text": "hi"}` → `{"text": "HI", "length": 2}`.

    dart pub get
    dart test                                        # the handler's unit tests
    dart compile exe bin/main.dart -o bin/{package}  # the executable cell.toml runs
    cbs-host run --start {id} --input '{"text":"hi"}' .
"#;
