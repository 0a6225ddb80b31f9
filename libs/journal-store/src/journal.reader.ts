import { type DataSource } from 'typeorm';
import { RECORD_HEADER_BYTES, RecordKind, decodeRecord } from '@cdp/contracts';
import { DomainError, type Checkpoint, type CheckpointKind } from '@cdp/domain';
import { SegmentReader } from '@cdp/segment-log';
import { ExtentMap } from './extent-map';
import { JournalStore } from './journal.store';

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
 * only reads (Postgres and segment files) and so can live in another process than the writer.
 */
export class JournalReader {
  private readonly readers = new Map<string, SegmentReader>();

  constructor(
    private readonly dataSource: DataSource,
    private readonly rootDir: string,
  ) {}

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
  async checkpoints(vpgId: string, query: CheckpointQuery): Promise<Checkpoint[]> {
    const rows = await this.dataSource.query<CheckpointRow[]>(
      `SELECT id, vpg_id, cut, kind, name, vm_id, captured_at FROM checkpoints
        WHERE vpg_id = $1 AND captured_at >= $2 AND captured_at <= $3
        ORDER BY cut LIMIT $4`,
      [vpgId, query.from ?? new Date(0), query.to ?? new Date('9999-12-31T00:00:00Z'), query.limit],
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
   * journal write at or before the cut that covers them; bytes no journaled write covers come from the
   * replica, which holds the volume as of replica_seq (all zeros until promotion has moved writes in).
   * Every journal record is verified before a byte of it is used.
   */
  async *image(vpgId: string, volumeIndex: number, sizeBytes: number, cut: number): AsyncGenerator<Buffer> {
    const keyRows = await this.dataSource.query<{
      vpg_key: number;
      replica_seq: string;
    }[]>(`SELECT vpg_key, replica_seq FROM journal_vpgs WHERE vpg_id = $1`, [vpgId]);
    const key = keyRows[0];
    if (!key) {
      throw new DomainError('not-found', `VPG ${vpgId} has no journal`);
    }
    if (cut < Number(key.replica_seq)) {
      throw new DomainError('failed-precondition', `cut ${cut} is older than the journal's history (replica is at seq ${key.replica_seq})`);
    }
    const rows = await this.dataSource.query<WriteRow[]>(
      `SELECT seq, byte_offset, length, segment, position FROM journal_writes
        WHERE vpg_key = $1 AND volume_index = $2 AND seq > $3 AND seq <= $4 ORDER BY seq`,
      [key.vpg_key, volumeIndex, key.replica_seq, cut],
    );
    const map = new ExtentMap<WriteRow>();
    for (const row of rows) {
      map.add(Number(row.byte_offset), row.length, row);
    }
    const reader = this.reader(vpgId);
    let cached: { row: WriteRow; data: Buffer } | undefined;
    const payload = async (row: WriteRow): Promise<Buffer> => {
      if (cached?.row !== row) {
        const record = await reader.read({ segment: row.segment, position: Number(row.position), length: RECORD_HEADER_BYTES + row.length });
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
      yield chunk;
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.readers.values()].map((r) => r.close()));
    this.readers.clear();
  }

  private reader(vpgId: string): SegmentReader {
    let reader = this.readers.get(vpgId);
    if (!reader) {
      reader = new SegmentReader(JournalStore.segmentDir(this.rootDir, vpgId));
      this.readers.set(vpgId, reader);
    }
    return reader;
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
