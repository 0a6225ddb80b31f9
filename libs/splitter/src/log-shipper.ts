import { Logger } from '@nestjs/common';
import { type BufferLease, type BusProducer } from '@cdp/bus';
import { TOPICS, encodeRecordBatch, encodeSingleRecordBatchInPlace } from '@cdp/contracts';
import { type AppendedRecord, comparePositions, type LogPosition, type SegmentLog } from '@cdp/segment-log';

export interface ShipperOptions {
  /** Bytes of records per bus message. */
  readonly maxBatchBytes: number;
  readonly retryInitialMs: number;
  readonly retryMaxMs: number;
}

export const DEFAULT_SHIPPER_OPTIONS: ShipperOptions = { maxBatchBytes: 1024 * 1024, retryInitialMs: 50, retryMaxMs: 5_000 };

/**
 * Most bytes of just-appended records the shipper keeps in memory, counting only records that are not
 * in the payload ring; past it, it reads the log back. Records in the ring do not count: their memory is
 * the ring's whether the window keeps them or not (the ring's size bounds them), and shipping them from
 * memory is what makes the ring pay. Measured with 1 MiB sequential writes through NBD: counted against
 * 16 MiB like the rest, nine in ten records were shipped from the log read back, since the shipper waits
 * for the log's fdatasync and falls that far behind; each read-back allocates the record and its batch
 * again. Not counted, the client got 218 and 245 MB/s against 129 and 136, at half the CPU per byte.
 */
const RECENT_WINDOW_BYTES = 16 * 1024 * 1024;

interface RecentRecord extends AppendedRecord {
  readonly record: Buffer;
  /** BATCH_HEADER_BYTES in front of the record are the capture's: a batch of it alone is framed there. */
  readonly batchHeadroom?: boolean;
  /** The payload ring's region the record lies in: held while the record is in the window. */
  readonly lease?: BufferLease;
}

/**
 * Ships one VPG's log to the protected-writes topic in order, in batches, never past what the log has
 * made durable.
 *
 * The log is the source of truth: the shipper reads from it for catch-up after a restart, for replay
 * after the journal reports a gap, and whenever it has fallen behind. In the steady state it ships the
 * records the capture has just appended from a bounded window of them in memory (`offer`), which saves
 * reading every byte back and checksumming it again. A window record is used only when it sits exactly
 * at the shipper's position in the log, so both paths ship the same bytes in the same order; anything
 * else (a rewind, a window dropped for size, a segment roll) falls back to the log.
 */
export class LogShipper {
  private cursor: LogPosition;
  private shipped = 0;
  private running = false;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private rewindTo: number | undefined;
  private readonly waiters: { seq: number; resolve: () => void }[] = [];
  private lastError: string | undefined;
  private recent: RecentRecord[] = [];
  private recentHead = 0;
  private recentBytes = 0;
  private retryDelay: number;
  private readonly logger: Logger;

  constructor(
    private readonly vpgId: string,
    private readonly log: SegmentLog,
    private readonly producer: BusProducer,
    private readonly options: ShipperOptions = DEFAULT_SHIPPER_OPTIONS,
  ) {
    this.cursor = log.start;
    this.retryDelay = options.retryInitialMs;
    this.logger = new Logger(`shipper ${vpgId.slice(0, 8)}`);
  }

  /** Highest seq the bus has acknowledged. */
  get shippedSeq(): number {
    return this.shipped;
  }

  get error(): string | undefined {
    return this.lastError;
  }

  start(): void {
    if (this.running) {
      return;
    }
    this.running = true;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.running = false;
    this.notify();
    await this.loop;
    this.loop = undefined;
    this.forgetWindow();
  }

  /**
   * Records just appended to the log, with where they landed (in order, after every record offered
   * before). They stay in memory until shipped or until the window is full (see RECENT_WINDOW_BYTES). `batchHeadroom[i]` says
   * that the BATCH_HEADER_BYTES in front of record i are the capture's to overwrite; `leases[i]`, when
   * set, is the reused memory record i lies in, which the window holds (retains) while it keeps it.
   */
  offer(placed: readonly AppendedRecord[], records: readonly Buffer[], batchHeadroom: readonly boolean[] = [], leases: readonly (BufferLease | undefined)[] = []): void {
    for (let i = 0; i < placed.length; i++) {
      const at = placed[i] as AppendedRecord;
      const record = records[i] as Buffer;
      const lease = leases[i];
      if (!lease && this.recentBytes + record.length > RECENT_WINDOW_BYTES) {
        // Far behind: forget the window and read the log until it catches up with what comes next.
        this.forgetWindow();
      }
      lease?.retain();
      // Written out, not `{ ...at, record, ... }`: on Node 20 a spread with properties added after it
      // made each copy outlive young-generation collections (see the checkpoint catalog's unpackMarked).
      this.recent.push({ segment: at.segment, position: at.position, length: at.length, seq: at.seq, record, batchHeadroom: batchHeadroom[i] === true, lease });
      this.recentBytes += lease ? 0 : record.length;
    }
    this.notify();
  }

  /**
   * The log was cut back to `position` after a failed append (see SegmentLog.recover): the records
   * offered from there on are not in it any more, and their seqs, from `seq`, will be handed out again.
   * None of them was shipped: only durable records are, and the log's durable end stops at the failed
   * write.
   */
  forgetFrom(position: LogPosition, seq: number): void {
    let keep = this.recent.length;
    while (keep > this.recentHead && comparePositions(this.recent[keep - 1] as RecentRecord, position) >= 0) {
      keep--;
    }
    for (let i = keep; i < this.recent.length; i++) {
      const dropped = this.recent[i] as RecentRecord;
      this.recentBytes -= dropped.lease ? 0 : dropped.record.length;
      dropped.lease?.release();
    }
    this.recent.length = keep;
    // A flush waiting for a seq that is gone waits for the records before it: none after was acknowledged.
    for (const waiter of this.waiters) {
      waiter.seq = Math.min(waiter.seq, seq - 1);
    }
    this.releaseWaiters();
    this.notify();
  }

  /** Drops every record of the window (releasing what they hold). */
  private forgetWindow(): void {
    for (let i = this.recentHead; i < this.recent.length; i++) {
      (this.recent[i] as RecentRecord).lease?.release();
    }
    this.recent = [];
    this.recentHead = 0;
    this.recentBytes = 0;
  }

  /** New records are in the log. */
  notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  /** Ship again from `seq` on (the journal found a gap). */
  rewind(seq: number): void {
    this.rewindTo = Math.min(seq, this.rewindTo ?? seq);
    this.notify();
  }

  /** Resolves once the bus has acknowledged every record up to `seq`. */
  waitShipped(seq: number): Promise<void> {
    if (this.shipped >= seq) {
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiters.push({ seq, resolve }));
  }

  private async run(): Promise<void> {
    while (this.running) {
      try {
        await this.shipOnce();
      } catch (err) {
        // Reading the log failed (a corrupt record, a missing segment): nothing can be shipped past it.
        // Keep trying, loudly; the status shows the error until an operator resyncs the VPG.
        this.lastError = err instanceof Error ? err.message : String(err);
        this.logger.error(`cannot ship: ${this.lastError}`);
        await this.pause();
      }
    }
  }

  /** Ships one chunk of records, or waits until there is more to ship. */
  private async shipOnce(): Promise<void> {
    if (this.rewindTo !== undefined) {
      const seq = this.rewindTo;
      this.rewindTo = undefined;
      const at = await this.log.find(seq);
      if (at) {
        this.cursor = at;
        this.logger.warn(`replaying from seq ${seq}`);
      } else {
        this.logger.error(`cannot replay from seq ${seq}: the log no longer holds it (first is ${String(this.log.firstSeq)})`);
      }
    }
    // Only records that are durable in the log are shipped: the recovery site must never hold a record
    // that a power loss here could take back (the restarted splitter would reuse its seq for other
    // data). The shipper itself drives the fsync, so one fdatasync covers everything appended since
    // the last round (group commit).
    if (comparePositions(this.cursor, this.log.durableEnd) >= 0 && comparePositions(this.cursor, this.log.end) < 0) {
      await this.log.sync();
    }
    const { records, next } = this.takeRecent() ?? (await this.log.readChunk(this.cursor, this.options.maxBatchBytes, this.log.durableEnd));
    if (records.length === 0) {
      this.cursor = next;
      if (this.running) {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          // The log may have grown, or a rewind may have come, while the read was in flight: their
          // notify() found no waiter to wake.
          const end = this.log.end;
          if (end.segment !== next.segment || end.position !== next.position || this.rewindTo !== undefined) {
            this.notify();
          }
        });
      }
      return;
    }
    // A large write travels alone in its batch: framed around the record where the capture left room.
    const only = records.length === 1 ? (records[0] as RecentRecord) : undefined;
    const inPlace = only?.batchHeadroom === true;
    const value = inPlace ? encodeSingleRecordBatchInPlace(only.record) : encodeRecordBatch(records.map((r) => r.record));
    // Sent in place, the message is the record's own memory: held for the send (the window could drop
    // the record meanwhile), and by the bus for as long as it keeps the value (the message's lease).
    const lease = inPlace ? only.lease : undefined;
    lease?.retain();
    try {
      await this.producer.send(TOPICS.protectedWrites, [lease ? { key: this.vpgId, value, lease } : { key: this.vpgId, value }]);
    } catch (err) {
      this.lastError = err instanceof Error ? err.message : String(err);
      this.logger.warn(`bus send failed, retrying: ${this.lastError}`);
      await this.pause();
      return;
    } finally {
      lease?.release();
    }
    this.retryDelay = this.options.retryInitialMs;
    this.lastError = undefined;
    this.cursor = next;
    const last = records[records.length - 1];
    if (last && last.seq > this.shipped) {
      this.shipped = last.seq;
      this.releaseWaiters();
    }
  }

  /**
   * The durable records from the window that start exactly at the cursor, up to a batch; undefined
   * when the window does not hold the record at the cursor (then the log is read).
   */
  private takeRecent(): { records: RecentRecord[]; next: LogPosition } | undefined {
    // Records behind the cursor have been shipped (or skipped by a rewind's target): drop them.
    while (this.recentHead < this.recent.length && comparePositions(this.recent[this.recentHead] as RecentRecord, this.cursor) < 0) {
      const shipped = this.recent[this.recentHead] as RecentRecord;
      this.recentBytes -= shipped.lease ? 0 : shipped.record.length;
      shipped.lease?.release();
      this.recentHead++;
    }
    if (this.recentHead > 1024 && this.recentHead * 2 > this.recent.length) {
      this.recent = this.recent.slice(this.recentHead);
      this.recentHead = 0;
    }
    const first = this.recent[this.recentHead];
    if (!first || comparePositions(first, this.cursor) !== 0) {
      return undefined;
    }
    const durable = this.log.durableEnd;
    const records: RecentRecord[] = [];
    let bytes = 0;
    let i = this.recentHead;
    for (; i < this.recent.length; i++) {
      const r = this.recent[i] as RecentRecord;
      const end = { segment: r.segment, position: r.position + r.length };
      if (comparePositions(end, durable) > 0 || (records.length > 0 && bytes + r.length > this.options.maxBatchBytes)) {
        break;
      }
      records.push(r);
      bytes += r.length;
    }
    if (records.length === 0) {
      return undefined;
    }
    const last = records[records.length - 1] as RecentRecord;
    // The next record's own position, so a segment roll between the two is followed without the log.
    const following = this.recent[i];
    const next = following ?? { segment: last.segment, position: last.position + last.length };
    return { records, next: { segment: next.segment, position: next.position } };
  }

  private pause(): Promise<void> {
    const ms = this.retryDelay * (0.5 + Math.random() / 2);
    this.retryDelay = Math.min(this.retryDelay * 2, this.options.retryMaxMs);
    return new Promise((resolve) => setTimeout(resolve, ms).unref());
  }

  private releaseWaiters(): void {
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const waiter = this.waiters[i];
      if (waiter && waiter.seq <= this.shipped) {
        this.waiters.splice(i, 1);
        waiter.resolve();
      }
    }
  }
}
