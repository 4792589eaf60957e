/// The closed set of CBS failure codes (`BusError` in the host).
enum ErrorCode {
  invalidInput('invalid_input'),
  contractViolation('contract_violation'),
  notFound('not_found'),
  timeout('timeout'),
  unavailable('unavailable'),
  circuitOpen('circuit_open'),
  capacity('capacity'),
  cellFailed('cell_failed'),
  internal('internal');

  const ErrorCode(this.wire);

  /// The code as it travels in frames and envelopes.
  final String wire;

  /// The code for [wire]; unknown codes are [ErrorCode.internal].
  static ErrorCode parse(String? wire) =>
      ErrorCode.values.firstWhere((c) => c.wire == wire, orElse: () => ErrorCode.internal);
}

/// A typed failure: thrown by a handler to fail its message, and thrown to
/// a handler when a call to another cell fails.
class CellError implements Exception {
  CellError(this.code, this.message, {this.details});

  CellError.invalidInput(String message, {Object? details})
      : this(ErrorCode.invalidInput, message, details: details);
  CellError.unavailable(String message, {Object? details})
      : this(ErrorCode.unavailable, message, details: details);
  CellError.internal(String message, {Object? details})
      : this(ErrorCode.internal, message, details: details);
  CellError.cellFailed(String message, {Object? details})
      : this(ErrorCode.cellFailed, message, details: details);

  /// Reads the `error` object of a frame.
  factory CellError.fromWire(Map<String, Object?> error) => CellError(
        ErrorCode.parse(error['code'] as String?),
        (error['message'] as String?) ?? 'no message',
        details: error['details'],
      );

  final ErrorCode code;
  final String message;

  /// Extra machine-readable context (any JSON value).
  final Object? details;

  Map<String, Object?> toWire() => {
        'code': code.wire,
        'message': message,
        if (details != null) 'details': details,
      };

  @override
  String toString() => '${code.wire}: $message';
}
