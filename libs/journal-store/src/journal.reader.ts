import { type DataSource } from 'typeorm';
import { type Checkpoint, type TimelineOptions } from '@cdp/domain';
import { CheckpointCatalog, type CheckpointPage, type CheckpointPageQuery, type CheckpointStats, type TimelineResult } from './checkpoint-catalog';
import { PitView } from './pit-view';

export interface JournalStatus {
  readonly vpgId: string;
  readonly appliedSeq: number;
  readonly replicaSeq: number;
  readonly lastCapturedAt: string | null;
  /**
   * A sync (or a restart of the order) has begun and no checkpoint after it is recorded yet: the newest
   * writes do not make a state the volumes were in (see journal_syncs).
   */
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
  private readonly catalog: CheckpointCatalog;
  private activeImages = 0;
  private readonly waitingImages: (() => void)[] = [];

  constructor(
    private readonly dataSource: DataSource,
    private readonly rootDir: string,
    options: JournalReaderOptions = {},
  ) {
    this.maxConcurrentImages = options.maxConcurrentImages ?? DEFAULT_MAX_CONCURRENT_IMAGES;
    this.idleImageTimeoutMs = options.idleImageTimeoutMs ?? DEFAULT_IDLE_IMAGE_TIMEOUT_MS;
    this.catalog = new CheckpointCatalog(dataSource);
  }

  async status(vpgId: string): Promise<JournalStatus> {
    const [rows, stats] = await Promise.all([
      this.dataSource.query<{ applied_seq: string; replica_seq: string; last_captured_at: Date | null; syncing: boolean }[]>(
        `SELECT j.applied_seq, j.replica_seq, j.last_captured_at,
                EXISTS (SELECT 1 FROM journal_syncs s WHERE s.vpg_key = j.vpg_key AND s.until_seq IS NULL) AS syncing
           FROM journal_vpgs j WHERE j.vpg_id = $1`,
        [vpgId],
      ),
      this.catalog.stats(vpgId),
    ]);
    const row = rows[0];
    // Counted from the catalog's per-VPG summary, never by count(*) over the checkpoints.
    const checkpoints = { checkpointCount: stats.count, oldestCheckpointAt: stats.earliest?.capturedAt ?? null, newestCheckpointAt: stats.latest?.capturedAt ?? null };
    if (!row) {
      return { vpgId, appliedSeq: 0, replicaSeq: 0, lastCapturedAt: null, syncing: false, ...checkpoints };
    }
    return {
      vpgId,
      appliedSeq: Number(row.applied_seq),
      replicaSeq: Number(row.replica_seq),
      lastCapturedAt: row.last_captured_at?.toISOString() ?? null,
      syncing: row.syncing,
      ...checkpoints,
    };
  }

  /**
   * Checkpoints within [from, to], oldest first. With `from`, the first `limit` from there on; without
   * it, the newest `limit` (what an operator who asks "what can I recover to" wants). Paging with a
   * stable cursor: checkpointPage.
   */
  async checkpoints(vpgId: string, query: CheckpointQuery): Promise<Checkpoint[]> {
    if (query.from) {
      return (await this.catalog.page(vpgId, query)).checkpoints;
    }
    return this.catalog.newest(vpgId, query);
  }

  /** The manual list, a page at a time (see CheckpointCatalog.page). */
  checkpointPage(vpgId: string, query: CheckpointPageQuery): Promise<CheckpointPage> {
    return this.catalog.page(vpgId, query);
  }

  /** Every checkpoint captured in (from, to], in time order. */
  checkpointsWithin(vpgId: string, from: Date, to: Date): Promise<Checkpoint[]> {
    return this.catalog.within(vpgId, from, to);
  }

  checkpoint(vpgId: string, checkpointId: string): Promise<Checkpoint> {
    return this.catalog.get(vpgId, checkpointId);
  }

  /** Earliest, latest, count and count per kind. */
  checkpointStats(vpgId: string): Promise<CheckpointStats> {
    return this.catalog.stats(vpgId);
  }

  /** The recovery slider at `now` (the rule: selectTimeline). */
  timeline(vpgId: string, now: Date, options?: TimelineOptions): Promise<TimelineResult> {
    return this.catalog.timeline(vpgId, now, options);
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
   * A volume at any point in time inside the journal, not only at a checkpoint: the longest prefix of
   * the VPG's write order captured at or before `at` (see point-in-time.ts). The view's `cut` and
   * `capturedAt` say what it resolved to. A time before the journal's history or after its latest
   * write is refused with a DomainError saying which.
   */
  async openViewAt(vpgId: string, volumeIndex: number, sizeBytes: number, at: Date): Promise<PitView> {
    await this.acquireImageSlot();
    return PitView.open(this.dataSource, this.rootDir, { vpgId, volumeIndex, sizeBytes, at }, () => this.releaseImageSlot());
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
