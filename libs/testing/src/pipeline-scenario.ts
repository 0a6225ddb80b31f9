import { Client } from 'pg';
import { type Checkpoint, type Volume, type Vpg } from '@cdp/domain';
import { regionOf, unpackRow } from '@cdp/journal-store';
import { expectCheckpointsRecoverBitExact } from './checkpoint-verification';
import { ReferenceModel, randomBuffer, seededRandom } from './reference-model';
import { type PipelineService, type ServicePipeline } from './service-pipeline';
import { waitFor } from './wait-for';

/**
 * The multi-process scenario, on whichever broker and database the pipeline was given: a seeded random
 * workload of overlapping writes on three volumes of two VMs through the splitter's HTTP API, automatic
 * checkpoints and tagged ones through the scheduler's. In the middle of it, the journal writer, the
 * transport, the splitter and the scheduler are each killed with SIGKILL and started again. Replication
 * resumes by itself each time; at the end every acknowledged write is in the journal exactly once, the
 * journal's applied seq is the splitter's last seq, and every checkpoint recovers bit-exact through the
 * recovery orchestrator. Starts every service first; leaves them running.
 */
export const KILLED_SERVICES: readonly PipelineService[] = ['journal-writer', 'transport', 'splitter', 'checkpoint-scheduler'];

const KiB = 1024;

interface PlannedWrite {
  readonly volume: Volume;
  readonly offset: number;
  readonly data: Buffer;
}

interface JournalRow {
  readonly seq: number;
  readonly volumeIndex: number;
  readonly offset: number;
  readonly length: number;
}

export async function runKillAndRestartScenario(pipeline: ServicePipeline, options: { readonly seed: number; readonly databaseUrl: string }): Promise<void> {
  const { seed } = options;
  await pipeline.startAll();
  for (const service of ['recovery-orchestrator', 'journal-writer', 'transport', 'splitter', 'checkpoint-scheduler'] as const) {
    const live = await pipeline.api(service).json<{ status: string }>('GET', '/health/live');
    expect(live).toEqual({ status: 200, body: { status: 'ok' } });
    const ready = await pipeline.api(service).json<{ status: string; checks: Record<string, { ready: boolean }> }>('GET', '/health/ready');
    expect({ service, status: ready.status, body: ready.body.status }).toEqual({ service, status: 200, body: 'ready' });
    expect(ready.body.checks['bus']?.ready).toBe(true);
  }

  const orchestrator = (): ReturnType<ServicePipeline['api']> => pipeline.api('recovery-orchestrator');
  const vpg = await orchestrator().ok<Vpg>('POST', '/vpgs', {
    name: 'pipeline',
    vms: [
      { name: 'app-vm', volumes: [{ name: 'root', sizeBytes: 512 * KiB, blockSize: 512 }] },
      {
        name: 'db-vm',
        volumes: [
          { name: 'data', sizeBytes: 256 * KiB, blockSize: 4096 },
          { name: 'log', sizeBytes: 256 * KiB, blockSize: 512 },
        ],
      },
    ],
    settings: { checkpointIntervalSeconds: 2 },
  });
  const volumes = vpg.vms.flatMap((vm) => vm.volumes);
  // The splitter learns the VPG from cdp.events, published by the orchestrator's relay.
  await waitFor(async () => (await pipeline.api('splitter').json('GET', `/splitter/vpgs/${vpg.id}`)).status === 200, {
    timeoutMs: 30_000,
    intervalMs: 100,
    message: 'the splitter never picked up the VPG from cdp.events',
  });

  const random = seededRandom(seed);
  const model = new ReferenceModel(new Map(volumes.map((v) => [v.id, v.sizeBytes])));
  // Writes whose request failed: the splitter may have captured them before it died, or not.
  const uncertain: PlannedWrite[] = [];
  const tagged: string[] = [];
  let stopping = false;
  const plan = (): PlannedWrite => {
    const volume = volumes[Math.floor(random() * volumes.length)]!;
    const length = 1 + Math.floor(random() * (random() < 0.5 ? 4 * KiB : 32 * KiB));
    const offset = Math.floor(random() * (volume.sizeBytes - length + 1));
    return { volume, offset, data: randomBuffer(random, length) };
  };
  // The workload runs on a budget of writes the test grants phase by phase. The mock cluster keeps only
  // a few MiB per partition (older offsets answer OFFSET_OUT_OF_RANGE), and a writer faster than the
  // pipeline would push records out of it before a restarted consumer reads them: the journal would heal
  // that gap by asking the splitter for a replay, but every such replay costs the whole backlog again.
  let granted = 0;
  let issued = 0;
  // Writes whose request has come back, acknowledged or failed.
  let settled = 0;
  const writer = async (): Promise<void> => {
    while (!stopping) {
      if (!pipeline.isRunning('splitter') || issued >= granted) {
        await waitFor(() => stopping || (pipeline.isRunning('splitter') && issued < granted), {
          timeoutMs: 180_000,
          intervalMs: 20,
          message: 'the workload was never resumed',
        });
        continue;
      }
      issued++;
      const w = plan();
      try {
        const seq = await pipeline.api('splitter').write(vpg.id, w.volume.id, w.offset, w.data);
        model.record({ seq, volumeId: w.volume.id, offset: w.offset, data: w.data });
      } catch {
        uncertain.push(w);
        continue;
      } finally {
        settled++;
      }
      if (random() < 0.02 && pipeline.isRunning('checkpoint-scheduler')) {
        const name = `tag-${tagged.length + 1}`;
        const answer = await pipeline
          .api('checkpoint-scheduler')
          .json('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=0`, { name })
          .catch(() => undefined);
        // Only an acknowledged request must become a checkpoint; one cut off by a kill may or may not.
        if (answer !== undefined && answer.status >= 200 && answer.status < 300) tagged.push(name);
      }
    }
  };
  const writers = Promise.all([writer(), writer(), writer()]);
  /** Resolves once `more` writes beyond those acknowledged so far are acknowledged. */
  const acknowledged = async (more: number, what: string): Promise<void> => {
    const target = model.count + more;
    await waitFor(() => model.count >= target, { timeoutMs: 60_000, intervalMs: 20, message: `${more} more writes were not acknowledged ${what}` });
  };
  /** Resolves once every granted write has come back. */
  const drained = (what: string): Promise<void> =>
    waitFor(() => settled >= granted, { timeoutMs: 60_000, intervalMs: 20, message: `the granted writes did not all come back ${what}` });
  const splitterLastSeq = async (): Promise<number> =>
    (await pipeline.api('splitter').ok<{ lastSeq: number }>('GET', `/splitter/vpgs/${vpg.id}`)).lastSeq;
  const appliedSeq = async (): Promise<number> =>
    (await orchestrator().ok<{ journal: { appliedSeq: number } }>('GET', `/vpgs/${vpg.id}`)).journal.appliedSeq;
  const diagnostics = async (): Promise<string> => {
    const parts = await Promise.all([
      pipeline.api('splitter').json('GET', `/splitter/vpgs/${vpg.id}`),
      pipeline.api('transport').json('GET', '/transport/status'),
      pipeline.api('journal-writer').json('GET', '/journal-writer/status'),
      orchestrator().json('GET', `/vpgs/${vpg.id}`),
    ]);
    return parts.map((p) => JSON.stringify(p.body)).join('\n');
  };
  const checkpointCount = async (): Promise<number> =>
    (await orchestrator().ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints?limit=10000`)).length;

  try {
    for (const service of KILLED_SERVICES) {
      granted += 150;
      // The kill comes with about 50 writes still to go, some of them in flight.
      await acknowledged(100, `before ${service} was killed`);
      await pipeline.kill(service);
      // The protected site keeps acknowledging while a downstream service is away.
      if (service !== 'splitter') {
        const atKill = model.count;
        granted += 30;
        await drained(`while ${service} was down`);
        expect(model.count - atKill).toBeGreaterThanOrEqual(30);
      }
      const checkpointsBefore = await checkpointCount();
      const restarted = await pipeline.start(service);
      if (service === 'splitter') {
        expect(restarted.output()).toMatch(/unclean shutdown \(process-crash\): re-applied \d+ logged writes/);
      }
      // Replication resumes by itself: the journal reaches what the splitter had captured at the restart,
      // and automatic checkpoints keep being recorded.
      const target = await splitterLastSeq();
      await waitFor(async () => (await appliedSeq()) >= target, {
        timeoutMs: 60_000,
        intervalMs: 100,
        message: `the journal did not catch up to seq ${target} after ${service} restarted`,
      }).catch(async (error: unknown) => {
        throw new Error(`${String(error)}\n${await diagnostics()}\n${pipeline.output()}`);
      });
      await waitFor(async () => (await checkpointCount()) > checkpointsBefore, {
        timeoutMs: 30_000,
        intervalMs: 100,
        message: `no checkpoint was recorded after ${service} restarted`,
      });
    }
    granted += 100;
    await waitFor(() => issued >= granted, { timeoutMs: 60_000, intervalMs: 20, message: 'the last writes were not issued' });
  } finally {
    stopping = true;
    await writers;
  }

  const final = await pipeline
    .api('checkpoint-scheduler')
    .ok<{ status: string; checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'final' });
  expect(final.status).toBe('recorded');
  tagged.push('final');
  const lastSeq = await splitterLastSeq();
  await waitFor(async () => (await appliedSeq()) === lastSeq, { timeoutMs: 30_000, intervalMs: 100, message: `the journal did not reach the splitter's last seq ${lastSeq}` });

  // Nothing lost, nothing applied twice: the index holds each acknowledged write once, at its seq, and
  // any other write is one whose request failed in a kill (the splitter had captured it).
  const rows = await journalRows(options.databaseUrl, vpg.id);
  expect(new Set(rows.map((r) => r.seq)).size).toBe(rows.length);
  const bySeq = new Map(rows.map((r) => [r.seq, r]));
  for (const w of model.all()) {
    const row = bySeq.get(w.seq);
    const volume = volumes.find((v) => v.id === w.volumeId)!;
    expect({ seq: w.seq, row: row && describeRow(row) }).toEqual({ seq: w.seq, row: { volume: volume.index, offset: w.offset, length: w.data.length } });
  }
  const known = new Set(model.all().map((w) => w.seq));
  const unmatched = [...uncertain];
  for (const row of rows.filter((r) => !known.has(r.seq))) {
    const found = unmatched.findIndex((w) => w.volume.index === row.volumeIndex && w.offset === row.offset && w.data.length === row.length);
    expect({ seq: row.seq, matchesAFailedRequest: found >= 0 }).toEqual({ seq: row.seq, matchesAFailedRequest: true });
    const [w] = unmatched.splice(found, 1);
    model.record({ seq: row.seq, volumeId: w!.volume.id, offset: w!.offset, data: w!.data });
  }
  expect(rows.length).toBe(model.count);

  const checkpoints = await orchestrator().ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints?limit=10000`);
  const names = new Set(checkpoints.map((c) => c.name));
  expect(tagged.filter((t) => !names.has(t))).toEqual([]);
  expect(checkpoints.filter((c) => c.kind === 'automatic').length).toBeGreaterThanOrEqual(8);
  expect(Math.max(...model.all().map((w) => w.seq))).toBeLessThan(final.checkpoint.cut);
  const compared = await expectCheckpointsRecoverBitExact(orchestrator(), vpg.id, volumes, checkpoints, model);
  expect(compared).toBe(checkpoints.length * volumes.length);

}

function describeRow(row: JournalRow): { volume: number; offset: number; length: number } {
  return { volume: row.volumeIndex, offset: row.offset, length: row.length };
}

/** Every write in the journal index, in seq order, once each as the index lists it. */
async function journalRows(url: string, vpgId: string): Promise<JournalRow[]> {
  const pg = new Client({ connectionString: url });
  await pg.connect();
  try {
    const result = await pg.query<{ volume_index: number; region: number; first_seq: string; segment: number; position: string; entries: Buffer }>(
      `SELECT e.volume_index, e.region, e.first_seq, e.segment, e.position, e.entries FROM journal_extents e
         JOIN journal_vpgs j ON j.vpg_key = e.vpg_key WHERE j.vpg_id = $1`,
      [vpgId],
    );
    // The index packs writes per batch and region; a write crossing a region boundary is also listed in
    // the next region's row, so each is taken from the row of the region its first byte is in.
    return result.rows
      .flatMap((e) =>
        unpackRow({ volumeIndex: e.volume_index, region: e.region, firstSeq: Number(e.first_seq), segment: e.segment, position: Number(e.position), entries: e.entries }).filter(
          (w) => regionOf(w.offset) === e.region,
        ),
      )
      .map((w) => ({ seq: w.seq, volumeIndex: w.volumeIndex, offset: w.offset, length: w.length }))
      .sort((a, b) => a.seq - b.seq);
  } finally {
    await pg.end();
  }
}
