import 'dart:convert';
import 'dart:typed_data';

import 'package:cbs_cell/cbs_cell.dart';
import 'package:test/test.dart';

void main() {
  test('a frame is a big-endian length and UTF-8 JSON', () {
    final bytes = encodeFrame({'type': 'ping', 'id': 7});
    final body = utf8.encode('{"type":"ping","id":7}');
    expect(bytes.sublist(0, 4), [0, 0, 0, body.length]);
    expect(bytes.sublist(4), body);
  });

  test('frames survive any chunking', () {
    final stream = [
      ...encodeFrame({'type': 'a', 'text': 'héllo'}),
      ...encodeFrame({'type': 'b'}),
    ];
    final decoder = FrameDecoder();
    final frames = <Map<String, Object?>>[];
    for (final byte in stream) {
      frames.addAll(decoder.add([byte]));
    }
    expect(frames.map((f) => f['type']), ['a', 'b']);
    expect(frames.first['text'], 'héllo');
  });

  test('an oversize frame is refused before it is read', () {
    final decoder = FrameDecoder(maxFrameBytes: 8);
    final header = Uint8List(4)..buffer.asByteData().setUint32(0, 9);
    expect(() => decoder.add(header), throwsA(isA<FrameException>()));
  });

  test('a frame must be an object with a type', () {
    final body = utf8.encode('[1]');
    final frame = [0, 0, 0, body.length, ...body];
    expect(() => FrameDecoder().add(frame), throwsA(isA<FrameException>()));
  });

  test('unknown error codes read as internal', () {
    final e = CellError.fromWire({'code': 'weird', 'message': 'm'});
    expect(e.code, ErrorCode.internal);
    expect(CellError.invalidInput('x').toWire(), {'code': 'invalid_input', 'message': 'x'});
  });
}
