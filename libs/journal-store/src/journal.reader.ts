import { type FileHandle } from 'node:fs/promises';
import { type DataSource } from 'typeorm';
import { RECORD_HEADER_BYTES, RecordKind, decodeRecord } from '@cdp/contracts';
import { DomainError, type Checkpoint, type CheckpointKind } from '@cdp/domain';
import { SegmentReader } from '@cdp/segment-log';
import { ExtentMap } from './extent-map';
import { JournalStore } from './journal.store';
import { REPLICA_LOCK_CLASS, openReplicaForReading, readPromotionIntent } from './replica';

export interface JournalStatus {
  readonly vpgId: string;
  readonly appliedSeq: number;
  readonly replicaSeq: number;
  readonly lastCapturedAt: string | null;
  readonly syncing: boolean;
  readonly checkpointCount: number;
  readonly oldestCheckpointAt: string | null;
  readonly newestCheckpointAt: string | null;
}

export interface CheckpointQuery {
  readonly from?: Date;
  readonly to?: Date;
  readonly limit: number;
}

interface WriteRow {
  seq: string;
  byte_offset: string;
  length: number;
  segment: number;
  position: string;
}

interface CheckpointRow {
  id: string;
  vpg_id: string;
  cut: string;
  kind: CheckpointKind;
  name: string | null;
  vm_id: string | null;
  captured_at: Date;
}

const IMAGE_CHUNK_BYTES = 1024 * 1024;

/**
 * The recovery site's journal, reader side: checkpoints and the point-in-time image of a volume. It
 * only reads (Postgres, segment files and the replica) and so can live in another process than the
 * writer and the promoter.
 */
export interface JournalReaderOptions {
  /**
   * Images read at once (default 4); more wait their turn. Each open image holds one pooled
   * connection for as long as it is read (it carries the replica lock), so without a limit enough
   * concurrent downloads would take every connection of a pool the journal writer shares.
   */
  readonly maxConcurrentImages?: number;
  /**
   * An image whose consumer has not asked for the next chunk for this long is abandoned (default
   * 2 min): its lock, connection and files are released, and a later next() throws. A consumer that
   * hangs without ever calling return() (an HTTP client gone without the server noticing) must not
   * hold the replica lock, and so promotion, for ever.
   */
  readonly idleImageTimeoutMs?: number;
}

const DEFAULT_MAX_CONCURRENT_IMAGES = 4;
const DEFAULT_IDLE_IMAGE_TIMEOUT_MS = 120_000;

export class JournalReader {
  private readonly maxConcurrentImages: number;
  private readonly idleImageTimeoutMs: number;
  private activeImages = 0;
  private readonly waitingImages: (() => void)[] = [];

  constructor(
    private readonly dataSource: DataSource,
    private readonly rootDir: string,
    options: JournalReaderOptions = {},
  ) {
    this.maxConcurrentImages = options.maxConcurrentImages ?? DEFAULT_MAX_CONCURRENT_IMAGES;
    this.idleImageTimeoutMs = options.idleImageTimeoutMs ?? DEFAULT_IDLE_IMAGE_TIMEOUT_MS;
  }

  async status(vpgId: string): Promise<JournalStatus> {
    const rows = await this.dataSource.query<{ applied_seq: string; replica_seq: string; last_captured_at: Date | null; syncing: boolean; checkpoints: string; oldest: Date | null; newest: Date | null }[]>(
      `SELECT j.applied_seq, j.replica_seq, j.last_captured_at, j.syncing,
              (SELECT count(*) FROM checkpoints c WHERE c.vpg_id = j.vpg_id) AS checkpoints,
              (SELECT min(captured_at) FROM checkpoints c WHERE c.vpg_id = j.vpg_id) AS oldest,
              (SELECT max(captured_at) FROM checkpoints c WHERE c.vpg_id = j.vpg_id) AS newest
         FROM journal_vpgs j WHERE j.vpg_id = $1`,
      [vpgId],
    );
    const row = rows[0];
    if (!row) {
      return { vpgId, appliedSeq: 0, replicaSeq: 0, lastCapturedAt: null, syncing: false, checkpointCount: 0, oldestCheckpointAt: null, newestCheckpointAt: null };
    }
    return {
      vpgId,
      appliedSeq: Number(row.applied_seq),
      replicaSeq: Number(row.replica_seq),
      lastCapturedAt: row.last_captured_at?.toISOString() ?? null,
      syncing: row.syncing,
      checkpointCount: Number(row.checkpoints),
      oldestCheckpointAt: row.oldest?.toISOString() ?? null,
      newestCheckpointAt: row.newest?.toISOString() ?? null,
    };
  }

  /** Checkpoints in capture order, oldest first, within [from, to]. */
  /**
   * Checkpoints within [from, to], oldest first. With `from`, the first `limit` from there on (page
   * forward by passing the last one's time); without it, the newest `limit` (what an operator who
   * asks "what can I recover to" wants).
   */
  async checkpoints(vpgId: string, query: CheckpointQuery): Promise<Checkpoint[]> {
    const from = query.from ?? new Date(0);
    const to = query.to ?? new Date('9999-12-31T00:00:00Z');
    const rows = await this.dataSource.query<CheckpointRow[]>(
      query.from
        ? `SELECT id, vpg_id, cut, kind, name, vm_id, captured_at FROM checkpoints
            WHERE vpg_id = $1 AND captured_at >= $2 AND captured_at <= $3
            ORDER BY cut LIMIT $4`
        : `SELECT * FROM (
             SELECT id, vpg_id, cut, kind, name, vm_id, captured_at FROM checkpoints
              WHERE vpg_id = $1 AND captured_at >= $2 AND captured_at <= $3
              ORDER BY cut DESC LIMIT $4) newest
            ORDER BY cut`,
      [vpgId, from, to, query.limit],
    );
    return rows.map(toCheckpoint);
  }

  /** Every checkpoint captured in (from, to], in time order: the slider's input. */
  async checkpointsWithin(vpgId: string, from: Date, to: Date): Promise<Checkpoint[]> {
    const rows = await this.dataSource.query<CheckpointRow[]>(
      `SELECT id, vpg_id, cut, kind, name, vm_id, captured_at FROM checkpoints
        WHERE vpg_id = $1 AND captured_at > $2 AND captured_at <= $3
        ORDER BY captured_at, id`,
      [vpgId, from, to],
    );
    return rows.map(toCheckpoint);
  }

  async checkpoint(vpgId: string, checkpointId: string): Promise<Checkpoint> {
    const rows = await this.dataSource.query<CheckpointRow[]>(
      `SELECT id, vpg_id, cut, kind, name, vm_id, captured_at FROM checkpoints WHERE id = $1 AND vpg_id = $2`,
      [checkpointId, vpgId],
    );
    const row = rows[0];
    if (!row) {
      throw new DomainError('not-found', `checkpoint ${checkpointId} is not recorded for VPG ${vpgId}`);
    }
    return toCheckpoint(row);
  }

  /**
   * The image of one volume at a cut, in order, as chunks of at most 1 MiB. Bytes come from the newest
   * journal write before the cut that covers them; bytes no journaled write covers come from the
   * replica, which holds the volume as of replica_seq (all zeros until promotion has moved writes in).
   * Every journal record is verified before a byte of it is used.
   *
   * The image holds the VPG's replica lock shared (see replica.ts) from before it checks the cut
   * until the generator finishes, fails, is closed early (return() from a consumer that stops
   * iterating runs the finally below) or is abandoned (idleImageTimeoutMs without a next()). The lock
   * is on a connection of its own, which also runs all the image's queries, so an image never needs a
   * second connection while it holds one. While the lock is held a promotion cannot change the
   * replica, or delete this cut's index rows and segments. That matters for cuts at or before the
   * promotion's target, which must be read whole before it or refused after it. Cuts after the target
   * would even be safe without the lock: the replica only changes bytes that the writes in
   * (old replica_seq, target] cover, and those writes are in this cut's extent map, laid over the
   * replica; holding the lock for every image keeps the rule simple.
   */
  async *image(vpgId: string, volumeIndex: number, sizeBytes: number, cut: number): AsyncGenerator<Buffer> {
    await this.acquireImageSlot();
    const runner = this.dataSource.createQueryRunner();
    // Segment files are opened per image, not cached for the reader's life: promotion deletes old
    // segments, and an open descriptor would keep a deleted file's space allocated.
    const segments = new SegmentReader(JournalStore.segmentDir(this.rootDir, vpgId));
    let lockKey: number | undefined;
    let replica: FileHandle | undefined;
    // Runs once, from the finally below or from the idle timer, whichever comes first.
    let released: Promise<void> | undefined;
    const release = (): Promise<void> =>
      (released ??= (async () => {
        await replica?.close().catch(() => undefined);
        await segments.close().catch(() => undefined);
        if (lockKey !== undefined) {
          // If this fails the connection is almost certainly gone, and the lock with it.
          await runner.manager.query(`SELECT pg_advisory_unlock_shared($1, $2)`, [REPLICA_LOCK_CLASS, lockKey]).catch(() => undefined);
        }
        await runner.release().catch(() => undefined);
        this.releaseImageSlot();
      })());
    let abandoned = false;
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
      // promotion was interrupted. The image at `cut` is the replica plus the writes in
      // (replica_seq, cut), which is right only if the replica holds nothing at or after the cut.
      const state = await runner.manager.query<{ replica_seq: string }[]>(`SELECT replica_seq FROM journal_vpgs WHERE vpg_id = $1`, [vpgId]);
      const replicaSeq = Number(state[0]?.replica_seq ?? 0);
      const intent = await readPromotionIntent(this.rootDir, vpgId);
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
      // Opened once, under the lock: a replica file that appears later was not there for this image.
      replica = await openReplicaForReading(this.rootDir, vpgId, volumeIndex);

      const map = new ExtentMap<WriteRow>();
      for (const row of rows) {
        map.add(Number(row.byte_offset), row.length, row);
      }
      let cached: { row: WriteRow; data: Buffer } | undefined;
      const payload = async (row: WriteRow): Promise<Buffer> => {
        if (cached?.row !== row) {
          const record = await segments.read({ segment: row.segment, position: Number(row.position), length: RECORD_HEADER_BYTES + row.length });
          const decoded = decodeRecord(record);
          if (decoded.kind !== RecordKind.Write || decoded.seq !== Number(row.seq) || decoded.volumeIndex !== volumeIndex) {
            throw new DomainError('failed-precondition', `journal index of VPG ${vpgId} points seq ${row.seq} at the wrong record`);
          }
          cached = { row, data: decoded.data };
        }
        return cached.data;
      };

      const extents = map.list();
      let next = 0;
      for (let chunkStart = 0; chunkStart < sizeBytes; chunkStart += IMAGE_CHUNK_BYTES) {
        const chunkEnd = Math.min(sizeBytes, chunkStart + IMAGE_CHUNK_BYTES);
        const chunk = Buffer.alloc(chunkEnd - chunkStart);
        if (replica) {
          await readFully(replica, chunk, chunkStart);
          // A session-level lock lasts only as long as its session. A round trip that succeeds after
          // the read proves the session, and so the lock, was alive for the whole read; if the server
          // ended the session (a terminated backend, idle_session_timeout, a broken link) a promotion
          // may have changed the replica under us, and the image must fail rather than mix states.
          await runner.manager.query('SELECT 1');
        }
        while (next < extents.length && (extents[next]?.end ?? 0) <= chunkStart) {
          next++;
        }
        for (let i = next; i < extents.length; i++) {
          const extent = extents[i];
          if (!extent || extent.start >= chunkEnd) {
            break;
          }
          const from = Math.max(extent.start, chunkStart);
          const to = Math.min(extent.end, chunkEnd);
          const data = await payload(extent.source);
          const sourceStart = extent.sourceOffset + (from - extent.start);
          data.copy(chunk, from - chunkStart, sourceStart, sourceStart + (to - from));
        }
        const idle = setTimeout(() => {
          abandoned = true;
          void release();
        }, this.idleImageTimeoutMs).unref();
        try {
          yield chunk;
        } finally {
          clearTimeout(idle);
        }
        if (abandoned) {
          throw new Error(`image of VPG ${vpgId} volume ${volumeIndex} at cut ${cut} was abandoned: no chunk was asked for in ${this.idleImageTimeoutMs} ms`);
        }
      }
    } finally {
      await release();
    }
  }

  /** Nothing to release: every image opens and closes its own files and connection. */
  close(): Promise<void> {
    return Promise.resolve();
  }

  private async acquireImageSlot(): Promise<void> {
    if (this.activeImages < this.maxConcurrentImages) {
      this.activeImages++;
      return;
    }
    // The slot is handed over by releaseImageSlot, so activeImages already counts it.
    await new Promise<void>((resolve) => this.waitingImages.push(resolve));
  }

  private releaseImageSlot(): void {
    const next = this.waitingImages.shift();
    if (next) {
      next();
    } else {
      this.activeImages--;
    }
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

function toCheckpoint(row: CheckpointRow): Checkpoint {
  return {
    id: row.id,
    vpgId: row.vpg_id,
    cut: Number(row.cut),
    kind: row.kind,
    name: row.name,
    vmId: row.vm_id,
    capturedAt: row.captured_at.toISOString(),
  };
}
