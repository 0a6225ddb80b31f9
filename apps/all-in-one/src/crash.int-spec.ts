import { Client } from 'pg';
import { regionOf, unpackRow } from '@cdp/journal-store';
import { type Checkpoint } from '@cdp/domain';
import {
  ReferenceModel,
  expectCheckpointsRecoverBitExact,
  randomBuffer,
  restartableAllInOne,
  seededRandom,
  waitUntilJournaled,
} from '@cdp/testing';
import { createProtectedVpg } from './all-in-one.test-app';

/**
 * Crash test: the all-in-one process is killed with SIGKILL in the middle of a workload (one write in
 * flight, checkpoints being taken) and started again on the same data directory and database. No
 * acknowledged write is lost, none is applied twice, and every checkpoint, those recorded before the
 * kill included, recovers bit-exact.
 */
const SEED = Number(process.env['CRASH_SEED'] ?? 7);
const KiB = 1024;

describe('crash: SIGKILL mid-workload loses and doubles nothing', () => {
  const app = restartableAllInOne('crash-');

  it(`recovers every checkpoint after a kill -9 (seed ${SEED})`, async () => {
    const random = seededRandom(SEED);
    let { process: processUnderTest, api } = await app.start();

    const vpg = await createProtectedVpg(api, {
      name: 'crash',
      vms: [
        { name: 'vm-a', volumes: [{ name: 'a', sizeBytes: 1024 * KiB, blockSize: 512 }] },
        { name: 'vm-b', volumes: [{ name: 'b1', sizeBytes: 512 * KiB, blockSize: 4096 }, { name: 'b2', sizeBytes: 512 * KiB, blockSize: 512 }] },
      ],
      settings: { checkpointIntervalSeconds: 1 },
    });
    const volumes = vpg.vms.flatMap((vm) => vm.volumes);
    const model = new ReferenceModel(new Map(volumes.map((v) => [v.id, v.sizeBytes])));
    const nextWrite = (): { volumeId: string; volumeIndex: number; offset: number; data: Buffer } => {
      const volume = volumes[Math.floor(random() * volumes.length)]!;
      const length = 1 + Math.floor(random() * 16 * KiB);
      const offset = Math.floor(random() * (volume.sizeBytes - length + 1));
      return { volumeId: volume.id, volumeIndex: volume.index, offset, data: randomBuffer(random, length) };
    };

    // Phase 1: writes one at a time until a random point, with tagged checkpoints now and then, for at
    // least two automatic checkpoints' worth of time.
    const killAfter = 300 + Math.floor(random() * 400);
    const started = Date.now();
    let tags = 0;
    for (let i = 0; i < killAfter || Date.now() - started < 2_500; i++) {
      const w = nextWrite();
      model.record({ seq: await api.write(vpg.id, w.volumeId, w.offset, w.data), volumeId: w.volumeId, offset: w.offset, data: w.data });
      if (random() < 0.02) {
        await api.ok('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=0`, { name: `before-${++tags}` });
      }
    }
    const recordedBeforeKill = await api.ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints?limit=10000`);
    expect(recordedBeforeKill.length).toBeGreaterThanOrEqual(2);

    // The kill, with one write in flight whose fate the client cannot know.
    const inFlight = nextWrite();
    const inFlightRequest = api.write(vpg.id, inFlight.volumeId, inFlight.offset, inFlight.data).then(
      (seq) => seq,
      () => undefined,
    );
    await new Promise((resolve) => setImmediate(resolve));
    await processUnderTest.kill('SIGKILL');
    const acknowledgedInFlight = await inFlightRequest;

    ({ process: processUnderTest, api } = await app.start());
    // The splitter saw that the last run did not end cleanly and re-applied its log to the volumes.
    expect(processUnderTest.output()).toMatch(/unclean shutdown \(process-crash\): re-applied \d+ logged writes/);

    // The restarted splitter ships what its log holds; wait until the journal has all of it.
    await waitUntilJournaled(api, vpg.id);

    // Was the in-flight write captured? The journal index is the witness: any write seq the model does
    // not know must be that write, and there can be at most one.
    const pg = new Client({ connectionString: app.databaseUrl });
    await pg.connect();
    try {
      const known = new Set(model.all().map((w) => w.seq));
      // The index packs writes per batch and region; each write is listed once in the row of the
      // region its first byte is in (a write crossing a region boundary also appears in the next).
      const extentRows = (
        await pg.query<{ volume_index: number; region: number; first_seq: string; segment: number; position: string; entries: Buffer }>(
          `SELECT e.volume_index, e.region, e.first_seq, e.segment, e.position, e.entries FROM journal_extents e
             JOIN journal_vpgs j ON j.vpg_key = e.vpg_key WHERE j.vpg_id = $1`,
          [vpg.id],
        )
      ).rows;
      const rows = extentRows
        .flatMap((e) =>
          unpackRow({ volumeIndex: e.volume_index, region: e.region, firstSeq: Number(e.first_seq), segment: e.segment, position: Number(e.position), entries: e.entries }).filter(
            (w) => regionOf(w.offset) === e.region,
          ),
        )
        .sort((a, b) => a.seq - b.seq)
        .map((w) => ({ seq: w.seq, volume_index: w.volumeIndex, byte_offset: w.offset, length: w.length }));
      const unknown = rows.filter((r) => !known.has(Number(r.seq)));
      expect(unknown.length).toBeLessThanOrEqual(1);
      if (unknown[0]) {
        expect({ volume: unknown[0].volume_index, offset: Number(unknown[0].byte_offset), length: unknown[0].length }).toEqual({
          volume: inFlight.volumeIndex,
          offset: inFlight.offset,
          length: inFlight.data.length,
        });
        model.record({ seq: Number(unknown[0].seq), volumeId: inFlight.volumeId, offset: inFlight.offset, data: inFlight.data });
      } else {
        expect(acknowledgedInFlight).toBeUndefined();
      }
      // Nothing lost: every acknowledged write is journaled once, at its seq.
      const journaled = new Set(rows.map((r) => Number(r.seq)));
      expect(rows.length).toBe(journaled.size);
      for (const w of model.all()) {
        expect(journaled.has(w.seq)).toBe(true);
      }
      expect(rows.length).toBe(model.count);
    } finally {
      await pg.end();
    }

    // Phase 2: the restarted system keeps protecting.
    for (let i = 0; i < 100; i++) {
      const w = nextWrite();
      model.record({ seq: await api.write(vpg.id, w.volumeId, w.offset, w.data), volumeId: w.volumeId, offset: w.offset, data: w.data });
    }
    const final = await api.ok<{ status: string; checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'after' });
    expect(final.status).toBe('recorded');

    const checkpoints = await api.ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints?limit=10000`);
    const ids = new Set(checkpoints.map((c) => c.id));
    for (const before of recordedBeforeKill) {
      expect(ids.has(before.id)).toBe(true);
      expect(checkpoints.find((c) => c.id === before.id)?.cut).toBe(before.cut);
    }
    await expectCheckpointsRecoverBitExact(api, vpg.id, volumes, checkpoints, model);
  });
});
