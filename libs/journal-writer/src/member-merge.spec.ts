import {
  RECORD_HEADER_BYTES,
  RecordKind,
  encodeCheckpointRecord,
  encodeRestartRecord,
  encodeSyncRecord,
  encodeWriteRecord,
  decodeRecord,
  type DecodedRecord,
} from '@cdp/contracts';
import { MemberMerge, committedPositions, type MergePlan } from './member-merge';

const MEMBERS = ['a', 'b'];
/** Volume 0 is on member a, volume 1 on member b. */
const VOLUME_OF: Record<string, number> = { a: 0, b: 1 };
const MEMBER_OF = new Map([
  [0, 'a'],
  [1, 'b'],
]);

function write(member: string, seq: number, offset = seq * 512): Buffer {
  return encodeWriteRecord({ seq, volumeIndex: VOLUME_OF[member] as number, offset, capturedAtMicros: seq, flags: 0, data: Buffer.alloc(512, seq) });
}

function barrier(member: string, seq: number, epoch: number, options: { void?: boolean; id?: string } = {}): Buffer {
  const id = options.id ?? `00000000-0000-4000-8000-${String(epoch).padStart(12, '0')}`;
  return encodeCheckpointRecord({
    seq,
    capturedAtMicros: 1000 + seq,
    marker: { id, kind: 'automatic', name: null, vmId: null, barrier: { epoch, member, void: options.void ?? false } },
  });
}

/** What the journal would hold: (kind, member-or-checkpoint, original offset) in journal order, numbered from 1. */
function journalOrder(plan: MergePlan, from = 1): string[] {
  return plan.apply.map(({ bytes, decoded }, i) => {
    const again: DecodedRecord = decodeRecord(bytes);
    expect(again.seq).toBe(from + i);
    expect(decoded.seq).toBe(from + i);
    if (again.kind === RecordKind.Write) {
      return `${again.volumeIndex === 0 ? 'a' : 'b'}@${again.offset / 512}`;
    }
    return again.kind === RecordKind.Checkpoint ? `cp:${again.marker.id.slice(-1)}` : 'restart';
  });
}

function restart(member: string, seq: number): Buffer {
  return encodeRestartRecord({ seq, capturedAtMicros: 2000 + seq, restart: { resyncId: `r-${member}-${seq}`, voidFrom: 1, reason: 'log lost', member } });
}

describe('MemberMerge: the orders of several hosts into one journal order', () => {
  it('cuts a checkpoint only once every member reached it, holding the early member back until then', () => {
    const merge = new MemberMerge(MEMBERS, MEMBER_OF, null);
    const plan = merge.plan(0, [write('a', 1), barrier('a', 2, 1), write('a', 3), write('b', 1), write('b', 2), barrier('b', 3, 1), write('b', 4)]);
    // a's write 3 came after its marker: it lands after the checkpoint although it arrived before b's writes.
    expect(journalOrder(plan)).toEqual(['a@1', 'b@1', 'b@2', 'cp:1', 'a@3', 'b@4']);
    expect(plan.state.members).toEqual({ a: { applied: 3, lastEpoch: 1, parked: null }, b: { applied: 4, lastEpoch: 1, parked: null } });
    expect(plan.replays).toEqual([]);
  });

  it('records no checkpoint for an epoch one member voided or skipped, and carries on', () => {
    const merge = new MemberMerge(MEMBERS, MEMBER_OF, null);
    const voided = merge.plan(0, [barrier('a', 1, 1), write('b', 1), barrier('b', 2, 1, { void: true }), write('a', 2)]);
    expect(journalOrder(voided)).toEqual(['b@1', 'a@2']);
    expect(voided.voided).toBe(1);
    // b never saw epoch 2 (its next marker is epoch 3): epoch 2 ends without a checkpoint, 3 is cut.
    const skipped = merge.plan(2, [barrier('a', 3, 2), barrier('b', 3, 3), write('a', 4), barrier('a', 5, 3), write('b', 4)]);
    expect(journalOrder(skipped, 3)).toEqual(['a@4', 'cp:3', 'b@4']);
    expect(skipped.voided).toBe(1);
  });

  it('drops duplicates, asks a member with a gap to replay, and picks up where it stopped', () => {
    const merge = new MemberMerge(MEMBERS, MEMBER_OF, null);
    const first = merge.plan(0, [write('a', 1), write('a', 1), write('b', 2), write('b', 3)]);
    expect(journalOrder(first)).toEqual(['a@1']);
    expect(first.duplicates).toBe(1);
    expect(first.replays).toEqual([{ member: 'b', fromSeq: 1, reason: expect.stringMatching(/seq 1 of member b missing/) as string }]);
    const replayed = merge.plan(1, [write('b', 1), write('b', 2), write('b', 3), write('a', 1)]);
    expect(journalOrder(replayed, 2)).toEqual(['b@1', 'b@2', 'b@3']);
    expect(replayed.duplicates).toBe(1);
  });

  it('takes a replay that arrived in one batch behind newer records of the same member, without asking again', () => {
    const merge = new MemberMerge(MEMBERS, MEMBER_OF, null);
    // b's 3 and 4 were sent while its replay from 1 was asked for; the replay (1 to 4) comes behind them.
    const plan = merge.plan(0, [write('a', 1), write('b', 3), write('b', 4), write('b', 1), write('b', 2), write('b', 3), write('b', 4), write('a', 2)]);
    expect(journalOrder(plan)).toEqual(['a@1', 'b@1', 'b@2', 'b@3', 'b@4', 'a@2']);
    expect(plan.duplicates).toBe(2);
    expect(plan.replays).toEqual([]);
    expect(plan.state.members).toMatchObject({ a: { applied: 2 }, b: { applied: 4 } });
  });

  it('holds a waiting member within a bound, then drops and asks for the rest again once it moves', () => {
    const merge = new MemberMerge(MEMBERS, MEMBER_OF, null, 3 * 600);
    const plan = merge.plan(0, [barrier('a', 1, 1), write('a', 2), write('a', 3), write('a', 4), write('a', 5), write('a', 6)]);
    expect(journalOrder(plan)).toEqual([]);
    const released = merge.plan(0, [barrier('b', 1, 1)]);
    // Three writes fitted in the bound; the rest is asked for again.
    expect(journalOrder(released)).toEqual(['cp:1', 'a@2', 'a@3', 'a@4']);
    expect(released.replays).toEqual([{ member: 'a', fromSeq: 5, reason: expect.stringMatching(/dropped while it waited/) as string }]);
  });

  it('keeps its own copy of a record it holds, since the memory of the batch that brought it may be reused', () => {
    const merge = new MemberMerge(MEMBERS, MEMBER_OF, null);
    // The records of a batch are views into one bus message value, as the journal writer gets them.
    const parts = [barrier('a', 1, 1), write('a', 2)];
    const value = Buffer.concat(parts);
    const views = [value.subarray(0, parts[0]!.length), value.subarray(parts[0]!.length)];
    expect(journalOrder(merge.plan(0, views))).toEqual([]);
    // Once the handler has returned, the owner of that memory (the splitter's payload ring) reuses it.
    value.fill(0xdb);
    const released = merge.plan(0, [barrier('b', 1, 1)]);
    expect(journalOrder(released)).toEqual(['cp:1', 'a@2']);
    const applied = released.apply[1]!;
    expect(applied.bytes.subarray(RECORD_HEADER_BYTES).equals(Buffer.alloc(512, 2))).toBe(true);
    expect(applied.decoded.kind === RecordKind.Write && applied.decoded.data.equals(Buffer.alloc(512, 2))).toBe(true);
  });

  it('starts again from the committed state', () => {
    const merge = new MemberMerge(MEMBERS, MEMBER_OF, null);
    const plan = merge.plan(0, [write('a', 1), barrier('a', 2, 1), write('b', 1)]);
    expect(journalOrder(plan)).toEqual(['a@1', 'b@1']);
    const again = new MemberMerge(MEMBERS, MEMBER_OF, JSON.parse(JSON.stringify(plan.state)));
    // a still waits at epoch 1 after the restart: its write 3 is held until b reaches the epoch.
    const next = again.plan(2, [write('a', 3), barrier('b', 2, 1), write('b', 3)]);
    expect(journalOrder(next, 3)).toEqual(['cp:1', 'a@3', 'b@3']);
    expect(next.replays).toEqual([]);
  });

  it("takes a member's restart in place of what it lacks of that member's order, answering the replay asked for in the same batch", () => {
    const merge = new MemberMerge(MEMBERS, MEMBER_OF, null);
    // b's 1 to 9 are gone for good: its splitter restarts at 10. The merge asks for 1 (b's 4 came first), then takes the restart.
    const plan = merge.plan(0, [write('a', 1), write('b', 4), restart('b', 10), write('b', 11), write('a', 2)]);
    expect(journalOrder(plan)).toEqual(['a@1', 'b@11', 'a@2']);
    expect(plan.replays).toEqual([]);
    expect(plan.restarts.map((r) => ({ member: r.member, seq: r.record.seq, voidFrom: r.voidFrom }))).toEqual([{ member: 'b', seq: 10, voidFrom: 1 }]);
    expect(plan.state.members).toMatchObject({ a: { applied: 2 }, b: { applied: 11 } });
    // The same restart again (a redelivery) is a duplicate.
    const again = merge.plan(3, [restart('b', 10), write('b', 12)]);
    expect(journalOrder(again, 4)).toEqual(['b@12']);
    expect(again.duplicates).toBe(1);
    expect(again.restarts).toEqual([]);
  });

  it('drops what a parked member held when its order restarts, and it stays parked at the epoch it delivered', () => {
    const merge = new MemberMerge(MEMBERS, MEMBER_OF, null);
    const parked = merge.plan(0, [barrier('a', 1, 1), write('a', 2), write('a', 3)]);
    expect(journalOrder(parked)).toEqual([]);
    // a's 2 and 3 were held; its order restarts at 7 (what it held is void), then its resync's first write.
    const restarted = merge.plan(0, [restart('a', 7), write('a', 8)]);
    expect(journalOrder(restarted)).toEqual([]);
    expect(restarted.state.members).toMatchObject({ a: { applied: 7, parked: { epoch: 1 } } });
    // b reaches epoch 1: the checkpoint is cut, then a's order goes on from its restart.
    const released = merge.plan(0, [barrier('b', 1, 1)]);
    expect(journalOrder(released)).toEqual(['cp:1', 'a@8']);
    expect(released.replays).toEqual([]);
  });

  it("consumes a member's sync record in its order without putting anything in the journal's", () => {
    const merge = new MemberMerge(MEMBERS, MEMBER_OF, null);
    const sync = encodeSyncRecord({ seq: 2, capturedAtMicros: 2, sync: { reason: 'resync r-1', member: 'a' } });
    const plan = merge.plan(0, [write('a', 1), sync, write('a', 3), write('b', 1)]);
    expect(journalOrder(plan)).toEqual(['a@1', 'a@3', 'b@1']);
    expect(plan.replays).toEqual([]);
    expect(plan.state.members).toMatchObject({ a: { applied: 3 }, b: { applied: 1 } });
  });

  it('reads each member\'s committed position from the persisted state, skipping what is not one', () => {
    const merge = new MemberMerge(MEMBERS, MEMBER_OF, null);
    const plan = merge.plan(0, [write('a', 1), write('a', 2), write('b', 1)]);
    expect([...committedPositions(JSON.parse(JSON.stringify(plan.state)))]).toEqual([
      ['a', 2],
      ['b', 1],
    ]);
    expect([...committedPositions({ members: { a: { applied: 'x' }, b: null, c: { applied: 7 } } })]).toEqual([['c', 7]]);
    expect(committedPositions(null).size).toBe(0);
  });
});
