import { CorruptRecordError, RecordKind, decodeRecord } from '@cdp/contracts';
import { type VerifiedRecord } from '@cdp/journal-store';

export interface ApplyPlan {
  /**
   * Records that continue the order exactly, verified, in seq order, ready to commit. A restart may
   * stand in for seqs that are missing before it (see RestartBody): the journal commits each restart
   * as the first record of a commit of its own (see commitRuns).
   */
  readonly apply: VerifiedRecord[];
  readonly duplicates: number;
  /** Records dropped because a restart after them declared them void. */
  readonly voided: number;
  /** Set when the order broke: a record after the applied ones is missing, or a record was corrupt. */
  readonly gap?: { readonly expectedSeq: number; readonly receivedSeq: number; readonly reason: string };
}

/**
 * Decides what to do with a VPG's records as they arrived in one batch, given how far its journal is.
 * Pure. Records at or below the applied seq are duplicates (a redelivery or a replay) and are dropped.
 * What is applied is the run of seqs that continues the order exactly (applied + 1, + 2, …), taken
 * from anywhere in the batch: a replay can arrive in the same batch as, and behind, newer records that
 * were sent while it was asked for, and it still fills the gap at once (stopping at the first record
 * out of order threw the replay away, and the journal asked again only after REPLAY_RETRY_MS). Nothing
 * past a missing seq is applied, because the journal must only ever hold a prefix of the write order,
 * unless a restart follows: the splitter sends one when its log no longer holds what the journal asked
 * for, and it takes the place of every seq before it (a full resync of the volumes follows it, and no
 * checkpoint is cut until that is done, so nothing recoverable depends on the void stretch).
 * A corrupt record is never stored; its seq cannot be trusted, so it is reported as a gap at the end
 * of what was applied, and the replay asked for from there brings it again.
 */
export function planApply(appliedSeq: number, records: readonly Buffer[]): ApplyPlan {
  let duplicates = 0;
  let corrupt: CorruptRecordError | undefined;
  // A seq is one record whatever path it came by (the log holds it once), so the first copy is kept.
  const ahead = new Map<number, VerifiedRecord>();
  const restarts: number[] = [];
  for (const bytes of records) {
    let decoded;
    try {
      decoded = decodeRecord(bytes);
    } catch (err) {
      if (err instanceof CorruptRecordError) {
        corrupt ??= err;
        continue;
      }
      throw err;
    }
    if (decoded.seq <= appliedSeq || ahead.has(decoded.seq)) {
      duplicates++;
      continue;
    }
    ahead.set(decoded.seq, { bytes, decoded });
    if (decoded.kind === RecordKind.Restart) {
      restarts.push(decoded.seq);
    }
  }
  restarts.sort((a, b) => a - b);
  const apply: VerifiedRecord[] = [];
  let voided = 0;
  let expected = appliedSeq + 1;
  for (;;) {
    let next = ahead.get(expected);
    if (next === undefined) {
      const restart = restarts.find((seq) => seq > expected);
      if (restart === undefined) {
        break;
      }
      for (const seq of ahead.keys()) {
        if (seq < restart) {
          ahead.delete(seq);
          voided++;
        }
      }
      expected = restart;
      next = ahead.get(restart) as VerifiedRecord;
    }
    apply.push(next);
    ahead.delete(expected);
    expected++;
  }
  if (ahead.size > 0) {
    let receivedSeq = Number.POSITIVE_INFINITY;
    for (const seq of ahead.keys()) {
      receivedSeq = Math.min(receivedSeq, seq);
    }
    const reason = corrupt ? `corrupt record: ${corrupt.message}` : `seq ${expected} missing`;
    return { apply, duplicates, voided, gap: { expectedSeq: expected, receivedSeq, reason } };
  }
  if (corrupt) {
    return { apply, duplicates, voided, gap: { expectedSeq: expected, receivedSeq: -1, reason: `corrupt record: ${corrupt.message}` } };
  }
  return { apply, duplicates, voided };
}

/**
 * The records of a plan as the commits they go in: a restart begins a commit of its own, so each
 * commit's seqs are dense (JournalStore.commit) and the restart is the first record of its commit.
 */
export function commitRuns(apply: readonly VerifiedRecord[]): VerifiedRecord[][] {
  const runs: VerifiedRecord[][] = [];
  let run: VerifiedRecord[] = [];
  for (const record of apply) {
    if (record.decoded.kind === RecordKind.Restart && run.length > 0) {
      runs.push(run);
      run = [];
    }
    run.push(record);
  }
  if (run.length > 0) {
    runs.push(run);
  }
  return runs;
}
