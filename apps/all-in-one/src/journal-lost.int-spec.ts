import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Client } from 'pg';
import { type Checkpoint } from '@cdp/domain';
import { ReferenceModel, expectCheckpointsRecoverBitExact, randomBuffer, restartableAllInOne, seededRandom, waitFor, waitUntilJournaled } from '@cdp/testing';
import { createProtectedVpg } from './all-in-one.test-app';

const KiB = 1024;
const MiB = 1024 * KiB;

interface SplitterStatus {
  logFirstSeq: number | null;
}

/**
 * The recovery site loses the journal of a VPG (rebuilt, or its database restored from an old backup)
 * after the splitter has let go of the log segments the journal had confirmed. Nothing can ship those
 * seqs again: the journal asks for them, the splitter restarts the order at a new seq and resyncs every
 * volume after it, and the journal takes the restart in place of what it lacks. No checkpoint is
 * recorded inside the resync; the first one after it, and every later one, recovers bit-exact.
 */
describe('a journal that lost what the splitter log no longer holds', () => {
  const app = restartableAllInOne('journal-lost-');

  it('is healed by a restart of the order and a full resync, and recovers bit-exact after it', async () => {
    const random = seededRandom(4242);
    let { process: processUnderTest, api } = await app.start();
    const vpg = await createProtectedVpg(api, {
      name: 'journal-lost',
      vms: [{ name: 'vm', volumes: [{ name: 'a', sizeBytes: 8 * MiB, blockSize: 512 }, { name: 'b', sizeBytes: 4 * MiB, blockSize: 4096 }] }],
      settings: { checkpointIntervalSeconds: 1 },
    });
    const volumes = vpg.vms.flatMap((vm) => vm.volumes);
    const model = new ReferenceModel(new Map(volumes.map((v) => [v.id, v.sizeBytes])));
    const write = async (large: boolean): Promise<void> => {
      const volume = volumes[Math.floor(random() * volumes.length)]!;
      const length = large ? MiB : 1 + Math.floor(random() * 16 * KiB);
      const offset = Math.floor(random() * (volume.sizeBytes - length + 1));
      const data = randomBuffer(random, length);
      model.record({ seq: await api.write(vpg.id, volume.id, offset, data), volumeId: volume.id, offset, data });
    };

    // More than a log segment (64 MiB) of writes, so that the splitter deletes what the journal confirmed.
    for (let i = 0; i < 80; i++) {
      await write(i % 8 !== 7);
    }
    await api.ok('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'before' });
    await waitUntilJournaled(api, vpg.id, 60_000);
    let splitter: SplitterStatus | undefined;
    await waitFor(
      async () => {
        splitter = await api.ok<SplitterStatus>('GET', `/splitter/vpgs/${vpg.id}`);
        return (splitter.logFirstSeq ?? 0) > 1;
      },
      { timeoutMs: 10_000, message: 'the splitter log never let go of what the journal confirmed' },
    );
    const logFirst = splitter!.logFirstSeq!;
    expect(await processUnderTest.stop()).toBe(0);

    // The recovery site loses the VPG's journal: its index, its checkpoints and the requests for them, its files.
    const pg = new Client({ connectionString: app.databaseUrl });
    await pg.connect();
    try {
      const key = `(SELECT vpg_key FROM journal_vpgs WHERE vpg_id = $1)`;
      await pg.query(`DELETE FROM journal_extents WHERE vpg_key = ${key}`, [vpg.id]);
      await pg.query(`DELETE FROM journal_batches WHERE vpg_key = ${key}`, [vpg.id]);
      await pg.query(`DELETE FROM checkpoints WHERE vpg_id = $1`, [vpg.id]);
      await pg.query(`DELETE FROM checkpoint_requests WHERE vpg_id = $1`, [vpg.id]);
      await pg.query(`DELETE FROM journal_vpgs WHERE vpg_id = $1`, [vpg.id]);
    } finally {
      await pg.end();
    }
    await rm(join(app.dataDir, 'journal', vpg.id), { recursive: true, force: true });

    ({ process: processUnderTest, api } = await app.start());
    // The journal asks for seq 1; the log starts at logFirst: the splitter restarts the order (its
    // resync of 12 MiB may be over before a status could show it, so the log is the witness).
    const output = processUnderTest.output;
    await waitFor(() => /the order restarts at seq \d+/.test(output()), { timeoutMs: 30_000, message: 'the splitter never restarted the order' });
    expect(output()).toContain(`the journal lacks seqs from 1, and the splitter log holds only from ${logFirst}: the order restarts at seq`);
    // Writes go on, and a tagged checkpoint is asked for (while the resync runs, it waits for it).
    const tagged = api.ok<{ status: string; checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=60000`, { name: 'after' });
    for (let i = 0; i < 40; i++) {
      await write(i % 10 === 9);
    }
    expect((await tagged).status).toBe('recorded');
    await waitUntilJournaled(api, vpg.id, 60_000);
    expect(processUnderTest.output()).toMatch(/restarted its order at seq \d+ \(the journal lacks seqs from 1[^)]*\): seqs 1 to \d+ are void/);
    expect((await api.ok<{ restarts: number }>('GET', '/journal-writer/status')).restarts).toBe(1);

    // Only checkpoints from after the resync exist (the journal lost the older ones), and each recovers
    // bit-exact: one cut inside the resync would hold regions the resync had not reached yet.
    await api.ok('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'last' });
    const checkpoints = await api.ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints?limit=10000`);
    expect(checkpoints.filter((c) => c.kind === 'tagged').map((c) => c.name)).toEqual(['after', 'last']);
    expect(checkpoints.every((c) => c.cut > logFirst)).toBe(true);
    const sample = [...checkpoints.filter((c) => c.kind === 'tagged'), ...checkpoints.filter((c) => c.kind === 'automatic').slice(0, 3)];
    expect(await expectCheckpointsRecoverBitExact(api, vpg.id, volumes, sample, model)).toBe(sample.length * volumes.length);

    // The journal knows the stretch from the restart to the first checkpoint after it, and recovers no
    // point in time inside it; it is no longer syncing.
    const db = new Client({ connectionString: app.databaseUrl });
    await db.connect();
    let stretch: { from_seq: string; until_seq: string; reason: string };
    try {
      const rows = await db.query<{ from_seq: string; until_seq: string; reason: string }>(
        `SELECT s.from_seq, s.until_seq, s.reason FROM journal_syncs s JOIN journal_vpgs j USING (vpg_key) WHERE j.vpg_id = $1`,
        [vpg.id],
      );
      expect(rows.rows).toHaveLength(1);
      stretch = rows.rows[0]!;
    } finally {
      await db.end();
    }
    expect(stretch.reason).toMatch(/^restart of the order: the journal lacks seqs from 1/);
    const first = checkpoints.find((c) => c.cut === Number(stretch.until_seq))!;
    expect(checkpoints.every((c) => c.cut >= first.cut)).toBe(true);
    const inside = new Date(Date.parse(first.capturedAt) - 1).toISOString();
    const refused = await api.json<{ message: string }>('POST', `/vpgs/${vpg.id}/exports`, { volumeId: volumes[0]!.id, at: inside });
    expect(refused.status).toBe(412);
    expect(refused.body.message).toContain(`falls inside a sync of VPG ${vpg.id} (restart of the order`);
    expect((await api.ok<{ journal: { syncing: boolean } }>('GET', `/vpgs/${vpg.id}`)).journal.syncing).toBe(false);
  });
});
