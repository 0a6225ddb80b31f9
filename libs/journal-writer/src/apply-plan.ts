import { CorruptRecordError, decodeRecord } from '@cdp/contracts';
import { type VerifiedRecord } from '@cdp/journal-store';

export interface ApplyPlan {
  /** Records that continue the order exactly, verified, ready to commit. */
  readonly apply: VerifiedRecord[];
  readonly duplicates: number;
  /** Set when the order broke: a record after appliedSeq + 1 arrived first, or a record was corrupt. */
  readonly gap?: { readonly expectedSeq: number; readonly receivedSeq: number; readonly reason: string };
}

/**
 * Decides what to do with a VPG's records as they arrived, given how far its journal is. Pure.
 * Records at or below the applied seq are duplicates (a redelivery or a replay) and are dropped. The
 * first record that does not continue the order exactly stops the plan: nothing after a gap is
 * applied, because the journal must only ever hold a prefix of the write order. A corrupt record is a
 * gap at its position: it is never stored.
 */
export function planApply(appliedSeq: number, records: readonly Buffer[]): ApplyPlan {
  const apply: VerifiedRecord[] = [];
  let duplicates = 0;
  let expected = appliedSeq + 1;
  for (const bytes of records) {
    let decoded;
    try {
      decoded = decodeRecord(bytes);
    } catch (err) {
      if (err instanceof CorruptRecordError) {
        return { apply, duplicates, gap: { expectedSeq: expected, receivedSeq: -1, reason: `corrupt record: ${err.message}` } };
      }
      throw err;
    }
    if (decoded.seq < expected) {
      duplicates++;
      continue;
    }
    if (decoded.seq > expected) {
      return { apply, duplicates, gap: { expectedSeq: expected, receivedSeq: decoded.seq, reason: `seq ${expected} missing` } };
    }
    apply.push({ bytes, decoded });
    expected++;
  }
  return { apply, duplicates };
}
