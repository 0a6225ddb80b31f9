import { join } from 'node:path';
import { type DataSource } from 'typeorm';
import { RecordKind, type DecodedRecord } from '@cdp/contracts';
import { type Checkpoint } from '@cdp/domain';
import { SegmentLog } from '@cdp/segment-log';

export interface VerifiedRecord {
  /** The record's bytes exactly as captured (header, checksum, body). */
  readonly bytes: Buffer;
  readonly decoded: DecodedRecord;
}

export interface CommitResult {
  readonly appliedSeq: number;
  /** Checkpoints that became recoverable with this commit (not ones recorded before). */
  readonly checkpoints: Checkpoint[];
}

export class JournalConflictError extends Error {
  override readonly name = 'JournalConflictError';
  readonly retriable = true;
}

interface VpgJournal {
  readonly vpgKey: number;
  appliedSeq: number;
  readonly log: SegmentLog;
}

/**
 * The recovery site's journal, writer side. For each VPG: an append-only segment log of the records
 * exactly as captured, and in Postgres an index row per write (where its bytes are), the checkpoints,
 * and the VPG's applied seq.
 *
 * Commit order is what makes checkpoints honest and the journal exactly-once:
 *   1. append the records to the VPG's segment log and fdatasync it;
 *   2. in one Postgres transaction: the index rows (one multi-row INSERT from arrays), the checkpoints
 *      whose markers are in the batch, and applied_seq/segment_end moved forward, guarded by the
 *      applied_seq we started from;
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
    /** segmentBytes: where segments roll (SegmentLog's default when unset); tests make it small. */
    private readonly options: { readonly segmentBytes?: number } = {},
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

  /**
   * Appends records that continue the VPG's order exactly: the first must have seq appliedSeq + 1 and
   * each next one the following seq. The caller (the journal writer) drops duplicates and stops at
   * gaps before calling.
   */
  async commit(vpgId: string, records: readonly VerifiedRecord[]): Promise<CommitResult> {
    const journal = await this.journal(vpgId);
    if (records.length === 0) {
      return { appliedSeq: journal.appliedSeq, checkpoints: [] };
    }
    let expected = journal.appliedSeq + 1;
    for (const { decoded } of records) {
      if (decoded.seq !== expected) {
        throw new Error(`journal commit for VPG ${vpgId} expected seq ${expected}, got ${decoded.seq}`);
      }
      expected++;
    }
    const placed = journal.log.append(records.map((r) => r.bytes));
    await journal.log.sync();
    const end = journal.log.end;

    const seqs: number[] = [];
    const volumes: number[] = [];
    const offsets: number[] = [];
    const lengths: number[] = [];
    const segments: number[] = [];
    const positions: number[] = [];
    const checkpoints: Checkpoint[] = [];
    let lastCapturedMicros = 0;
    records.forEach(({ decoded }, i) => {
      const at = placed[i] as (typeof placed)[number];
      lastCapturedMicros = Math.max(lastCapturedMicros, decoded.capturedAtMicros);
      if (decoded.kind === RecordKind.Write) {
        seqs.push(decoded.seq);
        volumes.push(decoded.volumeIndex);
        offsets.push(decoded.offset);
        lengths.push(decoded.data.length);
        segments.push(at.segment);
        positions.push(at.position);
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
    const lastSeq = expected - 1;

    let recorded: Checkpoint[] = [];
    try {
      await this.dataSource.transaction(async (em) => {
        if (seqs.length > 0) {
          await em.query(
            `INSERT INTO journal_writes (vpg_key, seq, volume_index, byte_offset, length, segment, position)
             SELECT $1, * FROM unnest($2::bigint[], $3::smallint[], $4::bigint[], $5::int[], $6::int[], $7::bigint[])`,
            [journal.vpgKey, seqs, volumes, offsets, lengths, segments, positions],
          );
        }
        if (checkpoints.length > 0) {
          // A marker shipped twice (a replay after a gap) must not record its checkpoint twice or move
          // it: the first copy in the order is the one that counts.
          const rows = await em.query<{ id: string }[]>(
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
        const updated = await em.query<[unknown[], number]>(
          `UPDATE journal_vpgs
              SET applied_seq = $2, segment = $3, segment_end = $4,
                  last_captured_at = to_timestamp($5::double precision / 1e6), updated_at = now()
            WHERE vpg_id = $1 AND applied_seq = $6`,
          [vpgId, lastSeq, end.segment, end.position, lastCapturedMicros, journal.appliedSeq],
        );
        if (updated[1] !== 1) {
          throw new JournalConflictError(`VPG ${vpgId}: applied_seq moved under this writer (another journal writer?)`);
        }
      });
    } catch (err) {
      // The segment now holds bytes the index does not know. Forget this VPG's state so the next use
      // reopens the log and truncates it back to what the index says.
      this.vpgs.delete(vpgId);
      await journal.log.close().catch(() => undefined);
      throw err;
    }
    journal.appliedSeq = lastSeq;
    return { appliedSeq: lastSeq, checkpoints: recorded };
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
    });
    return { vpgKey: row.vpg_key, appliedSeq: Number(row.applied_seq), log };
  }
}
