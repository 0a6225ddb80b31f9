import { join } from 'node:path';
import { type DataSource } from 'typeorm';
import { poolTransaction } from '@cdp/database';
import { RecordKind, type DecodedRecord } from '@cdp/contracts';
import { type Checkpoint } from '@cdp/domain';
import { SegmentLog } from '@cdp/segment-log';
import { packBatch, type ExtentRow, type IndexedWrite } from './journal-index.codec';

/**
 * A commit's segment write of at least this many bytes bypasses the page cache (see direct-io.ts in
 * segment-log): the journal only ever writes new pages, the costliest kind on a virtual machine.
 * Smaller ones stay buffered, so that the recent small writes a point-in-time view reads back are
 * usually still in memory, and a small commit does not wait on the disk for its write as well as for
 * its fdatasync. Measured (session 18, docs/architecture.md "Large appends past the page cache"):
 * under 1 MiB sequential writes the journal writer commits more than 1 MiB at a time (mostly 4 to 16),
 * and writing those direct cut the all-in-one's CPU per GB by a third; at 256 KiB the journal bench's commits of 1,000
 * small writes (about 540 KB) went direct too and its ingest fell from 144k to 106k writes/s.
 */
const DIRECT_WRITE_MIN_BYTES = 1024 * 1024;

export interface VerifiedRecord {
  /** The record's bytes exactly as captured (header, checksum, body). */
  readonly bytes: Buffer;
  readonly decoded: DecodedRecord;
}

export interface CommitResult {
  readonly appliedSeq: number;
  /** Checkpoints that became recoverable with this commit (not ones recorded before). */
  readonly checkpoints: Checkpoint[];
  /**
   * With a restart (RecordKind.Restart) first: the checkpoint requests it made void, sent to the
   * splitter before the restart and never recorded. Their markers may have been in the seqs the
   * restart voided, and sending them again would record a checkpoint under their names at a later
   * moment than the one asked for; so they are deleted and not sent again. Empty otherwise.
   */
  readonly droppedRequests: string[];
}

export class JournalConflictError extends Error {
  override readonly name = 'JournalConflictError';
  readonly retriable = true;
}

/** A message for the bus, kept in journal_outbox until published. */
export interface OutboxMessage {
  readonly topic: string;
  readonly key: string;
  readonly value: Buffer;
}

export interface CommitOptions {
  readonly outbox?: (recorded: readonly Checkpoint[]) => readonly OutboxMessage[];
  /** The merge state of a VPG with several members as of this commit, stored with it (journal_vpgs.members). */
  readonly members?: unknown;
}

export interface JournalStoreOptions {
  /** Where segments roll (SegmentLog's default when unset); tests make it small. */
  readonly segmentBytes?: number;
  /** Told the extent rows each commit inserted, after it commits (JournalCompactor.noteCommitted). */
  readonly onIndexed?: (vpgId: string, vpgKey: number, rows: readonly ExtentRow[]) => void;
}

interface VpgJournal {
  readonly vpgKey: number;
  appliedSeq: number;
  /** journal_batches.captured_upto of the newest batch (0 when there is none). */
  capturedUpto: number;
  /** journal_syncs rows without an end: while there are, each commit with checkpoints closes them. */
  openSyncs: number;
  readonly log: SegmentLog;
}

/**
 * The recovery site's journal, writer side. For each VPG: an append-only segment log of the records
 * exactly as captured, and in Postgres the compact index of where each write's bytes are (a row per
 * committed batch, and a row of packed entries per batch, volume and 64 MiB region, later merged by
 * JournalCompactor: see journal-index.codec.ts), the checkpoints, and the VPG's applied seq.
 *
 * Commit order is what makes checkpoints honest and the journal exactly-once:
 *   1. append the records to the VPG's segment log and fdatasync it;
 *   2. in one Postgres transaction: the batch row and its extent rows (one INSERT from arrays), the
 *      checkpoints whose markers are in the batch, and applied_seq/segment_end moved forward, guarded
 *      by the applied_seq we started from. Its inserts overlap the fdatasync of step 1; it waits for
 *      that before applied_seq moves, so nothing commits before the records are durable;
 *   3. only then is anything reported (checkpoint events, progress to the splitter).
 * A crash after 1 and before 2 leaves bytes after segment_end; the next open truncates the log there,
 * and the records arrive again from the splitter. A checkpoint row exists only if every record up to
 * its cut is durable and indexed, because it commits in the same transaction as applied_seq >= cut.
 */
export class JournalStore {
  private readonly vpgs = new Map<string, Promise<VpgJournal>>();

  constructor(
    private readonly dataSource: DataSource,
    readonly rootDir: string,
    private readonly options: JournalStoreOptions = {},
  ) {}

  /**
   * The VPG's journal directory. Its segment files (`<16 digits>.seg`) are the journal; the `replica`
   * subdirectory holds the replica (see replica.ts). SegmentLog only lists names matching its segment
   * pattern, so the subdirectory is invisible to it.
   */
  static segmentDir(rootDir: string, vpgId: string): string {
    return join(rootDir, vpgId);
  }

  async appliedSeq(vpgId: string): Promise<number> {
    return (await this.journal(vpgId)).appliedSeq;
  }

  /** The merge state last committed with the VPG's journal (CommitOptions.members), or null. */
  async members(vpgId: string): Promise<unknown> {
    await this.journal(vpgId);
    const rows = await this.dataSource.query<{ members: unknown }[]>(`SELECT members FROM journal_vpgs WHERE vpg_id = $1`, [vpgId]);
    return rows[0]?.members ?? null;
  }

  /**
   * Appends records that continue the VPG's order exactly: the first must have seq appliedSeq + 1 and
   * each next one the following seq. The caller (the journal writer) drops duplicates and stops at
   * gaps before calling. The one exception is a restart (RecordKind.Restart) as the first record: it
   * takes the place of every seq the journal lacks before it, and begins its own commit so that every
   * batch's seqs stay dense (readers such as the timeline's batchTimes rely on that).
   */
  /**
   * `options.outbox` names the messages this commit gives rise to, from the checkpoints it recorded;
   * they are written to journal_outbox in the commit's transaction (see OutboxRelay in the journal
   * writer), so they exist if and only if the commit does.
   */
  async commit(vpgId: string, records: readonly VerifiedRecord[], options: CommitOptions = {}): Promise<CommitResult> {
    const journal = await this.journal(vpgId);
    if (records.length === 0) {
      return { appliedSeq: journal.appliedSeq, checkpoints: [], droppedRequests: [] };
    }
    const opening = (records[0] as VerifiedRecord).decoded;
    let expected = opening.kind === RecordKind.Restart && opening.seq > journal.appliedSeq ? opening.seq : journal.appliedSeq + 1;
    for (const { decoded } of records) {
      if (decoded.seq !== expected) {
        throw new Error(`journal commit for VPG ${vpgId} expected seq ${expected}, got ${decoded.seq}`);
      }
      expected++;
    }
    // On the thread pool: a commit's segment write must not hold up the capture sharing this event loop.
    const placed = journal.log.appendAsync(records.map((r) => r.bytes));
    // The index rows travel to Postgres while the segment is being made durable; the transaction
    // waits for the fdatasync before it touches applied_seq and commits.
    const synced = journal.log.sync();
    synced.catch(() => undefined);
    const end = journal.log.end;

    const writes: IndexedWrite[] = [];
    const checkpoints: Checkpoint[] = [];
    /** Stretches this commit opens (see journal_syncs); the first checkpoint after each closes it. */
    const syncs: { seq: number; reason: string }[] = [];
    let lastCapturedMicros = 0;
    records.forEach(({ decoded }, i) => {
      const at = placed[i] as (typeof placed)[number];
      lastCapturedMicros = Math.max(lastCapturedMicros, decoded.capturedAtMicros);
      if (decoded.kind === RecordKind.Write) {
        // A write of no bytes changes no image: it keeps its seq in the batch but needs no index entry.
        if (decoded.data.length === 0) {
          return;
        }
        writes.push({ seq: decoded.seq, volumeIndex: decoded.volumeIndex, offset: decoded.offset, length: decoded.data.length, segment: at.segment, position: at.position });
      } else if (decoded.kind === RecordKind.Sync) {
        syncs.push({ seq: decoded.seq, reason: decoded.sync.reason });
      } else if (decoded.kind === RecordKind.Restart) {
        syncs.push({ seq: decoded.seq, reason: `restart of the order: ${decoded.restart.reason}` });
      } else {
        checkpoints.push({
          id: decoded.marker.id,
          vpgId,
          cut: decoded.seq,
          kind: decoded.marker.kind,
          name: decoded.marker.name,
          vmId: decoded.marker.vmId,
          capturedAt: new Date(Math.floor(decoded.capturedAtMicros / 1000)).toISOString(),
        });
      }
    });
    // SegmentLog.append writes one call's records back to back in one segment, so the batch is one run.
    const first = placed[0] as (typeof placed)[number];
    const last = placed[placed.length - 1] as (typeof placed)[number];
    const batch = { firstSeq: first.seq, segment: first.segment, position: first.position };
    const capturedUpto = Math.max(journal.capturedUpto, lastCapturedMicros);
    const lastSeq = expected - 1;

    let recorded: Checkpoint[] = [];
    let droppedRequests: string[] = [];
    let openSyncs = journal.openSyncs;
    let extents: ExtentRow[] = [];
    try {
      extents = packBatch(batch, writes);
      // Through pg's pool: TypeORM's per-call QueryRunner and EntityManager outlive young-generation
      // GCs, whose pauses then land on write completions (see poolQuery).
      await poolTransaction(this.dataSource, async (tx) => {
        await tx.execute(
          `INSERT INTO journal_batches (vpg_key, first_seq, last_seq, segment, position, bytes, captured_upto)
           VALUES ($1, $2, $3, $4, $5, $6, $7)`,
          [journal.vpgKey, batch.firstSeq, lastSeq, batch.segment, batch.position, last.position + last.length - first.position, capturedUpto],
        );
        if (extents.length > 0) {
          await tx.execute(
            `INSERT INTO journal_extents (vpg_key, volume_index, region, first_seq, last_seq, segment, position, entries)
             SELECT $1, v, r, $2, l, $3, $4, e FROM unnest($5::smallint[], $6::int[], $7::bigint[], $8::bytea[]) AS t(v, r, l, e)`,
            [
              journal.vpgKey,
              batch.firstSeq,
              batch.segment,
              batch.position,
              extents.map((e) => e.volumeIndex),
              extents.map((e) => e.region),
              extents.map((e) => e.lastSeq),
              extents.map((e) => e.entries),
            ],
          );
        }
        if (checkpoints.length > 0) {
          // A marker shipped twice (a replay after a gap) must not record its checkpoint twice or move
          // it: the first copy in the order is the one that counts.
          const rows = await tx.query<{ id: string }>(
            `INSERT INTO checkpoints (id, vpg_id, cut, kind, name, vm_id, captured_at)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[], $6::uuid[], $7::timestamptz[])
             ON CONFLICT (id) DO NOTHING
             RETURNING id`,
            [
              checkpoints.map((c) => c.id),
              checkpoints.map((c) => c.vpgId),
              checkpoints.map((c) => c.cut),
              checkpoints.map((c) => c.kind),
              checkpoints.map((c) => c.name),
              checkpoints.map((c) => c.vmId),
              checkpoints.map((c) => c.capturedAt),
            ],
          );
          const inserted = new Set(rows.map((r) => r.id));
          recorded = checkpoints.filter((c) => inserted.has(c.id));
        }
        if (syncs.length > 0) {
          await tx.execute(
            // A row at that seq can only be left from an earlier life of this journal (its index reset by
            // hand): the stretch begins again, rather than the commit failing for ever.
            `INSERT INTO journal_syncs (vpg_key, from_seq, reason) SELECT $1, f, r FROM unnest($2::bigint[], $3::text[]) AS t(f, r)
             ON CONFLICT (vpg_key, from_seq) DO UPDATE SET until_seq = NULL, reason = EXCLUDED.reason`,
            [journal.vpgKey, syncs.map((x) => x.seq), syncs.map((x) => x.reason)],
          );
          openSyncs += syncs.length;
        }
        if (openSyncs > 0 && checkpoints.length > 0) {
          // Every marker is a consistent cut (the splitter's gate lets none into a sync), recorded now
          // or before under the same id: the first one after a sync ends its stretch.
          const cuts = checkpoints.map((c) => c.cut);
          const closed = await tx.query<{ from_seq: string }>(
            `UPDATE journal_syncs s SET until_seq = (SELECT min(c) FROM unnest($2::bigint[]) AS c WHERE c > s.from_seq)
              WHERE s.vpg_key = $1 AND s.until_seq IS NULL AND s.from_seq < $3
              RETURNING s.from_seq`,
            [journal.vpgKey, cuts, Math.max(...cuts)],
          );
          openSyncs -= closed.length;
        }
        if (opening.kind === RecordKind.Restart) {
          // The splitter's clock (capturedAt) against the database's (sent_at): on one host, one clock.
          const dropped = await tx.query<{ id: string }>(
            `DELETE FROM checkpoint_requests r
              WHERE r.vpg_id = $1 AND r.sent_at < to_timestamp($2::double precision / 1e6)
                AND NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.id = r.id)
              RETURNING r.id`,
            [vpgId, opening.capturedAtMicros],
          );
          droppedRequests = dropped.map((r) => r.id);
        }
        const outbox = options.outbox?.(recorded) ?? [];
        if (outbox.length > 0) {
          await tx.execute(`INSERT INTO journal_outbox (topic, key, value) SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])`, [
            outbox.map((m) => m.topic),
            outbox.map((m) => m.key),
            outbox.map((m) => m.value),
          ]);
        }
        await synced;
        const updated = await tx.execute(
          `UPDATE journal_vpgs
              SET applied_seq = $2, segment = $3, segment_end = $4,
                  last_captured_at = to_timestamp($5::double precision / 1e6), updated_at = now(),
                  members = COALESCE($7::jsonb, members)
            WHERE vpg_id = $1 AND applied_seq = $6`,
          [vpgId, lastSeq, end.segment, end.position, lastCapturedMicros, journal.appliedSeq, options.members === undefined ? null : JSON.stringify(options.members)],
        );
        if (updated !== 1) {
          throw new JournalConflictError(`VPG ${vpgId}: applied_seq moved under this writer (another journal writer?)`);
        }
      });
    } catch (err) {
      // The segment now holds bytes the index does not know. Forget this VPG's state so the next use
      // reopens the log and truncates it back to what the index says.
      this.vpgs.delete(vpgId);
      await synced.catch(() => undefined);
      await journal.log.close().catch(() => undefined);
      throw err;
    }
    journal.appliedSeq = lastSeq;
    journal.capturedUpto = capturedUpto;
    journal.openSyncs = openSyncs;
    if (extents.length > 0) {
      this.options.onIndexed?.(vpgId, journal.vpgKey, extents);
    }
    return { appliedSeq: lastSeq, checkpoints: recorded, droppedRequests };
  }

  /**
   * Deletes the VPG's sealed journal segments whose records all have seq <= `seq` (see
   * SegmentLog.deleteThrough; the active segment always stays). For promotion: call it only after the
   * index rows of those records are gone, so no index row ever points into a deleted segment. It goes
   * through the same SegmentLog instance the writer appends to, so both agree on which segments exist.
   */
  async deleteSegmentsThrough(vpgId: string, seq: number): Promise<number> {
    const journal = await this.journal(vpgId);
    return journal.log.deleteThrough(seq);
  }

  async close(): Promise<void> {
    const journals = [...this.vpgs.values()];
    this.vpgs.clear();
    await Promise.all(journals.map(async (j) => (await j.catch(() => undefined))?.log.close()));
  }

  private journal(vpgId: string): Promise<VpgJournal> {
    let journal = this.vpgs.get(vpgId);
    if (!journal) {
      journal = this.load(vpgId);
      journal.catch(() => this.vpgs.delete(vpgId));
      this.vpgs.set(vpgId, journal);
    }
    return journal;
  }

  private async load(vpgId: string): Promise<VpgJournal> {
    await this.dataSource.query(`INSERT INTO journal_vpgs (vpg_id) VALUES ($1) ON CONFLICT (vpg_id) DO NOTHING`, [vpgId]);
    const rows = await this.dataSource.query<{ vpg_key: number; applied_seq: string; segment: number; segment_end: string }[]>(
      `SELECT vpg_key, applied_seq, segment, segment_end FROM journal_vpgs WHERE vpg_id = $1`,
      [vpgId],
    );
    const row = rows[0];
    if (!row) {
      throw new Error(`journal_vpgs row for ${vpgId} vanished`);
    }
    const log = await SegmentLog.open({
      dir: JournalStore.segmentDir(this.rootDir, vpgId),
      tail: { segment: row.segment, position: Number(row.segment_end) },
      segmentBytes: this.options.segmentBytes,
      directWriteMinBytes: DIRECT_WRITE_MIN_BYTES,
    });
    const newest = await this.dataSource.query<{ captured_upto: string }[]>(
      `SELECT captured_upto FROM journal_batches WHERE vpg_key = $1 ORDER BY first_seq DESC LIMIT 1`,
      [row.vpg_key],
    );
    const open = await this.dataSource.query<{ n: number }[]>(`SELECT count(*)::int AS n FROM journal_syncs WHERE vpg_key = $1 AND until_seq IS NULL`, [row.vpg_key]);
    return { vpgKey: row.vpg_key, appliedSeq: Number(row.applied_seq), capturedUpto: Number(newest[0]?.captured_upto ?? 0), openSyncs: open[0]?.n ?? 0, log };
  }
}
