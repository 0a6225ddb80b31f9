import { encodeCheckpointRecord, encodeRestartRecord, encodeWriteRecord } from '@cdp/contracts';
import { commitRuns, planApply } from './apply-plan';

const write = (seq: number): Buffer =>
  encodeWriteRecord({ seq, volumeIndex: 0, offset: 0, capturedAtMicros: 1, flags: 0, data: Buffer.from([seq]) });
const marker = (seq: number): Buffer =>
  encodeCheckpointRecord({ seq, capturedAtMicros: 1, marker: { id: 'c', kind: 'automatic', name: null, vmId: null } });

const restart = (seq: number, voidFrom = 1): Buffer =>
  encodeRestartRecord({ seq, capturedAtMicros: 1, restart: { resyncId: `r${seq}`, voidFrom, reason: 'lost', member: null } });

describe('planApply', () => {
  it('applies records that continue the order', () => {
    const plan = planApply(4, [write(5), marker(6), write(7)]);
    expect(plan.apply.map((r) => r.decoded.seq)).toEqual([5, 6, 7]);
    expect(plan.gap).toBeUndefined();
  });

  it('drops duplicates, applied or repeated', () => {
    const plan = planApply(4, [write(3), write(4), write(5), write(5), write(6)]);
    expect(plan.apply.map((r) => r.decoded.seq)).toEqual([5, 6]);
    expect(plan.duplicates).toBe(3);
  });

  it('stops at a gap and applies nothing after it', () => {
    const plan = planApply(4, [write(5), write(7), write(8)]);
    expect(plan.apply.map((r) => r.decoded.seq)).toEqual([5]);
    expect(plan.gap).toMatchObject({ expectedSeq: 6, receivedSeq: 7, reason: 'seq 6 missing' });
  });

  it('fills a gap from a replay that arrived in the same batch behind newer records', () => {
    // Records 8 and 9 were sent while the replay from 5 was asked for; the replay (5 to 9) comes after them.
    const plan = planApply(4, [write(8), write(9), write(5), write(6), write(7), write(8), write(9)]);
    expect(plan.apply.map((r) => r.decoded.seq)).toEqual([5, 6, 7, 8, 9]);
    expect(plan.apply.map((r) => r.bytes[r.bytes.length - 1])).toEqual([5, 6, 7, 8, 9]);
    expect(plan.duplicates).toBe(2);
    expect(plan.gap).toBeUndefined();
    // Still a gap when the replay stops short of the newer records: only the run from 5 is applied.
    const short = planApply(4, [write(9), write(5), write(6)]);
    expect(short.apply.map((r) => r.decoded.seq)).toEqual([5, 6]);
    expect(short.gap).toMatchObject({ expectedSeq: 7, receivedSeq: 9 });
  });

  it('treats a corrupt record as a gap at its place and never applies it', () => {
    const damaged = Buffer.from(write(6));
    damaged.writeUInt8(damaged.readUInt8(damaged.length - 1) ^ 1, damaged.length - 1);
    const plan = planApply(4, [write(5), damaged, write(7)]);
    expect(plan.apply.map((r) => r.decoded.seq)).toEqual([5]);
    expect(plan.gap?.expectedSeq).toBe(6);
    expect(plan.gap?.reason).toMatch(/corrupt/);
    // Its good copy in the same batch (a replay) fills its place; the damaged one is still reported.
    const healed = planApply(4, [write(5), damaged, write(6), write(7)]);
    expect(healed.apply.map((r) => r.decoded.seq)).toEqual([5, 6, 7]);
    expect(healed.gap).toMatchObject({ expectedSeq: 8, receivedSeq: -1 });
    expect(healed.gap?.reason).toMatch(/corrupt/);
  });

  it('takes a restart in place of the seqs missing before it, and drops what arrived of them', () => {
    // The journal has 4; the splitter's log starts at 20 (a restart), and 9 is a stale record of the void stretch.
    const plan = planApply(4, [write(5), write(9), restart(20, 6), write(21), write(22)]);
    expect(plan.apply.map((r) => r.decoded.seq)).toEqual([5, 20, 21, 22]);
    expect(plan.voided).toBe(1);
    expect(plan.gap).toBeUndefined();
    expect(commitRuns(plan.apply).map((run) => run.map((r) => r.decoded.seq))).toEqual([[5], [20, 21, 22]]);
    // A restart right where the order goes on voids nothing, and still begins its own commit.
    const adjacent = planApply(4, [write(5), restart(6), write(7)]);
    expect(adjacent.apply.map((r) => r.decoded.seq)).toEqual([5, 6, 7]);
    expect(adjacent.voided).toBe(0);
    expect(commitRuns(adjacent.apply).map((run) => run.map((r) => r.decoded.seq))).toEqual([[5], [6, 7]]);
  });

  it('stops at a gap after a restart, takes the next restart, and drops an old restart as a duplicate', () => {
    const plan = planApply(4, [restart(10), write(11), write(13), restart(30), write(31)]);
    expect(plan.apply.map((r) => r.decoded.seq)).toEqual([10, 11, 30, 31]);
    expect(plan.voided).toBe(1);
    expect(commitRuns(plan.apply).map((run) => run.map((r) => r.decoded.seq))).toEqual([[10, 11], [30, 31]]);
    const gap = planApply(4, [restart(10), write(12)]);
    expect(gap.apply.map((r) => r.decoded.seq)).toEqual([10]);
    expect(gap.gap).toMatchObject({ expectedSeq: 11, receivedSeq: 12 });
    const old = planApply(40, [restart(10), write(41)]);
    expect(old.apply.map((r) => r.decoded.seq)).toEqual([41]);
    expect(old.duplicates).toBe(1);
  });
});
