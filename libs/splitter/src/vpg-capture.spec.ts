import { cpSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { InProcessBus, type BusConsumer } from '@cdp/bus';
import { RECORD_HEADER_BYTES, RecordKind, TOPICS, decodeRecord, splitRecordBatch } from '@cdp/contracts';
import { type Vpg } from '@cdp/domain';
import { FaultInjectingBus, randomBuffer, seededRandom, tempDir, waitFor, type TempDir } from '@cdp/testing';
import { REGION_BYTES } from './activity-log';
import { VpgCapture } from './vpg-capture';

const MiB = 1024 * 1024;

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

  image(volumeIndex: number, size: number): Buffer {
    const image = Buffer.alloc(size);
    for (const seq of [...this.records.keys()].sort((a, b) => a - b)) {
      const decoded = decodeRecord(this.records.get(seq)!);
      if (decoded.kind === RecordKind.Write && decoded.volumeIndex === volumeIndex) {
        decoded.data.copy(image, decoded.offset);
      }
    }
    return image;
  }

  async stop(): Promise<void> {
    await this.consumer?.stop();
  }
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
    const write = async (capture: VpgCapture): Promise<void> => {
      const volume = volumes[Math.floor(random() * volumes.length)]!;
      const length = 1 + Math.floor(random() * 64 * 1024);
      const offset = Math.floor(random() * (volume.sizeBytes - length + 1));
      await capture.write(volume.id, offset, randomBuffer(random, length));
    };
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
    cpSync(join(dir.path, 'log'), join(dir.path, 'log-durable'), { recursive: true });

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
    rmSync(join(dir.path, 'log'), { recursive: true });
    cpSync(join(dir.path, 'log-durable'), join(dir.path, 'log'), { recursive: true });
    const after = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-2', activityLogRegions: capacity });
    expect(after.previousEnd).toBe('host-crash');
    const resyncRecords = after.lastSeq - durableSeq;
    expect(resyncRecords).toBeGreaterThan(0);
    expect(resyncRecords).toBeLessThanOrEqual(capacity);

    await after.flush();
    await waitFor(() => site.highestContiguousSeq() === after.lastSeq, { timeoutMs: 5_000, message: 'the resync never arrived' });
    for (const volume of volumes) {
      const local = after.volumeById(volume.id).read(0, volume.sizeBytes);
      const remote = site.image(volume.index, volume.sizeBytes);
      expect(remote.equals(local)).toBe(true);
    }
    // A resync write covers exactly one region (or the volume's tail).
    for (let seq = durableSeq + 1; seq <= after.lastSeq; seq++) {
      const decoded = decodeRecord(site.records.get(seq)!);
      expect(decoded.kind === RecordKind.Write && decoded.offset % REGION_BYTES === 0).toBe(true);
    }
    await after.close();
    // The crashed instance is closed only now, when what it writes no longer matters.
    await before.close();
  });
});

describe('VpgCapture batching and shipping', () => {
  const ctx = eachTestWithRecoverySite('capture-batch-');

  /** A payload with reserved headroom in front, as the NBD server hands it over. */
  const withHeadroom = (data: Buffer): Buffer => {
    const backing = Buffer.allocUnsafe(RECORD_HEADER_BYTES + data.length);
    data.copy(backing, RECORD_HEADER_BYTES);
    return backing.subarray(RECORD_HEADER_BYTES);
  };

  it('writes issued together, overlapping and framed in place or not, land on both sites in seq order, markers among them', async () => {
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
        const inPlace = random() < 0.5;
        pending.push(capture.write(volume.id, offset, inPlace ? withHeadroom(data) : data, false, { inPlace }));
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
});
