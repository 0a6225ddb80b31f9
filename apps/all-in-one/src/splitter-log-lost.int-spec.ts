import { cp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { type Checkpoint } from '@cdp/domain';
import { ReferenceModel, expectCheckpointsRecoverBitExact, randomBuffer, restartableAllInOne, seededRandom, waitUntilJournaled } from '@cdp/testing';
import { createProtectedVpg } from './all-in-one.test-app';

const KiB = 1024;

/**
 * The splitter's log of a VPG is deleted by hand while the all-in-one is stopped (the volumes stay).
 * Started again, the splitter must not number its records from 1 again (the journal holds those seqs
 * and would drop the new records as duplicates, silently): it starts above the seq ceiling it kept
 * outside the log, restarts the order there and resyncs every volume. The checkpoint from before the
 * loss and the ones after it all recover bit-exact.
 */
describe('a splitter log lost while its volumes were kept', () => {
  const app = restartableAllInOne('splitter-log-lost-');

  it('restarts the order above every seq used, resyncs, and every checkpoint recovers bit-exact', async () => {
    const random = seededRandom(5151);
    let { process: processUnderTest, api } = await app.start();
    const vpg = await createProtectedVpg(api, {
      name: 'log-lost',
      vms: [{ name: 'vm', volumes: [{ name: 'a', sizeBytes: 2048 * KiB, blockSize: 512 }, { name: 'b', sizeBytes: 1024 * KiB, blockSize: 4096 }] }],
      settings: { checkpointIntervalSeconds: 1 },
    });
    const volumes = vpg.vms.flatMap((vm) => vm.volumes);
    const model = new ReferenceModel(new Map(volumes.map((v) => [v.id, v.sizeBytes])));
    const writes = async (n: number): Promise<number> => {
      let last = 0;
      for (let i = 0; i < n; i++) {
        const volume = volumes[Math.floor(random() * volumes.length)]!;
        const length = 1 + Math.floor(random() * 32 * KiB);
        const offset = Math.floor(random() * (volume.sizeBytes - length + 1));
        const data = randomBuffer(random, length);
        last = await api.write(vpg.id, volume.id, offset, data);
        model.record({ seq: last, volumeId: volume.id, offset, data });
      }
      return last;
    };

    const lastBefore = await writes(150);
    expect((await api.ok<{ status: string }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'before' })).status).toBe('recorded');
    await waitUntilJournaled(api, vpg.id);
    expect(await processUnderTest.stop()).toBe(0);
    await rm(join(app.dataDir, 'splitter', vpg.id, 'log'), { recursive: true });

    ({ process: processUnderTest, api } = await app.start());
    const firstAfter = await writes(60);
    // Not numbered from 1 again: above every seq the first run could have used.
    expect(firstAfter).toBeGreaterThan(lastBefore);
    expect((await api.ok<{ status: string }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=60000`, { name: 'after' })).status).toBe('recorded');
    await waitUntilJournaled(api, vpg.id, 60_000);
    expect(processUnderTest.output()).toMatch(/the splitter log is missing \(deleted or moved aside\), while its seq ceiling \d+ is not/);
    expect(processUnderTest.output()).toMatch(/restarted its order at seq \d+ \(the splitter log was missing at open/);

    const checkpoints = await api.ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints?limit=10000`);
    const tagged = checkpoints.filter((c) => c.kind === 'tagged');
    expect(tagged.map((c) => c.name)).toEqual(['before', 'after']);
    const sample = [...tagged, ...checkpoints.filter((c) => c.kind === 'automatic' && c.cut > firstAfter).slice(0, 2)];
    expect(await expectCheckpointsRecoverBitExact(api, vpg.id, volumes, sample, model)).toBe(sample.length * volumes.length);
  });
});

/**
 * The splitter's directory of a VPG (volumes, log, ceiling) is restored from a backup taken earlier,
 * while the journal went on past it. The restored log's seqs continue below what the journal holds,
 * so the journal would drop its next writes as duplicates, silently. It reports its applied seq for
 * such a batch; the splitter sees a seq it never handed out and restarts the order above it, with a
 * full resync. Every checkpoint recovers bit-exact: those from before the restore, and those after.
 */
describe('a splitter directory restored from a backup while the journal went on', () => {
  const app = restartableAllInOne('splitter-restored-');

  it('restarts the order above the journal, resyncs, and every checkpoint recovers bit-exact', async () => {
    const random = seededRandom(5252);
    let { process: processUnderTest, api } = await app.start();
    const vpg = await createProtectedVpg(api, {
      name: 'restored',
      vms: [{ name: 'vm', volumes: [{ name: 'a', sizeBytes: 2048 * KiB, blockSize: 512 }] }],
      settings: { checkpointIntervalSeconds: 1 },
    });
    const volume = vpg.vms[0]!.volumes[0]!;
    let model = new ReferenceModel(new Map([[volume.id, volume.sizeBytes]]));
    const writes = async (n: number): Promise<void> => {
      for (let i = 0; i < n; i++) {
        const length = 1 + Math.floor(random() * 32 * KiB);
        const offset = Math.floor(random() * (volume.sizeBytes - length + 1));
        const data = randomBuffer(random, length);
        model.record({ seq: await api.write(vpg.id, volume.id, offset, data), volumeId: volume.id, offset, data });
      }
    };
    const splitterDir = join(app.dataDir, 'splitter', vpg.id);
    const backupDir = join(app.dataDir, 'backup');

    await writes(40);
    expect((await api.ok<{ status: string }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'backed-up' })).status).toBe('recorded');
    await waitUntilJournaled(api, vpg.id);
    expect(await processUnderTest.stop()).toBe(0);
    await cp(splitterDir, backupDir, { recursive: true });
    const backedUp = [...model.all()];

    ({ process: processUnderTest, api } = await app.start());
    await writes(40);
    expect((await api.ok<{ status: string }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'lost-on-site' })).status).toBe('recorded');
    await waitUntilJournaled(api, vpg.id);
    const journaled = (await api.ok<{ journal: { appliedSeq: number } }>('GET', `/vpgs/${vpg.id}`)).journal.appliedSeq;
    expect(await processUnderTest.stop()).toBe(0);

    // The restore: the protected site goes back to the backup; the recovery site keeps all it has.
    await rm(splitterDir, { recursive: true });
    await cp(backupDir, splitterDir, { recursive: true });
    const afterRestore = model;
    model = new ReferenceModel(new Map([[volume.id, volume.sizeBytes]]));
    for (const w of backedUp) {
      model.record(w);
    }
    ({ process: processUnderTest, api } = await app.start());
    // Its first writes reuse seqs the journal holds: dropped as duplicates, then the restart above them.
    await writes(20);
    expect((await api.ok<{ status: string }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=60000`, { name: 'after' })).status).toBe('recorded');
    await waitUntilJournaled(api, vpg.id, 60_000);
    expect(processUnderTest.output()).toContain(`the journal holds seqs up to ${journaled}, past this splitter's last seq`);
    expect((await api.ok<{ restarts: number }>('GET', '/journal-writer/status')).restarts).toBe(1);

    const checkpoints = await api.ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints?limit=10000`);
    const byName = (name: string): Checkpoint => checkpoints.find((c) => c.name === name)!;
    expect(byName('after').cut).toBeGreaterThan(journaled);
    // Before the restore, the journal's own history: the two models agree with it.
    expect(await expectCheckpointsRecoverBitExact(api, vpg.id, [volume], [byName('backed-up'), byName('lost-on-site')], afterRestore)).toBe(2);
    // After it: the volume as restored, with the writes since.
    const later = checkpoints.filter((c) => c.cut >= byName('after').cut);
    expect(await expectCheckpointsRecoverBitExact(api, vpg.id, [volume], later, model)).toBe(later.length);
  });
});
