import { join } from 'node:path';
import { oneVmVpg, tempDir, waitFor, type TempDir } from '@cdp/testing';
import { CheckpointGate } from './checkpoint-gate';
import { ForcedResync, RESYNC_CHUNK_BYTES, readResyncProgress, type ResyncHost } from './forced-resync';
import { ProtectedVolume } from './protected-volume';

const MiB = 1024 * 1024;
const vpg = oneVmVpg('6f1d2c3b-4a59-4e8f-9a7b-1c2d3e4f5a70', 'resync-test', '0a1b2c3d-0000-4000-8000-000000000001', [
  { id: '0a1b2c3d-0000-4000-8000-000000000011', name: 'a', index: 0, sizeBytes: 4 * MiB, blockSize: 512 }
]);

/**
 * A capture reduced to what the resync sees: chunks get seqs from a counter, the bus acknowledges
 * seqs when the test says so, and the log can be cut back (seqs handed out again, as after a failed
 * append on the thread pool).
 */
class FakeCapture {
  readonly chunks: { seq: number; offset: number }[] = [];
  nextSeq = 1;
  shipped = 0;
  cuts = 0;
  private waiters: { seq: number; resolve: () => void }[] = [];

  host(volume: ProtectedVolume): ResyncHost {
    return {
      vpg,
      volumes: new Map([[0, volume]]),
      captureChunk: (_volume, offset) => {
        const seq = this.nextSeq++;
        this.chunks.push({ seq, offset });
        return seq;
      },
      applying: () => undefined,
      shippedSeq: () => this.shipped,
      waitShipped: (seq) => (this.shipped >= seq ? Promise.resolve() : new Promise((resolve) => this.waiters.push({ seq, resolve }))),
      heldBarrier: () => undefined,
      logCuts: () => this.cuts,
      gate: new CheckpointGate(() => undefined),
    };
  }

  get waiting(): number {
    return this.waiters.length;
  }

  ship(seq: number): void {
    this.shipped = Math.max(this.shipped, seq);
    const ready = this.waiters.filter((w) => w.seq <= this.shipped);
    this.waiters = this.waiters.filter((w) => w.seq > this.shipped);
    for (const w of ready) {
      w.resolve();
    }
  }

  /** The log is cut back to `seq`: every seq from there on is handed out again. */
  cutBackTo(seq: number): void {
    this.cuts++;
    this.nextSeq = seq;
  }
}

describe('ForcedResync', () => {
  let dir: TempDir;
  let volume: ProtectedVolume;

  beforeEach(async () => {
    dir = await tempDir('forced-resync-');
    volume = ProtectedVolume.open(vpg.vms[0]!.volumes[0]!, join(dir.path, 'a.img'));
  });

  afterEach(async () => {
    volume.close();
    await dir.cleanup();
  });

  it('reads again the chunks a cut of the log may have taken, instead of taking the bus acknowledging their seqs for them', async () => {
    const fake = new FakeCapture();
    const host = fake.host(volume);
    const resync = await ForcedResync.open(dir.path, host);
    resync.start({ resyncId: 'r-1', volumeIds: null, requestedAt: new Date().toISOString(), reason: 'test' });
    expect(host.gate.held).toBe(true);
    // All four chunks captured, none acknowledged: the resync waits for the last.
    await waitFor(() => fake.chunks.length === 4 && fake.waiting === 1, { timeoutMs: 5_000, message: 'the resync never captured its chunks' });
    // A failed append cuts the log back to the third chunk's seq; other records take seqs 3 and 4, and
    // the bus acknowledges them.
    fake.cutBackTo(3);
    fake.nextSeq = 5;
    fake.ship(4);
    // Every chunk not yet settled when the cut was seen is read again (the resync cannot tell which
    // of them the cut took), and only then is the resync complete.
    await waitFor(() => fake.chunks.length === 8 && fake.waiting === 1, { timeoutMs: 5_000, message: 'the resync did not read the chunks again' });
    expect(fake.chunks.slice(4).map((c) => c.offset / RESYNC_CHUNK_BYTES)).toEqual([0, 1, 2, 3]);
    expect(resync.inProgress).toBe(true);
    fake.ship(fake.nextSeq - 1);
    await waitFor(() => !resync.inProgress, { timeoutMs: 5_000, message: 'the resync never completed' });
    const progress = readResyncProgress(dir.path);
    expect(progress).toMatchObject({ id: 'r-1', bytesDone: 4 * MiB });
    expect(progress?.completedAt).not.toBeNull();
    expect(host.gate.held).toBe(false);
    await resync.stop();
  });
});
