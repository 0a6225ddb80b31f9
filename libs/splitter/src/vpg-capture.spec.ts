import { closeSync, cpSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { InProcessBus, type BusConsumer, type BusProducer } from '@cdp/bus';
import { BATCH_HEADER_BYTES, RECORD_HEADER_BYTES, RecordKind, TOPICS, decodeRecord, splitRecordBatch, type CheckpointMarkerBody } from '@cdp/contracts';
import { type Vpg } from '@cdp/domain';
import { FaultInjectingBus, diskFullFaults, randomBuffer, seededRandom, tempDir, waitFor, type TempDir } from '@cdp/testing';
import { REGION_BYTES } from './activity-log';
import { RESYNC_CHUNK_BYTES, readResyncProgress } from './forced-resync';
import { PayloadRing } from './payload-ring';
import { SEQ_CEILING_STEP, SeqCeiling } from './seq-ceiling';
import { VpgCapture } from './vpg-capture';

const MiB = 1024 * 1024;

/**
 * Once every write is acknowledged: applies them to `models` in seq order (the order the capture gave
 * them) and checks that each volume's first `bytes` equal the model.
 */
async function expectVolumesHold(
  capture: VpgCapture,
  writes: readonly { index: number; offset: number; data: Buffer; seq: Promise<number> }[],
  models: Buffer[],
  bytes: number,
): Promise<void> {
  const seqs = await Promise.all(writes.map((w) => w.seq));
  writes
    .map((w, i) => ({ ...w, at: seqs[i]! }))
    .sort((a, b) => a.at - b.at)
    .forEach((w) => w.data.copy(models[w.index]!, w.offset));
  for (const volume of volumes) {
    expect(capture.volumeById(volume.id).read(0, bytes).equals(models[volume.index]!.subarray(0, bytes))).toBe(true);
  }
}

const vpg: Vpg = {
  id: '6f1d2c3b-4a59-4e8f-9a7b-1c2d3e4f5a6b',
  name: 'capture-test',
  createdAt: new Date(0).toISOString(),
  settings: { journalHistorySeconds: 3600, checkpointIntervalSeconds: 5, historyWarningSeconds: 1800, historyAlertSeconds: 600 },
  vms: [
    {
      id: '0a1b2c3d-0000-4000-8000-000000000001',
      name: 'vm',
      volumes: [
        { id: '0a1b2c3d-0000-4000-8000-000000000011', name: 'a', index: 0, sizeBytes: 64 * MiB, blockSize: 512 },
        { id: '0a1b2c3d-0000-4000-8000-000000000012', name: 'b', index: 1, sizeBytes: 40 * MiB, blockSize: 4096 },
      ],
    },
  ],
};
const volumes = vpg.vms[0]!.volumes;

/**
 * What the recovery site receives: every record shipped, by seq. A seq that arrives twice must carry
 * the same bytes; the site applies writes in seq order.
 */
class RecoverySite {
  readonly records = new Map<number, Buffer>();
  private consumer: BusConsumer | undefined;

  async follow(bus: InProcessBus): Promise<void> {
    this.consumer = bus.createConsumer({ groupId: 'recovery-site', topics: [TOPICS.protectedWrites] });
    await this.consumer.run((batch) => {
      for (const message of batch.messages) {
        for (const record of splitRecordBatch(message.value)) {
          const seq = decodeRecord(record).seq;
          const seen = this.records.get(seq);
          if (seen && !seen.equals(record)) {
            throw new Error(`seq ${seq} arrived twice with different contents`);
          }
          this.records.set(seq, Buffer.from(record));
        }
      }
      return Promise.resolve();
    });
  }

  highestContiguousSeq(): number {
    let seq = 0;
    while (this.records.has(seq + 1)) {
      seq++;
    }
    return seq;
  }

  /** What the site recovers at `cut` (by default, everything it has): the volume's writes with seq <= cut, in seq order. */
  image(volumeIndex: number, size: number, cut = Infinity): Buffer {
    const image = Buffer.alloc(size);
    for (const seq of [...this.records.keys()].filter((s) => s <= cut).sort((a, b) => a - b)) {
      const decoded = decodeRecord(this.records.get(seq)!);
      if (decoded.kind === RecordKind.Write && decoded.volumeIndex === volumeIndex) {
        decoded.data.copy(image, decoded.offset);
      }
    }
    return image;
  }

  /** The markers the site received, in seq order. */
  markers(): { seq: number; id: string; kind: string }[] {
    return [...this.records.keys()]
      .sort((a, b) => a - b)
      .flatMap((seq) => {
        const decoded = decodeRecord(this.records.get(seq)!);
        return decoded.kind === RecordKind.Checkpoint ? [{ seq, id: decoded.marker.id, kind: decoded.marker.kind }] : [];
      });
  }

  async stop(): Promise<void> {
    await this.consumer?.stop();
  }
}

/** A checkpoint id (a UUID) numbered `n`, for markers these tests insert. */
function id(n: number): string {
  return `00000000-0000-4000-8000-${String(n).padStart(12, '0')}`;
}

/** What the site recovers at `cut` equals every volume of `capture` as it is now, byte for byte. */
function expectSiteHoldsVolumesAt(site: RecoverySite, capture: VpgCapture, cut: number): void {
  for (const volume of volumes) {
    expect(site.image(volume.index, volume.sizeBytes, cut).equals(capture.volumeById(volume.id).read(0, volume.sizeBytes))).toBe(true);
  }
}

/** Bytes in the splitter log's segment files under a capture's directory (spares not counted). */
function logBytes(dir: string): number {
  return readdirSync(join(dir, 'log'))
    .filter((name) => name.endsWith('.seg'))
    .reduce((sum, name) => sum + statSync(join(dir, 'log', name)).size, 0);
}

/** A write these tests expect to go into the log (not taken in degraded mode): its seq. */
function logged(write: Promise<number | null>): Promise<number> {
  return write.then((seq) => {
    if (seq === null) {
      throw new Error('the write was tracked (degraded mode), not logged');
    }
    return seq;
  });
}

/** One write of 1 to maxBytes random bytes at a random place on a random volume of the VPG. */
async function randomWrite(capture: VpgCapture, random: () => number, maxBytes: number): Promise<void> {
  const volume = volumes[Math.floor(random() * volumes.length)]!;
  const length = 1 + Math.floor(random() * maxBytes);
  const offset = Math.floor(random() * (volume.sizeBytes - length + 1));
  await capture.write(volume.id, offset, randomBuffer(random, length));
}

/**
 * Copies the splitter log under `dir` as it is now: after a flush, what a power loss would leave of
 * it. The returned function is the power loss: it puts that copy back in the log's place.
 */
function keepLogForPowerLoss(dir: string): () => void {
  cpSync(join(dir, 'log'), join(dir, 'log-durable'), { recursive: true });
  return () => {
    rmSync(join(dir, 'log'), { recursive: true });
    cpSync(join(dir, 'log-durable'), join(dir, 'log'), { recursive: true });
  };
}

/** A payload with reserved headroom in front, as the NBD server hands it over. */
function withHeadroom(data: Buffer, headroom: number): Buffer {
  const backing = Buffer.allocUnsafe(headroom + data.length);
  data.copy(backing, headroom);
  return backing.subarray(headroom);
}

/** Per test: a data directory, a bus, and a recovery site following it; torn down after each test. */
function eachTestWithRecoverySite(prefix: string): { readonly dir: TempDir; readonly bus: InProcessBus; readonly site: RecoverySite } {
  const ctx = {} as { dir: TempDir; bus: InProcessBus; site: RecoverySite };
  beforeEach(async () => {
    ctx.dir = await tempDir(prefix);
    ctx.bus = new InProcessBus();
    ctx.site = new RecoverySite();
    await ctx.site.follow(ctx.bus);
  });
  afterEach(async () => {
    await ctx.site.stop();
    await ctx.bus.close();
    await ctx.dir.cleanup();
  });
  return ctx;
}

describe('VpgCapture after crashes', () => {
  const ctx = eachTestWithRecoverySite('capture-');

  it('tells a clean stop, a process crash and a host crash apart', async () => {
    const { dir, bus } = ctx;
    const first = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    expect(first.previousEnd).toBe('none');
    await first.write(volumes[0]!.id, 0, Buffer.alloc(4096, 1));
    await first.close();
    const second = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    expect(second.previousEnd).toBe('clean');
    await second.write(volumes[0]!.id, 4096, Buffer.alloc(4096, 2));
    await second.flush();
    // Abandoned without close(): a process crash when reopened on the same boot, a host crash on another.
    const third = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    expect(third.previousEnd).toBe('process-crash');
    const fourth = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-2' });
    expect(fourth.previousEnd).toBe('host-crash');
    // The abandoned instances are closed only now, when what they write no longer matters.
    for (const capture of [fourth, third, second]) {
      await capture.close();
    }
  });

  it('after a power loss, resyncs only the active regions and both sites agree byte for byte', async () => {
    const { dir, bus, site } = ctx;
    const random = seededRandom(4242);
    let linkUp = true;
    const lossyBus = new FaultInjectingBus(bus, () => (linkUp ? 'deliver' : 'drop'));
    const capacity = 6;
    const before = await VpgCapture.open(vpg, dir.path, lossyBus.createProducer(), { bootId: 'boot-1', activityLogRegions: capacity });
    const write = (capture: VpgCapture): Promise<void> => randomWrite(capture, random, 64 * 1024);
    for (let i = 0; i < 300; i++) {
      await write(before);
      if (i % 50 === 49) {
        await before.flush();
      }
    }
    await before.flush();
    const deliveredSeq = before.lastSeq;
    await waitFor(() => site.highestContiguousSeq() === deliveredSeq, { timeoutMs: 5_000, message: 'the flushed writes never arrived' });

    // The link goes down. Writes go on all over the volumes; the activity log overflows and evicts
    // regions (forcing flushes to do so). A last flush, and this is what a power loss would leave of the
    // splitter log: everything up to here is durable in it.
    linkUp = false;
    for (let i = 0; i < 100; i++) {
      await write(before);
    }
    await before.flush();
    const durableSeq = before.lastSeq;
    const powerLoss = keepLogForPowerLoss(dir.path);

    // More writes, not flushed, within as many regions as the activity log holds, so nothing forces a
    // flush and they stay only in the page cache.
    for (let i = 0; i < 40; i++) {
      const length = 1 + Math.floor(random() * 64 * 1024);
      const offset = Math.floor(random() * (capacity * REGION_BYTES - length + 1));
      await before.write(volumes[0]!.id, offset, randomBuffer(random, length));
    }
    expect(before.status().activeRegions).toBeLessThanOrEqual(capacity);

    // Power loss: the log keeps what was durable, while the kernel had written back every volume page
    // (the worst case for agreement). Then the machine boots again.
    powerLoss();
    const after = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-2', activityLogRegions: capacity });
    expect(after.previousEnd).toBe('host-crash');
    // A sync record, then the regions read back.
    const resyncRecords = after.lastSeq - durableSeq - 1;
    expect(resyncRecords).toBeGreaterThan(0);
    expect(resyncRecords).toBeLessThanOrEqual(capacity);

    await after.flush();
    await waitFor(() => site.highestContiguousSeq() === after.lastSeq, { timeoutMs: 5_000, message: 'the resync never arrived' });
    for (const volume of volumes) {
      const local = after.volumeById(volume.id).read(0, volume.sizeBytes);
      const remote = site.image(volume.index, volume.sizeBytes);
      expect(remote.equals(local)).toBe(true);
    }
    expect(decodeRecord(site.records.get(durableSeq + 1)!)).toMatchObject({
      kind: RecordKind.Sync,
      sync: { reason: `the ${resyncRecords} active region(s) after a host crash`, member: null },
    });
    // A resync write covers exactly one region (or the volume's tail).
    for (let seq = durableSeq + 2; seq <= after.lastSeq; seq++) {
      const decoded = decodeRecord(site.records.get(seq)!);
      expect(decoded.kind === RecordKind.Write && decoded.offset % REGION_BYTES === 0).toBe(true);
    }
    await after.close();
    // The crashed instance is closed only now, when what it writes no longer matters.
    await before.close();
  });
});

describe('VpgCapture reusing its log\'s segment files', () => {
  const ctx = eachTestWithRecoverySite('capture-reuse-');

  it('writes new segments into the files of confirmed ones, and loses nothing across a process crash or a power loss', async () => {
    const { dir, bus, site } = ctx;
    const random = seededRandom(31337);
    let linkUp = true;
    const lossyBus = new FaultInjectingBus(bus, () => (linkUp ? 'deliver' : 'drop'));
    // Small segments: a few writes fill one, so rolls, confirmations and reuse all happen many times.
    const options = { logSegmentBytes: 128 * 1024 };
    const write = (capture: VpgCapture): Promise<void> => randomWrite(capture, random, 48 * 1024);
    // Confirms, as the journal does, what the recovery site holds.
    const writeAndConfirm = async (capture: VpgCapture, count: number): Promise<void> => {
      for (let i = 1; i <= count; i++) {
        await write(capture);
        if (i % 10 === 0) {
          await capture.flush();
          const last = capture.lastSeq;
          await waitFor(() => site.highestContiguousSeq() >= last, { timeoutMs: 5_000, message: `seq ${last} never arrived` });
          await capture.confirm(last);
        }
      }
    };
    const expectSitesAgree = async (capture: VpgCapture): Promise<void> => {
      await capture.flush();
      await waitFor(() => site.highestContiguousSeq() === capture.lastSeq, { timeoutMs: 5_000, message: 'the writes never arrived' });
      for (const volume of volumes) {
        expect(site.image(volume.index, volume.sizeBytes).equals(capture.volumeById(volume.id).read(0, volume.sizeBytes))).toBe(true);
      }
    };

    const first = await VpgCapture.open(vpg, dir.path, lossyBus.createProducer(), { ...options, bootId: 'boot-1' });
    await writeAndConfirm(first, 200);
    const files = first.status().logSegmentFiles;
    expect(files.reused).toBeGreaterThan(10);
    // The spares cover the turnover: a new file only now and then.
    expect(files.created).toBeLessThan(files.reused);

    // A process crash (abandoned without close): the log's files end in older records.
    const second = await VpgCapture.open(vpg, dir.path, lossyBus.createProducer(), { ...options, bootId: 'boot-1' });
    expect(second.previousEnd).toBe('process-crash');
    expect(second.lastSeq).toBe(first.lastSeq);
    await writeAndConfirm(second, 100);
    await expectSitesAgree(second);

    // A power loss: the link is down (so nothing past the durable point leaves), the log is what the
    // last flush made durable, the volumes hold every write.
    linkUp = false;
    for (let i = 0; i < 30; i++) {
      await write(second);
    }
    await second.flush();
    const durableSeq = second.lastSeq;
    const powerLoss = keepLogForPowerLoss(dir.path);
    for (let i = 0; i < 30; i++) {
      await write(second);
    }
    powerLoss();
    // The link stays down for the abandoned instances; the new one ships on a link of its own.
    const third = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { ...options, bootId: 'boot-2' });
    expect(third.previousEnd).toBe('host-crash');
    expect(third.lastSeq).toBeGreaterThan(durableSeq);
    await writeAndConfirm(third, 100);
    await expectSitesAgree(third);
    await third.close();
    // The abandoned instances are closed only now, when what they write no longer matters.
    await second.close();
    await first.close();
  });
});

describe('VpgCapture batching and shipping', () => {
  const ctx = eachTestWithRecoverySite('capture-batch-');


  it('writes issued together, overlapping, framed in place or not (alone in a batch framed in place too), land on both sites in seq order, markers among them', async () => {
    const { dir, bus, site } = ctx;
    const random = seededRandom(77);
    const capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    const models = volumes.map((v) => Buffer.alloc(v.sizeBytes));
    for (let round = 0; round < 20; round++) {
      const pending: Promise<number>[] = [];
      const issued: { index: number; offset: number; data: Buffer }[] = [];
      for (let i = 0; i < 16; i++) {
        const volume = volumes[Math.floor(random() * volumes.length)]!;
        // A small area, so writes of one turn overlap each other.
        const length = 1 + Math.floor(random() * 16 * 1024);
        const offset = Math.floor(random() * 64 * 1024);
        const data = randomBuffer(random, length);
        issued.push({ index: volume.index, offset, data: Buffer.from(data) });
        // No headroom (copied), room for the record header, or for the batch header as well.
        const headroom = [0, RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + BATCH_HEADER_BYTES][Math.floor(random() * 3)]!;
        pending.push(logged(capture.write(volume.id, offset, headroom > 0 ? withHeadroom(data, headroom) : data, false, { headroom })));
      }
      const cut = capture.insertCheckpoint({ id: `00000000-0000-4000-8000-${String(round).padStart(12, '0')}`, kind: 'automatic', name: null, vmId: null });
      const seqs = await Promise.all(pending);
      // Writes in flight together have no order until they get their seqs (one that first waits for
      // the activity log gets a later one); from then on, the seq order is the order on both sites.
      expect(new Set([...seqs, cut]).size).toBe(seqs.length + 1);
      issued
        .map((w, i) => ({ ...w, seq: seqs[i]! }))
        .sort((a, b) => a.seq - b.seq)
        .forEach((w) => w.data.copy(models[w.index]!, w.offset));
    }
    await capture.flush();
    const stall = capture.status().checkpointStall;
    expect(stall.count).toBe(20);
    expect(stall.p50Micros!).toBeGreaterThan(0);
    expect(stall.p50Micros!).toBeLessThanOrEqual(stall.p99Micros!);
    expect(stall.p99Micros!).toBeLessThanOrEqual(stall.maxMicros!);
    await waitFor(() => site.highestContiguousSeq() === capture.lastSeq, { timeoutMs: 5_000, message: 'the writes never arrived' });
    for (const volume of volumes) {
      expect(capture.volumeById(volume.id).read(0, 128 * 1024).equals(models[volume.index]!.subarray(0, 128 * 1024))).toBe(true);
      expect(site.image(volume.index, 128 * 1024).equals(models[volume.index]!.subarray(0, 128 * 1024))).toBe(true);
    }
    await capture.close();
  });

  it('zeroings among writes in flight, small and large, leave both sites alike at every checkpoint, and zeros where nothing overlapped them', async () => {
    const { dir, bus, site } = ctx;
    const random = seededRandom(91);
    const capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    const volume = volumes[0]!;
    const area = 4 * MiB;
    for (let round = 0; round < 12; round++) {
      const pending: Promise<unknown>[] = [];
      const zeroed: [number, number][] = [];
      const written: [number, number][] = [];
      for (let i = 0; i < 12; i++) {
        if (random() < 0.35) {
          const offset = Math.floor(random() * area);
          const length = 1 + Math.floor(random() * Math.min(2 * MiB, area - offset));
          zeroed.push([offset, offset + length]);
          pending.push(capture.writeZeroes(volume.id, offset, length, random() < 0.3));
        } else {
          // Small ones on the event loop, large ones (256 KiB and more) on the thread pool.
          const length = random() < 0.7 ? 1 + Math.floor(random() * 16 * 1024) : 256 * 1024 + Math.floor(random() * 768 * 1024);
          const offset = Math.floor(random() * (area - length));
          written.push([offset, offset + length]);
          pending.push(logged(capture.write(volume.id, offset, randomBuffer(random, length))));
        }
      }
      await Promise.all(pending);
      const cut = capture.insertCheckpoint({ id: id(1000 + round), kind: 'automatic', name: null, vmId: null });
      expect(cut).toBe(capture.lastSeq);
      await capture.flush();
      await waitFor(() => site.highestContiguousSeq() === capture.lastSeq, { timeoutMs: 5_000, message: 'the stream stops short' });
      // Only this area is ever written.
      const now = capture.volumeById(volume.id).read(0, area);
      expect(site.image(volume.index, area, cut!).equals(now)).toBe(true);
      // Bytes that a zeroing covered and no write of the round touched read as zeros.
      const notZero: number[] = [];
      for (const [start, end] of zeroed) {
        for (let at = start; at < end; at += 512) {
          if (now[at] !== 0 && !written.some(([from, to]) => from <= at && at < to)) {
            notZero.push(at);
          }
        }
      }
      expect(notZero).toEqual([]);
    }
    expect(capture.status().zeroing.capturedBytes).toBeLessThan(capture.status().zeroing.bytes);
    await capture.close();
  });

  it('large writes go to the volumes on the thread pool, the small writes after them wait their turn: seq order holds on both sites, a flush covers all', async () => {
    const { dir, bus, site } = ctx;
    const random = seededRandom(31);
    const capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    const models = volumes.map((v) => Buffer.alloc(v.sizeBytes));
    const all: { index: number; offset: number; data: Buffer; seq: Promise<number> }[] = [];
    const issue = (length: number): void => {
      const volume = volumes[Math.floor(random() * volumes.length)]!;
      // All within the first 2 MiB, so large and small writes overlap.
      const offset = Math.floor(random() * (2 * MiB - length));
      const data = randomBuffer(random, length);
      const seq = logged(capture.write(volume.id, offset, Buffer.from(data)));
      all.push({ index: volume.index, offset, data, seq });
    };
    for (let round = 0; round < 12; round++) {
      // A large write alone in its turn (a batch on the thread pool), then, in the next turns while it
      // is still on its way, small writes over the same area, and a checkpoint among them.
      issue(256 * 1024 + Math.floor(random() * 768 * 1024));
      await new Promise((resolve) => setImmediate(resolve));
      for (let turn = 0; turn < 3; turn++) {
        for (let i = 0; i < 4; i++) {
          issue(512 + Math.floor(random() * 8 * 1024));
        }
        if (turn === 1) {
          capture.insertCheckpoint({ id: `00000000-0000-4000-8000-${String(round).padStart(12, '0')}`, kind: 'automatic', name: null, vmId: null });
        }
        await new Promise((resolve) => setImmediate(resolve));
      }
    }
    await expectVolumesHold(capture, all, models, 2 * MiB);
    await capture.flush();
    // The flush covers all: the bus acknowledged every record. The site consumes them on its own time.
    const flushed = capture.lastSeq;
    await waitFor(() => site.highestContiguousSeq() === flushed, { timeoutMs: 5_000, message: 'the flushed writes never arrived' });
    for (const volume of volumes) {
      expect(site.image(volume.index, 2 * MiB).equals(models[volume.index]!.subarray(0, 2 * MiB))).toBe(true);
    }
    await capture.close();
    // What the log held is what the volumes hold: reopened after a clean stop, nothing differs.
    const again = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    for (const volume of volumes) {
      expect(again.volumeById(volume.id).read(0, 2 * MiB).equals(models[volume.index]!.subarray(0, 2 * MiB))).toBe(true);
    }
    await again.close();
  });

  it('large batches in flight side by side: disjoint ones together, overlapping ones in seq order', async () => {
    const { dir, bus, site } = ctx;
    const random = seededRandom(47);
    const capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    const area = 4 * MiB;
    const models = volumes.map((v) => Buffer.alloc(v.sizeBytes));
    const all: { index: number; offset: number; data: Buffer; seq: Promise<number> }[] = [];
    const write = (volume: (typeof volumes)[number], offset: number, length: number): void => {
      const data = randomBuffer(random, length);
      all.push({ index: volume.index, offset, data, seq: logged(capture.write(volume.id, offset, Buffer.from(data))) });
    };
    // The area's regions in the activity log first, so that each turn's writes form one batch.
    for (const volume of volumes) {
      write(volume, 0, area);
    }
    await Promise.all(all.map((w) => w.seq));
    for (let turn = 0; turn < 12; turn++) {
      // One large write a turn (a batch on the thread pool each), none awaited: several in flight at
      // once, overlapping often.
      const volume = volumes[turn % volumes.length]!;
      const length = 256 * 1024 + Math.floor(random() * 512 * 1024);
      write(volume, Math.floor(random() * (area - length)), length);
      await new Promise((resolve) => setImmediate(resolve));
    }
    for (let round = 0; round < 4; round++) {
      // A batch of 64 writes 64 KiB apart, each its own run (one after the other on the thread pool),
      // then in the next turn one write over the last of them: on its own it would be done first.
      const volume = volumes[round % volumes.length]!;
      for (let k = 0; k < 64; k++) {
        write(volume, k * 64 * 1024, 4096);
      }
      await new Promise((resolve) => setImmediate(resolve));
      write(volume, 63 * 64 * 1024 - 128 * 1024, 256 * 1024);
      await new Promise((resolve) => setImmediate(resolve));
    }
    await expectVolumesHold(capture, all, models, area);
    await capture.flush();
    // Acknowledged by the bus; the site consumes the last large messages a moment later.
    await waitFor(() => site.highestContiguousSeq() === capture.lastSeq, { timeoutMs: 5_000, message: 'the large writes never arrived' });
    for (const volume of volumes) {
      expect(site.image(volume.index, area).equals(models[volume.index]!.subarray(0, area))).toBe(true);
    }
    await capture.close();
  }, 30_000);

  it('replays from the log after a rewind the very bytes it first shipped from memory', async () => {
    const { dir, bus, site } = ctx;
    const random = seededRandom(78);
    let drop = false;
    const lossy = new FaultInjectingBus(bus, () => (drop ? 'drop' : 'deliver'));
    const capture = await VpgCapture.open(vpg, dir.path, lossy.createProducer(), { bootId: 'boot-1' });
    for (let i = 0; i < 50; i++) {
      await capture.write(volumes[0]!.id, i * 4096, randomBuffer(random, 4096));
    }
    await capture.flush();
    await waitFor(() => site.highestContiguousSeq() === capture.lastSeq, { timeoutMs: 5_000, message: 'the first writes never arrived' });
    const firstRound = capture.lastSeq;
    // Lost on the way: the sends succeed but nothing arrives, as when a broker loses a batch.
    drop = true;
    for (let i = 0; i < 50; i++) {
      await capture.write(volumes[1]!.id, i * 4096, randomBuffer(random, 4096));
    }
    await capture.flush();
    expect(site.highestContiguousSeq()).toBe(firstRound);
    drop = false;
    // The journal would ask for it: everything from the first write after the last it holds, and
    // some it holds already (which must arrive identical: the site rejects a seq with other bytes).
    capture.replayFrom(firstRound - 10);
    await waitFor(() => site.highestContiguousSeq() === capture.lastSeq, { timeoutMs: 5_000, message: 'the replay never arrived' });
    expect(site.image(1, 50 * 4096).equals(capture.volumeById(volumes[1]!.id).read(0, 50 * 4096))).toBe(true);
    await capture.close();
  });

  it('ships each large write alone in a batch framed in the headroom in front of it, bytes intact', async () => {
    const { dir, bus, site } = ctx;
    const random = seededRandom(79);
    const capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    const size = 700 * 1024;
    const model = Buffer.alloc(8 * size);
    const pending: Promise<number>[] = [];
    for (let i = 0; i < 8; i++) {
      const data = randomBuffer(random, size);
      data.copy(model, i * size);
      // Two of them do not fit one batch: each travels alone, framed where the device left room.
      pending.push(logged(capture.write(volumes[0]!.id, i * size, withHeadroom(data, RECORD_HEADER_BYTES + BATCH_HEADER_BYTES), false, { headroom: RECORD_HEADER_BYTES + BATCH_HEADER_BYTES })));
    }
    await Promise.all(pending);
    await capture.flush();
    await waitFor(() => site.highestContiguousSeq() === capture.lastSeq, { timeoutMs: 5_000, message: 'the writes never arrived' });
    expect(site.image(0, 8 * size).equals(model)).toBe(true);
    expect(capture.volumeById(volumes[0]!.id).read(0, 8 * size).equals(model)).toBe(true);
    await capture.close();
  });
});

describe('VpgCapture payloads received into the payload ring', () => {
  const HEADROOM = RECORD_HEADER_BYTES + BATCH_HEADER_BYTES;
  let dir: TempDir;
  beforeEach(async () => {
    dir = await tempDir('capture-ring-');
  });
  afterEach(() => dir.cleanup());

  it('keeps each region until the log, the volume, the shipper and the bus are all done with it, and only then reuses it', async () => {
    // The all-in-one's bus: values handed over, kept until consumed. The consumer plays the journal and
    // can be held, so the test can see the bus holding regions the capture and shipper are done with.
    const bus = new InProcessBus({ retention: 'consumed', values: 'hand-over' });
    const received = new Map<number, Buffer>();
    let gate: Promise<void> | undefined;
    let open!: () => void;
    const hold = (): void => {
      gate = new Promise((resolve) => (open = resolve));
    };
    const journal = bus.createConsumer({ groupId: 'journal', topics: [TOPICS.protectedWrites] });
    await journal.run(async (batch) => {
      await gate;
      for (const message of batch.messages) {
        for (const record of splitRecordBatch(message.value)) {
          const decoded = decodeRecord(record);
          if (decoded.kind === RecordKind.Write) {
            received.set(decoded.seq, Buffer.from(decoded.data));
          }
        }
      }
    });
    // Poisoned on release: a region reused or released too early shows up as a corrupt record.
    const ring = new PayloadRing(6 * MiB, { poison: true });
    const capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1', payloads: ring });
    const random = seededRandom(5);
    const size = 512 * 1024;
    const expected = new Map<number, { offset: number; content: Buffer }>();
    const writeWave = async (count: number, offsetBase: number): Promise<number> => {
      const pending: Promise<number>[] = [];
      let lent = 0;
      for (let i = 0; i < count; i++) {
        const content = randomBuffer(random, size);
        const data = capture.allocatePayload(size, HEADROOM);
        let payload: Buffer;
        if (data) {
          lent++;
          content.copy(data);
          payload = data;
        } else {
          payload = withHeadroom(content, HEADROOM);
        }
        const offset = offsetBase + i * size;
        pending.push(logged(capture.write(volumes[0]!.id, offset, payload, false, { headroom: HEADROOM })).then((seq) => (expected.set(seq, { offset, content }), seq)));
      }
      await Promise.all(pending);
      return lent;
    };

    hold();
    const lentWhileHeld = await writeWave(16, 0);
    await capture.flush();
    // 8 MiB asked of a 6 MiB ring: the rest allocated as before. The bus holds what it was sent.
    expect(lentWhileHeld).toBeGreaterThan(0);
    expect(lentWhileHeld).toBeLessThan(16);
    expect(ring.stats().liveRegions).toBeGreaterThan(0);
    expect(ring.acquire(size)).toBeUndefined();
    open();
    gate = undefined;
    await waitFor(() => received.size === 16, { timeoutMs: 5_000, message: 'the journal never got every write' });
    await waitFor(() => ring.stats().liveRegions === 0, { timeoutMs: 5_000, message: 'regions never came back' });

    // Free again: the next wave is received into reused memory, and still arrives intact.
    expect(await writeWave(8, 16 * size)).toBe(8);
    await capture.flush();
    await waitFor(() => received.size === 24, { timeoutMs: 5_000, message: 'the second wave never arrived' });
    const image = capture.volumeById(volumes[0]!.id).read(0, 24 * size);
    for (const [seq, { offset, content }] of expected) {
      expect(received.get(seq)?.equals(content)).toBe(true);
      expect(image.subarray(offset, offset + size).equals(content)).toBe(true);
    }
    await waitFor(() => ring.stats().liveRegions === 0, { timeoutMs: 5_000, message: 'regions never came back after the second wave' });
    await capture.close();
    await journal.stop();
    await bus.close();
  });

  it('ships writes received into the ring from memory even when far behind, where other writes are read back from the log', async () => {
    // The shipper is held back (a send waits for the test), so it falls 24 MiB behind the capture:
    // more than the 16 MiB its window keeps of writes outside the ring.
    const bus = new InProcessBus({ retention: 'consumed', values: 'hand-over' });
    let held: Promise<void> = Promise.resolve();
    let open = (): void => undefined;
    const hold = (): void => {
      held = new Promise<void>((resolve) => (open = resolve));
    };
    const inner = bus.createProducer();
    const producer: BusProducer = { send: async (topic, messages) => (await held, inner.send(topic, messages)) };
    const values: Buffer[] = [];
    const site = bus.createConsumer({ groupId: 'site', topics: [TOPICS.protectedWrites] });
    await site.run((batch) => {
      for (const message of batch.messages) {
        // Only which memory it lies in is looked at, after the handler: the bytes may be reused by then.
        values.push(message.value);
      }
      return Promise.resolve();
    });
    const ring = new PayloadRing(64 * MiB, { poison: true });
    const capture = await VpgCapture.open(vpg, dir.path, producer, { bootId: 'boot-1', payloads: ring });
    /** 24 writes of 1 MiB while the shipper is held; the memory each payload was received into. */
    const run = async (lent: boolean, base: number): Promise<Set<ArrayBufferLike>> => {
      hold();
      const pending: Promise<number>[] = [];
      const memory = new Set<ArrayBufferLike>();
      values.length = 0;
      for (let i = 0; i < 24; i++) {
        const payload = lent ? (capture.allocatePayload(MiB, HEADROOM) as Buffer) : withHeadroom(Buffer.alloc(MiB), HEADROOM);
        payload.fill(i);
        memory.add(payload.buffer);
        pending.push(logged(capture.write(volumes[0]!.id, base + i * MiB, payload, false, { headroom: HEADROOM })));
      }
      await Promise.all(pending);
      open();
      await capture.flush();
      expect(values).toHaveLength(24);
      return memory;
    };
    const ringMemory = await run(true, 0);
    expect(ringMemory.size).toBe(1);
    // Every one shipped from memory, framed in place in the ring.
    expect(values.filter((value) => !ringMemory.has(value.buffer))).toHaveLength(0);

    const ownMemory = await run(false, 24 * MiB);
    // Past 16 MiB the window was dropped: what it held then (15 writes and their headers) was read back
    // from the log.
    expect(values.filter((value) => !ownMemory.has(value.buffer)).length).toBeGreaterThanOrEqual(15);
    await capture.close();
    await site.stop();
    await bus.close();
  });

  it('gives a region back at once when its write is refused or never made', async () => {
    const bus = new InProcessBus();
    const ring = new PayloadRing(4 * MiB, { poison: true });
    const capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1', payloads: ring });
    // Small payloads are not worth the ring (see allocatePayload).
    expect(capture.allocatePayload(4096, HEADROOM)).toBeUndefined();
    const refused = capture.allocatePayload(128 * 1024, HEADROOM) as Buffer;
    await expect(capture.write('no-such-volume', 0, refused, false, { headroom: HEADROOM })).rejects.toThrow(/not in VPG/);
    const outOfRange = capture.allocatePayload(128 * 1024, HEADROOM) as Buffer;
    await expect(capture.write(volumes[0]!.id, volumes[0]!.sizeBytes, outOfRange, false, { headroom: HEADROOM })).rejects.toThrow();
    const discarded = capture.allocatePayload(128 * 1024, HEADROOM) as Buffer;
    capture.discardPayload(discarded);
    expect(ring.stats().liveRegions).toBe(0);
    expect(refused.every((byte) => byte === 0xdb)).toBe(true);
    await capture.close();
    await bus.close();
  });
});

describe('VpgCapture forced resync', () => {
  const ctx = eachTestWithRecoverySite('capture-resync-');

  /** Seqs of resync chunks (client writes in these tests are smaller than a chunk). */
  const chunkSeqs = (site: RecoverySite, from = 0): number[] =>
    [...site.records.keys()]
      .filter((seq) => seq > from)
      .sort((a, b) => a - b)
      .filter((seq) => {
        const decoded = decodeRecord(site.records.get(seq)!);
        return decoded.kind === RecordKind.Write && decoded.data.length === RESYNC_CHUNK_BYTES;
      });
  /** Writes into the volume's file behind the splitter's back, as a restore from backup would. */
  const writeBehind = (dir: string, volumeIndex: number, offset: number, data: Buffer): void => {
    const fd = openSync(join(dir, 'volumes', `${volumeIndex}.img`), 'r+');
    try {
      writeSync(fd, data, 0, data.length, offset);
    } finally {
      closeSync(fd);
    }
  };
  const local = (capture: VpgCapture, index: number): Buffer => capture.volumeById(volumes[index]!.id).read(0, volumes[index]!.sizeBytes);

  it('brings a volume written outside the splitter back, keeps older checkpoints, and cuts none inside it', async () => {
    const { dir, bus, site } = ctx;
    const random = seededRandom(901);
    const capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    for (let i = 0; i < 40; i++) {
      const volume = volumes[i % 2]!;
      await capture.write(volume.id, Math.floor(random() * (volume.sizeBytes / 4096)) * 4096, randomBuffer(random, 4096));
    }
    const before = capture.insertCheckpoint({ id: id(1), kind: 'tagged', name: 'before', vmId: null })!;
    const imagesBefore = [local(capture, 0), local(capture, 1)];

    // Diverged: a restore on the protected site wrote both volumes without the splitter.
    writeBehind(dir.path, 0, 3 * 1024 * 1024 + 512, randomBuffer(random, 200_000));
    writeBehind(dir.path, 1, 0, randomBuffer(random, 8192));
    writeBehind(dir.path, 1, volumes[1]!.sizeBytes - 4096, randomBuffer(random, 4096));

    expect(capture.startResync({ resyncId: id(100), volumeIds: null, requestedAt: new Date().toISOString(), reason: 'restored from backup' })).toBe('started');
    expect(capture.checkpointsPaused).toBe(true);
    expect(capture.status().resync).toMatchObject({ id: id(100), volumes: volumes.map((v) => v.id), bytesTotal: 104 * MiB });
    // The same command delivered again is recognised; another one is refused while this one runs.
    expect(capture.startResync({ resyncId: id(100), volumeIds: null, requestedAt: new Date().toISOString(), reason: '' })).toBe('duplicate');
    expect(() => capture.startResync({ resyncId: id(101), volumeIds: null, requestedAt: new Date().toISOString(), reason: '' })).toThrow(/still running/);

    // Checkpoints asked for meanwhile: automatic ones are skipped, the others deferred (once each).
    expect(capture.insertCheckpoint({ id: id(2), kind: 'automatic', name: null, vmId: null })).toBeNull();
    expect(capture.insertCheckpoint({ id: id(3), kind: 'tagged', name: 'during', vmId: null })).toBeNull();
    expect(capture.insertCheckpoint({ id: id(4), kind: 'application-consistent', name: 'quiesced', vmId: vpg.vms[0]!.id })).toBeNull();
    expect(capture.insertCheckpoint({ id: id(3), kind: 'tagged', name: 'during', vmId: null })).toBeNull();
    // Client writes go on during the resync, between its chunks; some large enough to go to the volume
    // on the thread pool, so a chunk has to wait for them to be on the volume before it is read.
    const during: Promise<number>[] = [];
    for (let i = 0; i < 64; i++) {
      const volume = volumes[i % 2]!;
      const length = i % 8 === 3 ? 512 * 1024 : 4096;
      during.push(logged(capture.write(volume.id, Math.floor(random() * ((volume.sizeBytes - length) / 4096)) * 4096, randomBuffer(random, length))));
      if (i % 8 === 7) {
        await Promise.all(during);
      }
    }
    const duringSeqs = await Promise.all(during);
    await waitFor(() => !capture.checkpointsPaused, { timeoutMs: 30_000, message: 'the resync never completed' });
    expect(capture.status().resync).toBeNull();
    const done = readResyncProgress(dir.path);
    expect(done).toMatchObject({ id: id(100), bytesDone: 104 * MiB });
    expect(done?.completedAt).not.toBeNull();
    await capture.flush();
    await waitFor(() => site.highestContiguousSeq() === capture.lastSeq, { timeoutMs: 10_000, message: 'the resync never arrived' });

    const chunks = chunkSeqs(site, before);
    expect(chunks).toHaveLength(104);
    const [firstChunk, lastChunk] = [chunks[0]!, chunks[chunks.length - 1]!];
    // A sync record in front of the first chunk tells the journal where the stretch begins.
    expect(decodeRecord(site.records.get(firstChunk - 1)!)).toMatchObject({ kind: RecordKind.Sync, sync: { reason: `resync ${id(100)} (restored from backup)` } });
    expect([...site.records.values()].filter((r) => decodeRecord(r).kind === RecordKind.Sync)).toHaveLength(1);
    // The client writes were not held up behind the whole resync: some were captured between chunks.
    expect(duringSeqs.some((seq) => seq > firstChunk && seq < lastChunk)).toBe(true);
    const cuts = site.markers();
    expect(cuts.some((m) => m.seq > firstChunk && m.seq < lastChunk)).toBe(false);
    expect(cuts.map((m) => m.id)).toEqual([id(1), id(3), id(4)]);
    const firstAfter = cuts[1]!.seq;
    expect(firstAfter).toBeGreaterThan(lastChunk);

    // The first checkpoint after the resync recovers the volumes as they are, divergence included; the
    // one before it still recovers its own images, bit-exact.
    for (const volume of volumes) {
      const now = local(capture, volume.index);
      expect(site.image(volume.index, volume.sizeBytes, firstAfter).equals(now)).toBe(true);
      const old = site.image(volume.index, volume.sizeBytes, before);
      expect(old.equals(imagesBefore[volume.index]!)).toBe(true);
      expect(old.equals(now)).toBe(false);
    }
    // Checkpoints are cut again as usual.
    expect(capture.insertCheckpoint({ id: id(5), kind: 'automatic', name: null, vmId: null })).toBe(capture.lastSeq);
    await capture.close();
  });

  it('refuses a volume that is not in the VPG and does nothing', async () => {
    const { dir, bus } = ctx;
    const capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    const last = capture.lastSeq;
    expect(() =>
      capture.startResync({ resyncId: id(200), volumeIds: [volumes[0]!.id, id(999)], requestedAt: new Date().toISOString(), reason: '' }),
    ).toThrow(/not in VPG/);
    expect(capture.checkpointsPaused).toBe(false);
    expect(capture.lastSeq).toBe(last);
    expect(readResyncProgress(dir.path)).toBeUndefined();
    await capture.close();
  });

  it('interrupted by a stop, resumes at the next open from its durable progress and completes', async () => {
    const { dir, bus, site } = ctx;
    const random = seededRandom(902);
    const shipper = { maxBatchBytes: MiB, retryInitialMs: 5, retryMaxMs: 20 };
    // The link carries a limited number of messages, then fails every send: the resync stalls there.
    let budget = Infinity;
    const inner = bus.createProducer();
    const limited: BusProducer = {
      send: (topic, messages) => (budget-- > 0 ? inner.send(topic, messages) : Promise.reject(new Error('link down'))),
    };
    const first = await VpgCapture.open(vpg, dir.path, limited, { bootId: 'boot-1', shipper });
    await first.write(volumes[1]!.id, 0, randomBuffer(random, 4096));
    await first.flush();
    writeBehind(dir.path, 1, 20 * MiB, randomBuffer(random, 3 * MiB));
    budget = 36;
    expect(first.startResync({ resyncId: id(300), volumeIds: [volumes[1]!.id], requestedAt: new Date().toISOString(), reason: 'distrusted' })).toBe('started');
    await waitFor(() => (readResyncProgress(dir.path)?.bytesDone ?? 0) > 0, { timeoutMs: 10_000, message: 'no progress was saved' });
    const saved = readResyncProgress(dir.path)!;
    expect(saved.completedAt).toBeNull();
    expect(saved.bytesDone).toBeLessThan(40 * MiB);
    await first.close();
    expect(readResyncProgress(dir.path)).toEqual(saved);
    const closedAt = first.lastSeq;

    budget = Infinity;
    const second = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1', shipper });
    // Resyncing from the moment it is open, before it takes any command: no cut can fall inside.
    expect(second.checkpointsPaused).toBe(true);
    expect(second.insertCheckpoint({ id: id(6), kind: 'tagged', name: 'while resuming', vmId: null })).toBeNull();
    await waitFor(() => !second.checkpointsPaused, { timeoutMs: 30_000, message: 'the resumed resync never completed' });
    await second.flush();
    await waitFor(() => site.highestContiguousSeq() === second.lastSeq, { timeoutMs: 10_000, message: 'the resumed resync never arrived' });
    // It went on from where the durable progress said, not from the start.
    expect(chunkSeqs(site, closedAt)).toHaveLength((40 * MiB - saved.bytesDone) / RESYNC_CHUNK_BYTES);
    const cut = site.markers().find((m) => m.id === id(6))!.seq;
    expect(site.image(1, volumes[1]!.sizeBytes, cut).equals(local(second, 1))).toBe(true);
    await second.close();
  });
});

describe('VpgCapture restarting its order for a journal that lost what the log no longer holds', () => {
  const ctx = eachTestWithRecoverySite('capture-restart-');

  it('restarts the order at a new seq, resyncs every volume after it (replacing a resync that runs), and the first checkpoint after recovers the volumes', async () => {
    const { dir, bus, site } = ctx;
    const random = seededRandom(1201);
    const capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1', logSegmentBytes: 256 * 1024 });
    for (let i = 0; i < 60; i++) {
      const volume = volumes[i % 2]!;
      const length = i % 10 === 4 ? 192 * 1024 : 4096;
      await logged(capture.write(volume.id, Math.floor(random() * ((volume.sizeBytes - length) / 4096)) * 4096, randomBuffer(random, length)));
    }
    expect(capture.insertCheckpoint({ id: id(1), kind: 'tagged', name: 'before', vmId: null })).not.toBeNull();
    await capture.flush();
    await waitFor(() => site.highestContiguousSeq() === capture.lastSeq, { timeoutMs: 10_000, message: 'the writes never arrived' });
    // The journal confirms it all, and the log lets go of what it confirmed.
    await capture.confirm(capture.lastSeq);
    const logFirst = capture.status().logFirstSeq!;
    expect(logFirst).toBeGreaterThan(1);

    // An operator's resync of one volume is running when the recovery site loses its journal.
    expect(capture.startResync({ resyncId: id(50), volumeIds: [volumes[1]!.id], requestedAt: new Date().toISOString(), reason: 'distrusted' })).toBe('started');
    site.records.clear();
    const beforeRestart = capture.lastSeq;
    // The journal asks for seq 1, which the log no longer holds: the order restarts.
    expect(capture.replayFrom(1)).toBe('restarted');
    const restartSeq = beforeRestart + 1;
    const resync = capture.status().resync!;
    expect(resync.id).not.toBe(id(50));
    expect(resync.volumes).toEqual(volumes.map((v) => v.id));
    expect(resync.reason).toBe(`the journal lacks seqs from 1, and the splitter log holds only from ${logFirst}`);
    expect(capture.checkpointsPaused).toBe(true);
    // Asked again before it arrives: the same restart is shipped again, no second one.
    expect(capture.replayFrom(1)).toBe('replaying');
    expect(capture.status().resync!.id).toBe(resync.id);

    // Writes go on meanwhile; a tagged checkpoint waits for the resync.
    const during: Promise<number>[] = [];
    for (let i = 0; i < 40; i++) {
      const volume = volumes[i % 2]!;
      during.push(logged(capture.write(volume.id, Math.floor(random() * (volume.sizeBytes / 4096 - 1)) * 4096, randomBuffer(random, 4096))));
    }
    expect(capture.insertCheckpoint({ id: id(2), kind: 'tagged', name: 'after', vmId: null })).toBeNull();
    await Promise.all(during);
    await waitFor(() => !capture.checkpointsPaused, { timeoutMs: 30_000, message: 'the resync after the restart never completed' });
    expect(readResyncProgress(dir.path)).toMatchObject({ id: resync.id, bytesDone: 104 * MiB });
    await capture.flush();
    await waitFor(() => site.records.has(capture.lastSeq), { timeoutMs: 10_000, message: 'the restarted order never arrived' });

    // The site holds the order from the restart on with no gap. Records before it that were still on
    // their way when its journal was lost (the replaced resync's chunks) are void, as the journal takes them.
    for (const seq of site.records.keys()) {
      if (seq < restartSeq) {
        site.records.delete(seq);
      }
    }
    const seqs = [...site.records.keys()].sort((a, b) => a - b);
    expect(seqs).toEqual(Array.from({ length: capture.lastSeq - restartSeq + 1 }, (_, i) => restartSeq + i));
    expect(decodeRecord(site.records.get(restartSeq)!)).toMatchObject({
      kind: RecordKind.Restart,
      restart: { resyncId: resync.id, voidFrom: 1, member: null },
    });
    const cuts = site.markers();
    expect(cuts.map((m) => m.id)).toEqual([id(2)]);
    // Every volume was read back in full after the restart, so the first checkpoint after it recovers
    // the volumes over an empty replica, byte for byte.
    expectSiteHoldsVolumesAt(site, capture, cuts[0]!.seq);
    await capture.close();
  });

  it('with no resync running, reads every chunk back after the restart record, none before it', async () => {
    const { dir, bus, site } = ctx;
    const random = seededRandom(1202);
    const capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1', logSegmentBytes: 256 * 1024 });
    for (let i = 0; i < 12; i++) {
      await logged(capture.write(volumes[i % 2]!.id, (i >> 1) * 128 * 1024, randomBuffer(random, 128 * 1024)));
    }
    await capture.flush();
    await waitFor(() => site.highestContiguousSeq() === capture.lastSeq, { timeoutMs: 10_000, message: 'the writes never arrived' });
    await capture.confirm(capture.lastSeq);
    const restartSeq = capture.lastSeq + 1;
    site.records.clear();
    expect(capture.replayFrom(1)).toBe('restarted');
    await waitFor(() => !capture.checkpointsPaused, { timeoutMs: 30_000, message: 'the resync never completed' });
    const cut = capture.insertCheckpoint({ id: id(3), kind: 'automatic', name: null, vmId: null })!;
    await capture.flush();
    await waitFor(() => site.records.has(cut), { timeoutMs: 10_000, message: 'the checkpoint never arrived' });
    const kinds = [...site.records.keys()].sort((a, b) => a - b).map((seq) => decodeRecord(site.records.get(seq)!));
    expect(kinds[0]).toMatchObject({ kind: RecordKind.Restart, seq: restartSeq });
    expect(kinds.filter((r) => r.kind === RecordKind.Write && r.data.length === RESYNC_CHUNK_BYTES)).toHaveLength(104);
    expectSiteHoldsVolumesAt(site, capture, cut);
    await capture.close();
  });
});

describe('VpgCapture whose log was lost while its volumes were kept', () => {
  const ctx = eachTestWithRecoverySite('capture-lost-log-');

  it('keeps every seq below a durable ceiling, and after losing its log restarts the order above it with a full resync', async () => {
    const { dir, bus, site } = ctx;
    const random = seededRandom(1301);
    const ceilingFile = join(dir.path, 'seq-ceiling');
    const first = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1', seqCeilingStep: 64 });
    for (let i = 0; i < 300; i++) {
      const volume = volumes[i % 2]!;
      await logged(first.write(volume.id, Math.floor(random() * (volume.sizeBytes / 4096 - 1)) * 4096, randomBuffer(random, 4096)));
      // Raised ahead of need, in steps of 64: every seq handed out is below the ceiling on disk.
      expect(SeqCeiling.open(ceilingFile)!.value).toBeGreaterThan(first.lastSeq);
    }
    const before = first.insertCheckpoint({ id: id(1), kind: 'tagged', name: 'before', vmId: null })!;
    const imagesBefore = volumes.map((v) => first.volumeById(v.id).read(0, v.sizeBytes));
    await first.flush();
    await waitFor(() => site.highestContiguousSeq() === first.lastSeq, { timeoutMs: 10_000, message: 'the writes never arrived' });
    const ceiling = SeqCeiling.open(ceilingFile)!.value;
    await first.close();

    // The log is deleted by hand; the volumes and the ceiling stay.
    rmSync(join(dir.path, 'log'), { recursive: true });
    const second = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1', seqCeilingStep: 64 });
    expect(second.checkpointsPaused).toBe(true);
    expect(second.status().resync?.reason).toBe(`the splitter log was missing at open; every seq below ${ceiling} may be held by the journal`);
    await second.write(volumes[0]!.id, 0, randomBuffer(random, 4096));
    await waitFor(() => !second.checkpointsPaused, { timeoutMs: 30_000, message: 'the resync never completed' });
    const after = second.insertCheckpoint({ id: id(2), kind: 'automatic', name: null, vmId: null })!;
    await second.flush();
    await waitFor(() => site.records.has(after), { timeoutMs: 10_000, message: 'the checkpoint never arrived' });
    expect(decodeRecord(site.records.get(ceiling)!)).toMatchObject({ kind: RecordKind.Restart, restart: { voidFrom: 0 } });
    expect([...site.records.keys()].filter((seq) => seq > first.lastSeq && seq < ceiling)).toEqual([]);
    // The journal's view: the old order up to its last seq, then the restarted one. The checkpoint
    // before the loss still recovers what it held; the first one after it recovers the volumes now.
    for (const volume of volumes) {
      expect(site.image(volume.index, volume.sizeBytes, before).equals(imagesBefore[volume.index]!)).toBe(true);
      expect(site.image(volume.index, volume.sizeBytes, after).equals(second.volumeById(volume.id).read(0, volume.sizeBytes))).toBe(true);
    }
    await second.close();
  });

  it('restarts the order above the journal when the journal holds seqs this log never handed out (its directory restored from a backup)', async () => {
    const { dir, bus, site } = ctx;
    const random = seededRandom(1302);
    const backup = `${dir.path}.backup`;
    const original = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    const writeSome = async (capture: VpgCapture, n: number): Promise<void> => {
      for (let i = 0; i < n; i++) {
        const volume = volumes[i % 2]!;
        await logged(capture.write(volume.id, Math.floor(random() * (volume.sizeBytes / 4096 - 1)) * 4096, randomBuffer(random, 4096)));
      }
      await capture.flush();
      await waitFor(() => site.highestContiguousSeq() === capture.lastSeq, { timeoutMs: 10_000, message: 'the writes never arrived' });
    };
    await writeSome(original, 20);
    await original.close();
    cpSync(dir.path, backup, { recursive: true });
    const again = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    await writeSome(again, 30);
    const journaled = again.lastSeq;
    await again.close();

    // The capture's directory comes back from the backup: its log ends 30 seqs before the journal.
    rmSync(dir.path, { recursive: true });
    cpSync(backup, dir.path, { recursive: true });
    rmSync(backup, { recursive: true });
    const restored = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    expect(restored.lastSeq).toBeLessThan(journaled);
    // The journal's progress tells it: the order restarts right above what the journal holds.
    await restored.confirm(journaled);
    expect(restored.checkpointsPaused).toBe(true);
    expect(restored.status().resync?.reason).toBe(`the journal holds seqs up to ${journaled}, past this splitter's last seq 20`);
    await waitFor(() => !restored.checkpointsPaused, { timeoutMs: 30_000, message: 'the resync never completed' });
    const cut = restored.insertCheckpoint({ id: id(3), kind: 'automatic', name: null, vmId: null })!;
    await restored.flush();
    await waitFor(() => site.records.has(cut), { timeoutMs: 10_000, message: 'the checkpoint never arrived' });
    expect(decodeRecord(site.records.get(journaled + 1)!)).toMatchObject({ kind: RecordKind.Restart, restart: { voidFrom: 0 } });
    expectSiteHoldsVolumesAt(site, restored, cut);
    await restored.close();
    // The log skips seqs at the restart, and opens again.
    const reopened = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    expect(reopened.lastSeq).toBe(cut);
    await reopened.close();
  });

  it('creates the ceiling for a log from before it, and refuses a damaged one without touching anything', async () => {
    const { dir, bus } = ctx;
    const ceilingFile = join(dir.path, 'seq-ceiling');
    const first = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    await first.write(volumes[0]!.id, 0, Buffer.alloc(4096, 1));
    await first.close();
    // A capture from before the ceiling: a log and no ceiling file. Nothing is lost: no restart.
    rmSync(ceilingFile);
    const second = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    expect(second.checkpointsPaused).toBe(false);
    expect(second.lastSeq).toBe(1);
    expect(SeqCeiling.open(ceilingFile)?.value).toBe(2 + SEQ_CEILING_STEP);
    await second.close();
    // A torn write damages one slot: the other still holds a ceiling. Both damaged: refused, nothing touched.
    const file = readFileSync(ceilingFile);
    writeFileSync(ceilingFile, Buffer.concat([Buffer.alloc(512, 0xee), file.subarray(512)]));
    expect(SeqCeiling.open(ceilingFile)?.value).toBeGreaterThan(1);
    writeFileSync(ceilingFile, Buffer.alloc(1024, 0xee));
    await expect(VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' })).rejects.toThrow(/seq-ceiling is damaged/);
    expect(readFileSync(ceilingFile).equals(Buffer.alloc(1024, 0xee))).toBe(true);
  });
});

describe('VpgCapture coordinated checkpoints (one member of a VPG on several hosts)', () => {
  const ctx = eachTestWithRecoverySite('capture-barrier-');
  const marker = { id: '0a1b2c3d-0000-4000-8000-0000000000c1', kind: 'automatic' as const, name: null, vmId: null };
  const barriers = (site: RecoverySite): { seq: number; epoch: number; void: boolean }[] =>
    [...site.records.entries()]
      .map(([seq, bytes]) => ({ seq, decoded: decodeRecord(bytes) }))
      .flatMap(({ seq, decoded }) =>
        decoded.kind === RecordKind.Checkpoint && decoded.marker.barrier ? [{ seq, epoch: decoded.marker.barrier.epoch, void: decoded.marker.barrier.void }] : [],
      );

  it('holds new writes from prepare to cut and puts them after the marker', async () => {
    const { dir, bus, site } = ctx;
    const capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    await capture.write(volumes[0]!.id, 0, Buffer.alloc(512, 1));
    expect(capture.prepareBarrier(7, marker, 'host-a', 60_000)).toBe('holding');
    let acknowledged = false;
    const held = logged(capture.write(volumes[0]!.id, 512, Buffer.alloc(512, 2))).then((seq) => {
      acknowledged = true;
      return seq;
    });
    await new Promise<void>((resolve) => setImmediate(resolve));
    expect(acknowledged).toBe(false);
    expect(capture.status().barrier).toMatchObject({ epoch: 7, checkpointId: marker.id });
    capture.cutBarrier(7, marker.id, 'host-a', true);
    const seq = await held;
    await capture.flush();
    await waitFor(() => site.highestContiguousSeq() >= seq, { timeoutMs: 5_000, message: 'the held write was never shipped' });
    // write 1, the marker, then the write that waited.
    expect(barriers(site)).toEqual([{ seq: 2, epoch: 7, void: false }]);
    expect(seq).toBe(3);
    expect(capture.status().checkpointStall.count).toBe(1);
    // The same epoch again (a redelivered command) changes nothing.
    expect(capture.prepareBarrier(7, marker, 'host-a', 60_000)).toBe('concluded');
    capture.cutBarrier(7, marker.id, 'host-a', true);
    await capture.close();
  });

  it('voids an epoch it cannot vouch for: a cut for another process, a hold that timed out, a cut it never held for', async () => {
    const { dir, bus, site } = ctx;
    const capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
    expect(capture.prepareBarrier(1, marker, 'host-a', 60_000)).toBe('holding');
    capture.cutBarrier(1, marker.id, 'host-a', false);
    expect(capture.prepareBarrier(2, marker, 'host-a', 20)).toBe('holding');
    // The hold's own timeout voids it, and a write waiting on it goes on without any cut.
    await capture.write(volumes[0]!.id, 0, Buffer.alloc(512, 1));
    capture.cutBarrier(2, marker.id, 'host-a', true);
    capture.cutBarrier(3, marker.id, 'host-a', true);
    // A newer prepare while an older epoch is still held voids the older one.
    expect(capture.prepareBarrier(4, marker, 'host-a', 60_000)).toBe('holding');
    expect(capture.prepareBarrier(5, marker, 'host-a', 60_000)).toBe('holding');
    capture.abortBarrier(5, marker.id, 'host-a');
    await capture.flush();
    await waitFor(() => barriers(site).length === 5, { timeoutMs: 5_000, message: 'not every epoch was concluded in the order' });
    expect(barriers(site).map(({ epoch, void: voided }) => ({ epoch, voided }))).toEqual([
      { epoch: 1, voided: true },
      { epoch: 2, voided: true },
      { epoch: 3, voided: true },
      { epoch: 4, voided: true },
      { epoch: 5, voided: true },
    ]);
    await capture.close();
  });
});


describe('VpgCapture when the disk is full', () => {
  const ctx = eachTestWithRecoverySite('capture-full-');
  const faults = diskFullFaults();
  const volume = volumes[0]!;
  const size = 8 * MiB;

  /** Every record the capture made, shipped, in order with no gap; the recovery site's image equals the volume. */
  async function expectStreamMatchesVolume(capture: VpgCapture): Promise<void> {
    await capture.flush();
    await waitFor(() => ctx.site.highestContiguousSeq() === capture.lastSeq, { timeoutMs: 5_000, message: 'the stream has a gap or stops short' });
    expect(ctx.site.records.size).toBe(capture.lastSeq);
    expect(ctx.site.image(volume.index, size).equals(capture.volumeById(volume.id).read(0, size))).toBe(true);
  }

  // Both paths of the capture: small batches go to log and volume in system calls on the event loop,
  // large ones on the thread pool.
  const paths: [string, number][] = [
    ['small writes, on the event loop', 4096],
    ['large writes, on the thread pool', MiB],
  ];

  const tag = (n: number, kind: 'tagged' | 'automatic' = 'tagged'): CheckpointMarkerBody => ({
    id: `0a1b2c3d-0000-4000-8000-0000000000d${n}`,
    kind,
    name: kind === 'tagged' ? `t${n}` : null,
    vmId: null,
  });

  it.each(paths)('takes the writes the log cannot take in degraded mode (%s): on the volume only, regions tracked, no checkpoint; with room again the regions are synced and both sites agree', async (_kind, length) => {
    const capture = await VpgCapture.open(vpg, ctx.dir.path, ctx.bus.createProducer(), { bootId: 'boot-1' });
    const random = seededRandom(11);
    const write = (slot: number): Promise<number | null> => capture.write(volume.id, (slot * length) % size, randomBuffer(random, length));
    for (let i = 0; i < 4; i++) {
      expect(await write(i)).not.toBeNull();
    }
    const cutBefore = capture.insertCheckpoint(tag(1))!;
    const volumeAtCutBefore = capture.volumeById(volume.id).read(0, size);

    faults.on = '/log/';
    // Taken, not refused: each is on its volume, with no seq; the seqs of the batches whose append
    // failed are handed out again.
    expect(await Promise.all([write(4), write(5), write(6)])).toEqual([null, null, null]);
    expect(capture.lastSeq).toBe(cutBefore);
    expect(capture.status().tracking).toMatchObject({ writes: 3, bytes: 3 * length });
    expect(capture.status().tracking?.reason).toContain('ENOSPC');
    expect(capture.status().dirtyRegions?.regions).toBeGreaterThan(0);
    // A flush completes: durable on this site (the stream cannot have these writes).
    await capture.flush();
    // No checkpoint while regions are dirty: an automatic one is skipped, a tagged one deferred.
    expect(capture.insertCheckpoint(tag(2, 'automatic'))).toBeNull();
    expect(capture.insertCheckpoint(tag(3))).toBeNull();
    expect(capture.lastSeq).toBe(cutBefore);

    faults.on = undefined;
    await waitFor(() => capture.status().dirtyRegions === null, { timeoutMs: 10_000, message: 'the dirty regions were never synced' });
    expect(capture.status().tracking).toBeNull();
    const volumeAtSync = capture.volumeById(volume.id).read(0, size);
    // Logged again, in a log with no hole.
    expect(await write(7)).toBe(capture.lastSeq);
    await Promise.all([write(8), write(9), write(1)]);
    await expectStreamMatchesVolume(capture);
    // The checkpoint before recovers the volume as it was then; the deferred one, inserted once the
    // regions were synced, as it was then; the automatic one was never cut.
    const markers = ctx.site.markers();
    expect(markers.map((m) => m.id)).toEqual([tag(1).id, tag(3).id]);
    expect(ctx.site.image(volume.index, size, cutBefore).equals(volumeAtCutBefore)).toBe(true);
    expect(ctx.site.image(volume.index, size, markers[1]!.seq).equals(volumeAtSync)).toBe(true);
    await capture.close();
    const reopened = await VpgCapture.open(vpg, ctx.dir.path, ctx.bus.createProducer(), { bootId: 'boot-1' });
    expect(reopened.previousEnd).toBe('clean');
    expect(reopened.lastSeq).toBe(capture.lastSeq);
    expect(reopened.status().dirtyRegions).toBeNull();
    await reopened.close();
  });

  it('goes into degraded mode when the log reaches its size limit, and out of it once the journal has confirmed enough', async () => {
    const segmentBytes = 256 * 1024;
    // At least four segments and four resync chunks.
    await expect(VpgCapture.open(vpg, ctx.dir.path, ctx.bus.createProducer(), { logSegmentBytes: segmentBytes, logLimitBytes: 4 * MiB - 1 })).rejects.toThrow(RangeError);
    const capture = await VpgCapture.open(vpg, ctx.dir.path, ctx.bus.createProducer(), { bootId: 'boot-1', logSegmentBytes: segmentBytes, logLimitBytes: 4 * MiB });
    const random = seededRandom(13);
    const seqs: (number | null)[] = [];
    for (let i = 0; i < 28; i++) {
      seqs.push(await capture.write(volume.id, (i * 256 * 1024) % size, randomBuffer(random, 256 * 1024)));
    }
    // About 4 MiB in, the log is full: every write from there on is tracked.
    const firstTracked = seqs.indexOf(null);
    expect(firstTracked).toBeGreaterThanOrEqual(14);
    expect(seqs.slice(firstTracked).every((seq) => seq === null)).toBe(true);
    expect(capture.status().tracking?.reason).toContain('limit');
    // A journal that confirms what the site has: the log is cut down, takes writes again, and the
    // dirty regions are synced, no faster than the journal confirms (the chunks fit under the limit).
    let mostBytes = 0;
    await waitFor(
      async () => {
        await capture.confirm(ctx.site.highestContiguousSeq());
        mostBytes = Math.max(mostBytes, capture.status().dirtyRegions ? logBytes(ctx.dir.path) : 0);
        return capture.status().dirtyRegions === null;
      },
      { timeoutMs: 10_000, message: 'the dirty regions were never synced' },
    );
    expect(mostBytes).toBeLessThanOrEqual(4 * MiB + segmentBytes);
    expect(await capture.write(volume.id, 0, randomBuffer(random, 4096))).not.toBeNull();
    await expectStreamMatchesVolume(capture);
    await capture.close();
  });

  it('closes in the middle of a sync that waits for room in the log, and the next open syncs what is left', async () => {
    const options = { bootId: 'boot-1', logSegmentBytes: 256 * 1024, logLimitBytes: 4 * MiB };
    const capture = await VpgCapture.open(vpg, ctx.dir.path, ctx.bus.createProducer(), options);
    const random = seededRandom(15);
    for (let i = 0; i < 28; i++) {
      await capture.write(volume.id, i * 256 * 1024, randomBuffer(random, 256 * 1024));
    }
    // Four regions (3 to 7 MiB) were written while tracking.
    expect(capture.status().dirtyRegions?.regions).toBe(4);
    await waitFor(() => ctx.site.highestContiguousSeq() === capture.lastSeq, { timeoutMs: 5_000, message: 'the logged writes never shipped' });
    // One confirmation: the log takes writes again; three chunks fit under the limit, the fourth waits for room.
    await capture.confirm(capture.lastSeq);
    await waitFor(() => capture.status().dirtyRegions?.sync?.regionsDone === 3, { timeoutMs: 10_000, message: 'the sync never reached the limit' });
    expect(capture.status().dirtyRegions?.regions).toBe(1);
    await capture.close();

    const reopened = await VpgCapture.open(vpg, ctx.dir.path, ctx.bus.createProducer(), options);
    expect(reopened.previousEnd).toBe('clean');
    await waitFor(
      async () => {
        await reopened.confirm(ctx.site.highestContiguousSeq());
        return reopened.status().dirtyRegions === null;
      },
      { timeoutMs: 10_000, message: 'the region left at the close was never synced' },
    );
    await expectStreamMatchesVolume(reopened);
    await reopened.close();
  });

  it('after a crash while tracking, redoes older logged writes only outside the dirty regions, then syncs those', async () => {
    const first = join(ctx.dir.path, 'first');
    const crashed = join(ctx.dir.path, 'crashed');
    const capture = await VpgCapture.open(vpg, first, ctx.bus.createProducer(), { bootId: 'boot-1' });
    const random = seededRandom(14);
    // A logged write over three regions (still in the log: the journal has not confirmed it)...
    const older = randomBuffer(random, 3 * MiB);
    expect(await capture.write(volume.id, 0, older)).not.toBeNull();
    // ... then, in degraded mode, a newer write into the middle region only.
    faults.on = '/log/';
    const newer = randomBuffer(random, 4096);
    expect(await capture.write(volume.id, MiB + 8192, newer)).toBeNull();
    await capture.flush();
    // The process dies here: its files as they are. In them, the logged write's first and third
    // regions never reached the volume (it died between log and volume).
    cpSync(first, crashed, { recursive: true });
    const fd = openSync(join(crashed, 'volumes', '0.img'), 'r+');
    writeSync(fd, Buffer.alloc(MiB), 0, MiB, 0);
    writeSync(fd, Buffer.alloc(MiB), 0, MiB, 2 * MiB);
    closeSync(fd);
    await capture.close();
    faults.on = undefined;

    const restarted = await VpgCapture.open(vpg, crashed, ctx.bus.createProducer(), { bootId: 'boot-1' });
    expect(restarted.previousEnd).toBe('process-crash');
    // Redone in the clean regions; the dirty one keeps the newer write the log does not have.
    const expected = Buffer.from(older);
    newer.copy(expected, MiB + 8192);
    expect(restarted.volumeById(volume.id).read(0, 3 * MiB).equals(expected)).toBe(true);
    await waitFor(() => restarted.status().dirtyRegions === null, { timeoutMs: 10_000, message: 'the dirty region was never synced' });
    await expectStreamMatchesVolume(restarted);
    await restarted.close();
  });

  it.each(paths)('keeps logged writes that failed on their volume, retries them before any new write, and cuts no checkpoint meanwhile (%s)', async (_kind, length) => {
    const capture = await VpgCapture.open(vpg, ctx.dir.path, ctx.bus.createProducer(), { bootId: 'boot-1' });
    const random = seededRandom(12);
    await capture.write(volume.id, 0, randomBuffer(random, length));
    faults.on = '/volumes/';
    const failedData = randomBuffer(random, length);
    await expect(capture.write(volume.id, length, failedData)).rejects.toMatchObject({ code: 'ENOSPC' });
    const logged = capture.lastSeq;
    expect(capture.status().volumeBehind).toMatchObject({ writes: 1, bytes: length });
    expect(capture.status().volumeBehind?.error).toContain('ENOSPC');
    // Still no room: a new write is refused before it gets a seq, and no checkpoint is cut.
    await expect(capture.write(volume.id, 3 * length, randomBuffer(random, length))).rejects.toMatchObject({ name: 'VolumeBehindError', code: 'ENOSPC' });
    expect(capture.lastSeq).toBe(logged);
    expect(capture.insertCheckpoint({ id: '0a1b2c3d-0000-4000-8000-0000000000c1', kind: 'tagged', name: 'during', vmId: null })).toBeNull();
    expect(capture.lastSeq).toBe(logged);

    faults.on = undefined;
    const after = randomBuffer(random, length);
    await capture.write(volume.id, 2 * length, after);
    expect(capture.status().volumeBehind).toBeNull();
    // The failed write is on the volume now, as the stream has it.
    expect(capture.volumeById(volume.id).read(length, length).equals(failedData)).toBe(true);
    expect(capture.volumeById(volume.id).read(2 * length, length).equals(after)).toBe(true);
    expect(capture.insertCheckpoint({ id: '0a1b2c3d-0000-4000-8000-0000000000c2', kind: 'tagged', name: 'after', vmId: null })).toBe(capture.lastSeq);
    await expectStreamMatchesVolume(capture);
    await capture.close();
  });

  /** A capture with one 4 KiB write of `fill` at `offset` in the log and not on its volume; the disk full still. */
  async function openWithOneWriteBehind(offset: number, fill: number): Promise<VpgCapture> {
    const capture = await VpgCapture.open(vpg, ctx.dir.path, ctx.bus.createProducer(), { bootId: 'boot-1' });
    faults.on = '/volumes/';
    await expect(capture.write(volume.id, offset, Buffer.alloc(4096, fill))).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(capture.status().volumeBehind).toMatchObject({ writes: 1 });
    return capture;
  }

  it('retries on its own once there is room, with no new write to prompt it', async () => {
    const capture = await openWithOneWriteBehind(0, 7);
    faults.on = undefined;
    await waitFor(() => capture.status().volumeBehind === null, { timeoutMs: 5_000, message: 'the failed write was never retried' });
    expect(capture.volumeById(volume.id).read(0, 4096).equals(Buffer.alloc(4096, 7))).toBe(true);
    await expectStreamMatchesVolume(capture);
    await capture.close();
  });

  it('zeroes every byte asked while writes are behind, since the volume does not hold them yet', async () => {
    const capture = await openWithOneWriteBehind(0, 7);
    faults.on = undefined;
    // The volume reads zeros where the write behind will land: a scan would find nothing to zero there.
    expect(capture.volumeById(volume.id).read(0, 4096).equals(Buffer.alloc(4096))).toBe(true);
    // Nor may block status call it a hole: it reports the whole range allocated until the write lands.
    expect(capture.volumeById(volume.id).runs(0, MiB, 10)).toEqual([{ start: 0, end: MiB, data: false }]);
    expect(capture.allocation(volume.id, 0, MiB, 10)).toEqual([{ start: 0, end: MiB, data: true }]);
    const before = capture.lastSeq;
    await capture.writeZeroes(volume.id, 0, 64 * 1024, false);
    // The write behind went first (it is older), then the zeros over it.
    expect(capture.status()).toMatchObject({ volumeBehind: null, zeroing: { requests: 1, bytes: 64 * 1024, capturedBytes: 64 * 1024 } });
    expect(capture.lastSeq).toBe(before + 1);
    expect(capture.volumeById(volume.id).read(0, 64 * 1024).equals(Buffer.alloc(64 * 1024))).toBe(true);
    await expectStreamMatchesVolume(capture);
    await capture.close();
  });

  it('stops a zeroing when it closes, rather than write to volumes that are closing', async () => {
    const capture = await VpgCapture.open(vpg, ctx.dir.path, ctx.bus.createProducer(), { bootId: 'boot-1' });
    await capture.write(volume.id, 0, Buffer.alloc(4 * MiB, 3));
    const before = capture.lastSeq;
    // Four writes of zeros to make; the first waits for the scan's first read, by which time close() has begun.
    const zeroing = capture.writeZeroes(volume.id, 0, 4 * MiB, false);
    const closed = capture.close();
    await expect(zeroing).rejects.toThrow(/is closing: the zeroing of \[0, 4194304\) stopped at 0/);
    await closed;
    expect(capture.lastSeq).toBe(before);
  });

  it('refuses a write that comes after it began to close, without going into degraded mode', async () => {
    const capture = await VpgCapture.open(vpg, ctx.dir.path, ctx.bus.createProducer(), { bootId: 'boot-1' });
    await capture.write(volume.id, 0, Buffer.alloc(4096, 1));
    const before = capture.lastSeq;
    const closed = capture.close();
    await expect(capture.write(volume.id, 0, Buffer.alloc(4096, 2))).rejects.toMatchObject({ code: 'failed-precondition', message: 'the capture of VPG capture-test is closing' });
    await closed;
    await expect(capture.write(volume.id, 4096, Buffer.alloc(4096, 2))).rejects.toMatchObject({ code: 'failed-precondition' });
    expect(capture.lastSeq).toBe(before);
    expect(capture.status().tracking).toBeNull();
  });

  it('closes without a clean mark while writes are behind, so the next start re-applies them from the log', async () => {
    const first = await openWithOneWriteBehind(8192, 9);
    // The journal has it, and says so: the log keeps it all the same, for the redo.
    await first.flush();
    await first.confirm(first.lastSeq);
    await first.close();
    faults.on = undefined;
    const second = await VpgCapture.open(vpg, ctx.dir.path, ctx.bus.createProducer(), { bootId: 'boot-1' });
    expect(second.previousEnd).toBe('process-crash');
    expect(second.volumeById(volume.id).read(8192, 4096).equals(Buffer.alloc(4096, 9))).toBe(true);
    await expectStreamMatchesVolume(second);
    await second.close();
  });
});

describe('VpgCapture when the link is down', () => {
  const ctx = eachTestWithRecoverySite('capture-link-');

  it('completes a flush durable here once the bus has not answered for flushLinkWaitMs, keeps logging, and ships it all when the link is back', async () => {
    const inner = ctx.bus.createProducer();
    let up = true;
    const producer: BusProducer = { send: (topic, messages) => (up ? inner.send(topic, messages) : Promise.reject(new Error('broker unreachable'))) };
    await expect(VpgCapture.open(vpg, ctx.dir.path, producer, { flushLinkWaitMs: 0 })).rejects.toThrow(RangeError);
    const capture = await VpgCapture.open(vpg, ctx.dir.path, producer, { bootId: 'boot-1', flushLinkWaitMs: 200 });
    const volume = volumes[0]!;
    const size = 4 * MiB;
    const random = seededRandom(31);
    await logged(capture.write(volume.id, 0, randomBuffer(random, 4096)));
    await capture.flush();
    expect(capture.status().localFlushes).toBeNull();

    up = false;
    const seq = await logged(capture.write(volume.id, 8192, randomBuffer(random, 4096)));
    // The bus does not answer: the flush completes all the same, durable on this site.
    await capture.flush();
    await capture.flush();
    expect(capture.status().localFlushes).toMatchObject({ count: 2 });
    expect(capture.status().shippedSeq).toBeLessThan(seq);
    // Nothing is tracked: the log holds every write, so a checkpoint is cut as usual.
    expect(capture.status().tracking).toBeNull();
    const cut = capture.insertCheckpoint({ id: '0a1b2c3d-0000-4000-8000-0000000000e1', kind: 'tagged', name: 'link-down', vmId: null });
    expect(cut).toBe(seq + 1);
    const atCut = capture.volumeById(volume.id).read(0, size);

    up = true;
    await waitFor(() => capture.status().shippedSeq === capture.lastSeq, { timeoutMs: 10_000, message: 'the log never shipped after the link came back' });
    await capture.flush();
    expect(capture.status().localFlushes).toBeNull();
    await waitFor(() => ctx.site.highestContiguousSeq() === capture.lastSeq, { timeoutMs: 5_000, message: 'the recovery site never got the log' });
    expect(ctx.site.image(volume.index, size, cut!).equals(atCut)).toBe(true);
    await capture.close();
  });
});
