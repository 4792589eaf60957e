/// Write CBS cells in Dart.
///
/// A cell is a [Cell]: an id, a version and one [Cell.handle] method. Run it
/// with [runCell] from `main`; the host starts the program as a sidecar and
/// talks to it over stdin/stdout (see docs/sidecar-protocol.md).
///
/// ```dart
/// import 'package:cbs_cell/cbs_cell.dart';
///
/// class Shout extends Cell {
///   @override
///   String get id => 'logic.shout';
///   @override
///   String get version => '0.1.0';
///
///   @override
///   Future<Map<String, Object?>> handle(Map<String, Object?> payload, Context ctx) async {
///     final text = payload['text'] as String;
///     if (text.isEmpty) throw CellError.invalidInput('text is empty');
///     return {'text': '${text.toUpperCase()}!'};
///   }
/// }
///
/// Future<void> main() => runCell(Shout());
/// ```
library cbs_cell;

export 'src/cell.dart';
export 'src/context.dart';
export 'src/errors.dart';
export 'src/frame.dart' show encodeFrame, FrameDecoder, FrameException;
export 'src/runner.dart' show runCell, protocolMin, protocolMax;
export 'src/state.dart';
