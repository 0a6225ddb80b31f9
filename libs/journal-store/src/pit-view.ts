import { type FileHandle } from 'node:fs/promises';
import { type DataSource, type QueryRunner } from 'typeorm';
import { RECORD_HEADER_BYTES, RecordKind, decodeRecord } from '@cdp/contracts';
import { DomainError } from '@cdp/domain';
import { ExtentMap, type Extent } from './extent-map';
import { REGION_BYTES, RegionWrites, type IndexedWrite } from './journal-index.codec';
import { resolvePointInTime, type ResolvedPointInTime } from './point-in-time';
import { JournalStore } from './journal.store';
import { REPLICA_LOCK_CLASS, openReplicaForReading, readPromotionIntent } from './replica';
import { SegmentReader } from '@cdp/segment-log';

/** Writes of loaded regions kept per view; least recently used regions go first (the one in use stays). */
const MAX_CACHED_WRITES = 1_000_000;
/** A read builds the extent map of the 1 MiB windows it touches (a window lies inside one region). */
const WINDOW_BYTES = 1024 * 1024;
const MAX_CACHED_WINDOWS = 256;
/** Payload bytes of small writes kept for reads that come back to them (4 KiB reads inside one write). */
const PAYLOAD_CACHE_BYTES = 8 * 1024 * 1024;
const CACHEABLE_PAYLOAD_BYTES = 256 * 1024;
/** Records needed by one read that lie this close together in a segment are read with one call. */
const COALESCE_GAP_BYTES = 64 * 1024;
const MAX_RUN_BYTES = 16 * 1024 * 1024;

interface Gathered {
  readonly pieces: readonly Piece[];
  readonly data: ReadonlyMap<number, Buffer>;
}

interface Piece {
  readonly start: number;
  readonly end: number;
  readonly sourceOffset: number;
  readonly write: IndexedWrite;
}

interface CachedRegion {
  readonly writes: Promise<RegionWrites>;
  /** Writes once loaded; 0 while loading. */
  count: number;
}

interface Window {
  readonly writes: RegionWrites;
  /** Sources are indices into `writes`. */
  readonly extents: readonly Extent<number>[];
}

export type PitViewTarget = { readonly vpgId: string; readonly volumeIndex: number; readonly sizeBytes: number } & (
  | { readonly cut: number }
  /** Any point in time: resolved under the lock to the longest prefix of the write order captured at or before it. */
  | { readonly at: Date }
);

/**
 * A volume as it was at a cut, readable at any offset without copying it first: the replica
 * overlaid with the journal writes in (replica_seq, cut], newest winning.
 *
 * Opening reads no index, so it costs a few round trips whatever the journal's size. A read loads
 * the 64 MiB regions it touches from journal_extents (only the rows of those regions, only batches at
 * or before the cut) into columns of numbers, and builds the extent maps of the 1 MiB windows it
 * touches from them (a scan of the region's writes, then ExtentMap's O(n log n) sweep over the few in
 * the window); regions and windows stay in bounded caches. The payloads a read needs are read from
 * the segments sorted by position, neighbouring records coalesced into one read, each record verified
 * before a byte of it is used; a read that continues the previous one starts the next one's.
 *
 * While open, the view holds the VPG's replica lock shared on a connection of its own, so promotion
 * cannot change the replica, nor delete index rows or segments at or before the cut, under it (see
 * journal.promoter.ts); `close()` releases it. The cut is checked under the lock: one the replica has
 * already moved past, or one the journal has not reached yet, is refused.
 */
export class PitView {
  private readonly regions = new Map<number, CachedRegion>();
  private cachedWrites = 0;
  private readonly windows = new Map<number, Promise<Window>>();
  private readonly payloads = new Map<number, Buffer>();
  private payloadBytes = 0;
  private closed: Promise<void> | undefined;
  /** End of the last read, to tell sequential reads; and the read ahead of the next one. */
  private lastEnd = -1;
  private readAhead: { readonly offset: number; readonly length: number; readonly gathered: Promise<Gathered> } | undefined;

  private constructor(
    readonly vpgId: string,
    readonly volumeIndex: number,
    readonly sizeBytes: number,
    readonly cut: number,
    /** Newest capture time of any record at or before the cut, when the view was opened at a time. */
    readonly capturedAt: string | undefined,
    private readonly replicaSeq: number,
    private readonly runner: QueryRunner,
    private readonly lockKey: number,
    private readonly segments: SegmentReader,
    private readonly replica: FileHandle | undefined,
    private readonly onClose: () => void,
  ) {}

  /**
   * Opens the view. `onClose` runs once when the view is closed (or fails to open), so a caller that
   * limits concurrent views can hand the slot on.
   */
  static async open(dataSource: DataSource, rootDir: string, target: PitViewTarget, onClose: () => void = () => undefined): Promise<PitView> {
    const { vpgId, volumeIndex, sizeBytes } = target;
    const runner = dataSource.createQueryRunner();
    const segments = new SegmentReader(JournalStore.segmentDir(rootDir, vpgId));
    let lockKey: number | undefined;
    let replica: FileHandle | undefined;
    try {
      await runner.connect();
      const keyRows = await runner.manager.query<{ vpg_key: number }[]>(`SELECT vpg_key FROM journal_vpgs WHERE vpg_id = $1`, [vpgId]);
      const key = keyRows[0];
      if (!key) {
        throw new DomainError('not-found', `VPG ${vpgId} has no journal`);
      }
      await runner.manager.query(`SELECT pg_advisory_lock_shared($1, $2)`, [REPLICA_LOCK_CLASS, key.vpg_key]);
      lockKey = key.vpg_key;

      // Under the lock: the replica holds writes up to replica_seq, or up to the intent's toSeq if a
      // promotion was interrupted. The view at `cut` is the replica plus the writes in
      // (replica_seq, cut], which is right only if the replica holds nothing at or after the cut.
      const state = await runner.manager.query<{ replica_seq: string; applied_seq: string }[]>(
        `SELECT replica_seq, applied_seq FROM journal_vpgs WHERE vpg_id = $1`,
        [vpgId],
      );
      const replicaSeq = Number(state[0]?.replica_seq ?? 0);
      const appliedSeq = Number(state[0]?.applied_seq ?? 0);
      const intent = await readPromotionIntent(rootDir, vpgId);
      const replicaAt = Math.max(replicaSeq, intent?.toSeq ?? 0);
      let resolved: ResolvedPointInTime | undefined;
      if ('at' in target) {
        resolved = await resolvePointInTime(runner.manager, segments, { vpgId, vpgKey: key.vpg_key, replicaSeq: replicaAt, appliedSeq }, target.at);
      }
      const cut = resolved ? resolved.seq : 'cut' in target ? target.cut : 0;
      if (!Number.isSafeInteger(cut) || cut <= replicaAt) {
        throw new DomainError(
          'failed-precondition',
          `the point at seq ${cut} is no longer inside the journal's history of VPG ${vpgId}: the replica already holds writes through seq ${replicaAt}; recover from a newer point`,
          { cut, replicaSeq: replicaAt },
        );
      }
      if (cut > appliedSeq) {
        throw new DomainError('failed-precondition', `VPG ${vpgId} has journaled writes only up to seq ${appliedSeq}, not ${cut}`, { cut, appliedSeq });
      }
      // Opened once, under the lock: a replica file that appears later was not there for this view.
      replica = await openReplicaForReading(rootDir, vpgId, volumeIndex);
      // Writes after replica_seq are laid over the replica even when an interrupted promotion may have
      // applied some of them already: applying them again, in order, gives the same bytes.
      return new PitView(vpgId, volumeIndex, sizeBytes, cut, resolved?.capturedAt, replicaSeq, runner, key.vpg_key, segments, replica, onClose);
    } catch (err) {
      await replica?.close().catch(() => undefined);
      await segments.close().catch(() => undefined);
      if (lockKey !== undefined) {
        await runner.manager.query(`SELECT pg_advisory_unlock_shared($1, $2)`, [REPLICA_LOCK_CLASS, lockKey]).catch(() => undefined);
      }
      await runner.release().catch(() => undefined);
      onClose();
      throw err;
    }
  }

  /** The bytes [offset, offset + length) of the volume at the cut. Every journal record is verified before use. */
  async read(offset: number, length: number): Promise<Buffer> {
    if (this.closed) {
      throw new DomainError('failed-precondition', `the point-in-time view of VPG ${this.vpgId} is closed`);
    }
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.sizeBytes) {
      throw new DomainError('out-of-range', `read [${offset}, ${offset + length}) is outside the volume (${this.sizeBytes} bytes)`);
    }
    const buf = Buffer.alloc(length);
    if (length === 0) {
      return buf;
    }
    const end = offset + length;
    const ahead = this.readAhead;
    this.readAhead = undefined;
    const gathering = ahead && ahead.offset === offset && ahead.length === length ? ahead.gathered : this.gather(offset, end);
    // A read that starts where the last one ended is likely followed by the next: fetch and verify
    // its journal records while this one is copied and sent (one read ahead at most).
    if (this.lastEnd === offset && end + length <= this.sizeBytes) {
      const gathered = this.gather(end, end + length);
      gathered.catch(() => undefined);
      this.readAhead = { offset: end, length, gathered };
    }
    this.lastEnd = end;
    if (this.replica) {
      await readFully(this.replica, buf, offset);
      // A session-level lock lasts only as long as its session. A round trip that succeeds after the
      // read proves the session, and so the lock, was alive for the whole read; if the server ended
      // the session, a promotion may have changed the replica under us, and the read must fail rather
      // than mix states. (Journal records need no such proof: they never change, and each is verified.)
      await this.runner.manager.query('SELECT 1');
    }
    const { pieces, data } = await gathering;
    for (const extent of pieces) {
      const from = Math.max(extent.start, offset);
      const to = Math.min(extent.end, end);
      const payload = data.get(extent.write.seq) as Buffer;
      const sourceStart = extent.sourceOffset + (from - extent.start);
      payload.copy(buf, from - offset, sourceStart, sourceStart + (to - from));
    }
    return buf;
  }

  /** The extents covering [offset, end) and the verified payloads they take bytes from. */
  private async gather(offset: number, end: number): Promise<Gathered> {
    const pieces: Piece[] = [];
    for (let w = Math.floor(offset / WINDOW_BYTES); w * WINDOW_BYTES < end; w++) {
      const { writes, extents } = await this.window(w);
      for (let i = firstEndingAfter(extents, offset); i < extents.length; i++) {
        const extent = extents[i] as Extent<number>;
        if (extent.start >= end) {
          break;
        }
        pieces.push({ start: extent.start, end: extent.end, sourceOffset: extent.sourceOffset, write: writes.write(extent.source, this.volumeIndex) });
      }
    }
    const data = await this.payloadsOf(pieces.map((p) => p.write), offset, end);
    return { pieces, data };
  }

  /** Releases the lock, the connection and the files. Safe to call more than once. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      this.regions.clear();
      this.windows.clear();
      this.payloads.clear();
      this.readAhead = undefined;
      await this.replica?.close().catch(() => undefined);
      await this.segments.close().catch(() => undefined);
      // If this fails the connection is almost certainly gone, and the lock with it.
      await this.runner.manager.query(`SELECT pg_advisory_unlock_shared($1, $2)`, [REPLICA_LOCK_CLASS, this.lockKey]).catch(() => undefined);
      await this.runner.release().catch(() => undefined);
      this.onClose();
    })();
    return this.closed;
  }

  /**
   * The extent map of one 1 MiB window at the cut, built from its region's writes: a scan of the
   * region's writes (in seq order) for those overlapping the window, then the O(n log n) sweep of
   * ExtentMap over those few. Cached, least recently used evicted first.
   */
  private window(index: number): Promise<Window> {
    const cached = this.windows.get(index);
    if (cached) {
      this.windows.delete(index);
      this.windows.set(index, cached);
      return cached;
    }
    const building = (async (): Promise<Window> => {
      const start = index * WINDOW_BYTES;
      const end = Math.min(start + WINDOW_BYTES, this.sizeBytes);
      const writes = await this.region(Math.floor(start / REGION_BYTES));
      const map = new ExtentMap<number>();
      const { offset, length } = writes;
      for (let i = 0; i < writes.count; i++) {
        const from = Math.max(offset[i] as number, start);
        const to = Math.min((offset[i] as number) + (length[i] as number), end);
        if (from < to) {
          map.add(from, to - from, i, from - (offset[i] as number));
        }
      }
      return { writes, extents: map.list() };
    })();
    this.windows.set(index, building);
    building.catch(() => {
      if (this.windows.get(index) === building) {
        this.windows.delete(index);
      }
    });
    for (const other of this.windows.keys()) {
      if (this.windows.size <= MAX_CACHED_WINDOWS) {
        break;
      }
      this.windows.delete(other);
    }
    return building;
  }

  /** The writes of one region in (replica_seq, cut], loaded once (concurrent readers share the load). */
  private region(region: number): Promise<RegionWrites> {
    const cached = this.regions.get(region);
    if (cached) {
      // Most recently used last.
      this.regions.delete(region);
      this.regions.set(region, cached);
      return cached.writes;
    }
    const entry: CachedRegion = { writes: this.loadRegion(region), count: 0 };
    this.regions.set(region, entry);
    entry.writes.then(
      (writes) => {
        if (this.regions.get(region) !== entry) {
          return;
        }
        entry.count = writes.count;
        this.cachedWrites += writes.count;
        for (const [other, old] of this.regions) {
          if (this.cachedWrites <= MAX_CACHED_WRITES || other === region) {
            break;
          }
          this.regions.delete(other);
          this.cachedWrites -= old.count;
          // Its windows hold its writes alive: they go with it.
          for (const w of this.windows.keys()) {
            if (Math.floor((w * WINDOW_BYTES) / REGION_BYTES) === other) {
              this.windows.delete(w);
            }
          }
        }
      },
      () => {
        if (this.regions.get(region) === entry) {
          this.regions.delete(region);
        }
      },
    );
    return entry.writes;
  }

  private async loadRegion(region: number): Promise<RegionWrites> {
    // Rows of one region come in batch order, and batches never share a seq, so the writes come out
    // in seq order: the order ExtentMap wants.
    const rows = await this.runner.manager.query<{ first_seq: string; segment: number; position: string; entries: Buffer }[]>(
      `SELECT first_seq, segment, position, entries FROM journal_extents
        WHERE vpg_key = $1 AND volume_index = $2 AND region = $3 AND first_seq <= $4 AND last_seq > $5
        ORDER BY first_seq`,
      [this.lockKey, this.volumeIndex, region, this.cut, this.replicaSeq],
    );
    const writes = new RegionWrites();
    for (const row of rows) {
      writes.addRow({ volumeIndex: this.volumeIndex, region, firstSeq: Number(row.first_seq), segment: row.segment, position: Number(row.position), entries: row.entries }, this.replicaSeq, this.cut);
    }
    return writes;
  }

  /** Verified payloads of the given writes, by seq, for a read of [readStart, readEnd). */
  private async payloadsOf(writes: readonly IndexedWrite[], readStart: number, readEnd: number): Promise<Map<number, Buffer>> {
    const found = new Map<number, Buffer>();
    const wanted = new Map<number, IndexedWrite>();
    for (const write of writes) {
      const cached = this.payloads.get(write.seq);
      if (cached) {
        found.set(write.seq, cached);
      } else {
        wanted.set(write.seq, write);
      }
    }
    const missing = [...wanted.values()];
    missing.sort((a, b) => a.segment - b.segment || a.position - b.position);
    for (let i = 0; i < missing.length; ) {
      const first = missing[i] as IndexedWrite;
      let runEnd = first.position + RECORD_HEADER_BYTES + first.length;
      let j = i + 1;
      for (; j < missing.length; j++) {
        const next = missing[j] as IndexedWrite;
        const nextEnd = next.position + RECORD_HEADER_BYTES + next.length;
        if (next.segment !== first.segment || next.position - runEnd > COALESCE_GAP_BYTES || nextEnd - first.position > MAX_RUN_BYTES) {
          break;
        }
        runEnd = Math.max(runEnd, nextEnd);
      }
      const run = await this.segments.readRange({ segment: first.segment, position: first.position, length: runEnd - first.position });
      for (let k = i; k < j; k++) {
        const write = missing[k] as IndexedWrite;
        const at = write.position - first.position;
        const decoded = decodeRecord(run.subarray(at, at + RECORD_HEADER_BYTES + write.length));
        if (decoded.kind !== RecordKind.Write || decoded.seq !== write.seq || decoded.volumeIndex !== this.volumeIndex || decoded.offset !== write.offset) {
          throw new DomainError('failed-precondition', `journal index of VPG ${this.vpgId} points seq ${write.seq} at the wrong record`);
        }
        found.set(write.seq, decoded.data);
        // Only a write this read used part of can be wanted again soon (4 KiB reads inside a larger
        // write); one a read consumed whole, as sequential reads do, would only churn the cache.
        if (write.offset < readStart || write.offset + write.length > readEnd) {
          this.remember(write.seq, decoded.data);
        }
      }
      i = j;
    }
    return found;
  }

  private remember(seq: number, data: Buffer): void {
    if (data.length > CACHEABLE_PAYLOAD_BYTES) {
      return;
    }
    // A copy: `data` is a view into a run buffer of up to MAX_RUN_BYTES that must not stay alive.
    const copy = Buffer.from(data);
    this.payloads.set(seq, copy);
    this.payloadBytes += copy.length;
    for (const [oldSeq, old] of this.payloads) {
      if (this.payloadBytes <= PAYLOAD_CACHE_BYTES) {
        break;
      }
      this.payloads.delete(oldSeq);
      this.payloadBytes -= old.length;
    }
  }
}

function firstEndingAfter(extents: readonly Extent<number>[], offset: number): number {
  let lo = 0;
  let hi = extents.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((extents[mid] as Extent<number>).end <= offset) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

/** Reads `buf.length` bytes at `position`; what lies past the end of the file stays zero. */
async function readFully(handle: FileHandle, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await handle.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) {
      return;
    }
    done += bytesRead;
  }
}
