// A Dart cell that calls another cell through the host: `logic.welcome`
// asks `logic.greet` for a greeting and shouts it. Its cell.toml must grant
// the call: `[capabilities] calls = ["logic.greet"]`.
import 'package:cbs_cell/cbs_cell.dart';

class Welcome extends Cell {
  @override
  String get id => 'logic.welcome';
  @override
  String get version => '0.1.0';

  @override
  Future<Map<String, Object?>> handle(Map<String, Object?> payload, Context ctx) async {
    final name = payload['name'];
    if (name is! String || name.isEmpty) throw CellError.invalidInput('name is required');
    try {
      final reply = await ctx.request('logic.greet', {'name': name}, timeout: const Duration(seconds: 1));
      final greeting = (reply as Map)['greeting'] as String;
      return {'text': '${greeting.toUpperCase()}!'};
    } on CellError catch (e) {
      // Typed errors from the callee (timeout, not_found, ...) can be
      // handled, or rethrown to fail this message with the same code.
      ctx.warn('logic.greet failed: $e');
      rethrow;
    }
  }
}

Future<void> main() => runCell(Welcome());
