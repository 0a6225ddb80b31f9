import { DatabaseError } from '@cdp/database';

/**
 * An append found its stream at another version than the one its decision was based on. Retriable:
 * read the stream again, decide again.
 */
export class ConcurrencyError extends DatabaseError {
  override readonly name = 'ConcurrencyError';

  constructor(
    readonly streamId: string,
    readonly expectedVersion: number,
    /** Undefined when a concurrent writer won the race on the unique (stream_id, version). */
    readonly actualVersion: number | undefined,
    cause?: unknown,
  ) {
    super(
      'conflict',
      `stream ${streamId} changed concurrently: expected version ${expectedVersion}, ` +
        (actualVersion === undefined ? 'another append won the race' : `found version ${actualVersion}`),
      true,
      { cause },
    );
  }
}
