import { constants, writeSync } from 'node:fs';
import { mkdir, open, type FileHandle } from 'node:fs/promises';
import { type DataSource, type QueryRunner } from 'typeorm';
import { RecordKind, decodeRecord, peekRecordLength, vpgSchema } from '@cdp/contracts';
import { SegmentReader } from '@cdp/segment-log';
import { regionOf, trimRow } from './journal-index.codec';
import { JournalConflictError, JournalStore } from './journal.store';
import {
  REPLICA_LOCK_CLASS,
  clearPromotionIntent,
  fsyncDir,
  readPromotionIntent,
  replicaDir,
  replicaFile,
  writePromotionIntent,
} from './replica';

export interface JournalPromoterOptions {
  /** The clock that decides which checkpoints are older than the history window. */
  readonly now?: () => Date;
  /**
   * How long a promotion waits for image readers of the VPG to finish (they hold the replica lock
   * shared) before it gives up until the next round. While it waits, new readers queue behind it, so
   * this also bounds how long a reader can be held up by one stuck reader. Default 10 s.
   */
  readonly lockTimeoutMs?: number;
  /** Test hooks. */
  readonly hooks?: {
    /** Runs after the replica files are written and synced, before the Postgres commit (step 2). */
    readonly afterReplicaSynced?: (vpgId: string, toSeq: number) => void | Promise<void>;
  };
}

export interface RetainedCheckpoint {
  readonly id: string;
  readonly cut: number;
  readonly capturedAt: string;
}

export interface PromotionResult {
  readonly vpgId: string;
  /** False when nothing was old enough to promote; the segment clean-up (step 3) still ran. */
  readonly promoted: boolean;
  /** replica_seq before and after. */
  readonly fromSeq: number;
  readonly replicaSeq: number;
  /** Writes (and their payload bytes) applied to the replica. */
  readonly writes: number;
  readonly bytes: number;
  readonly checkpointsRemoved: number;
  /** The journal's size limit (not the history window) set how far it went: the history shrank. */
  readonly sizeLimited: boolean;
  readonly segmentsDeleted: number;
  /** The oldest checkpoint left: its image is exactly the replica. Null when none is left. */
  readonly oldestCheckpoint: RetainedCheckpoint | null;
}

interface BatchRow {
  first_seq: string;
  last_seq: string;
  segment: number;
  position: string;
  bytes: number;
}

/**
 * The VPG's image readers held the replica lock for longer than lockTimeoutMs; nothing changed, and
 * the next round tries again. Expected while a long image is being read, so not an error.
 */
export class PromotionPostponedError extends Error {
  override readonly name = 'PromotionPostponedError';
  readonly retriable = true;
}

/** Batch rows read per query in step 1, so a large backlog never sits in memory at once. */
const PAGE_BATCHES = 200;
/**
 * How long step 1 writes into the replica before it lets the event loop run other work. The writes
 * are synchronous, into the page cache: awaited one at a time on the thread pool, each paid a round
 * trip, and promotion applied 1.7k random 4 KiB writes a second while the all-in-one journaled 27.8k
 * a second (11 to 16.5k with nothing else running), so history older than the window piled up for as
 * long as such a load lasted (docs/architecture.md, "How fast step 1 goes").
 */
const PROMOTION_SLICE_MS = 1;
/** A write this large goes to the thread pool instead: copying it into the page cache takes long enough. */
const PROMOTION_ASYNC_BYTES = 256 * 1024;
const DEFAULT_LOCK_TIMEOUT_MS = 10_000;

/**
 * Promotion: keeps each VPG's journal to its history window (the VPG setting journalHistorySeconds)
 * by moving older writes into the replica, which then holds every volume as of the journal's oldest
 * retained point.
 *
 * The boundary is always a checkpoint. K is the newest checkpoint such that it and every checkpoint
 * before it (by cut) was captured at or before now - journalHistorySeconds. The target is
 * P = K.cut - 1: every write before K goes into the replica, the checkpoints before K go, and K
 * stays, its image now being exactly the replica. Every remaining checkpoint stays recoverable
 * bit-exact, and the journal always reaches back at least the history window.
 *
 * One promotion of a VPG, all under the exclusive replica lock (see replica.ts), taken inside one
 * Postgres transaction (pg_advisory_xact_lock, so commit, rollback or a lost connection always
 * release it):
 *   0. read replica_seq and the intent of an interrupted promotion; choose P (at least that intent's
 *      toSeq: the replica may already hold writes up to it); write the intent {replica_seq, P}
 *      durably. From here until replica_seq = P, readers refuse cuts <= P. The lock alone would not
 *      do: after a crash in step 1 the lock is gone but the replica is already past those cuts, and
 *      the retry comes only with the next round, or the writer's next start, while readers, possibly
 *      in another process, go on.
 *   1. apply the journal writes in (replica_seq, P], in seq order, batch by batch (one read per
 *      batch from its segment, every record verified), as positioned writes into the replica files; fdatasync them. Applying the same
 *      writes again in the same order gives the same bytes, so a crash here only means doing it again.
 *   2. in the same transaction: delete the index entries of writes with seq <= P (batch and extent
 *      rows wholly at or before P; the extent rows of the batch straddling P repacked without them), the checkpoints with cut <= P
 *      (and their checkpoint_requests: the scheduler sends a request again while no checkpoint with
 *      its id exists, which would bring a removed checkpoint back at a new cut), and move replica_seq
 *      to P, guarded by the replica_seq we started from; commit. The intent is now finished (toSeq =
 *      replica_seq); the next promotion replaces or removes it under the lock.
 *   3. after the commit, without the lock: delete the journal segments whose records are all <= P,
 *      through the JournalStore that owns the VPG's SegmentLog. No index row points into them any more
 *      and no reader can want them (readers only read seq > replica_seq). Run on every call, so a crash
 *      between 2 and 3 is cleaned up next time.
 */
export class JournalPromoter {
  private readonly now: () => Date;
  private readonly lockTimeoutMs: number;

  constructor(
    private readonly dataSource: DataSource,
    private readonly store: JournalStore,
    private readonly options: JournalPromoterOptions = {},
  ) {
    this.now = options.now ?? (() => new Date());
    this.lockTimeoutMs = options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS;
  }

  /** VPGs that have a journal, in a stable order. */
  async vpgsWithJournal(): Promise<string[]> {
    const rows = await this.dataSource.query<{ vpg_id: string }[]>(`SELECT vpg_id FROM journal_vpgs ORDER BY vpg_key`);
    return rows.map((r) => r.vpg_id);
  }

  /** Promotes one VPG as of `now` (default: the promoter's clock). */
  async promote(vpgId: string, now: Date = this.now()): Promise<PromotionResult> {
    const runner = this.dataSource.createQueryRunner();
    let outcome: Omit<PromotionResult, 'segmentsDeleted' | 'oldestCheckpoint'>;
    try {
      await runner.connect();
      const keys = await runner.manager.query<{ vpg_key: number }[]>(`SELECT vpg_key FROM journal_vpgs WHERE vpg_id = $1`, [vpgId]);
      const vpgKey = keys[0]?.vpg_key;
      if (vpgKey === undefined) {
        throw new Error(`VPG ${vpgId} has no journal`);
      }
      await runner.startTransaction();
      try {
        outcome = await this.promoteLocked(runner, vpgId, vpgKey, now);
        await runner.commitTransaction();
      } catch (err) {
        await runner.rollbackTransaction().catch(() => undefined);
        throw err;
      }
    } finally {
      await runner.release();
    }
    // The intent file stays: with toSeq = replica_seq it is finished and ignored. Removing it here,
    // outside the lock, could remove the intent of a promotion another process has just started.
    const segmentsDeleted = await this.store.deleteSegmentsThrough(vpgId, outcome.replicaSeq);
    const oldest = await this.dataSource.query<{ id: string; cut: string; captured_at: Date }[]>(
      `SELECT id, cut, captured_at FROM checkpoints WHERE vpg_id = $1 ORDER BY cut LIMIT 1`,
      [vpgId],
    );
    const first = oldest[0];
    return {
      ...outcome,
      segmentsDeleted,
      oldestCheckpoint: first ? { id: first.id, cut: Number(first.cut), capturedAt: first.captured_at.toISOString() } : null,
    };
  }

  /**
   * Removes every index entry of a write with seq <= toSeq: batch rows wholly at or before it, extent
   * rows likewise, and the extent rows of the one batch that straddles it repacked without those
   * writes, so the index holds exactly the writes after replica_seq.
   */
  private async dropIndexThrough(runner: QueryRunner, vpgKey: number, toSeq: number, touched: readonly { volumeIndex: number; region: number }[]): Promise<void> {
    await runner.manager.query(`DELETE FROM journal_batches WHERE vpg_key = $1 AND last_seq <= $2`, [vpgKey, toSeq]);
    if (touched.length === 0) {
      return;
    }
    const pairs = [touched.map((t) => t.volumeIndex), touched.map((t) => t.region)];
    await runner.manager.query(
      `DELETE FROM journal_extents e USING unnest($3::smallint[], $4::int[]) AS t(v, r)
        WHERE e.vpg_key = $1 AND e.volume_index = t.v AND e.region = t.r AND e.first_seq <= $2 AND e.last_seq <= $2`,
      [vpgKey, toSeq, ...pairs],
    );
    const straddling = await runner.manager.query<{ volume_index: number; region: number; first_seq: string; last_seq: string; segment: number; position: string; entries: Buffer }[]>(
      `SELECT e.volume_index, e.region, e.first_seq, e.last_seq, e.segment, e.position, e.entries
         FROM journal_extents e JOIN unnest($3::smallint[], $4::int[]) AS t(v, r) ON e.volume_index = t.v AND e.region = t.r
        WHERE e.vpg_key = $1 AND e.first_seq <= $2 AND e.last_seq > $2`,
      [vpgKey, toSeq, ...pairs],
    );
    for (const row of straddling) {
      const trimmed = trimRow(
        { volumeIndex: row.volume_index, region: row.region, firstSeq: Number(row.first_seq), lastSeq: Number(row.last_seq), segment: row.segment, position: Number(row.position), entries: row.entries },
        toSeq,
      );
      if (!trimmed) {
        throw new Error(`extent row ${row.first_seq} of VPG key ${vpgKey} ends after seq ${toSeq} but holds no write after it`);
      }
      await runner.manager.query(
        `UPDATE journal_extents SET entries = $5 WHERE vpg_key = $1 AND volume_index = $2 AND region = $3 AND first_seq = $4`,
        [vpgKey, row.volume_index, row.region, row.first_seq, trimmed.entries],
      );
    }
  }

  /**
   * The cut of the oldest checkpoint K that brings the journal within its size limit: the records
   * after K.cut - 1 (as the index counts them, whole batches) take at most the limit. 0 when there is
   * no limit or the journal is within it. When no checkpoint lies past the records that must go, the
   * newest checkpoint: as far as a checkpoint boundary allows, and the next round goes on from there.
   *
   * The batch rows are summed from the newest back (a window in the primary key's order). At worst
   * that reads every batch row of the VPG's journal: once per promotion round, and only for a VPG
   * that has a limit.
   */
  private async sizeBoundary(runner: QueryRunner, vpgId: string, vpgKey: number, fromSeq: number, limitMb: number | null | undefined): Promise<number> {
    if (limitMb === undefined || limitMb === null) {
      return 0;
    }
    const over = await runner.manager.query<{ last_seq: string }[]>(
      `SELECT last_seq FROM (
         SELECT first_seq, last_seq, sum(bytes) OVER (ORDER BY first_seq DESC) AS newer
           FROM journal_batches WHERE vpg_key = $1 AND last_seq > $2
       ) b
        WHERE newer > $3
        ORDER BY first_seq DESC LIMIT 1`,
      [vpgKey, fromSeq, limitMb * 1024 * 1024],
    );
    const mustGo = over[0] ? Number(over[0].last_seq) : 0;
    if (mustGo === 0) {
      return 0;
    }
    const past = await runner.manager.query<{ cut: string }[]>(
      `SELECT coalesce((SELECT min(cut) FROM checkpoints WHERE vpg_id = $1 AND cut > $2), (SELECT max(cut) FROM checkpoints WHERE vpg_id = $1)) AS cut`,
      [vpgId, mustGo],
    );
    return past[0]?.cut ? Number(past[0].cut) : 0;
  }

  /** Steps 0 to 2 inside the caller's transaction; the caller commits. */
  private async promoteLocked(
    runner: QueryRunner,
    vpgId: string,
    vpgKey: number,
    now: Date,
  ): Promise<Omit<PromotionResult, 'segmentsDeleted' | 'oldestCheckpoint'>> {
    const rootDir = this.store.rootDir;
    // The timeout applies to taking the lock only (SET LOCAL ends with the transaction, and is put back
    // right after): a reader that never finishes must not stop promotion for good.
    await runner.manager.query(`SELECT set_config('lock_timeout', $1, true)`, [`${this.lockTimeoutMs}ms`]);
    try {
      await runner.manager.query(`SELECT pg_advisory_xact_lock($1, $2)`, [REPLICA_LOCK_CLASS, vpgKey]);
    } catch (err) {
      if (postgresCode(err) === LOCK_NOT_AVAILABLE) {
        throw new PromotionPostponedError(
          `VPG ${vpgId}: image readers held the replica lock for more than ${this.lockTimeoutMs} ms; promotion postponed`,
          { cause: err },
        );
      }
      throw err;
    }
    await runner.manager.query(`SET LOCAL lock_timeout TO DEFAULT`);

    const state = await runner.manager.query<{ replica_seq: string }[]>(`SELECT replica_seq FROM journal_vpgs WHERE vpg_id = $1`, [vpgId]);
    const fromSeq = Number(state[0]?.replica_seq ?? 0);
    const nothing = { vpgId, promoted: false, fromSeq, replicaSeq: fromSeq, writes: 0, bytes: 0, checkpointsRemoved: 0, sizeLimited: false };
    const intent = await readPromotionIntent(rootDir, vpgId);
    const pending = intent && intent.toSeq > fromSeq ? intent.toSeq : 0;

    const definitions = await runner.manager.query<{ definition: unknown }[]>(`SELECT definition FROM vpgs WHERE id = $1`, [vpgId]);
    const definition = definitions[0];
    if (!definition && pending === 0) {
      // No definition, so no history setting and no volume sizes: keep the journal as it is.
      return nothing;
    }
    const parsed = vpgSchema.safeParse(definition?.definition);
    if (!parsed.success) {
      // Without the volume sizes the replica cannot be laid out. An unfinished promotion stays
      // unfinished (readers keep refusing the cuts it covers) until the definition is readable.
      throw new Error(definition ? `the definition of VPG ${vpgId} is not valid: ${parsed.error.message}` : `VPG ${vpgId} has an unfinished promotion but no definition`);
    }
    const vpg = parsed.data;
    const threshold = new Date(now.getTime() - vpg.settings.journalHistorySeconds * 1000);
    // K: the newest checkpoint such that no checkpoint up to it was captured after the threshold. Cut
    // order and capture order agree unless the source's clock stepped back; then this never removes a
    // checkpoint that is still inside the window.
    const boundary = await runner.manager.query<{ cut: string }[]>(
      `SELECT cut FROM checkpoints
        WHERE vpg_id = $1 AND captured_at <= $2
          AND cut < coalesce((SELECT min(cut) FROM checkpoints WHERE vpg_id = $1 AND captured_at > $2), 9223372036854775807)
        ORDER BY cut DESC LIMIT 1`,
      [vpgId, threshold],
    );
    const byTime = boundary[0] ? Number(boundary[0].cut) : 0;
    const bySize = await this.sizeBoundary(runner, vpgId, vpgKey, fromSeq, vpg.settings.journalSizeLimitMb);
    const kCut = Math.max(byTime, bySize);
    const toSeq = Math.max(kCut - 1, pending);
    if (toSeq <= fromSeq) {
      if (intent) {
        // The finished intent of an earlier promotion (toSeq = replica_seq); tidy it away under the lock.
        await clearPromotionIntent(rootDir, vpgId);
      }
      return nothing;
    }

    // Step 0.
    await mkdir(replicaDir(rootDir, vpgId), { recursive: true });
    await fsyncDir(JournalStore.segmentDir(rootDir, vpgId));
    await writePromotionIntent(rootDir, vpgId, { fromSeq, toSeq });

    // Step 1.
    const sizes = new Map<number, number>(vpg.vms.flatMap((vm) => vm.volumes.map((v) => [v.index, v.sizeBytes] as const)));
    const files = new Map<number, FileHandle>();
    const segments = new SegmentReader(JournalStore.segmentDir(rootDir, vpgId));
    /** (volume, region) pairs the promoted writes touch: the only extent rows step 2 changes. */
    const touched = new Map<string, { volumeIndex: number; region: number }>();
    let writes = 0;
    let bytes = 0;
    let sliceStart = performance.now();
    try {
      const replica = async (volumeIndex: number, seq: number): Promise<{ handle: FileHandle; size: number }> => {
        const size = sizes.get(volumeIndex);
        if (size === undefined) {
          throw new Error(`VPG ${vpgId}: journal write seq ${seq} is for volume index ${volumeIndex}, which the VPG does not define`);
        }
        let handle = files.get(volumeIndex);
        if (!handle) {
          handle = await open(replicaFile(rootDir, vpgId, volumeIndex), constants.O_RDWR | constants.O_CREAT, 0o644);
          files.set(volumeIndex, handle);
          if ((await handle.stat()).size < size) {
            // Sparse: untouched ranges read as zeros and take no space.
            await handle.truncate(size);
          }
        }
        return { handle, size };
      };
      // Batch by batch in seq order: each batch is one run of records in one segment, read with one
      // call, every record verified; only the writes in (fromSeq, toSeq] are applied.
      let expected = fromSeq + 1;
      let afterFirst = -1;
      for (;;) {
        const batches = await runner.manager.query<BatchRow[]>(
          `SELECT first_seq, last_seq, segment, position, bytes FROM journal_batches
            WHERE vpg_key = $1 AND first_seq > $2 AND first_seq <= $3 AND last_seq > $4 ORDER BY first_seq LIMIT $5`,
          [vpgKey, afterFirst, toSeq, fromSeq, PAGE_BATCHES],
        );
        for (const batch of batches) {
          const firstSeq = Number(batch.first_seq);
          if (firstSeq > expected) {
            throw new Error(`journal index of VPG ${vpgId} has no batch holding seq ${expected} (the next starts at ${firstSeq})`);
          }
          const run = await segments.readRange({ segment: batch.segment, position: Number(batch.position), length: batch.bytes });
          let seq = firstSeq;
          for (let pos = 0; pos < run.length; seq++) {
            const length = peekRecordLength(run, pos);
            if (length === undefined || pos + length > run.length) {
              throw new Error(`journal batch ${firstSeq} of VPG ${vpgId} is cut short in segment ${batch.segment}`);
            }
            const decoded = decodeRecord(run.subarray(pos, pos + length));
            pos += length;
            if (decoded.seq !== seq) {
              throw new Error(`journal index of VPG ${vpgId} points seq ${seq} at the wrong record (seq ${decoded.seq})`);
            }
            if (decoded.kind !== RecordKind.Write || seq <= fromSeq || seq > toSeq) {
              continue;
            }
            const { handle, size } = await replica(decoded.volumeIndex, seq);
            if (decoded.offset + decoded.data.length > size) {
              throw new Error(`VPG ${vpgId}: journal write seq ${seq} ends at byte ${decoded.offset + decoded.data.length}, past volume index ${decoded.volumeIndex} (${size} bytes)`);
            }
            if (decoded.data.length >= PROMOTION_ASYNC_BYTES) {
              await writeFullyAsync(handle, decoded.data, decoded.offset);
            } else {
              writeFully(handle.fd, decoded.data, decoded.offset);
            }
            if (performance.now() - sliceStart >= PROMOTION_SLICE_MS) {
              await new Promise((resolve) => setImmediate(resolve));
              sliceStart = performance.now();
            }
            for (let region = regionOf(decoded.offset); region <= regionOf(decoded.offset + decoded.data.length - 1); region++) {
              touched.set(`${decoded.volumeIndex}:${region}`, { volumeIndex: decoded.volumeIndex, region });
            }
            writes++;
            bytes += decoded.data.length;
          }
          if (seq - 1 !== Number(batch.last_seq)) {
            throw new Error(`journal batch ${firstSeq} of VPG ${vpgId} ends at seq ${seq - 1}, not ${batch.last_seq}`);
          }
          expected = seq;
        }
        const last = batches[batches.length - 1];
        if (!last || batches.length < PAGE_BATCHES) {
          break;
        }
        afterFirst = Number(last.first_seq);
      }
      if (expected <= toSeq) {
        throw new Error(`journal index of VPG ${vpgId} ends at seq ${expected - 1}, before the promotion target ${toSeq}`);
      }
      for (const handle of files.values()) {
        await handle.datasync();
      }
      // New replica files must still be there after a power loss once replica_seq says they hold data.
      await fsyncDir(replicaDir(rootDir, vpgId));
    } finally {
      await Promise.all([...files.values()].map((h) => h.close()));
      await segments.close();
    }
    await this.options.hooks?.afterReplicaSynced?.(vpgId, toSeq);

    // Step 2 (committed by the caller).
    await this.dropIndexThrough(runner, vpgKey, toSeq, [...touched.values()]);
    // A data-modifying WITH runs to completion whether or not the outer query reads it.
    const removed = await runner.manager.query<{ checkpoints: string }[]>(
      `WITH gone AS (DELETE FROM checkpoints WHERE vpg_id = $1 AND cut <= $2 RETURNING id),
            satisfied AS (DELETE FROM checkpoint_requests WHERE id IN (SELECT id FROM gone))
       SELECT count(*) AS checkpoints FROM gone`,
      [vpgId, toSeq],
    );
    // No point in time at or below the replica is recovered, so a sync stretch that ends there is history.
    await runner.manager.query(`DELETE FROM journal_syncs WHERE vpg_key = $1 AND until_seq <= $2`, [vpgKey, toSeq]);
    const updated = await runner.manager.query<[unknown[], number]>(
      `UPDATE journal_vpgs SET replica_seq = $2, updated_at = now() WHERE vpg_id = $1 AND replica_seq = $3`,
      [vpgId, toSeq, fromSeq],
    );
    if (updated[1] !== 1) {
      throw new JournalConflictError(`VPG ${vpgId}: replica_seq moved from ${fromSeq} under this promotion`);
    }
    return { ...nothing, promoted: true, replicaSeq: toSeq, writes, bytes, checkpointsRemoved: Number(removed[0]?.checkpoints ?? 0), sizeLimited: bySize > byTime && bySize - 1 > pending };
  }
}

/** PostgreSQL's SQLSTATE for a lock wait that ran into lock_timeout. */
const LOCK_NOT_AVAILABLE = '55P03';

/** The SQLSTATE of a failed query (TypeORM copies the driver error's fields onto QueryFailedError). */
function postgresCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') {
    return err.code;
  }
  return undefined;
}

async function writeFullyAsync(handle: FileHandle, data: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await handle.write(data, done, data.length - done, position + done);
    done += bytesWritten;
  }
}

function writeFully(fd: number, data: Buffer, position: number): void {
  let done = 0;
  while (done < data.length) {
    done += writeSync(fd, data, done, data.length - done, position + done);
  }
}
