import { fork, spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { EmbeddedPostgresServer, createDataSource, migrations, runMigrations } from '@cdp/database';
import { QUERY_INPUT_ENV, type QueryInput, type QueryMessage, type QueryRuns } from './checkpoints.queries';
import { type BenchContext, type BenchSuite, type Figure, ROOT, median, percentile } from './suite';

/**
 * The checkpoint catalog at scale: 100 VPGs with 30 days of 5-second checkpoints each (518,401 per
 * VPG, 51.8M in all), a tagged or application-consistent one at random about once an hour, loaded
 * in time order with the VPGs side by side (as protection records them) with COPY into a dedicated
 * embedded PostgreSQL server. Then, in a process of its own (checkpoints.queries.ts: as in a service,
 * not in the process that generated the load), the three queries an operator's screen
 * makes, through the same JournalReader methods the HTTP API calls, for random VPGs: the timeline
 * (slider) at the end of the loaded period, a page of 100 of the manual list at a random time (half of
 * them resumed from a cursor), and the stats. The timeline is measured twice: the first query for each
 * VPG (the reader's day cache empty: the whole day is read) and the rest, as a slider polled while
 * protection goes on (each VPG's day read once, untimed, before the polls): before each of those a
 * new checkpoint of that VPG is recorded 5 s after its newest, and the timeline is asked for at that
 * moment (only what was appended since is read). Each figure is the median over the runs of that
 * run's percentile. Quick mode: 4 VPGs of 2,000 checkpoints, to show the suite works.
 */
const STEP_MS = 5_000;
const END = Date.parse('2026-11-25T12:00:00Z');
const GOAL_MS = 10;

interface Load {
  readonly vpgs: string[];
  readonly rows: number;
  readonly seconds: number;
}

async function load(ctx: BenchContext, url: string, vpgCount: number, perVpg: number): Promise<Load> {
  const dataSource = createDataSource({ url, entities: [], migrations, poolSize: 2 });
  await runMigrations(dataSource);
  const vpgs: string[] = [];
  const started = performance.now();
  let rows = 0;
  // In time order, the VPGs side by side, as protection records them: one VPG's rows are scattered over
  // the heap among the others', as they are in production (a load VPG by VPG would cluster them and
  // flatter every query that reads the table). One COPY per day of checkpoints.
  const cuts: number[] = [];
  for (let v = 0; v < vpgCount; v++) {
    vpgs.push(randomUUID());
    cuts.push(0);
  }
  const stepsPerCopy = 24 * 720;
  try {
    for (let start = 0; start < perVpg; start += stepsPerCopy) {
      const end = Math.min(perVpg, start + stepsPerCopy);
      // Server-side COPY from a file: the server reads it directly (we are its superuser).
      const file = join(ctx.work, `checkpoints-${start}.csv`);
      const out = createWriteStream(file, { mode: 0o644 });
      for (let i = start; i < end; i++) {
        for (let v = 0; v < vpgCount; v++) {
          cuts[v] = cuts[v]! + 1 + Math.floor(Math.random() * 40);
          const capturedAt = new Date(END - (perVpg - 1 - i) * STEP_MS + Math.floor(Math.random() * 1000)).toISOString();
          const r = Math.random() * 720;
          const kind = r < 0.5 ? 'tagged' : r < 1 ? 'application-consistent' : 'automatic';
          const name = kind === 'automatic' ? '' : `bench ${i}`;
          if (!out.write(`${randomUUID()},${vpgs[v]},${cuts[v]},${kind},${name},,${capturedAt}\n`)) {
            await new Promise<void>((resolve) => out.once('drain', () => resolve()));
          }
        }
      }
      await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
      await dataSource.query(`COPY checkpoints (id, vpg_id, cut, kind, name, vm_id, captured_at) FROM '${file}' WITH (FORMAT csv)`);
      await rm(file);
      rows += (end - start) * vpgCount;
      const day = Math.ceil(end / stepsPerCopy);
      if (day % 5 === 0 || end === perVpg) {
        ctx.log(`  loaded ${day} of ${Math.ceil(perVpg / stepsPerCopy)} days of ${vpgCount} VPGs, ${rows} checkpoints, ${((performance.now() - started) / 1000).toFixed(0)} s`);
      }
    }
    // What autovacuum would do in the background: statistics, and the visibility map index-only scans need.
    await dataSource.query('VACUUM ANALYZE checkpoints');
    // The load leaves gigabytes of dirty buffers, which the server's checkpointer would be writing out
    // during the queries (the load's cost, not theirs): written out now, as a server that has been
    // running for 30 days has long done.
    const flushStart = performance.now();
    await dataSource.query('CHECKPOINT');
    spawnSync('sync');
    ctx.log(`  CHECKPOINT and sync after the load: ${((performance.now() - flushStart) / 1000).toFixed(1)} s`);
  } finally {
    await dataSource.destroy();
  }
  return { vpgs, rows, seconds: (performance.now() - started) / 1000 };
}

/** Runs checkpoints.queries.ts in a child process over the loaded catalog; its progress lines go to the log. */
function queriesApart(ctx: BenchContext, input: QueryInput): Promise<QueryRuns> {
  // The input goes in the environment, there before the child's first line runs; results come back over IPC.
  const child = fork(join(__dirname, 'checkpoints.queries.ts'), [], {
    execArgv: ['-r', join(ROOT, 'tools', 'register.cjs')],
    env: { ...process.env, [QUERY_INPUT_ENV]: JSON.stringify(input) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise<QueryRuns>((resolve, reject) => {
    let runs: QueryRuns | undefined;
    let error: string | undefined;
    child.on('message', (message: QueryMessage) => {
      if ('log' in message) {
        ctx.log(message.log);
      } else if ('runs' in message) {
        runs = message.runs;
      } else {
        error = message.error;
      }
    });
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (runs && code === 0) {
        resolve(runs);
      } else {
        reject(new Error(`the query process ended (code ${String(code)}, signal ${String(signal)})${error ? `: ${error}` : ' without its results'}`));
      }
    });
  });
}

async function run(ctx: BenchContext): Promise<Figure[]> {
  const vpgCount = ctx.quick ? 4 : 100;
  const perVpg = ctx.quick ? 2_000 : 30 * 24 * 720 + 1;
  const queries = ctx.quick ? 100 : 2_000;
  const server = new EmbeddedPostgresServer({ dataDir: join(ctx.work, 'pg'), logger: { log: () => undefined, warn: (m) => ctx.log(`  postgres: ${m}`) } });
  const pg = await server.start();
  try {
    const loaded = await load(ctx, pg.url, vpgCount, perVpg);
    ctx.log(`  ${loaded.rows} checkpoints of ${vpgCount} VPGs loaded with COPY in ${loaded.seconds.toFixed(1)} s`);
    const memory = process.memoryUsage();
    ctx.log(`  the loading process after the load: heap used ${(memory.heapUsed / 2 ** 20).toFixed(0)} MiB of ${(memory.heapTotal / 2 ** 20).toFixed(0)} MiB, rss ${(memory.rss / 2 ** 20).toFixed(0)} MiB`);
    // The queries run in a process of their own: see checkpoints.queries.ts for why.
    const runs = await queriesApart(ctx, { url: pg.url, work: ctx.work, vpgs: loaded.vpgs, perVpg, queries, repeats: ctx.repeats, end: END, stepMs: STEP_MS });

    const scale = `${vpgCount} VPGs × ${perVpg.toLocaleString('en-US')} checkpoints (${ctx.quick ? 'quick' : '30 days at 5 s'})`;
    const command = `npm run bench -- --only checkpoints${ctx.quick ? ' --quick' : ''}`;
    const figures: Figure[] = [];
    const add = (what: string, description: string, samples: number[][]): void => {
      for (const p of [50, 99]) {
        const perRun = samples.map((s) => percentile(s, p));
        const value = median(perRun);
        figures.push({
          name: `${what} query p${p}, ${scale}: ${description}`,
          value,
          unit: 'ms',
          baseline: 'none',
          baselineValue: null,
          ratio: null,
          goal: p === 99 ? `<= ${GOAL_MS} ms` : 'report',
          met: p === 99 ? value <= GOAL_MS : null,
          command,
          runs: perRun,
          baselineRuns: [],
        });
      }
    };
    add('timeline', 'at most 180 of the last 24 h, polled: day cache warm, a new checkpoint recorded before each call', runs.timeline);
    add('timeline (first for a VPG)', 'the day read whole, cache empty', runs.cold);
    add('manual list', 'a page of 100 at a random time, half resumed from a cursor', runs.page);
    add('stats', 'earliest, latest, count and count per kind', runs.stats);
    figures.push({
      name: `checkpoint load with COPY, ${scale}`,
      value: loaded.seconds,
      unit: 's',
      baseline: `${Math.round(loaded.rows / loaded.seconds).toLocaleString('en-US')} checkpoints/s, indexes and stats triggers on`,
      baselineValue: null,
      ratio: null,
      goal: 'report',
      met: null,
      command,
      runs: [loaded.seconds],
      baselineRuns: [],
    });
    return figures;
  } finally {
    await pg.stop();
  }
}

export const suite: BenchSuite = { name: 'checkpoints', tools: [], run };
