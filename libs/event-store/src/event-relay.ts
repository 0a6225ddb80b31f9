import { Logger } from '@nestjs/common';
import { toDatabaseError } from '@cdp/database';
import { type DataSource } from 'typeorm';
import { EventStore, type StoredEvent } from './event-store';

export interface EventRelayOptions {
  /** Names the cursor in event_relay_cursors: one per destination. */
  readonly name: string;
  /** Delivers a batch, in position order; resolves once the destination has it. */
  readonly publish: (events: readonly StoredEvent[]) => Promise<void>;
  /**
   * Ignore the stored cursor and publish everything again, for a destination that lost its data
   * (an in-memory bus after a restart). The cursor is rewritten as the relay catches up.
   */
  readonly fromStart?: boolean;
  /** Events per publish call (default 100). */
  readonly batchSize?: number;
  /** How often to look for events nobody poked about, and to retry after a failure (default 1000 ms). */
  readonly pollIntervalMs?: number;
  readonly logger?: { warn(message: string): void };
}

/**
 * Publishes vpg_events to the bus (transactional outbox): reads after its cursor, publishes, then
 * stores the new cursor. Delivery is at least once: a crash or a failed cursor write between publish
 * and cursor means that batch goes out again on the next round, so consumers must be idempotent
 * (they can use position or stream version). One relay per name at a time.
 */
export class EventRelay {
  private readonly store: EventStore;
  private readonly batchSize: number;
  private readonly pollIntervalMs: number;
  private readonly logger: { warn(message: string): void };
  private cursor = 0;
  private running = false;
  private pumping: Promise<void> | undefined;
  private pokedWhilePumping = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly dataSource: DataSource,
    private readonly options: EventRelayOptions,
  ) {
    this.store = new EventStore(dataSource);
    this.batchSize = options.batchSize ?? 100;
    this.pollIntervalMs = options.pollIntervalMs ?? 1_000;
    this.logger = options.logger ?? new Logger(`event-relay ${options.name}`);
  }

  /** Position of the last event published. */
  get position(): number {
    return this.cursor;
  }

  /** Loads the cursor and starts publishing; resolves before the first batch goes out. */
  async start(): Promise<void> {
    if (this.running) {
      return;
    }
    this.cursor = this.options.fromStart === true ? 0 : await this.loadCursor();
    this.running = true;
    this.poke();
  }

  /** Publish now rather than at the next poll: call it after an append. */
  poke(): void {
    if (!this.running) {
      return;
    }
    if (this.pumping !== undefined) {
      // The round in progress may already have read past the new events, or not: go round once more.
      this.pokedWhilePumping = true;
      return;
    }
    this.cancelTimer();
    this.pumping = this.pump().finally(() => {
      this.pumping = undefined;
      if (!this.running) {
        return;
      }
      if (this.pokedWhilePumping) {
        this.pokedWhilePumping = false;
        this.poke();
      } else {
        this.timer = setTimeout(() => {
          this.timer = undefined;
          this.poke();
        }, this.pollIntervalMs);
      }
    });
  }

  /** Stops polling and waits for a publish in progress; afterwards no timer or query is left. */
  async stop(): Promise<void> {
    this.running = false;
    this.cancelTimer();
    await this.pumping;
  }

  private cancelTimer(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
  }

  private async pump(): Promise<void> {
    try {
      while (this.running) {
        const events = await this.store.readAll(this.cursor, this.batchSize);
        const last = events.at(-1);
        if (last === undefined) {
          return;
        }
        await this.options.publish(events);
        await this.saveCursor(last.position);
        this.cursor = last.position;
        if (events.length < this.batchSize) {
          return;
        }
      }
    } catch (error) {
      // The next round (poll or poke) starts again from the cursor: nothing is skipped.
      this.logger.warn(
        `publishing after position ${this.cursor} failed, retrying in ${this.pollIntervalMs} ms: ${
          error instanceof Error ? error.message : String(error)
        }`,
      );
    }
  }

  private async loadCursor(): Promise<number> {
    try {
      const rows = await this.dataSource.query<{ position: string }[]>(
        'SELECT position FROM event_relay_cursors WHERE name = $1',
        [this.options.name],
      );
      return Number(rows[0]?.position ?? 0);
    } catch (error) {
      throw toDatabaseError(error);
    }
  }

  private async saveCursor(position: number): Promise<void> {
    await this.dataSource.query(
      `INSERT INTO event_relay_cursors (name, position) VALUES ($1, $2)
       ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position`,
      [this.options.name, position],
    );
  }
}
