/**
 * Errors from the storage layer, with a stable machine-readable `code` and whether the operation may
 * simply be tried again. Callers branch on these two fields, never on driver messages or SQLSTATEs.
 */
export type DatabaseErrorCode =
  /** The server could not be reached or refused the connection; nothing was executed. */
  | 'unavailable'
  /** The connection broke while a statement was in flight: whether it committed is unknown. */
  | 'connection-lost'
  | 'serialization-failure'
  | 'deadlock'
  /** Optimistic concurrency: somebody else changed the data first. */
  | 'conflict'
  | 'unique-violation'
  | 'foreign-key-violation'
  | 'check-violation'
  | 'not-null-violation'
  | 'invalid-input'
  | 'query-failed'
  /** The embedded server could not be initialised, started, adopted or stopped. */
  | 'server-failed';

export class DatabaseError extends Error {
  override readonly name: string = 'DatabaseError';
  /** The PostgreSQL SQLSTATE, when the server produced the error. */
  readonly sqlState: string | undefined;
  /** The violated constraint, for integrity errors: lets a caller tell which uniqueness it hit. */
  readonly constraint: string | undefined;

  constructor(
    readonly code: DatabaseErrorCode,
    message: string,
    readonly retriable: boolean,
    options: { cause?: unknown; sqlState?: string; constraint?: string } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.sqlState = options.sqlState;
    this.constraint = options.constraint;
  }
}

// Client-side failures to reach the server: the statement never ran, so trying again is safe.
const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH']);
// A connection that died mid-statement: the commit may or may not have happened, so a blind retry of
// a non-idempotent write could apply it twice. The caller decides.
const BROKEN = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT']);

const BY_SQLSTATE: Record<string, { code: DatabaseErrorCode; retriable: boolean }> = {
  '40001': { code: 'serialization-failure', retriable: true },
  '40P01': { code: 'deadlock', retriable: true },
  '23505': { code: 'unique-violation', retriable: false },
  '23503': { code: 'foreign-key-violation', retriable: false },
  '23514': { code: 'check-violation', retriable: false },
  '23502': { code: 'not-null-violation', retriable: false },
  '22P02': { code: 'invalid-input', retriable: false },
  '22007': { code: 'invalid-input', retriable: false },
  '22008': { code: 'invalid-input', retriable: false },
  // sqlclient_unable_to_establish_sqlconnection, sqlserver_rejected_establishment_of_sqlconnection,
  // cannot_connect_now (starting up, shutting down, in recovery), too_many_connections.
  '08001': { code: 'unavailable', retriable: true },
  '08004': { code: 'unavailable', retriable: true },
  '57P03': { code: 'unavailable', retriable: true },
  '53300': { code: 'unavailable', retriable: true },
  // connection_exception, connection_failure, admin_shutdown, crash_shutdown: the session died.
  '08000': { code: 'connection-lost', retriable: false },
  '08003': { code: 'connection-lost', retriable: false },
  '08006': { code: 'connection-lost', retriable: false },
  '57P01': { code: 'connection-lost', retriable: false },
  '57P02': { code: 'connection-lost', retriable: false },
};

function stringField(value: unknown, key: string): string | undefined {
  if (typeof value !== 'object' || value === null || !(key in value)) {
    return undefined;
  }
  const field: unknown = (value as Record<string, unknown>)[key];
  return typeof field === 'string' ? field : undefined;
}

/** Node reports a refused connection to a host with several addresses as an AggregateError. */
function systemCode(error: unknown): string | undefined {
  const own = stringField(error, 'code');
  if (own !== undefined) {
    return own;
  }
  if (error instanceof AggregateError) {
    for (const inner of error.errors) {
      const code = stringField(inner, 'code');
      if (code !== undefined) {
        return code;
      }
    }
  }
  return undefined;
}

/**
 * True for what the driver or the ORM throws (a SQLSTATE or a socket errno, possibly wrapped by
 * TypeORM), as opposed to errors of the caller's own code, such as a DomainError from inside a
 * transaction, which must pass through unchanged.
 */
export function isDriverError(error: unknown): boolean {
  if (error instanceof DatabaseError) {
    return true;
  }
  const driverError: unknown =
    typeof error === 'object' && error !== null && 'driverError' in error ? error.driverError : error;
  const code = systemCode(driverError);
  return code !== undefined && (/^[0-9A-Z]{5}$/.test(code) || /^E[A-Z_]+$/.test(code));
}

/**
 * Classifies anything thrown by pg or TypeORM. TypeORM wraps driver errors in QueryFailedError with
 * the original under `driverError`; pg errors carry the SQLSTATE in `code`, socket errors the errno.
 */
export function toDatabaseError(error: unknown): DatabaseError {
  if (error instanceof DatabaseError) {
    return error;
  }
  const driverError: unknown =
    typeof error === 'object' && error !== null && 'driverError' in error ? error.driverError : error;
  const message = error instanceof Error ? error.message : String(error);
  const code = systemCode(driverError);
  const constraint = stringField(driverError, 'constraint');
  if (code !== undefined && /^[0-9A-Z]{5}$/.test(code)) {
    const known = BY_SQLSTATE[code];
    return new DatabaseError(known?.code ?? 'query-failed', message, known?.retriable ?? false, {
      cause: error,
      sqlState: code,
      constraint,
    });
  }
  if (code !== undefined && UNREACHABLE.has(code)) {
    return new DatabaseError('unavailable', message, true, { cause: error });
  }
  if (code !== undefined && BROKEN.has(code)) {
    return new DatabaseError('connection-lost', message, false, { cause: error });
  }
  if (/Connection terminated/i.test(message)) {
    return new DatabaseError('connection-lost', message, false, { cause: error });
  }
  return new DatabaseError('query-failed', message, false, { cause: error });
}
