import { DatabaseError, isDriverError, toDatabaseError } from '@cdp/database';
import { type DataSource, type EntityManager, MoreThan } from 'typeorm';
import { ConcurrencyError } from './concurrency.error';
import { VpgEventEntity } from './entities';

/** An event of a stream, as the domain produced it: stored whole as `data`, `type` also in its own column. */
export interface StreamEvent<E> {
  readonly type: string;
  readonly data: E;
}

export interface EventStream<E> {
  /** Version of the last event; 0 for a stream that does not exist yet. */
  readonly version: number;
  readonly events: readonly StreamEvent<E>[];
}

/** An event with its place in the store, as readAll and the relay hand it out. */
export interface StoredEvent<E = unknown> extends StreamEvent<E> {
  /** Global order across streams; stable, so consumers can deduplicate on it. */
  readonly position: number;
  readonly streamId: string;
  readonly version: number;
  /** ISO 8601, when the store committed it. */
  readonly recordedAt: string;
}

export interface AppendResult {
  /** The stream's version after the append. */
  readonly version: number;
  /** Positions of the appended events, in order. */
  readonly positions: readonly number[];
}

/** Runs inside the append's transaction: whatever it writes commits or rolls back with the events. */
export type Projection = (em: EntityManager) => Promise<void>;

// Arbitrary, fixed key of the transaction-level advisory lock that serialises appends.
const APPEND_LOCK_KEY = 4_711_061_118;
const STREAM_VERSION_CONSTRAINT = 'vpg_events_stream_id_version_key';

/**
 * Event store over vpg_events: one stream per aggregate (here: per VPG), optimistic concurrency on
 * the stream version.
 *
 * Appends are serialised by an advisory lock held until commit. Positions come from a sequence, and
 * without the lock a transaction could take position 10, another 11 and commit first; a reader of
 * readAll would then see 11, move its cursor past 10 and never publish 10. With the lock, positions
 * become visible strictly in order. VPG lifecycle events are rare, so the lost parallelism is moot.
 */
export class EventStore {
  constructor(readonly dataSource: DataSource) {}

  async readStream<E = unknown>(streamId: string): Promise<EventStream<E>> {
    try {
      const rows = await this.dataSource.getRepository(VpgEventEntity).find({
        where: { streamId },
        order: { version: 'ASC' },
      });
      return {
        version: rows.at(-1)?.version ?? 0,
        // The store keeps what the domain handed it; the caller names the type it wrote.
        events: rows.map((row) => ({ type: row.type, data: row.data as E })),
      };
    } catch (error) {
      throw toDatabaseError(error);
    }
  }

  /**
   * Appends events as versions expectedVersion + 1, + 2, … in one transaction, with the optional
   * projection in the same transaction. Throws ConcurrencyError when the stream is not at
   * expectedVersion; errors thrown by the projection pass through unchanged (driver errors become
   * DatabaseError) and leave nothing behind. Appending no events writes nothing.
   */
  async append<E extends { readonly type: string }>(
    streamId: string,
    expectedVersion: number,
    events: readonly E[],
    project?: Projection,
  ): Promise<AppendResult> {
    if (events.length === 0) {
      return { version: expectedVersion, positions: [] };
    }
    try {
      return await this.dataSource.transaction(async (em) => {
        await em.query('SELECT pg_advisory_xact_lock($1)', [APPEND_LOCK_KEY]);
        const rows = await em.query<{ version: number }[]>(
          'SELECT coalesce(max(version), 0) AS version FROM vpg_events WHERE stream_id = $1',
          [streamId],
        );
        const actual = rows[0]?.version ?? 0;
        if (actual !== expectedVersion) {
          throw new ConcurrencyError(streamId, expectedVersion, actual);
        }
        const inserted = await em.insert(
          VpgEventEntity,
          events.map((event, index) => ({
            streamId,
            version: expectedVersion + index + 1,
            type: event.type,
            data: event,
          })),
        );
        await project?.(em);
        return {
          version: expectedVersion + events.length,
          positions: inserted.identifiers.map((identifier) => Number(identifier.position)),
        };
      });
    } catch (error) {
      if (error instanceof ConcurrencyError) {
        throw error;
      }
      const failure = isDriverError(error) ? toDatabaseError(error) : error;
      // Only a writer that bypassed the lock can get here, but the constraint is the last word.
      if (failure instanceof DatabaseError && failure.constraint === STREAM_VERSION_CONSTRAINT) {
        throw new ConcurrencyError(streamId, expectedVersion, undefined, error);
      }
      throw failure;
    }
  }

  /** Up to `limit` events after `afterPosition`, in position order: what a relay publishes next. */
  async readAll(afterPosition: number, limit: number): Promise<StoredEvent[]> {
    try {
      const rows = await this.dataSource.getRepository(VpgEventEntity).find({
        where: { position: MoreThan(String(afterPosition)) },
        order: { position: 'ASC' },
        take: limit,
      });
      return rows.map((row) => ({
        position: Number(row.position),
        streamId: row.streamId,
        version: row.version,
        type: row.type,
        data: row.data,
        recordedAt: row.recordedAt.toISOString(),
      }));
    } catch (error) {
      throw toDatabaseError(error);
    }
  }
}
