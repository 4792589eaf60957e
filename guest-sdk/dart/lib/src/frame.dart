import 'dart:convert';
import 'dart:typed_data';

/// A frame that breaks the protocol: too large, or not a JSON object.
class FrameException implements Exception {
  FrameException(this.message);
  final String message;
  @override
  String toString() => 'FrameException: $message';
}

/// Encodes one frame: a 4-byte big-endian length, then UTF-8 JSON.
Uint8List encodeFrame(Map<String, Object?> frame) {
  final body = utf8.encode(jsonEncode(frame));
  final out = Uint8List(4 + body.length);
  ByteData.view(out.buffer).setUint32(0, body.length, Endian.big);
  out.setRange(4, out.length, body);
  return out;
}

/// Turns a byte stream into frames, whatever the chunking.
class FrameDecoder {
  FrameDecoder({this.maxFrameBytes = 1 << 20});

  /// Frames larger than this are refused (the host's `max_frame_bytes`).
  int maxFrameBytes;

  final BytesBuilder _buffer = BytesBuilder(copy: false);
  Uint8List _pending = Uint8List(0);

  /// Adds a chunk; returns the frames it completed.
  List<Map<String, Object?>> add(List<int> chunk) {
    _buffer.add(_pending);
    _buffer.add(chunk);
    var data = _buffer.takeBytes();
    final frames = <Map<String, Object?>>[];
    var offset = 0;
    while (data.length - offset >= 4) {
      final length = ByteData.sublistView(data, offset, offset + 4).getUint32(0, Endian.big);
      if (length > maxFrameBytes) {
        throw FrameException('oversize frame: $length bytes, at most $maxFrameBytes');
      }
      if (data.length - offset - 4 < length) break;
      final Object? decoded;
      try {
        decoded = jsonDecode(utf8.decode(Uint8List.sublistView(data, offset + 4, offset + 4 + length)));
      } on FormatException catch (e) {
        // Bad UTF-8 or bad JSON: the stream cannot be trusted after it.
        throw FrameException('a frame is not JSON: ${e.message}');
      }
      if (decoded is! Map<String, Object?> || decoded['type'] is! String) {
        throw FrameException('a frame is not a JSON object with a "type"');
      }
      frames.add(decoded);
      offset += 4 + length;
    }
    _pending = Uint8List.sublistView(data, offset);
    return frames;
  }
}
