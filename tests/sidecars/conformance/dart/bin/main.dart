// The sidecar conformance actions (tests/sidecars/conformance/cases.toml)
// on the CBS Dart SDK.
import 'dart:async';
import 'dart:io';

import 'package:cbs_cell/cbs_cell.dart';

class Conformance extends Cell {
  @override
  String get id => 'test.conformance';
  @override
  String get version => '0.1.0';

  int _active = 0;
  int _peak = 0;

  @override
  Future<Object?> handle(covariant Map<String, Object?> payload, Context ctx) async {
    switch (payload['action']) {
      case 'echo':
        return {'value': payload['value']};
      case 'gather':
        final n = payload['n'] as int;
        _active++;
        if (_active > _peak) _peak = _active;
        try {
          for (var i = 0; i < 1000 && _peak < n; i++) {
            await Future<void>.delayed(const Duration(milliseconds: 10));
          }
          if (_peak < n) throw CellError.unavailable('only $_peak in flight at once');
          return {'value': n};
        } finally {
          _active--;
        }
      case 'call':
        return {'value': await ctx.request(payload['cell'] as String, payload['payload'])};
      case 'fail':
        throw CellError.invalidInput(payload['message'] as String);
      case 'crash':
        exit(3);
      case 'fail_with_details':
        throw CellError.invalidInput(payload['message'] as String, details: payload['details']);
      case 'raise':
        throw StateError(payload['message'] as String);
      case 'not_json':
        return {'value': Object()};
      case 'call_null':
        return {'value': await ctx.request(payload['cell'] as String, null)};
      case 'big':
        return {'value': 'x' * (payload['bytes'] as int)};
      case 'deadline':
        final left = ctx.remaining;
        final limit = Duration(milliseconds: payload['deadline_ms'] as int);
        return {
          'value': {'within': left != null && left > Duration.zero && left <= limit}
        };
      case 'log':
        ctx.debug('a debug line');
        ctx.info('an info line');
        ctx.warn('a warn line');
        ctx.error('an error line');
        return {'value': 'logged'};
    }
    throw CellError.invalidInput('unknown action ${payload['action']}');
  }
}

Future<void> main() => runCell(Conformance());
