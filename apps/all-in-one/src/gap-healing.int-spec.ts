import { InProcessBus } from '@cdp/bus';
import { TOPICS, recordSeq, splitRecordBatch } from '@cdp/contracts';
import { type Checkpoint } from '@cdp/domain';
import {
  FaultInjectingBus,
  ReferenceModel,
  expectCheckpointsRecoverBitExact,
  randomBuffer,
  seededRandom,
  type ApiClient,
} from '@cdp/testing';
import { createProtectedVpg, startTestApp, type TestApp } from './all-in-one.test-app';

/**
 * The link between the sites loses one batch and damages another, while telling the sender both
 * arrived. The journal must notice each gap (never skip it), ask the splitter to replay from the first
 * missing seq, and end up holding the exact write order: every checkpoint recovers bit-exact.
 */
describe('gaps and corruption in transit are detected and healed', () => {
  let testApp: TestApp;
  let api: ApiClient;
  let bus: FaultInjectingBus;

  beforeAll(async () => {
    // Each fault hits the first message that carries records never shipped before, past a given seq,
    // so each one is a real gap whatever the timing of replays.
    let highest = 0;
    const pending: { afterSeq: number; fault: 'drop' | 'corrupt' }[] = [
      { afterSeq: 20, fault: 'drop' },
      { afterSeq: 120, fault: 'corrupt' },
    ];
    bus = new FaultInjectingBus(new InProcessBus(), (topic, _index, message) => {
      if (topic !== TOPICS.recoveryWrites) {
        return 'deliver';
      }
      const seqs = splitRecordBatch(message.value).map(recordSeq);
      const first = seqs[0] ?? 0;
      const fresh = first > highest;
      highest = Math.max(highest, ...seqs);
      const next = pending[0];
      if (fresh && next && first > next.afterSeq) {
        pending.shift();
        return next.fault;
      }
      return 'deliver';
    });
    testApp = await startTestApp({ bus });
    api = testApp.api;
  });

  afterAll(async () => {
    await testApp?.close();
  });

  it('replays from the splitter log and recovers every checkpoint', async () => {
    const random = seededRandom(99);
    const vpg = await createProtectedVpg(api, {
      name: 'lossy-link',
      vms: [{ name: 'vm', volumes: [{ name: 'a', sizeBytes: 512 * 1024 }, { name: 'b', sizeBytes: 256 * 1024, blockSize: 4096 }] }],
      settings: { checkpointIntervalSeconds: 1 },
    });
    const volumes = vpg.vms.flatMap((vm) => vm.volumes);
    const model = new ReferenceModel(new Map(volumes.map((v) => [v.id, v.sizeBytes])));
    for (let i = 0; i < 200; i++) {
      const volume = volumes[i % volumes.length]!;
      const length = 1 + Math.floor(random() * 8192);
      const offset = Math.floor(random() * (volume.sizeBytes - length + 1));
      const data = randomBuffer(random, length);
      model.record({ seq: await api.write(vpg.id, volume.id, offset, data), volumeId: volume.id, offset, data });
      if (i % 40 === 39) {
        await api.ok('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=0`, { name: `t${i}` });
      }
    }
    const final = await api.ok<{ status: string; checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'final' });
    expect(final.status).toBe('recorded');

    expect(bus.injected.map((f) => f.fault).sort()).toEqual(['corrupt', 'drop']);
    const writer = await api.ok<{ gaps: number }>('GET', '/journal-writer/status');
    expect(writer.gaps).toBe(2);

    const checkpoints = await api.ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints?limit=10000`);
    expect(checkpoints.filter((c) => c.kind === 'tagged').map((c) => c.name)).toEqual(['t39', 't79', 't119', 't159', 't199', 'final']);
    await expectCheckpointsRecoverBitExact(api, vpg.id, volumes, checkpoints, model);
  });
});
