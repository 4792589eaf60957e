import 'dart:async';

import 'package:cbs_cell/cbs_cell.dart';
import 'package:test/test.dart';

/// A cell for the tests: shouts, greets through another cell, fails on demand.
class Shout extends Cell {
  @override
  String get id => 'logic.shout';
  @override
  String get version => '0.1.0';
  @override
  String? get inputSchema => 'logic.shout/request@1';

  @override
  Future<Map<String, Object?>> handle(Map<String, Object?> payload, Context ctx) async {
    switch (payload['do']) {
      case 'greet':
        final reply = await ctx.request('logic.greet', {'name': payload['name']});
        return {'text': (reply as Map)['greeting']};
      case 'fail':
        throw CellError.invalidInput('nothing to shout');
      case 'throw':
        throw StateError('bug');
      case 'publish':
        await ctx.publish('events.shouted', {'by': ctx.correlationId});
        return {'text': 'published'};
    }
    return {'text': '${(payload['text'] as String).toUpperCase()}!'};
  }
}

/// The host's side of the pipe: frames in, frames out.
class FakeHost {
  FakeHost() {
    done = runCell(Shout(), input: toCell.stream, output: _Collect(this), log: StringBuffer());
  }

  final toCell = StreamController<List<int>>();
  final _frames = <Map<String, Object?>>[];
  Completer<void>? _waiter;
  late final Future<void> done;

  void send(Map<String, Object?> frame) => toCell.add(encodeFrame(frame));

  /// Bytes as they are, framed or not.
  void sendRaw(List<int> bytes) => toCell.add(bytes);

  void _received(Map<String, Object?> frame) {
    _frames.add(frame);
    _waiter?.complete();
    _waiter = null;
  }

  /// The next frame the cell sends.
  Future<Map<String, Object?>> next() async {
    while (_frames.isEmpty) {
      _waiter = Completer();
      await _waiter!.future.timeout(const Duration(seconds: 5));
    }
    return _frames.removeAt(0);
  }

  Future<Map<String, Object?>> hello() async {
    send({
      'type': 'hello',
      'protocol': {'min': 1, 'max': 3},
      'max_frame_bytes': 65536,
      'cell': {'id': 'logic.shout', 'version': '0.1.0'},
    });
    return next();
  }

  void handle(int id, Map<String, Object?> payload) => send({
        'type': 'handle',
        'id': id,
        'deadline_ms': 1000,
        'envelope': {'v': 1, 'id': 'm$id', 'correlation_id': 'c-1', 'subject': 'cbs.logic.shout', 'payload': payload},
      });
}

class _Collect implements Sink<List<int>> {
  _Collect(this.host);
  final FakeHost host;
  final decoder = FrameDecoder();
  @override
  void add(List<int> data) => decoder.add(data).forEach(host._received);
  @override
  void close() {}
}

void main() {
  test('handshake negotiates the highest common version', () async {
    final host = FakeHost();
    final describe = await host.hello();
    expect(describe['type'], 'describe');
    expect(describe['protocol'], 1);
    expect(describe['cell'], {'id': 'logic.shout', 'version': '0.1.0', 'input_schema': 'logic.shout/request@1'});
  });

  test('handle and reply, several in flight, matched by id', () async {
    final host = FakeHost();
    await host.hello();
    host.handle(1, {'text': 'a'});
    host.handle(2, {'text': 'b'});
    final replies = {for (final r in [await host.next(), await host.next()]) r['id']: r['payload']};
    expect(replies, {1: {'text': 'A!'}, 2: {'text': 'B!'}});
  });

  test('a call to another cell goes through the host', () async {
    final host = FakeHost();
    await host.hello();
    host.handle(5, {'do': 'greet', 'name': 'Ada'});
    final request = await host.next();
    expect(request['type'], 'request');
    expect(request['parent'], 5);
    expect(request['cell'], 'logic.greet');
    host.send({'type': 'response', 'id': request['id'], 'payload': {'greeting': 'Hello, Ada!'}});
    final reply = await host.next();
    expect(reply['payload'], {'text': 'Hello, Ada!'});
  });

  test('publish carries the parent and waits for the ack', () async {
    final host = FakeHost();
    await host.hello();
    host.handle(6, {'do': 'publish'});
    final publish = await host.next();
    expect(publish['type'], 'publish');
    expect(publish['payload'], {'by': 'c-1'});
    host.send({'type': 'response', 'id': publish['id']});
    expect((await host.next())['payload'], {'text': 'published'});
  });

  test('typed errors and exceptions become error replies', () async {
    final host = FakeHost();
    await host.hello();
    host.handle(7, {'do': 'fail'});
    expect((await host.next())['error'], {'code': 'invalid_input', 'message': 'nothing to shout'});
    host.handle(8, {'do': 'throw'});
    expect(((await host.next())['error'] as Map)['code'], 'cell_failed');
  });

  test('a frame that is not JSON stops the session cleanly', () async {
    final host = FakeHost();
    await host.hello();
    host.sendRaw([0, 0, 0, 8, ...'not json'.codeUnits]);
    await host.done;
  });

  test('a handle frame without an id is refused, the session goes on', () async {
    final host = FakeHost();
    await host.hello();
    host.send({'type': 'handle', 'envelope': {'payload': {'do': 'shout', 'text': 'x'}}});
    host.send({'type': 'ping', 'id': 3});
    expect(await host.next(), {'type': 'pong', 'id': 3});
  });

  test('a failed call reaches the handler as a CellError', () async {
    final host = FakeHost();
    await host.hello();
    host.handle(9, {'do': 'greet', 'name': 'x'});
    final request = await host.next();
    host.send({
      'type': 'response',
      'id': request['id'],
      'error': {'code': 'not_found', 'message': 'nothing serves cbs.logic.greet'},
    });
    // Uncaught by the handler, the call's CellError fails the message as is.
    expect((await host.next())['error'], {'code': 'not_found', 'message': 'nothing serves cbs.logic.greet'});
  });

  test('ping, unknown frames, shutdown', () async {
    final host = FakeHost();
    await host.hello();
    host.send({'type': 'from-the-future'});
    host.send({'type': 'ping', 'id': 3});
    expect(await host.next(), {'type': 'pong', 'id': 3});
    host.send({'type': 'shutdown', 'grace_ms': 1000});
    await host.done.timeout(const Duration(seconds: 5));
  });
}
