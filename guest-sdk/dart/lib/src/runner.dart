import 'dart:async';
import 'dart:convert';
import 'dart:io';
import 'dart:math' as math;

import 'cell.dart';
import 'context.dart';
import 'errors.dart';
import 'frame.dart';

/// Sidecar protocol versions this SDK speaks.
const protocolMin = 1;
const protocolMax = 1;

/// Log levels by severity; `off` is above all.
const _rank = {'trace': 0, 'debug': 1, 'info': 2, 'warn': 3, 'error': 4, 'off': 5};

/// Runs [cell] as a CBS sidecar until the host sends `shutdown` or closes
/// stdin; in-flight messages finish first. [input], [output] and [log]
/// default to stdin, stdout and stderr (tests pass their own).
Future<void> runCell(
  Cell cell, {
  Stream<List<int>>? input,
  Sink<List<int>>? output,
  StringSink? log,
}) async {
  final session = _Session(cell, output ?? stdout, log ?? stderr);
  await session.run(input ?? stdin);
}

class _Session {
  _Session(this.cell, this.out, this.log);

  final Cell cell;
  final Sink<List<int>> out;
  final StringSink log;
  final FrameDecoder decoder = FrameDecoder();

  /// Outbound requests and publishes awaiting their `response`, by id.
  final Map<int, Completer<Map<String, Object?>>> outstanding = {};

  /// Handlers still running.
  final Set<Future<void>> inFlight = {};
  final Completer<void> stopped = Completer();
  int nextId = 1;
  /// The least severe level the host logs (its hello's `log_level`).
  int logRank = 0;
  bool greeted = false;
  bool stopping = false;

  void send(Map<String, Object?> frame) => out.add(encodeFrame(frame));

  /// Whether an encoded frame fits the host's `max_frame_bytes`.
  bool fits(List<int> encoded) => encoded.length - 4 <= decoder.maxFrameBytes;

  Future<void> run(Stream<List<int>> input) async {
    final subscription = input.listen(
      (chunk) {
        try {
          for (final frame in decoder.add(chunk)) {
            onFrame(frame);
          }
        } on FrameException catch (e) {
          log.writeln('cbs_cell: bad frame from the host: ${e.message}');
          stop(hostGone: true);
        }
      },
      onDone: () => stop(hostGone: true),
      onError: (Object e) {
        log.writeln('cbs_cell: reading stdin failed: $e');
        stop(hostGone: true);
      },
    );
    await stopped.future;
    while (inFlight.isNotEmpty) {
      await Future.wait(inFlight.toList());
    }
    await subscription.cancel();
    final sink = out;
    if (sink is IOSink) await sink.flush();
  }

  /// Stops taking messages. When the host is gone, outbound calls fail.
  void stop({bool hostGone = false}) {
    stopping = true;
    if (hostGone) {
      for (final pending in outstanding.values) {
        pending.complete({
          'error': {'code': 'unavailable', 'message': 'the host went away'}
        });
      }
      outstanding.clear();
    }
    if (!stopped.isCompleted) stopped.complete();
  }

  void onFrame(Map<String, Object?> frame) {
    final type = frame['type'];
    if (!greeted && type != 'hello') return;
    switch (type) {
      case 'hello':
        hello(frame);
      case 'handle':
        if (stopping) return;
        if (frame['id'] is! int) {
          log.writeln('cbs_cell: refused a handle frame without an integer id');
          return;
        }
        final running = handle(frame);
        inFlight.add(running);
        running.whenComplete(() => inFlight.remove(running));
      case 'response':
        outstanding.remove(frame['id'])?.complete(frame);
      case 'ping':
        send({'type': 'pong', 'id': frame['id']});
      case 'shutdown':
        stop();
      default:
        // Unknown frame types are ignored (forward compatibility).
        break;
    }
  }

  void hello(Map<String, Object?> frame) {
    greeted = true;
    final offered = (frame['protocol'] as Map?) ?? const {};
    final min = (offered['min'] as int?) ?? 1;
    final max = (offered['max'] as int?) ?? 1;
    var version = math.min(protocolMax, max);
    // No common version: say ours; the host refuses it with a clear error.
    if (version < math.max(protocolMin, min)) version = protocolMax;
    final maxFrame = frame['max_frame_bytes'];
    if (maxFrame is int && maxFrame > 0) decoder.maxFrameBytes = maxFrame;
    logRank = _rank[frame['log_level']] ?? 0;
    send({
      'type': 'describe',
      'protocol': version,
      'cell': {
        'id': cell.id,
        'version': cell.version,
        if (cell.inputSchema != null) 'input_schema': cell.inputSchema,
        if (cell.outputSchema != null) 'output_schema': cell.outputSchema,
      },
    });
  }

  Future<void> handle(Map<String, Object?> frame) async {
    final id = frame['id'] as int;
    final envelope = (frame['envelope'] as Map?)?.cast<String, Object?>() ?? const {};
    final headers = (envelope['headers'] as Map?)?.cast<String, String>() ?? const <String, String>{};
    final ctx = Context(
      correlationId: (envelope['correlation_id'] as String?) ?? '',
      messageId: (envelope['id'] as String?) ?? '',
      headers: headers,
      request: (cellId, payload, timeout) => call({
        'type': 'request',
        'parent': id,
        'cell': cellId,
        'payload': payload,
        if (timeout != null) 'timeout_ms': timeout.inMilliseconds,
      }),
      publish: (subject, payload) =>
          call({'type': 'publish', 'parent': id, 'subject': subject, 'payload': payload}),
      log: (level, message) {
        if ((_rank[level] ?? 2) >= logRank) {
          send({'type': 'log', 'level': level, 'message': message, 'parent': id});
        }
      },
      state: (op) => call({'type': 'state', 'parent': id, ...op}),
      deadline: switch (frame['deadline_ms']) {
        final int ms => DateTime.now().add(Duration(milliseconds: ms)),
        _ => null,
      },
    );
    try {
      final result = await cell.handle(envelope['payload'], ctx);
      final List<int> reply;
      try {
        reply = encodeFrame({'type': 'reply', 'id': id, 'payload': result});
      } on JsonUnsupportedObjectError catch (e) {
        throw CellError(ErrorCode.contractViolation, 'the reply of ${cell.id} is not JSON: $e');
      }
      if (!fits(reply)) {
        throw CellError.cellFailed(
            'the reply of ${cell.id} is ${reply.length - 4} bytes, more than the host takes (${decoder.maxFrameBytes})');
      }
      out.add(reply);
    } on CellError catch (e) {
      send({'type': 'reply', 'id': id, 'error': e.toWire()});
    } catch (e, stack) {
      log.writeln('cbs_cell: the handler of ${cell.id} threw: $e\n$stack');
      final error = CellError.cellFailed('cell ${cell.id} raised ${e.runtimeType}: $e');
      send({'type': 'reply', 'id': id, 'error': error.toWire()});
    }
  }

  /// Sends an outbound frame and waits for its `response`.
  Future<Object?> call(Map<String, Object?> frame) async {
    final id = nextId++;
    final encoded = encodeFrame({...frame, 'id': id});
    if (!fits(encoded)) {
      throw CellError.invalidInput(
          'the ${frame['type']} frame is ${encoded.length - 4} bytes, more than the host takes (${decoder.maxFrameBytes})');
    }
    final response = Completer<Map<String, Object?>>();
    outstanding[id] = response;
    out.add(encoded);
    final answer = await response.future;
    final error = answer['error'];
    if (error is Map) throw CellError.fromWire(error.cast<String, Object?>());
    return answer['payload'];
  }
}
