import 'dart:convert';

/// The cell's own key-value state (`[capabilities.state]` in `cell.toml`):
/// private to the cell, kept across messages and restarts. Values are
/// bytes; [getJson]/[setJson] store JSON. Failures throw `CellError`s
/// (`invalid_input`, `capacity`, `unavailable`, `contract_violation`).
class State {
  State(this._op);

  /// Sends one `state` frame's fields and returns the response payload.
  final Future<Object?> Function(Map<String, Object?> op) _op;

  Future<Map<String, Object?>> _run(Map<String, Object?> op) async =>
      ((await _op(op)) as Map?)?.cast<String, Object?>() ?? const {};

  Future<List<int>?> get(String key) async {
    final value = (await _run({'op': 'get', 'key': key}))['value'];
    return value == null ? null : base64.decode(value as String);
  }

  Future<void> set(String key, List<int> value) =>
      _run({'op': 'set', 'key': key, 'value': base64.encode(value)});

  Future<Object?> getJson(String key) async {
    final raw = await get(key);
    return raw == null ? null : jsonDecode(utf8.decode(raw));
  }

  Future<void> setJson(String key, Object? value) => set(key, utf8.encode(jsonEncode(value)));

  Future<void> delete(String key) => _run({'op': 'delete', 'key': key});

  Future<bool> exists(String key) async => (await _run({'op': 'exists', 'key': key}))['exists'] == true;

  /// Every key, in order.
  Future<List<String>> keys() async {
    final keys = <String>[];
    Object? cursor;
    do {
      final page = await _run({'op': 'keys', 'cursor': cursor});
      keys.addAll(((page['keys'] as List?) ?? const []).cast<String>());
      cursor = page['cursor'];
    } while (cursor != null);
    return keys;
  }

  /// Adds [delta] to the counter at [key] (0 when absent), atomically.
  Future<int> increment(String key, [int delta = 1]) async =>
      (await _run({'op': 'increment', 'key': key, 'delta': delta}))['value'] as int;
}
