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

  /// Handles one message. [payload] is any JSON value (a map, list,
  /// string, number or bool), already validated against the cell's input
  /// schema; a cell whose schema takes objects may declare it
  /// `Map<String, Object?>` (the parameter is covariant). The returned
  /// value is validated against the output schema. Throw a [CellError] to
  /// fail with a typed error; any other exception is reported as
  /// `cell_failed`, and a value JSON cannot encode as
  /// `contract_violation` (as in the Rust and Python SDKs;
  /// docs/sidecar-protocol.md has the table), its stack in the log.
  FutureOr<Object?> handle(covariant Object? payload, Context ctx);
}
