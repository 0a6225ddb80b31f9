import {
  CorruptRecordError,
  RECORD_HEADER_BYTES,
  RecordKind,
  decodeRecord,
  encodeCheckpointRecord,
  resequenceRecord,
  type CheckpointMarkerBody,
  type DecodedRecord,
  type RestartRecord,
} from '@cdp/contracts';
import { type VerifiedRecord } from '@cdp/journal-store';

/** Where one member's order stands in the merge. Persisted with each journal commit (journal_vpgs.members). */
export interface MemberPosition {
  /** Every record of the member's own order up to this seq is consumed (journaled, or a marker used up). */
  readonly applied: number;
  /** The newest coordinated checkpoint epoch whose marker (cut or void) the member's order has delivered. */
  readonly lastEpoch: number;
  /** Set while the member waits at a coordinated checkpoint for the other members to reach it. */
  readonly parked: Parked | null;
}

export interface MemberRestart {
  readonly member: string;
  readonly record: RestartRecord;
  readonly voidFrom: number;
}

export interface Parked {
  readonly epoch: number;
  readonly void: boolean;
  readonly marker: Omit<CheckpointMarkerBody, 'barrier'>;
  readonly capturedAtMicros: number;
}

export interface MergeState {
  readonly members: Readonly<Record<string, MemberPosition>>;
}

export interface MergePlan {
  /** Records in the VPG's journal order, numbered from the journal's applied seq + 1, verified. */
  readonly apply: VerifiedRecord[];
  readonly duplicates: number;
  /** Members whose order broke (a gap, or records dropped while they waited): ship again from `fromSeq`. */
  readonly replays: { readonly member: string; readonly fromSeq: number; readonly reason: string }[];
  /** Coordinated checkpoints that could not be cut consistently (some member voided or missed them). */
  readonly voided: number;
  /** Members whose order restarted (see MemberMerge.restart), each with the first seq of its own it lacked. */
  readonly restarts: readonly MemberRestart[];
  /** The state to commit with `apply`. */
  readonly state: MergeState;
}

interface Held {
  /** Copies (see ownCopy): they outlive the plan() call that received them. */
  readonly records: { bytes: Buffer; decoded: DecodedRecord }[];
  bytes: number;
  /** Records after the held ones were dropped: the member must replay once it moves again. */
  overflowed: boolean;
}

interface Arrived {
  readonly member: string;
  readonly record: { bytes: Buffer; decoded: DecodedRecord };
}

/**
 * The batch with each member's records put in that member's seq order, in the places its records
 * took (the members' interleaving is kept; it is arbitrary anyway). A replay often arrives behind
 * newer records of the same member sent while it was asked for: taken as they came, the first newer
 * record broke the member's order for the rest of the batch, the replay was thrown away, and the
 * member was asked again only after the journal writer's retry delay.
 */
function inMemberOrder(arrived: readonly Arrived[]): Arrived[] {
  const places = new Map<string, number[]>();
  arrived.forEach(({ member }, i) => {
    let mine = places.get(member);
    if (!mine) {
      mine = [];
      places.set(member, mine);
    }
    mine.push(i);
  });
  const ordered = [...arrived];
  for (const mine of places.values()) {
    // Array.prototype.sort is stable: copies of one seq keep their order (the first is the one applied).
    const sorted = mine.map((i) => arrived[i] as Arrived).sort((x, y) => x.record.decoded.seq - y.record.decoded.seq);
    mine.forEach((place, k) => (ordered[place] = sorted[k] as Arrived));
  }
  return ordered;
}

/** Records a waiting member may have ahead of the others before the rest is dropped (and replayed later). */
const DEFAULT_HELD_BYTES = 32 * 1024 * 1024;

/**
 * Merges the orders of a VPG whose VMs sit on several hosts (members) into the one order its journal
 * holds. Each member's splitter numbers its own records; the merge takes each member's records in its
 * own order and numbers them in the journal's, epoch by epoch: a member that reaches a coordinated
 * checkpoint's marker waits there (its later records are held, in memory up to a bound, beyond it
 * dropped and asked for again) until every member has reached that epoch. Then the checkpoint is one
 * journal seq, its cut: every member's writes before its own marker are below it, none after.
 * Within an epoch the members' records interleave as they arrive; no position inside an epoch is a
 * consistent cut of the VPG, only the checkpoints are.
 *
 * A checkpoint is recorded only if every member marked it as a consistent cut; if one voided it (it
 * did not hold writes from prepare to cut) or skipped it (its order went straight to a later epoch),
 * the epoch still ends there for everyone but no checkpoint is recorded.
 *
 * Not thread-safe, and optimistic: `plan` moves the in-memory state forward; if the commit of its
 * plan fails, the caller must drop this object and build it again from the committed state.
 */
export class MemberMerge {
  private readonly positions = new Map<string, MemberPosition>();
  private readonly held = new Map<string, Held>();

  constructor(
    members: readonly string[],
    private readonly memberOfVolume: ReadonlyMap<number, string>,
    persisted: unknown,
    private readonly heldBytesLimit = DEFAULT_HELD_BYTES,
  ) {
    const saved = isMergeState(persisted) ? persisted.members : {};
    for (const member of members) {
      this.positions.set(member, saved[member] ?? { applied: 0, lastEpoch: 0, parked: null });
      this.held.set(member, { records: [], bytes: 0, overflowed: false });
    }
  }

  /** Each member's consumed seq (for progress to its splitter). */
  appliedByMember(): Map<string, number> {
    return new Map([...this.positions].map(([m, p]) => [m, p.applied]));
  }

  plan(journalApplied: number, records: readonly Buffer[]): MergePlan {
    const run: Run = { next: journalApplied + 1, apply: [], duplicates: 0, replays: [], restarts: [], voided: 0, broken: new Set() };
    const arrived: Arrived[] = [];
    for (const bytes of records) {
      let decoded: DecodedRecord;
      try {
        decoded = decodeRecord(bytes);
      } catch (err) {
        if (err instanceof CorruptRecordError) {
          // Its member cannot be known; that member's next record shows the gap and asks for it again.
          continue;
        }
        throw err;
      }
      const member = this.memberOf(decoded);
      if (member !== undefined) {
        arrived.push({ member, record: { bytes, decoded } });
      }
    }
    for (const { member, record } of inMemberOrder(arrived)) {
      this.accept(run, member, record);
    }
    return {
      apply: run.apply,
      duplicates: run.duplicates,
      replays: run.replays,
      restarts: run.restarts,
      voided: run.voided,
      state: { members: Object.fromEntries(this.positions) },
    };
  }

  private memberOf(decoded: DecodedRecord): string | undefined {
    if (decoded.kind === RecordKind.Write) {
      return this.memberOfVolume.get(decoded.volumeIndex);
    }
    const member =
      decoded.kind === RecordKind.Restart
        ? decoded.restart.member
        : decoded.kind === RecordKind.Sync
          ? decoded.sync.member
          : decoded.marker.barrier?.member;
    return member !== undefined && member !== null && this.positions.has(member) ? member : undefined;
  }

  private accept(run: Run, member: string, record: { bytes: Buffer; decoded: DecodedRecord }): void {
    const position = this.positions.get(member) as MemberPosition;
    const held = this.held.get(member) as Held;
    const seq = record.decoded.seq;
    if (record.decoded.kind === RecordKind.Restart) {
      this.restart(run, member, record.decoded);
      return;
    }
    if (position.parked || held.records.length > 0) {
      const expected = position.applied + held.records.length + 1;
      if (seq < expected) {
        run.duplicates++;
      } else if (seq > expected || held.bytes + record.bytes.length > this.heldBytesLimit) {
        held.overflowed = true;
      } else {
        held.records.push(ownCopy(record));
        held.bytes += record.bytes.length;
      }
      return;
    }
    if (run.broken.has(member)) {
      return;
    }
    if (seq <= position.applied) {
      run.duplicates++;
      return;
    }
    if (seq > position.applied + 1) {
      run.broken.add(member);
      run.replays.push({ member, fromSeq: position.applied + 1, reason: `seq ${position.applied + 1} of member ${member} missing` });
      return;
    }
    const decoded = record.decoded;
    if (decoded.kind === RecordKind.Write) {
      const journalSeq = run.next++;
      run.apply.push({ bytes: resequenceRecord(record.bytes, journalSeq), decoded: { ...decoded, seq: journalSeq } });
      this.positions.set(member, { ...position, applied: seq });
      return;
    }
    if (decoded.kind === RecordKind.Sync) {
      // Only coordinated checkpoints are consistent cuts of such a VPG, so a sync changes nothing in its
      // journal's order: the record is consumed in its member's.
      this.positions.set(member, { ...position, applied: seq });
      return;
    }
    const barrier = decoded.marker.barrier;
    if (!barrier || barrier.epoch <= position.lastEpoch) {
      // A marker outside the coordination (or a second one for an epoch already delivered: a splitter
      // that restarted voids what it cannot know it concluded) marks no cut of this VPG.
      this.positions.set(member, { ...position, applied: seq });
      return;
    }
    const marker = { id: decoded.marker.id, kind: decoded.marker.kind, name: decoded.marker.name, vmId: decoded.marker.vmId };
    this.positions.set(member, {
      applied: seq,
      lastEpoch: barrier.epoch,
      parked: { epoch: barrier.epoch, void: barrier.void, marker, capturedAtMicros: decoded.capturedAtMicros },
    });
    this.completeEpochs(run);
  }

  /**
   * The member's splitter could not ship what the merge lacked of its order and restarted it at this
   * record's seq (see RestartBody): everything of the member's order before it that is not consumed
   * is void, the records held for it included, and its order goes on from there. Nothing of it enters
   * the journal's order: the member's full resync follows as ordinary writes, and a coordinated
   * checkpoint cannot be cut consistently until it is complete (the member voids every epoch meanwhile).
   * A parked member stays parked: its marker for that epoch was delivered before the restart.
   */
  private restart(run: Run, member: string, decoded: RestartRecord): void {
    const position = this.positions.get(member) as MemberPosition;
    if (decoded.seq <= position.applied) {
      run.duplicates++;
      return;
    }
    const held = this.held.get(member) as Held;
    held.records.splice(0);
    held.bytes = 0;
    held.overflowed = false;
    if (run.broken.delete(member)) {
      // The replay asked for earlier in this batch is answered by this restart.
      const asked = run.replays.findIndex((r) => r.member === member);
      if (asked >= 0) {
        run.replays.splice(asked, 1);
      }
    }
    run.restarts.push({ member, record: decoded, voidFrom: position.applied + 1 });
    this.positions.set(member, { ...position, applied: decoded.seq });
  }

  /** While every member waits: end the oldest epoch they wait at, record its checkpoint if consistent, move on. */
  private completeEpochs(run: Run): void {
    for (;;) {
      const parked = [...this.positions.values()].map((p) => p.parked);
      if (parked.some((p) => p === null)) {
        return;
      }
      const waits = parked as Parked[];
      const epoch = Math.min(...waits.map((p) => p.epoch));
      const at = waits.filter((p) => p.epoch === epoch);
      const first = at[0] as Parked;
      if (at.length === waits.length && at.every((p) => !p.void && p.marker.id === first.marker.id)) {
        const journalSeq = run.next++;
        const bytes = encodeCheckpointRecord({ seq: journalSeq, capturedAtMicros: Math.max(...at.map((p) => p.capturedAtMicros)), marker: first.marker });
        run.apply.push({ bytes, decoded: decodeRecord(bytes) });
      } else {
        run.voided++;
      }
      const released: string[] = [];
      for (const [member, position] of this.positions) {
        if (position.parked?.epoch === epoch) {
          this.positions.set(member, { ...position, parked: null });
          released.push(member);
        }
      }
      for (const member of released) {
        this.release(run, member);
      }
    }
  }

  /** A member moves again: its held records go through the merge in order; it replays what was dropped. */
  private release(run: Run, member: string): void {
    const held = this.held.get(member) as Held;
    const records = held.records.splice(0);
    const overflowed = held.overflowed;
    held.bytes = 0;
    held.overflowed = false;
    for (const record of records) {
      this.accept(run, member, record);
    }
    if (overflowed) {
      const position = this.positions.get(member) as MemberPosition;
      if (position.parked || held.records.length > 0) {
        held.overflowed = true;
      } else {
        run.broken.add(member);
        run.replays.push({ member, fromSeq: position.applied + 1, reason: `records of member ${member} dropped while it waited at a coordinated checkpoint` });
      }
    }
  }
}

/**
 * The record with bytes of its own, and a decoded form whose payload is a view into them. What plan()
 * is given are views into bus message values; on the in-process bus such a value may be the splitter's
 * reusable payload memory, lent only until the batch's handler returns, while a held record waits for
 * later batches. A marker's decoded form holds no view (its body is parsed into strings).
 */
function ownCopy(record: { bytes: Buffer; decoded: DecodedRecord }): { bytes: Buffer; decoded: DecodedRecord } {
  const bytes = Buffer.from(record.bytes);
  const decoded: DecodedRecord =
    record.decoded.kind === RecordKind.Write ? { ...record.decoded, data: bytes.subarray(RECORD_HEADER_BYTES) } : record.decoded;
  return { bytes, decoded };
}

interface Run {
  next: number;
  readonly apply: VerifiedRecord[];
  duplicates: number;
  readonly replays: { member: string; fromSeq: number; reason: string }[];
  readonly restarts: MemberRestart[];
  voided: number;
  /** Members whose order broke in this batch: the rest of their records wait for the replay. */
  readonly broken: Set<string>;
}

/** Each member's consumed seq in a merge state as committed (journal_vpgs.members); none if there is none. */
export function committedPositions(persisted: unknown): Map<string, number> {
  if (!isMergeState(persisted)) {
    return new Map();
  }
  const positions = Object.entries(persisted.members as Record<string, unknown>).flatMap(([member, position]) => {
    const applied = typeof position === 'object' && position !== null ? (position as { applied?: unknown }).applied : undefined;
    return typeof applied === 'number' && Number.isSafeInteger(applied) ? [[member, applied] as const] : [];
  });
  return new Map(positions);
}

function isMergeState(value: unknown): value is MergeState {
  return typeof value === 'object' && value !== null && typeof (value as { members?: unknown }).members === 'object' && (value as { members?: unknown }).members !== null;
}
