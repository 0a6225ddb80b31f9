import { Logger } from '@nestjs/common';
import { type DataSource } from 'typeorm';
import { type BusMessage, type BusProducer } from '@cdp/bus';

interface OutboxRow {
  position: string;
  topic: string;
  key: string;
  value: Buffer;
}

export interface OutboxRelayOptions {
  /** Rows published per round trip. Default 500. */
  readonly batchRows?: number;
  /** First delay before retrying a failed publish; doubles up to retryMaxMs. Defaults 100 ms and 10 s. */
  readonly retryInitialMs?: number;
  readonly retryMaxMs?: number;
}

/**
 * Publishes journal_outbox to the bus in position order and deletes what the bus has acknowledged.
 * Rows are locked while being published (FOR UPDATE SKIP LOCKED), so two journal writers never publish
 * the same row at once; a crash after the send and before the delete publishes a row again, which is
 * what at-least-once means (every message carries an id for consumers that must not act twice).
 *
 * `publish()` runs one drain at a time; calls made during a drain run another one after it, so a row
 * committed just after a drain read the table is not left behind. A failed drain is retried with
 * backoff until it succeeds or the relay stops.
 */
export class OutboxRelay {
  private readonly logger = new Logger('journal-outbox');
  private running: Promise<void> | undefined;
  private again = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryDelayMs: number;
  private stopped = false;
  private readonly batchRows: number;
  private readonly retryInitialMs: number;
  private readonly retryMaxMs: number;

  constructor(
    private readonly dataSource: DataSource,
    private readonly producer: BusProducer,
    options: OutboxRelayOptions = {},
  ) {
    this.batchRows = options.batchRows ?? 500;
    this.retryInitialMs = options.retryInitialMs ?? 100;
    this.retryMaxMs = options.retryMaxMs ?? 10_000;
    this.retryDelayMs = this.retryInitialMs;
  }

  /** Resolves when everything committed before the call has been published, or rejects if publishing failed (a retry is then scheduled). */
  publish(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    const run = (async () => {
      try {
        do {
          this.again = false;
          while (!this.stopped && (await this.publishBatch()) === this.batchRows) {
            // A full batch: there may be more.
          }
        } while (this.again && !this.stopped);
        this.retryDelayMs = this.retryInitialMs;
      } catch (err) {
        this.scheduleRetry(err);
        throw err;
      } finally {
        this.running = undefined;
      }
    })();
    this.running = run;
    return run;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    await this.running?.catch(() => undefined);
  }

  /** Publishes and deletes up to one batch of rows; returns how many. */
  private async publishBatch(): Promise<number> {
    return this.dataSource.transaction(async (em) => {
      const rows = await em.query<OutboxRow[]>(
        `SELECT position, topic, key, value FROM journal_outbox ORDER BY position LIMIT $1 FOR UPDATE SKIP LOCKED`,
        [this.batchRows],
      );
      if (rows.length === 0) {
        return 0;
      }
      // One send per run of rows for the same topic keeps position order within each topic (and so
      // within each key, which is all the bus orders).
      let i = 0;
      while (i < rows.length) {
        const topic = (rows[i] as OutboxRow).topic;
        const messages: BusMessage[] = [];
        for (; i < rows.length && (rows[i] as OutboxRow).topic === topic; i++) {
          const row = rows[i] as OutboxRow;
          messages.push({ key: row.key, value: row.value });
        }
        await this.producer.send(topic, messages);
      }
      await em.query(`DELETE FROM journal_outbox WHERE position = ANY($1::bigint[])`, [rows.map((r) => r.position)]);
      return rows.length;
    });
  }

  private scheduleRetry(err: unknown): void {
    if (this.stopped) {
      return;
    }
    this.logger.warn(`publishing the outbox failed, retrying in ${this.retryDelayMs} ms: ${err instanceof Error ? err.message : String(err)}`);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.publish().catch(() => undefined);
    }, this.retryDelayMs);
    this.retryTimer.unref();
    this.retryDelayMs = Math.min(this.retryDelayMs * 2, this.retryMaxMs);
  }
}
