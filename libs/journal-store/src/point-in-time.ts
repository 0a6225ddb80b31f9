import { type EntityManager } from 'typeorm';
import { decodeRecord, peekRecordLength } from '@cdp/contracts';
import { DomainError } from '@cdp/domain';
import { type SegmentReader } from '@cdp/segment-log';

export interface ResolvedPointInTime {
  /** The cut: every record with seq <= it is inside. */
  readonly seq: number;
  /** Newest capture time of any record at or before the cut (the write at `seq` when clocks run forward). */
  readonly capturedAt: string;
}

export interface JournalBounds {
  readonly vpgId: string;
  readonly vpgKey: number;
  /** The replica holds writes through this seq (including an interrupted promotion's target). */
  readonly replicaSeq: number;
  readonly appliedSeq: number;
}

interface BatchRow {
  first_seq: string;
  last_seq: string;
  segment: number;
  position: string;
  bytes: number;
  captured_upto: string;
}

/** One record's place in a batch: its seq and its capture time. */
interface RecordTime {
  readonly seq: number;
  readonly capturedAtMicros: number;
}

/**
 * Resolves a time to a cut: the longest prefix of the VPG's write order whose records were all
 * captured at or before `at`. A VPG's order is one stream, so every prefix is a crash-consistent
 * state; when the source's clock runs forward this is exactly "the last write at or before T", and
 * if it ever stepped back the cut still never contains a write captured after T.
 *
 * journal_batches.captured_upto (the newest capture time up to each batch) never decreases with seq,
 * so the index finds the one batch where the prefix ends; that batch's records, read from its segment
 * and verified, give the exact seq. The caller holds the replica lock, so the batch's segment stays.
 */
export async function resolvePointInTime(manager: EntityManager, segments: SegmentReader, journal: JournalBounds, at: Date): Promise<ResolvedPointInTime> {
  const atMicros = at.getTime() * 1000;
  if (!Number.isFinite(atMicros)) {
    throw new DomainError('invalid-argument', 'the point in time is not a valid date');
  }
  const { vpgId, vpgKey } = journal;
  const straddling = await manager.query<BatchRow[]>(
    `SELECT first_seq, last_seq, segment, position, bytes, captured_upto FROM journal_batches
      WHERE vpg_key = $1 AND captured_upto > $2 ORDER BY captured_upto, first_seq LIMIT 1`,
    [vpgKey, atMicros],
  );
  const batch = straddling[0];
  let seq: number;
  let capturedMicros: number;
  if (!batch) {
    const newest = await manager.query<BatchRow[]>(
      `SELECT first_seq, last_seq, segment, position, bytes, captured_upto FROM journal_batches WHERE vpg_key = $1 ORDER BY first_seq DESC LIMIT 1`,
      [vpgKey],
    );
    const last = newest[0];
    if (!last || Number(last.last_seq) <= journal.replicaSeq) {
      throw new DomainError('failed-precondition', `VPG ${vpgId} has no journaled history to recover a point in time from`);
    }
    if (atMicros > Number(last.captured_upto)) {
      throw new DomainError(
        'out-of-range',
        `${at.toISOString()} is after the latest journaled write of VPG ${vpgId} (seq ${last.last_seq}, captured at ${isoOf(Number(last.captured_upto))})`,
        { latestSeq: Number(last.last_seq), latestCapturedAt: isoOf(Number(last.captured_upto)) },
      );
    }
    seq = Number(last.last_seq);
    capturedMicros = Number(last.captured_upto);
  } else {
    const times = await batchTimes(segments, vpgId, batch);
    const firstAfter = times.findIndex((r) => r.capturedAtMicros > atMicros);
    if (firstAfter < 0) {
      throw new DomainError('failed-precondition', `journal index of VPG ${vpgId} says batch ${batch.first_seq} holds a record captured after ${at.toISOString()}, but none is`);
    }
    seq = (times[firstAfter] as RecordTime).seq - 1;
    capturedMicros = Math.max(await capturedUptoBefore(manager, vpgKey, Number(batch.first_seq)), ...times.slice(0, firstAfter).map((r) => r.capturedAtMicros));
  }
  if (seq <= journal.replicaSeq) {
    const oldest = await oldestPoint(manager, segments, journal);
    throw new DomainError(
      'out-of-range',
      `${at.toISOString()} is before the journal's history of VPG ${vpgId}: the oldest point in time it can recover is ${oldest ?? 'not known yet'}`,
      { oldestRecoverableAt: oldest },
    );
  }
  await refuseInsideSync(manager, journal, at, seq);
  return { seq, capturedAt: isoOf(capturedMicros) };
}

/**
 * A cut inside a sync stretch (journal_syncs: from a sync or restart record to the first checkpoint
 * after it) holds some regions as they were read back and others as they were before: not a state the
 * volumes were ever in, so it is refused, naming where consistent points begin again.
 */
async function refuseInsideSync(manager: EntityManager, journal: JournalBounds, at: Date, seq: number): Promise<void> {
  const rows = await manager.query<{ from_seq: string; until_seq: string | null; reason: string; until_at: Date | null }[]>(
    `SELECT s.from_seq, s.until_seq, s.reason,
            (SELECT min(c.captured_at) FROM checkpoints c WHERE c.vpg_id = $3 AND c.cut = s.until_seq) AS until_at
       FROM journal_syncs s
      WHERE s.vpg_key = $1 AND s.from_seq <= $2 AND (s.until_seq IS NULL OR s.until_seq > $2)
      ORDER BY s.from_seq LIMIT 1`,
    [journal.vpgKey, seq, journal.vpgId],
  );
  const sync = rows[0];
  if (!sync) {
    return;
  }
  const after = sync.until_seq === null ? null : { seq: Number(sync.until_seq), capturedAt: sync.until_at?.toISOString() ?? null };
  throw new DomainError(
    'failed-precondition',
    `${at.toISOString()} falls inside a sync of VPG ${journal.vpgId} (${sync.reason}), from seq ${sync.from_seq}: the journal holds no state the volumes were in there. ` +
      (after
        ? `Recover a point before it, or from the first checkpoint after it on (seq ${after.seq}${after.capturedAt ? `, captured at ${after.capturedAt}` : ''}).`
        : 'It is still running: recover a point before it, or wait for the first checkpoint after it.'),
    { syncFromSeq: Number(sync.from_seq), consistentAgainAt: after },
  );
}

/**
 * A time to a cut for a VPG whose VMs sit on several hosts: its journal order interleaves the members'
 * orders, so only its coordinated checkpoints are consistent cuts. `at` resolves to the newest
 * checkpoint captured at or before it that the journal still holds.
 */
export async function resolveToCheckpoint(manager: EntityManager, journal: JournalBounds, at: Date): Promise<ResolvedPointInTime> {
  if (!Number.isFinite(at.getTime())) {
    throw new DomainError('invalid-argument', 'the point in time is not a valid date');
  }
  const rows = await manager.query<{ cut: string; captured_at: Date }[]>(
    `SELECT cut, captured_at FROM checkpoints WHERE vpg_id = $1 AND captured_at <= $2 AND cut > $3 ORDER BY captured_at DESC, id DESC LIMIT 1`,
    [journal.vpgId, at, journal.replicaSeq],
  );
  const row = rows[0];
  if (!row) {
    throw new DomainError(
      'out-of-range',
      `${at.toISOString()} is before the oldest checkpoint of VPG ${journal.vpgId} in the journal; its VMs sit on several hosts, so it recovers to coordinated checkpoints only`,
    );
  }
  return { seq: Number(row.cut), capturedAt: row.captured_at.toISOString() };
}

/** Seq and capture time of each record of a batch, read and verified from its segment. */
async function batchTimes(segments: SegmentReader, vpgId: string, batch: BatchRow): Promise<RecordTime[]> {
  const bytes = await segments.readRange({ segment: batch.segment, position: Number(batch.position), length: batch.bytes });
  const out: RecordTime[] = [];
  let expected = Number(batch.first_seq);
  for (let pos = 0; pos < bytes.length; ) {
    const length = peekRecordLength(bytes, pos);
    if (length === undefined || pos + length > bytes.length) {
      throw new DomainError('failed-precondition', `journal batch ${batch.first_seq} of VPG ${vpgId} is cut short in its segment`);
    }
    const decoded = decodeRecord(bytes.subarray(pos, pos + length));
    if (decoded.seq !== expected) {
      throw new DomainError('failed-precondition', `journal batch ${batch.first_seq} of VPG ${vpgId} holds seq ${decoded.seq} where ${expected} belongs`);
    }
    out.push({ seq: decoded.seq, capturedAtMicros: decoded.capturedAtMicros });
    expected++;
    pos += length;
  }
  if (expected - 1 !== Number(batch.last_seq)) {
    throw new DomainError('failed-precondition', `journal batch ${batch.first_seq} of VPG ${vpgId} ends at seq ${expected - 1}, not ${batch.last_seq}`);
  }
  return out;
}

async function capturedUptoBefore(manager: EntityManager, vpgKey: number, firstSeq: number): Promise<number> {
  const rows = await manager.query<{ captured_upto: string }[]>(
    `SELECT captured_upto FROM journal_batches WHERE vpg_key = $1 AND first_seq < $2 ORDER BY first_seq DESC LIMIT 1`,
    [vpgKey, firstSeq],
  );
  return Number(rows[0]?.captured_upto ?? 0);
}

/** The time of the oldest cut a view can open (replica_seq + 1), for the error that says so. */
async function oldestPoint(manager: EntityManager, segments: SegmentReader, journal: JournalBounds): Promise<string | undefined> {
  const target = journal.replicaSeq + 1;
  const rows = await manager.query<BatchRow[]>(
    `SELECT first_seq, last_seq, segment, position, bytes, captured_upto FROM journal_batches
      WHERE vpg_key = $1 AND first_seq <= $2 ORDER BY first_seq DESC LIMIT 1`,
    [journal.vpgKey, target],
  );
  const batch = rows[0];
  if (!batch || Number(batch.last_seq) < target) {
    return undefined;
  }
  const times = await batchTimes(segments, journal.vpgId, batch);
  const upTo = times.filter((r) => r.seq <= target).map((r) => r.capturedAtMicros);
  return isoOf(Math.max(await capturedUptoBefore(manager, journal.vpgKey, Number(batch.first_seq)), ...upTo));
}

function isoOf(micros: number): string {
  return new Date(Math.floor(micros / 1000)).toISOString();
}
