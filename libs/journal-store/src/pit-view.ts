import { type FileHandle } from 'node:fs/promises';
import { type DataSource, type QueryRunner } from 'typeorm';
import { RECORD_HEADER_BYTES, RecordKind, decodeRecord, decodeWriteRecordParts } from '@cdp/contracts';
import { DomainError } from '@cdp/domain';
import { ExtentMap, type Extent } from './extent-map';
import { REGION_BYTES, RegionWrites, type IndexedWrite } from './journal-index.codec';
import { resolvePointInTime, resolveToCheckpoint, type ResolvedPointInTime } from './point-in-time';
import { JournalStore } from './journal.store';
import { REPLICA_LOCK_CLASS, openReplicaForReading, readPromotionIntent } from './replica';
import { type FileRun, fileRuns } from '@cdp/native-file';
import { SegmentReader } from '@cdp/segment-log';

/** Writes of loaded regions kept per view; least recently used regions go first (the one in use stays). */
const MAX_CACHED_WRITES = 1_000_000;
/** A read builds the extent map of the 1 MiB windows it touches (a window lies inside one region). */
const WINDOW_BYTES = 1024 * 1024;
const WINDOWS_PER_REGION = REGION_BYTES / WINDOW_BYTES;
const MAX_CACHED_WINDOWS = 256;
/** Payload bytes of small writes kept for reads that come back to them (4 KiB reads inside one write). */
const PAYLOAD_CACHE_BYTES = 8 * 1024 * 1024;
const CACHEABLE_PAYLOAD_BYTES = 256 * 1024;
/**
 * Verified payloads of writes larger than a cacheable one that a sequential read used only the front
 * of, kept (by reference, counting the whole segment read they pin) for the reads that continue into
 * them, so a large write is read from its segment and verified once, not once per read it spans.
 */
const SPANNING_BYTES = 64 * 1024 * 1024;
/**
 * Buffers of 64 KiB to a little over 1 MiB (segment reads and reply buffers of 1 MiB reads) are lent
 * out of a few kept per view and come back when their reader is done (see `release`): at a gigabyte a
 * second, fresh buffers of that size keep V8's collector marking the heap without a break.
 */
const POOL_MIN_BYTES = 64 * 1024;
const POOL_BUFFER_BYTES = 1024 * 1024 + 64 * 1024;
const POOL_BUFFERS = 8;
/**
 * Sequential reads fetched ahead of the one asked for. At a few GB/s a client's next request comes
 * sooner than one fetch of 1 MiB (a thread-pool read and a checksum) takes, so with one ahead a reply
 * could still wait for its data. Measured through NBD with fio (1 MiB reads at QD4, all-in-one app,
 * noisy host): two ahead ran at 0.70 to 0.84 of nbdkit where one ran at 0.59 to 0.70.
 */
const READ_AHEAD = 2;
/** Records needed by one read that lie this close together in a segment are read with one call. */
const COALESCE_GAP_BYTES = 64 * 1024;
const MAX_RUN_BYTES = 16 * 1024 * 1024;
/**
 * A write at least this large that a read takes whole, and that no newer write hides any of, is read
 * from its segment straight into the reply (its header beside it, the checksum taken over the two),
 * not into a segment buffer and copied from there. Reading a volume's full-size writes back is
 * bound by memory bandwidth, and the copy was a third of it (1 MiB reads of 64 KiB writes: the read
 * from the page cache 125 µs, the checksum 80, the copy 70). Below this size the copy costs less than
 * the two-part checksum's extra calls into the hashing binding (about 1 µs a record).
 */
const SCATTER_MIN_BYTES = 32 * 1024;
/** Regions whose journal writes' union (for `allocation`) is kept: clients map a volume region by region. */
const MAX_CACHED_COVERAGE = 8;
/** The most runs of data and holes of the replica file one `allocation` call looks up (lseek calls). */
const REPLICA_RUNS = 4096;

interface Gathered {
  readonly pieces: readonly Piece[];
  /** Bytes of the read that journal writes cover; the rest come from the replica (or are zero). */
  readonly covered: number;
  /** Settles once every payload the pieces take bytes from is read and verified. */
  readonly data: Promise<Fetched>;
  /**
   * The reply, when the journal covers the whole read and some payloads are read straight into it
   * (SCATTER_MIN_BYTES): those are `placed` once `data` settles, and only the other pieces are copied.
   */
  readonly reply: Buffer | undefined;
}

interface Fetched {
  /** Verified payloads by seq. */
  readonly payloads: ReadonlyMap<number, Buffer>;
  /**
   * The seqs whose payloads this read fetched itself (not taken from a cache): only those lie in
   * segment reads no other read can be using.
   */
  readonly fresh: ReadonlySet<number>;
  /** Segment reads nothing keeps a reference into once the read has copied from them. */
  readonly recyclable: readonly Buffer[];
  /** The seqs whose payloads were read into the reply where they belong: nothing to copy. */
  readonly placed: ReadonlySet<number>;
}

interface Piece {
  readonly start: number;
  readonly end: number;
  readonly sourceOffset: number;
  readonly write: IndexedWrite;
}

interface CachedRegion {
  readonly writes: Promise<LoadedRegion>;
  /** Writes once loaded; 0 while loading. */
  count: number;
}

/** A region's writes, with the writes overlapping each of its windows listed once, at load. */
interface LoadedRegion {
  readonly writes: RegionWrites;
  /** Writes overlapping window w of the region, in seq order: byWindow[windowStart[w] .. windowStart[w + 1]). */
  readonly windowStart: Uint32Array;
  readonly byWindow: Uint32Array;
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
 * or before the cut) into columns of numbers, less the writes newer ones hide (see dropHidden), and
 * builds the extent maps of the 1 MiB windows it touches from them (the window's writes, listed when
 * the region was loaded, from the newest that covers all of it on, through ExtentMap's O(n log n)
 * sweep); regions and windows stay in bounded caches. The payloads a read needs are read from the
 * segments sorted by position, neighbouring records coalesced into one read, all reads of one request
 * issued together, each record verified before a byte of it is used; a read that continues the
 * previous one starts the next two. A read that one freshly fetched write covers whole is answered
 * with a view of its payload, not a copy.
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
  private readonly spanning = new Map<number, Buffer>();
  private spanningBytes = 0;
  /** The lock-proving round trip on its way, and the one queued behind it for reads that finish meanwhile. */
  private proofInFlight: Promise<void> | undefined;
  private proofNext: Promise<void> | undefined;
  private readonly freeBuffers: ArrayBuffer[] = [];
  private readonly lent = new WeakSet<ArrayBuffer>();
  private closed: Promise<void> | undefined;
  /** End of the last read, to tell sequential reads; and the reads fetched ahead of them, by offset. */
  private lastEnd = -1;
  private readonly readAhead = new Map<number, { readonly length: number; readonly gathered: Promise<Gathered> }>();
  /** Per region: the union of its journal writes in (replica_seq, cut], as sorted, disjoint [start, end) pairs. */
  private readonly coverage = new Map<number, Promise<Float64Array>>();

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
      const state = await runner.manager.query<{ replica_seq: string; applied_seq: string; coordinated: boolean }[]>(
        `SELECT replica_seq, applied_seq, members IS NOT NULL AS coordinated FROM journal_vpgs WHERE vpg_id = $1`,
        [vpgId],
      );
      const replicaSeq = Number(state[0]?.replica_seq ?? 0);
      const appliedSeq = Number(state[0]?.applied_seq ?? 0);
      const intent = await readPromotionIntent(rootDir, vpgId);
      const replicaAt = Math.max(replicaSeq, intent?.toSeq ?? 0);
      let resolved: ResolvedPointInTime | undefined;
      if ('at' in target) {
        const bounds = { vpgId, vpgKey: key.vpg_key, replicaSeq: replicaAt, appliedSeq };
        resolved = state[0]?.coordinated
          ? await resolveToCheckpoint(runner.manager, bounds, target.at)
          : await resolvePointInTime(runner.manager, segments, bounds, target.at);
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

  /**
   * The bytes [offset, offset + length) of the volume at the cut. Every journal record is verified
   * before use. The buffer is the caller's: nothing the view keeps shares its memory.
   */
  async read(offset: number, length: number): Promise<Buffer> {
    if (this.closed) {
      throw new DomainError('failed-precondition', `the point-in-time view of VPG ${this.vpgId} is closed`);
    }
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.sizeBytes) {
      throw new DomainError('out-of-range', `read [${offset}, ${offset + length}) is outside the volume (${this.sizeBytes} bytes)`);
    }
    if (length === 0) {
      return Buffer.alloc(0);
    }
    const end = offset + length;
    const ahead = this.readAhead.get(offset);
    const gathering = ahead && ahead.length === length ? ahead.gathered : this.gather(offset, end);
    const sequential = this.lastEnd === offset;
    this.lastEnd = end;
    // Fetched ahead for reads that will not come (this one starts elsewhere, or has passed them).
    for (const at of this.readAhead.keys()) {
      if (!sequential || at < end) {
        this.readAhead.delete(at);
      }
    }
    // A read that starts where the last one ended is likely followed by more: fetch and verify the
    // journal records of the next READ_AHEAD reads of its size while this one is copied and sent.
    // With several reads in flight (a client at queue depth n sends n sequential reads at once),
    // each one tops the window up, so the fetches run n + READ_AHEAD deep.
    if (sequential) {
      for (let at = end, k = 0; k < READ_AHEAD && at + length <= this.sizeBytes; k++, at += length) {
        if (!this.readAhead.has(at)) {
          const gathered = this.gather(at, at + length);
          gathered.catch(() => undefined);
          this.readAhead.set(at, { length, gathered });
        }
      }
    }
    const { pieces, covered, data, reply } = await gathering;
    let buf: Buffer | undefined;
    if (covered < length) {
      // Bytes no journal write covers: the replica's, read while the payloads are being fetched.
      buf = this.take(length);
      if (this.replica) {
        await readFully(this.replica, buf, offset);
        // A session-level lock lasts only as long as its session. A round trip that starts after the
        // read and succeeds proves the session, and so the lock, was alive for the whole read; if the
        // server ended the session, a promotion may have changed the replica under us, and the read
        // must fail rather than mix states. (Journal records need no such proof: they never change,
        // and each is verified.)
        await this.proveLock();
      } else {
        fillGaps(buf, pieces, offset, end);
      }
    }
    const { payloads, fresh, recyclable, placed } = await data;
    if (!buf && reply) {
      buf = reply;
    } else if (!buf) {
      const only = pieces.length === 1 ? pieces[0] : undefined;
      const payload = only && payloads.get(only.write.seq);
      // One write covers the whole read (sequential reads of sequentially written data): its payload
      // is a view into a segment read made for this read alone, so it is sent as it is, not copied
      // (and its buffer comes back through `release`). A payload from a cache is never handed out:
      // another read in flight may still be copying from it, and its release would recycle it.
      if (only && payload && fresh.has(only.write.seq) && !this.retains(only.write.seq, payload)) {
        const from = only.sourceOffset + (offset - only.start);
        return payload.subarray(from, from + length);
      }
      buf = this.take(length);
    }
    for (const extent of pieces) {
      if (placed.has(extent.write.seq)) {
        continue;
      }
      const from = Math.max(extent.start, offset);
      const to = Math.min(extent.end, end);
      const payload = payloads.get(extent.write.seq) as Buffer;
      const sourceStart = extent.sourceOffset + (from - extent.start);
      payload.copy(buf, from - offset, sourceStart, sourceStart + (to - from));
    }
    for (const run of recyclable) {
      this.release(run);
    }
    return buf;
  }

  /**
   * What the volume at the cut holds where, for NBD's block status: runs in order from `offset`, data
   * where a journal write in (replica_seq, cut] covers the bytes or the replica file holds data, and
   * holes (which read as zeros) elsewhere. Answers for the rest of the 64 MiB region `offset` lies in,
   * and beyond it over the regions that hold no journal writes (one query finds the next that does),
   * in at most `limit` runs: the caller asks again from where the answer ends. Costs that query, one
   * load of the region's index (shared with reads) and a few lseek calls on the replica, never a read
   * of data: a client copying a mostly empty volume out (`qemu-img convert`, `nbdcopy`) skips its
   * holes without reading them, and maps a large empty stretch in one answer, not one per region.
   */
  async allocation(offset: number, length: number, limit: number): Promise<FileRun[]> {
    if (this.closed) {
      throw new DomainError('failed-precondition', `the point-in-time view of VPG ${this.vpgId} is closed`);
    }
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset + length > this.sizeBytes || !(limit >= 1)) {
      throw new DomainError('out-of-range', `allocation of [${offset}, ${offset + length}) is outside the volume (${this.sizeBytes} bytes)`);
    }
    const region = Math.floor(offset / REGION_BYTES);
    let end = Math.min(offset + length, (region + 1) * REGION_BYTES);
    const journal = await this.regionCoverage(region);
    if (end < offset + length) {
      // The regions after this one that hold no journal writes add nothing but the replica's data.
      end = Math.min(offset + length, (await this.nextRegionWithWrites(region)) * REGION_BYTES);
    }
    let replica: FileRun[] = [];
    if (this.replica) {
      replica = fileRuns(this.replica.fd, offset, end, REPLICA_RUNS);
      end = replica[replica.length - 1]?.end ?? end;
      // As for reads of the replica: the answer counts only if the lock held while it was looked up.
      await this.proveLock();
    }
    const runs: FileRun[] = [];
    let at = offset;
    const push = (start: number, stop: number): void => {
      if (start > at) {
        runs.push({ start: at, end: start, data: false });
      }
      const last = runs[runs.length - 1];
      if (last?.data && last.end >= start) {
        runs[runs.length - 1] = { start: last.start, end: Math.max(last.end, stop), data: true };
      } else {
        runs.push({ start: Math.max(start, at), end: stop, data: true });
      }
      at = Math.max(at, stop);
    };
    // The union of the two sorted lists of data ranges, each cut to [offset, end), holes in between.
    let j = firstPairEndingAfter(journal, offset);
    let r = 0;
    while (runs.length < limit) {
      while (r < replica.length && !(replica[r] as FileRun).data) {
        r++;
      }
      const journalStart = j < journal.length ? (journal[j] as number) : Number.POSITIVE_INFINITY;
      const replicaStart = r < replica.length ? (replica[r] as FileRun).start : Number.POSITIVE_INFINITY;
      const start = Math.max(Math.min(journalStart, replicaStart), offset);
      if (start >= end) {
        break;
      }
      if (journalStart <= replicaStart) {
        push(start, Math.min(journal[j + 1] as number, end));
        j += 2;
      } else {
        push(start, Math.min((replica[r] as FileRun).end, end));
        r++;
      }
    }
    if (at < end && runs.length < limit) {
      runs.push({ start: at, end, data: false });
    }
    return runs.length <= limit ? runs : runs.slice(0, limit);
  }

  /**
   * The first region after `region` with journal writes in (replica_seq, cut] for this volume (a row
   * of the index, found by its primary key), or the region past the volume's end if none has any.
   */
  private async nextRegionWithWrites(region: number): Promise<number> {
    const rows = await this.runner.manager.query<{ region: number | null }[]>(
      `SELECT min(region) AS region FROM journal_extents
        WHERE vpg_key = $1 AND volume_index = $2 AND region > $3 AND first_seq <= $4 AND last_seq > $5`,
      [this.lockKey, this.volumeIndex, region, this.cut, this.replicaSeq],
    );
    return rows[0]?.region ?? Math.ceil(this.sizeBytes / REGION_BYTES);
  }

  /** The union of one region's journal writes at the cut (see `coverage`), built once from its loaded index. */
  private regionCoverage(region: number): Promise<Float64Array> {
    return recall(this.coverage, region) ?? remember(this.coverage, region, this.region(region).then(({ writes }) => unionOf(writes)), MAX_CACHED_COVERAGE);
  }

  /**
   * Gives back a buffer `read` returned, once the caller is done with it (the NBD server does, after
   * sending it), so later reads reuse its memory. A buffer the view did not lend is ignored; a caller
   * that never gives buffers back costs only fresh allocations.
   */
  release(data: Buffer): void {
    const memory = data.buffer;
    if (!(memory instanceof ArrayBuffer) || !this.lent.delete(memory)) {
      return;
    }
    if (!this.closed && this.freeBuffers.length < POOL_BUFFERS) {
      this.freeBuffers.push(memory);
    }
  }

  /** A buffer of `length` bytes, of undefined content: lent from the pool when its size suits it. */
  private take(length: number): Buffer {
    if (length < POOL_MIN_BYTES || length > POOL_BUFFER_BYTES) {
      return Buffer.allocUnsafe(length);
    }
    const memory = this.freeBuffers.pop() ?? new ArrayBuffer(POOL_BUFFER_BYTES);
    this.lent.add(memory);
    return Buffer.from(memory, 0, length);
  }

  /** The extents covering [offset, end); the verified payloads they take bytes from follow. */
  private async gather(offset: number, end: number): Promise<Gathered> {
    const pieces: Piece[] = [];
    let covered = 0;
    for (let w = Math.floor(offset / WINDOW_BYTES); w * WINDOW_BYTES < end; w++) {
      const { writes, extents } = await this.window(w);
      for (let i = firstEndingAfter(extents, offset); i < extents.length; i++) {
        const extent = extents[i] as Extent<number>;
        if (extent.start >= end) {
          break;
        }
        covered += Math.min(extent.end, end) - Math.max(extent.start, offset);
        pieces.push({ start: extent.start, end: extent.end, sourceOffset: extent.sourceOffset, write: writes.write(extent.source, this.volumeIndex) });
      }
    }
    // Writes read straight into the reply: only when the journal covers the whole read, as the
    // replica's bytes are read over the whole reply first (see read()).
    let reply: Buffer | undefined;
    const placeAt = new Map<number, Buffer>();
    if (covered === end - offset) {
      for (const { start, end: pieceEnd, sourceOffset, write } of pieces) {
        if (write.length >= SCATTER_MIN_BYTES && sourceOffset === 0 && start === write.offset && pieceEnd === write.offset + write.length && pieceEnd <= end && start >= offset) {
          reply ??= this.take(end - offset);
          placeAt.set(write.seq, reply.subarray(start - offset, pieceEnd - offset));
        }
      }
    }
    const data = this.payloadsOf(pieces, offset, end, placeAt);
    data.catch(() => undefined);
    return { pieces, covered, data, reply };
  }

  /**
   * Proves the lock was held through every replica read finished before the call: joins the round
   * trip queued behind the one in flight (which may have been sent before the caller's read ended),
   * or starts one, so reads at queue depth n share round trips instead of waiting for n in a row.
   */
  private proveLock(): Promise<void> {
    if (this.proofNext) {
      return this.proofNext;
    }
    const inFlight = this.proofInFlight;
    if (!inFlight) {
      return this.startProof();
    }
    const next = inFlight
      .catch(() => undefined)
      .then(() => {
        this.proofNext = undefined;
        return this.startProof();
      });
    this.proofNext = next;
    return next;
  }

  private startProof(): Promise<void> {
    const proof = this.runner.manager.query('SELECT 1').then(() => undefined);
    this.proofInFlight = proof;
    const settled = (): void => {
      if (this.proofInFlight === proof) {
        this.proofInFlight = undefined;
      }
    };
    proof.then(settled, settled);
    return proof;
  }

  /** Whether a cache of the view holds this payload (so it must not be handed out, only copied from). */
  private retains(seq: number, payload: Buffer): boolean {
    return this.payloads.get(seq) === payload || this.spanning.get(seq) === payload;
  }

  /** Writes of the loaded regions the view holds in memory (at most about MAX_CACHED_WRITES). */
  get heldWrites(): number {
    return this.cachedWrites;
  }

  /** Releases the lock, the connection and the files. Safe to call more than once. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      this.regions.clear();
      this.windows.clear();
      this.payloads.clear();
      this.spanning.clear();
      this.freeBuffers.length = 0;
      this.readAhead.clear();
      this.coverage.clear();
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
   * The extent map of one 1 MiB window at the cut, built from the region's writes that overlap it
   * (listed per window when the region was loaded) by the O(n log n) sweep of ExtentMap. Cached, least
   * recently used evicted first.
   */
  private window(index: number): Promise<Window> {
    const cached = recall(this.windows, index);
    if (cached) {
      return cached;
    }
    const building = (async (): Promise<Window> => {
      const start = index * WINDOW_BYTES;
      const end = Math.min(start + WINDOW_BYTES, this.sizeBytes);
      const region = Math.floor(start / REGION_BYTES);
      const { writes, windowStart, byWindow } = await this.region(region);
      const map = new ExtentMap<number>();
      const { offset, length } = writes;
      const w = index - region * WINDOWS_PER_REGION;
      // The newest write that covers the whole window hides every older one: the sweep starts there
      // (a volume written over sequentially has one per window, over thousands of older small writes).
      let first = windowStart[w] as number;
      for (let k = (windowStart[w + 1] as number) - 1; k >= first; k--) {
        const i = byWindow[k] as number;
        if ((offset[i] as number) <= start && (offset[i] as number) + (length[i] as number) >= end) {
          first = k;
          break;
        }
      }
      for (let k = first; k < (windowStart[w + 1] as number); k++) {
        const i = byWindow[k] as number;
        const from = Math.max(offset[i] as number, start);
        const to = Math.min((offset[i] as number) + (length[i] as number), end);
        if (from < to) {
          map.add(from, to - from, i, from - (offset[i] as number));
        }
      }
      return { writes, extents: map.list() };
    })();
    return remember(this.windows, index, building, MAX_CACHED_WINDOWS);
  }

  /** The writes of one region in (replica_seq, cut], loaded once (concurrent readers share the load). */
  private region(region: number): Promise<LoadedRegion> {
    const cached = recall(this.regions, region);
    if (cached) {
      return cached.writes;
    }
    const entry: CachedRegion = { writes: this.loadRegion(region), count: 0 };
    this.regions.set(region, entry);
    entry.writes.then(
      (writes) => {
        if (this.regions.get(region) !== entry) {
          return;
        }
        entry.count = writes.writes.count;
        this.cachedWrites += entry.count;
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

  private async loadRegion(region: number): Promise<LoadedRegion> {
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
    dropHidden(writes, region * REGION_BYTES);
    return { writes, ...listByWindow(writes, region * REGION_BYTES) };
  }

  /**
   * Verified payloads of the pieces' writes, by seq, for a read of [readStart, readEnd). The segment
   * reads are issued together (the file system serves them in parallel) and each record is verified
   * as its read arrives, once per read however many pieces take bytes from it. A write in `placeAt`
   * is read into the buffer given there (see readRun).
   */
  private async payloadsOf(pieces: readonly Piece[], readStart: number, readEnd: number, placeAt: ReadonlyMap<number, Buffer>): Promise<Fetched> {
    const found = new Map<number, Buffer>();
    const fresh = new Set<number>();
    const placed = new Set<number>();
    const recyclable: Buffer[] = [];
    const wanted = new Map<number, IndexedWrite>();
    for (const { write } of pieces) {
      if (found.has(write.seq) || wanted.has(write.seq)) {
        continue;
      }
      const cached = this.payloads.get(write.seq) ?? this.spanning.get(write.seq);
      if (cached) {
        found.set(write.seq, cached);
        // Read to its end: nothing after this read needs it.
        if (write.offset + write.length <= readEnd && this.spanning.delete(write.seq)) {
          this.spanningBytes -= cached.buffer.byteLength;
        }
      } else {
        wanted.set(write.seq, write);
      }
    }
    if (wanted.size === 0) {
      return { payloads: found, fresh, recyclable, placed };
    }
    const missing = [...wanted.values()];
    missing.sort((a, b) => a.segment - b.segment || a.position - b.position);
    const runs: Promise<void>[] = [];
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
      const members = missing.slice(i, j);
      runs.push(
        this.readRun(members, placeAt).then(({ headers, records, scratch }) => {
          let kept = false;
          members.forEach((write, k) => {
            const into = placeAt.get(write.seq);
            const decoded = into ? decodeWriteRecordParts(headers[k] as Buffer, into) : decodeRecord(records[k] as Buffer);
            if (decoded.kind !== RecordKind.Write || decoded.seq !== write.seq || decoded.volumeIndex !== this.volumeIndex || decoded.offset !== write.offset) {
              throw new DomainError('failed-precondition', `journal index of VPG ${this.vpgId} points seq ${write.seq} at the wrong record`);
            }
            found.set(write.seq, decoded.data);
            fresh.add(write.seq);
            if (into) {
              placed.add(write.seq);
            } else {
              kept = this.keep(write, decoded.data, readStart, readEnd) || kept;
            }
          });
          if (!kept) {
            recyclable.push(scratch);
          }
        }),
      );
      i = j;
    }
    // Every run settles before the read does: none is left reading into a buffer nobody awaits.
    const settled = await Promise.allSettled(runs);
    for (const outcome of settled) {
      if (outcome.status === 'rejected') {
        throw outcome.reason;
      }
    }
    return { payloads: found, fresh, recyclable, placed };
  }

  /**
   * Reads a run of records (sorted by position, as payloadsOf makes them) with one read: the payload of
   * a write in `placeAt` goes where it says (a scatter read) and its header into a scratch buffer;
   * other records, and the bytes between records, go whole into the same scratch buffer, in one piece
   * between placed payloads. `headers[k]` or `records[k]` is member k's, unverified.
   */
  private async readRun(members: readonly IndexedWrite[], placeAt: ReadonlyMap<number, Buffer>): Promise<{ headers: (Buffer | undefined)[]; records: (Buffer | undefined)[]; scratch: Buffer }> {
    const first = members[0] as IndexedWrite;
    let scratchBytes = 0;
    let cursor = first.position;
    for (const write of members) {
      if (write.position < cursor) {
        // Records never overlap in a segment; an index that says so is wrong.
        throw new DomainError('failed-precondition', `journal index of VPG ${this.vpgId} puts seq ${write.seq} inside another record`);
      }
      scratchBytes += write.position - cursor + RECORD_HEADER_BYTES + (placeAt.has(write.seq) ? 0 : write.length);
      cursor = write.position + RECORD_HEADER_BYTES + write.length;
    }
    const scratch = this.take(scratchBytes);
    const parts: Buffer[] = [];
    const headers: (Buffer | undefined)[] = [];
    const records: (Buffer | undefined)[] = [];
    let used = 0;
    let partStart = 0;
    cursor = first.position;
    for (const write of members) {
      used += write.position - cursor;
      const into = placeAt.get(write.seq);
      if (into) {
        headers.push(scratch.subarray(used, used + RECORD_HEADER_BYTES));
        records.push(undefined);
        used += RECORD_HEADER_BYTES;
        parts.push(scratch.subarray(partStart, used), into);
        partStart = used;
      } else {
        headers.push(undefined);
        records.push(scratch.subarray(used, used + RECORD_HEADER_BYTES + write.length));
        used += RECORD_HEADER_BYTES + write.length;
      }
      cursor = write.position + RECORD_HEADER_BYTES + write.length;
    }
    parts.push(scratch.subarray(partStart, used));
    await this.segments.readScattered({ segment: first.segment, position: first.position }, parts);
    return { headers, records, scratch };
  }

  /**
   * Keeps a verified payload that a later read is likely to come back to. True when it is kept by
   * reference, so the segment read it lies in must not be reused.
   */
  private keep(write: IndexedWrite, data: Buffer, readStart: number, readEnd: number): boolean {
    // Only a write this read used part of can be wanted again soon; one a read consumed whole, as
    // sequential reads do, would only churn the caches.
    if (write.offset >= readStart && write.offset + write.length <= readEnd) {
      return false;
    }
    if (data.length <= CACHEABLE_PAYLOAD_BYTES) {
      // 4 KiB reads inside one write.
      this.remember(write.seq, data);
      return false;
    }
    if (write.offset + write.length > readEnd && data.buffer.byteLength <= SPANNING_BYTES) {
      // A sequential read continues into the rest of it.
      this.spanning.set(write.seq, data);
      this.spanningBytes += data.buffer.byteLength;
      for (const [oldSeq, old] of this.spanning) {
        if (this.spanningBytes <= SPANNING_BYTES) {
          break;
        }
        this.spanning.delete(oldSeq);
        this.spanningBytes -= old.buffer.byteLength;
      }
      return true;
    }
    return false;
  }

  private remember(seq: number, data: Buffer): void {
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

/**
 * Drops the writes no read can see: those for which every window they touch has a newer write that
 * covers the whole window. (Conservative: a write hidden only by several newer partial writes stays.)
 * A volume written over sequentially after a day of small random writes keeps a few thousand writes
 * of millions, so its regions fit the cache: when they did not, each pass of a sequential reader
 * loaded every region again (measured: 516 loads, 5.3 s of 24 s of reading, with about a million
 * small writes under the large ones).
 */
/** The entry under `key`, made the most recently used (the map's order is use order). */
function recall<K, V>(cache: Map<K, V>, key: K): V | undefined {
  const cached = cache.get(key);
  if (cached !== undefined) {
    cache.delete(key);
    cache.set(key, cached);
  }
  return cached;
}

/**
 * Puts `building` in `cache` under `key` and returns it: forgotten again if it fails (the next caller
 * builds anew), and the least recently used entries evicted beyond `max` (the map's order is use order).
 */
function remember<K, V>(cache: Map<K, Promise<V>>, key: K, building: Promise<V>, max: number): Promise<V> {
  cache.set(key, building);
  building.catch(() => {
    if (cache.get(key) === building) {
      cache.delete(key);
    }
  });
  for (const other of cache.keys()) {
    if (cache.size <= max) {
      break;
    }
    cache.delete(other);
  }
  return building;
}

/** The union of the writes' byte ranges, as sorted, disjoint [start, end) pairs, flattened. */
function unionOf(writes: RegionWrites): Float64Array {
  const order = Array.from({ length: writes.count }, (_, i) => i).sort((a, b) => (writes.offset[a] as number) - (writes.offset[b] as number));
  const out: number[] = [];
  for (const i of order) {
    const start = writes.offset[i] as number;
    const end = start + (writes.length[i] as number);
    if (out.length > 0 && start <= (out[out.length - 1] as number)) {
      out[out.length - 1] = Math.max(out[out.length - 1] as number, end);
    } else {
      out.push(start, end);
    }
  }
  return Float64Array.from(out);
}

/** The index of the first pair of `pairs` (flattened [start, end) pairs, sorted) that ends after `offset`. */
function firstPairEndingAfter(pairs: Float64Array, offset: number): number {
  let lo = 0;
  let hi = pairs.length / 2;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if ((pairs[2 * mid + 1] as number) <= offset) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return 2 * lo;
}

function dropHidden(writes: RegionWrites, regionStart: number): void {
  const { offset, length, count } = writes;
  // The newest write (highest index: they are in seq order) covering each window whole.
  const cover = new Int32Array(WINDOWS_PER_REGION).fill(-1);
  for (let i = 0; i < count; i++) {
    const from = Math.max(0, Math.ceil(((offset[i] as number) - regionStart) / WINDOW_BYTES));
    const to = Math.min(WINDOWS_PER_REGION, Math.floor(((offset[i] as number) + (length[i] as number) - regionStart) / WINDOW_BYTES));
    for (let w = from; w < to; w++) {
      cover[w] = i;
    }
  }
  const keep = new Uint8Array(count);
  let kept = 0;
  for (let i = 0; i < count; i++) {
    for (let w = firstWindow(writes, i, regionStart), last = lastWindow(writes, i, regionStart); w <= last; w++) {
      if ((cover[w] as number) <= i) {
        keep[i] = 1;
        kept++;
        break;
      }
    }
  }
  if (kept < count) {
    writes.retain(keep);
  }
}

/** Lists, for each window of a region, the writes overlapping it (a counting sort: two passes, no objects). */
function listByWindow(writes: RegionWrites, regionStart: number): { windowStart: Uint32Array; byWindow: Uint32Array } {
  const { count } = writes;
  const windowStart = new Uint32Array(WINDOWS_PER_REGION + 1);
  for (let i = 0; i < count; i++) {
    for (let w = firstWindow(writes, i, regionStart), last = lastWindow(writes, i, regionStart); w <= last; w++) {
      windowStart[w + 1] = (windowStart[w + 1] as number) + 1;
    }
  }
  for (let w = 0; w < WINDOWS_PER_REGION; w++) {
    windowStart[w + 1] = (windowStart[w + 1] as number) + (windowStart[w] as number);
  }
  const byWindow = new Uint32Array(windowStart[WINDOWS_PER_REGION] as number);
  const fill = windowStart.slice(0, WINDOWS_PER_REGION);
  for (let i = 0; i < count; i++) {
    for (let w = firstWindow(writes, i, regionStart), last = lastWindow(writes, i, regionStart); w <= last; w++) {
      byWindow[(fill[w] as number)++] = i;
    }
  }
  return { windowStart, byWindow };
}

/** The first and last window of its region that write i touches (clipped to the region). */
function firstWindow(writes: RegionWrites, i: number, regionStart: number): number {
  return Math.max(0, Math.floor(((writes.offset[i] as number) - regionStart) / WINDOW_BYTES));
}

function lastWindow(writes: RegionWrites, i: number, regionStart: number): number {
  return Math.min(WINDOWS_PER_REGION - 1, Math.floor(((writes.offset[i] as number) + (writes.length[i] as number) - 1 - regionStart) / WINDOW_BYTES));
}

/** Zeroes the bytes of [offset, end) that no piece covers (pieces are sorted and disjoint). */
function fillGaps(buf: Buffer, pieces: readonly Piece[], offset: number, end: number): void {
  let at = offset;
  for (const piece of pieces) {
    const from = Math.max(piece.start, offset);
    if (from > at) {
      buf.fill(0, at - offset, from - offset);
    }
    at = Math.max(at, Math.min(piece.end, end));
  }
  if (at < end) {
    buf.fill(0, at - offset, end - offset);
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

/** Reads `buf.length` bytes at `position`; what lies past the end of the file is zero. */
async function readFully(handle: FileHandle, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const { bytesRead } = await handle.read(buf, done, buf.length - done, position + done);
    if (bytesRead === 0) {
      buf.fill(0, done);
      return;
    }
    done += bytesRead;
  }
}
