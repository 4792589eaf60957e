// A complete Dart cell: `dart run example/shout.dart` speaks the sidecar
// protocol on stdin/stdout, as cbs-host expects.
import 'package:cbs_cell/cbs_cell.dart';

class Shout extends Cell {
  @override
  String get id => 'logic.shout';
  @override
  String get version => '0.1.0';
  @override
  String? get inputSchema => 'logic.shout/request@1';
  @override
  String? get outputSchema => 'logic.shout/reply@1';

  @override
  Future<Map<String, Object?>> handle(Map<String, Object?> payload, Context ctx) async {
    final text = payload['text'] as String;
    if (text.trim().isEmpty) throw CellError.invalidInput('text is empty');
    ctx.info('shouting ${text.length} characters');
    return {'text': '${text.toUpperCase()}!'};
  }
}

Future<void> main() => runCell(Shout());
