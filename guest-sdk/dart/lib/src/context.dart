import 'errors.dart';
import 'state.dart';

/// What a handler knows about its message, and its way to other cells.
class Context {
  Context({
    required this.correlationId,
    required this.messageId,
    required Map<String, String> headers,
    required Future<Object?> Function(String cellId, Object? payload, Duration? timeout) request,
    required Future<void> Function(String subject, Object? payload) publish,
    required void Function(String level, String message) log,
    Future<Object?> Function(Map<String, Object?> op)? state,
    this.deadline,
  })  : state = State(state ?? _noState),
        _headers = headers,
        _request = request,
        _publish = publish,
        _log = log;

  /// Shared by every message of this flow.
  final String correlationId;

  /// Id of the message being handled.
  final String messageId;

  /// The cell's own key-value state.
  final State state;

  /// When the host stops waiting for this message, if it says.
  final DateTime? deadline;

  /// Time left before [deadline] (zero once passed), or `null`. Calls need
  /// not be capped by it: the host caps them.
  Duration? get remaining {
    final left = deadline?.difference(DateTime.now());
    if (left == null) return null;
    return left.isNegative ? Duration.zero : left;
  }

  final Map<String, String> _headers;
  final Future<Object?> Function(String, Object?, Duration?) _request;
  final Future<void> Function(String, Object?) _publish;
  final void Function(String, String) _log;

  /// A header of the incoming envelope (`traceparent`, ...), any case.
  String? header(String name) {
    final lower = name.toLowerCase();
    for (final entry in _headers.entries) {
      if (entry.key.toLowerCase() == lower) return entry.value;
    }
    return null;
  }

  /// Request/reply to another cell by id. Allowed only for cells listed in
  /// `[capabilities] calls` of `cell.toml`; throws [CellError] on failure.
  /// A `null` payload is refused here, as the protocol refuses it.
  Future<Object?> request(String cellId, Object? payload, {Duration? timeout}) async {
    if (payload == null) {
      throw CellError.invalidInput('a request to $cellId needs a payload: null is not one');
    }
    return _request(cellId, payload, timeout);
  }

  /// Fire-and-forget publish to a subject listed in `[capabilities] publish`.
  /// A `null` payload is refused here, as the protocol refuses it.
  Future<void> publish(String subject, Object? payload) async {
    if (payload == null) {
      throw CellError.invalidInput('a publish to $subject needs a payload: null is not one');
    }
    return _publish(subject, payload);
  }

  /// Logs into the host's log, tagged with this cell and correlation id.
  /// Lines below the host's `log_level` are not sent.
  void log(String level, String message) => _log(level, message);
  void debug(String message) => _log('debug', message);
  void info(String message) => _log('info', message);
  void warn(String message) => _log('warn', message);
  void error(String message) => _log('error', message);
}

Future<Object?> _noState(Map<String, Object?> op) async =>
    throw CellError.fromWire({'code': 'contract_violation', 'message': 'no state outside a host'});
