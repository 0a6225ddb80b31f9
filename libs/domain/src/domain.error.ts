/**
 * Errors raised by domain rules. `code` is stable and machine-readable; the HTTP and gRPC edges map
 * codes to status codes, the domain never knows about transports.
 */
export type DomainErrorCode =
  | 'invalid-argument'
  | 'not-found'
  | 'already-exists'
  | 'conflict'
  | 'out-of-range'
  | 'failed-precondition';

export class DomainError extends Error {
  override readonly name = 'DomainError';
  constructor(
    readonly code: DomainErrorCode,
    message: string,
    readonly details: Record<string, unknown> = {},
  ) {
    super(message);
  }
}
