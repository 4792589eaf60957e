import 'dart:async';

import 'context.dart';

/// A CBS cell: identity, contract ids and one handler.
abstract class Cell {
  /// Dotted cell id, e.g. `logic.shout`; it must match `cell.toml`.
  String get id;

  /// Cell version.
  String get version;

  /// Contract id of the request payload, e.g. `logic.shout/request@1`.
  String? get inputSchema => null;

  /// Contract id of the reply payload, e.g. `logic.shout/reply@1`.
  String? get outputSchema => null;

  /// Handles one message. [payload] has already been validated against the
  /// cell's input schema; the returned map is validated against its output
  /// schema. Throw a [CellError] to fail with a typed error; any other
  /// exception is reported as `cell_failed` (as in the Rust and Python
  /// SDKs; docs/sidecar-protocol.md has the table), its stack in the log.
  FutureOr<Map<String, Object?>> handle(Map<String, Object?> payload, Context ctx);
}
