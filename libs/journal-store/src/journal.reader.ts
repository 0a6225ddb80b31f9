import { type DataSource } from 'typeorm';
import { DomainError, type Checkpoint, type CheckpointKind } from '@cdp/domain';
import { PitView } from './pit-view';

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
   * A volume at a cut, readable at any offset (see PitView), for as long as the caller keeps it open.
   * Counts against the same limit as images: each view holds a connection and the replica lock.
   */
  async openView(vpgId: string, volumeIndex: number, sizeBytes: number, cut: number): Promise<PitView> {
    await this.acquireImageSlot();
    return PitView.open(this.dataSource, this.rootDir, { vpgId, volumeIndex, sizeBytes, cut }, () => this.releaseImageSlot());
  }

  /**
   * The image of one volume at a cut, in order, as chunks of at most 1 MiB: a sequential reader over a
   * PitView. Bytes come from the newest journal write at or before the cut that covers them, the rest
   * from the replica (zeros where nothing was ever promoted). Every journal record is verified before
   * a byte of it is used. A consumer that stops early must call return() (for-await does), which
   * closes the view at once; one that goes silent is cut off after the idle timeout.
   */
  async *image(vpgId: string, volumeIndex: number, sizeBytes: number, cut: number): AsyncGenerator<Buffer> {
    const view = await this.openView(vpgId, volumeIndex, sizeBytes, cut);
    let abandoned = false;
    try {
      for (let chunkStart = 0; chunkStart < sizeBytes; chunkStart += IMAGE_CHUNK_BYTES) {
        const chunk = await view.read(chunkStart, Math.min(IMAGE_CHUNK_BYTES, sizeBytes - chunkStart));
        const idle = setTimeout(() => {
          abandoned = true;
          void view.close();
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
      await view.close();
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
