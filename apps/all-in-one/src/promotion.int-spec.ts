import { stat } from 'node:fs/promises';
import { Client } from 'pg';
import { join } from 'node:path';
import { type Checkpoint, type Vpg } from '@cdp/domain';
import { REPLICA_LOCK_CLASS, replicaFile } from '@cdp/journal-store';
import { JournalWriterService } from '@cdp/journal-writer';
import { ReferenceModel, expectCheckpointsRecoverBitExact, randomBuffer, seededRandom, waitFor, type ApiClient } from '@cdp/testing';
import { createProtectedVpg, startTestApp, type TestApp } from './all-in-one.test-app';

/**
 * Promotion through the whole pipeline: a VPG with the shortest history the domain allows (60 s)
 * takes a workload through the HTTP API; promotion then runs with a clock ten minutes ahead, so every
 * checkpoint is old and only the newest stays, its image now being exactly the replica. That
 * checkpoint, and every checkpoint taken after more writes (replica + journal together), must
 * recover bit-exact against the model; a second promotion on top of the first must too.
 */
const KiB = 1024;
const TEN_MINUTES_MS = 10 * 60_000;

describe('promotion keeps the journal to its history window', () => {
  let testApp: TestApp;
  let api: ApiClient;
  let writer: JournalWriterService;

  beforeAll(async () => {
    testApp = await startTestApp();
    api = testApp.api;
    writer = testApp.app.get(JournalWriterService);
  });

  afterAll(async () => {
    await testApp?.close();
  });

  it('moves old writes into the replica and every remaining checkpoint recovers bit-exact', async () => {
    const random = seededRandom(31337);
    const vpg: Vpg = await createProtectedVpg(api, {
      name: 'promoted',
      vms: [{ name: 'vm', volumes: [{ name: 'a', sizeBytes: 512 * KiB }, { name: 'b', sizeBytes: 1280 * KiB, blockSize: 4096 }] }],
      settings: { journalHistorySeconds: 60, historyWarningSeconds: 30, historyAlertSeconds: 10, checkpointIntervalSeconds: 1 },
    });
    const volumes = vpg.vms.flatMap((vm) => vm.volumes);
    const model = new ReferenceModel(new Map(volumes.map((v) => [v.id, v.sizeBytes])));

    const workload = async (count: number, tag: string): Promise<Checkpoint> => {
      for (let i = 0; i < count; i++) {
        const volume = volumes[Math.floor(random() * volumes.length)]!;
        const length = 1 + Math.floor(random() * (random() < 0.2 ? 48 * KiB : 4 * KiB));
        // Many writes in the first 64 KiB, so later writes overwrite bytes already in the replica.
        const span = random() < 0.5 ? 64 * KiB + length : volume.sizeBytes;
        const offset = Math.floor(random() * (Math.min(span, volume.sizeBytes) - length + 1));
        const data = randomBuffer(random, length);
        model.record({ seq: await api.write(vpg.id, volume.id, offset, data), volumeId: volume.id, offset, data });
        if (i % 50 === 49) {
          await api.ok('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=0`, { name: `${tag}-${i}` });
        }
      }
      const recorded = await api.ok<{ status: string; checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: tag });
      expect(recorded.status).toBe('recorded');
      return recorded.checkpoint;
    };
    const list = (): Promise<Checkpoint[]> => api.ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints?limit=10000`);
    const promote = async (): Promise<{ oldest: Checkpoint; removed: Checkpoint[] }> => {
      const before = await list();
      const results = await writer.promoteAll(new Date(Date.now() + TEN_MINUTES_MS));
      const result = results.find((r) => r.vpgId === vpg.id);
      expect(result).toMatchObject({ promoted: true });
      const after = await list();
      const oldest = after[0]!;
      // Every checkpoint was older than the history: the newest at the time stays, the rest go.
      expect(result!.oldestCheckpoint?.id).toBe(oldest.id);
      expect(result!.replicaSeq).toBe(oldest.cut - 1);
      expect(before.filter((c) => c.cut >= oldest.cut).map((c) => c.id)).toEqual(after.filter((c) => before.some((b) => b.id === c.id)).map((c) => c.id));
      return { oldest, removed: before.filter((c) => c.cut < oldest.cut) };
    };

    const first = await workload(200, 'first');
    const firstPromotion = await promote();
    expect(firstPromotion.oldest.cut).toBeGreaterThanOrEqual(first.cut);
    expect(firstPromotion.removed.map((c) => c.name)).toEqual(expect.arrayContaining(['first-49', 'first-99', 'first-149', 'first-199']));
    // A removed checkpoint is no longer recorded.
    const gone = await api.bytes(`/vpgs/${vpg.id}/checkpoints/${firstPromotion.removed[0]!.id}/volumes/${volumes[0]!.id}/image`);
    expect(gone.status).toBe(404);
    // The replica files are there, each the size of its volume.
    for (const volume of volumes) {
      expect((await stat(replicaFile(join(testApp.dataDir, 'journal'), vpg.id, volume.index))).size).toBe(volume.sizeBytes);
    }
    await expectCheckpointsRecoverBitExact(api, vpg.id, volumes, await list(), model);

    // More writes on top of the replica: the journal supplies what they cover, the replica the rest.
    const second = await workload(120, 'second');
    const afterWrites = await list();
    expect(afterWrites[0]!.id).toBe(firstPromotion.oldest.id);
    expect(afterWrites.some((c) => c.id === second.id)).toBe(true);
    await expectCheckpointsRecoverBitExact(api, vpg.id, volumes, afterWrites, model);

    // A second promotion applies the newer writes over the first replica.
    const secondPromotion = await promote();
    expect(secondPromotion.oldest.cut).toBeGreaterThanOrEqual(second.cut);
    await expectCheckpointsRecoverBitExact(api, vpg.id, volumes, await list(), model);
  });

  it('releases an image reader as soon as its client goes away, so promotion is not held up', async () => {
    const vpg = await createProtectedVpg(api, {
      name: 'abandoned-download',
      vms: [{ name: 'vm', volumes: [{ name: 'big', sizeBytes: 64 * 1024 * KiB }] }],
    });
    const volume = vpg.vms[0]!.volumes[0]!;
    await api.write(vpg.id, volume.id, 0, Buffer.alloc(4 * KiB, 7));
    const tagged = await api.ok<{ checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'big' });

    // This VPG's replica locks. The index compactor also takes one, shared, for the length of a short
    // transaction every few seconds, so each count is awaited rather than read once.
    const readerLocks = async (): Promise<number> => {
      const pg = new Client({ connectionString: testApp.databaseUrl });
      await pg.connect();
      try {
        const { rows } = await pg.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_locks l JOIN journal_vpgs v ON v.vpg_id = $2
            WHERE l.locktype = 'advisory' AND l.classid = $1 AND l.objid::bigint = v.vpg_key`,
          [REPLICA_LOCK_CLASS, vpg.id],
        );
        return rows[0]!.n;
      } finally {
        await pg.end();
      }
    };
    const abort = new AbortController();
    const response = await fetch(`${api.baseUrl}/api/vpgs/${vpg.id}/checkpoints/${tagged.checkpoint.id}/volumes/${volume.id}/image`, { signal: abort.signal });
    const reader = response.body!.getReader();
    try {
      await reader.read();
      await waitFor(async () => (await readerLocks()) === 1, { timeoutMs: 5_000, message: 'the image reader never held its lock alone' });
    } finally {
      // Gone whatever happened above: an open download would hold the app's shutdown for two minutes.
      abort.abort();
      await reader.cancel().catch(() => undefined);
    }
    // Far sooner than the two-minute idle safety net.
    await waitFor(async () => (await readerLocks()) === 0, { timeoutMs: 5_000, message: 'the abandoned image reader kept its lock' });
  });
});
