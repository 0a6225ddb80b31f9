import { type Checkpoint } from '@cdp/domain';
import { ReferenceModel, expectCheckpointsRecoverBitExact, randomBuffer, seededRandom, waitFor, type ApiClient } from '@cdp/testing';
import { createProtectedVpg, startTestApp, type TestApp } from './all-in-one.test-app';

/**
 * The golden test: a VPG of three volumes on two VMs takes a seeded random workload through the
 * public HTTP API (random offsets and lengths, overlapping writes, writes across block boundaries,
 * interleaved across volumes, several in flight), with automatic checkpoints every second and tagged
 * ones at random moments. The test keeps its own model of every acknowledged write; for every
 * recorded checkpoint, the recovered image of every volume must equal the model's, byte for byte.
 */
const SEED = Number(process.env['GOLDEN_SEED'] ?? 20261125);
const KiB = 1024;

describe('golden: every checkpoint recovers bit-exact', () => {
  let testApp: TestApp;
  let api: ApiClient;

  beforeAll(async () => {
    testApp = await startTestApp();
    api = testApp.api;
  });

  afterAll(async () => {
    await testApp?.close();
  });

  it(`recovers every volume at every checkpoint (seed ${SEED})`, async () => {
    const random = seededRandom(SEED);
    const vpg = await createProtectedVpg(api, {
      name: 'golden',
      vms: [
        { name: 'app-vm', volumes: [{ name: 'root', sizeBytes: 4 * 1024 * KiB, blockSize: 512 }] },
        {
          name: 'db-vm',
          volumes: [
            { name: 'data', sizeBytes: 2 * 1024 * KiB, blockSize: 4096 },
            { name: 'log', sizeBytes: 1024 * KiB, blockSize: 512 },
          ],
        },
      ],
      settings: { checkpointIntervalSeconds: 1 },
    });
    const volumes = vpg.vms.flatMap((vm) => vm.volumes);
    expect(volumes).toHaveLength(3);

    const model = new ReferenceModel(new Map(volumes.map((v) => [v.id, v.sizeBytes])));
    const tagged: string[] = [];
    const deadline = Date.now() + 6_000;
    const inFlight = 4;
    let written = 0;
    // Several writers at once, so acknowledgements interleave; each write's seq comes back in its
    // acknowledgement, which is all the model needs to order them.
    const writer = async (): Promise<void> => {
      while (Date.now() < deadline) {
        const volume = volumes[Math.floor(random() * volumes.length)]!;
        const small = random() < 0.5;
        const length = 1 + Math.floor(random() * (small ? 4 * KiB : 64 * KiB));
        const offset = Math.floor(random() * (volume.sizeBytes - length + 1));
        const data = randomBuffer(random, length);
        const seq = await api.write(vpg.id, volume.id, offset, data);
        model.record({ seq, volumeId: volume.id, offset, data });
        written++;
        if (random() < 0.01) {
          const name = `tag-${tagged.length + 1}`;
          tagged.push(name);
          // Not awaited for recording: tagged checkpoints land between in-flight writes.
          await api.ok('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=0`, { name });
        }
      }
    };
    await Promise.all(Array.from({ length: inFlight }, writer));
    const final = await api.ok<{ status: string; checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'final' });
    expect(final.status).toBe('recorded');
    tagged.push('final');

    let checkpoints: Checkpoint[] = [];
    await waitFor(
      async () => {
        checkpoints = await api.ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints?limit=10000`);
        const names = new Set(checkpoints.map((c) => c.name));
        return tagged.every((t) => names.has(t));
      },
      { timeoutMs: 30_000, message: 'not every tagged checkpoint was recorded' },
    );
    const automatic = checkpoints.filter((c) => c.kind === 'automatic');
    expect(automatic.length).toBeGreaterThanOrEqual(4);
    expect(written).toBeGreaterThan(200);
    // Every acknowledged write is inside the final checkpoint.
    expect(Math.max(...model.all().map((w) => w.seq))).toBeLessThan(final.checkpoint.cut);

    const compared = await expectCheckpointsRecoverBitExact(api, vpg.id, volumes, checkpoints, model);
    expect(compared).toBe(checkpoints.length * volumes.length);

    // The slider: every tagged checkpoint, marked, in time order, never more than 180.
    const slider = await api.ok<{ checkpoints: (Checkpoint & { marked: boolean })[] }>('GET', `/vpgs/${vpg.id}/timeline`);
    expect(slider.checkpoints.length).toBeLessThanOrEqual(180);
    expect(slider.checkpoints.filter((c) => c.marked).map((c) => c.name).sort()).toEqual([...tagged].sort());
    const times = slider.checkpoints.map((c) => Date.parse(c.capturedAt));
    expect(times).toEqual([...times].sort((a, b) => a - b));
    // A VPG younger than its configured history is still filling it, not in alert.
    const shown = await api.ok<{ history: { status: string; configuredSeconds: number } }>('GET', `/vpgs/${vpg.id}`);
    expect(shown.history).toMatchObject({ status: 'filling', configuredSeconds: 4 * 3600 });
  });
});
