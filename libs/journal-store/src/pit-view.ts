import { type FileHandle } from 'node:fs/promises';
import { type DataSource, type QueryRunner } from 'typeorm';
import { RECORD_HEADER_BYTES, RecordKind, decodeRecord } from '@cdp/contracts';
import { DomainError } from '@cdp/domain';
import { SegmentReader } from '@cdp/segment-log';
import { ExtentMap, type Extent } from './extent-map';
import { JournalStore } from './journal.store';
import { REPLICA_LOCK_CLASS, openReplicaForReading, readPromotionIntent } from './replica';

interface WriteRow {
  seq: string;
  byte_offset: string;
  length: number;
  segment: number;
  position: string;
}

/** Decoded payloads kept for reads that come back to the same writes (a small, bounded cache). */
const PAYLOAD_CACHE_ENTRIES = 256;

/**
 * A volume as it was at a cut, readable at any offset without copying it first: the replica
 * overlaid with the journal writes in (replica_seq, cut], newest first, through an extent map built
 * once from the index when the view opens.
 *
 * While open, the view holds the VPG's replica lock shared on a connection of its own, so promotion
 * cannot change the replica under it (see journal.promoter.ts); `close()` releases it. The cut is
 * checked under the lock: a cut the replica has already moved past is refused.
 */
export class PitView {
  private readonly extents: readonly Extent<WriteRow>[];
  private readonly cache = new Map<string, Buffer>();
  private closed: Promise<void> | undefined;

  private constructor(
    readonly vpgId: string,
    readonly volumeIndex: number,
    readonly sizeBytes: number,
    readonly cut: number,
    private readonly runner: QueryRunner,
    private readonly lockKey: number,
    private readonly segments: SegmentReader,
    private readonly replica: FileHandle | undefined,
    map: ExtentMap<WriteRow>,
    private readonly onClose: () => void,
  ) {
    this.extents = map.list();
  }

  /**
   * Opens the view. `onClose` runs once when the view is closed (or fails to open), so a caller that
   * limits concurrent views can hand the slot on.
   */
  static async open(
    dataSource: DataSource,
    rootDir: string,
    target: { readonly vpgId: string; readonly volumeIndex: number; readonly sizeBytes: number; readonly cut: number },
    onClose: () => void = () => undefined,
  ): Promise<PitView> {
    const { vpgId, volumeIndex, sizeBytes, cut } = target;
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
      const state = await runner.manager.query<{ replica_seq: string }[]>(`SELECT replica_seq FROM journal_vpgs WHERE vpg_id = $1`, [vpgId]);
      const replicaSeq = Number(state[0]?.replica_seq ?? 0);
      const intent = await readPromotionIntent(rootDir, vpgId);
      if (cut <= replicaSeq || (intent !== undefined && cut <= intent.toSeq)) {
        const replicaAt = Math.max(replicaSeq, intent?.toSeq ?? 0);
        throw new DomainError(
          'failed-precondition',
          `the checkpoint at cut ${cut} is no longer inside the journal's history of VPG ${vpgId}: the replica already holds writes through seq ${replicaAt}; recover from a newer checkpoint`,
          { cut, replicaSeq: replicaAt },
        );
      }
      const rows = await runner.manager.query<WriteRow[]>(
        `SELECT seq, byte_offset, length, segment, position FROM journal_writes
          WHERE vpg_key = $1 AND volume_index = $2 AND seq > $3 AND seq <= $4 ORDER BY seq`,
        [key.vpg_key, volumeIndex, replicaSeq, cut],
      );
      // Opened once, under the lock: a replica file that appears later was not there for this view.
      replica = await openReplicaForReading(rootDir, vpgId, volumeIndex);
      const map = new ExtentMap<WriteRow>();
      for (const row of rows) {
        map.add(Number(row.byte_offset), row.length, row);
      }
      return new PitView(vpgId, volumeIndex, sizeBytes, cut, runner, key.vpg_key, segments, replica, map, onClose);
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
    const end = offset + length;
    if (this.replica) {
      await readFully(this.replica, buf, offset);
      // A session-level lock lasts only as long as its session. A round trip that succeeds after the
      // read proves the session, and so the lock, was alive for the whole read; if the server ended
      // the session, a promotion may have changed the replica under us, and the read must fail rather
      // than mix states.
      await this.runner.manager.query('SELECT 1');
    }
    for (let i = this.firstExtentEndingAfter(offset); i < this.extents.length; i++) {
      const extent = this.extents[i];
      if (!extent || extent.start >= end) {
        break;
      }
      const from = Math.max(extent.start, offset);
      const to = Math.min(extent.end, end);
      const data = await this.payload(extent.source);
      const sourceStart = extent.sourceOffset + (from - extent.start);
      data.copy(buf, from - offset, sourceStart, sourceStart + (to - from));
    }
    return buf;
  }

  /** Releases the lock, the connection and the files. Safe to call more than once. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      this.cache.clear();
      await this.replica?.close().catch(() => undefined);
      await this.segments.close().catch(() => undefined);
      // If this fails the connection is almost certainly gone, and the lock with it.
      await this.runner.manager.query(`SELECT pg_advisory_unlock_shared($1, $2)`, [REPLICA_LOCK_CLASS, this.lockKey]).catch(() => undefined);
      await this.runner.release().catch(() => undefined);
      this.onClose();
    })();
    return this.closed;
  }

  private firstExtentEndingAfter(offset: number): number {
    let lo = 0;
    let hi = this.extents.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.extents[mid] as Extent<WriteRow>).end <= offset) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    return lo;
  }

  private async payload(row: WriteRow): Promise<Buffer> {
    const cached = this.cache.get(row.seq);
    if (cached) {
      return cached;
    }
    const record = await this.segments.read({ segment: row.segment, position: Number(row.position), length: RECORD_HEADER_BYTES + row.length });
    const decoded = decodeRecord(record);
    if (decoded.kind !== RecordKind.Write || decoded.seq !== Number(row.seq) || decoded.volumeIndex !== this.volumeIndex) {
      throw new DomainError('failed-precondition', `journal index of VPG ${this.vpgId} points seq ${row.seq} at the wrong record`);
    }
    if (this.cache.size >= PAYLOAD_CACHE_ENTRIES) {
      const oldest = this.cache.keys().next();
      if (!oldest.done) {
        this.cache.delete(oldest.value);
      }
    }
    this.cache.set(row.seq, decoded.data);
    return decoded.data;
  }
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
