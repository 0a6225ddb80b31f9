import { DatabaseError, isDriverError, toDatabaseError } from './database.error';

/** Shaped like what pg throws for a server-side error. */
function pgError(code: string, constraint?: string): Error {
  return Object.assign(new Error(`server said ${code}`), { code, constraint });
}

describe('toDatabaseError', () => {
  it.each([
    ['40001', 'serialization-failure', true],
    ['40P01', 'deadlock', true],
    ['57P03', 'unavailable', true],
    ['23505', 'unique-violation', false],
    ['22P02', 'invalid-input', false],
    ['57P01', 'connection-lost', false],
    ['42P01', 'query-failed', false],
  ])('maps SQLSTATE %s to %s (retriable: %s)', (sqlState, code, retriable) => {
    const error = toDatabaseError(pgError(sqlState));
    expect(error).toBeInstanceOf(DatabaseError);
    expect(error).toMatchObject({ code, retriable, sqlState });
  });

  it('treats a refused connection as retriable, also inside an AggregateError', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED' });
    expect(toDatabaseError(refused)).toMatchObject({ code: 'unavailable', retriable: true });
    expect(toDatabaseError(new AggregateError([refused], ''))).toMatchObject({ code: 'unavailable', retriable: true });
  });

  it('does not retry a connection that broke mid-statement: the commit may have happened', () => {
    const reset = Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
    expect(toDatabaseError(reset)).toMatchObject({ code: 'connection-lost', retriable: false });
    expect(toDatabaseError(new Error('Connection terminated unexpectedly'))).toMatchObject({ code: 'connection-lost' });
  });

  it("unwraps TypeORM's QueryFailedError and keeps the constraint", () => {
    const wrapped = Object.assign(new Error('duplicate key'), { driverError: pgError('23505', 'vpgs_name_key') });
    const error = toDatabaseError(wrapped);
    expect(error).toMatchObject({ code: 'unique-violation', constraint: 'vpgs_name_key', cause: wrapped });
  });

  it('returns a DatabaseError unchanged', () => {
    const original = new DatabaseError('conflict', 'x', true);
    expect(toDatabaseError(original)).toBe(original);
  });
});

describe('isDriverError', () => {
  it('recognises driver and socket errors, not application errors that happen to have a code', () => {
    expect(isDriverError(pgError('23505'))).toBe(true);
    expect(isDriverError(Object.assign(new Error('x'), { code: 'ECONNREFUSED' }))).toBe(true);
    expect(isDriverError({ driverError: pgError('40001') })).toBe(true);
    expect(isDriverError(Object.assign(new Error('x'), { code: 'already-exists' }))).toBe(false);
    expect(isDriverError(new Error('plain'))).toBe(false);
  });
});
