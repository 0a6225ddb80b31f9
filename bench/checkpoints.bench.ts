import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { EmbeddedPostgresServer, createDataSource, migrations, poolQuery, runMigrations } from '@cdp/database';
import { JournalReader } from '@cdp/journal-store';
import { type BenchContext, type BenchSuite, type Figure, median, percentile } from './suite';

/**
 * The checkpoint catalog at scale: 100 VPGs with 30 days of 5-second checkpoints each (518,401 per
 * VPG, 51.8M in all), a tagged or application-consistent one at random about once an hour, loaded
 * in time order with the VPGs side by side (as protection records them) with COPY into a dedicated
 * embedded PostgreSQL server. Then the three queries an operator's screen
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

async function run(ctx: BenchContext): Promise<Figure[]> {
  const vpgCount = ctx.quick ? 4 : 100;
  const perVpg = ctx.quick ? 2_000 : 30 * 24 * 720 + 1;
  const queries = ctx.quick ? 100 : 2_000;
  const server = new EmbeddedPostgresServer({ dataDir: join(ctx.work, 'pg'), logger: { log: () => undefined, warn: (m) => ctx.log(`  postgres: ${m}`) } });
  const pg = await server.start();
  try {
    const loaded = await load(ctx, pg.url, vpgCount, perVpg);
    ctx.log(`  ${loaded.rows} checkpoints of ${vpgCount} VPGs loaded with COPY in ${loaded.seconds.toFixed(1)} s`);
    // The queries run in the process that generated the load: its heap, for telling that apart from a fresh one.
    const memory = process.memoryUsage();
    ctx.log(`  this process after the load: heap used ${(memory.heapUsed / 2 ** 20).toFixed(0)} MiB of ${(memory.heapTotal / 2 ** 20).toFixed(0)} MiB, rss ${(memory.rss / 2 ** 20).toFixed(0)} MiB`);
    const dataSource = createDataSource({ url: pg.url, entities: [], migrations, poolSize: 4 });
    await dataSource.initialize();
    const reader = new JournalReader(dataSource, join(ctx.work, 'journal'));
    const now = new Date(END + 1000);
    const firstMs = END - (perVpg - 1) * STEP_MS;
    const pick = (): string => loaded.vpgs[Math.floor(Math.random() * loaded.vpgs.length)]!;
    const runs = { timeline: [] as number[][], page: [] as number[][], stats: [] as number[][], cold: [] as number[][] };
    // Checkpoints recorded per VPG after the load, at END + k × 5 s (k = 1, 2, ...).
    const appended = new Map<string, number>();
    try {
      // The first timeline of each VPG reads its whole day (the reader's day cache is empty); later
      // ones only what was appended since. Measured apart, each VPG once per run with a new reader.
      for (let r = 0; r < ctx.repeats; r++) {
        const coldReader = new JournalReader(dataSource, join(ctx.work, 'journal'));
        const cold: number[] = [];
        for (const vpgId of loaded.vpgs) {
          const t = performance.now();
          await coldReader.timeline(vpgId, now);
          cold.push(performance.now() - t);
        }
        runs.cold.push(cold);
        await coldReader.close();
        ctx.log(`  run ${r + 1}: first timeline of each VPG p50/p99 ms ${percentile(cold, 50).toFixed(2)}/${percentile(cold, 99).toFixed(2)}`);
      }
      // The polled figure is of a warm day cache: each VPG's first timeline (the whole day read, measured
      // above) is made before the polls are timed. Otherwise those 100 first reads are 5% of the polls
      // and most of their p99.
      for (const vpgId of loaded.vpgs) {
        await reader.timeline(vpgId, now);
      }
      for (let r = 0; r < ctx.repeats; r++) {
        const timeline: number[] = [];
        const page: number[] = [];
        const stats: number[] = [];
        let cursor: { vpgId: string; next: string } | null = null;
        for (let i = 0; i < queries; i++) {
          const polled = pick();
          const k = (appended.get(polled) ?? 0) + 1;
          appended.set(polled, k);
          // Stands in for the journal writer recording it; through the pool, like the queries, so that
          // TypeORM's per-call garbage (see poolQuery) is not charged to the queries being measured.
          await poolQuery(
            dataSource,
            `INSERT INTO checkpoints (id, vpg_id, cut, kind, name, vm_id, captured_at) VALUES ($1, $2, $3, 'automatic', NULL, NULL, $4)`,
            [randomUUID(), polled, 10 ** 12 + k, new Date(END + k * STEP_MS)],
          );
          let t = performance.now();
          const slider = await reader.timeline(polled, new Date(END + k * STEP_MS + 1000));
          timeline.push(performance.now() - t);
          if (slider.checkpoints.length === 0) {
            throw new Error('the timeline came back empty');
          }

          t = performance.now();
          if (cursor && i % 2 === 1) {
            const resumed = await reader.checkpointPage(cursor.vpgId, { after: cursor.next, limit: 100 });
            page.push(performance.now() - t);
            cursor = null;
            if (resumed.checkpoints.length === 0) {
              throw new Error('a page resumed from a cursor came back empty');
            }
          } else {
            const vpgId = pick();
            const from = new Date(firstMs + Math.random() * (END - firstMs - 100 * STEP_MS));
            const first = await reader.checkpointPage(vpgId, { from, limit: 100 });
            page.push(performance.now() - t);
            cursor = first.next ? { vpgId, next: first.next } : null;
          }

          const counting = pick();
          t = performance.now();
          const counted = await reader.checkpointStats(counting);
          stats.push(performance.now() - t);
          if (counted.count !== perVpg + (appended.get(counting) ?? 0)) {
            throw new Error(`stats counted ${counted.count} checkpoints, ${perVpg + (appended.get(counting) ?? 0)} were recorded`);
          }
        }
        runs.timeline.push(timeline);
        runs.page.push(page);
        runs.stats.push(stats);
        ctx.log(
          `  run ${r + 1}: p50/p99 ms timeline ${percentile(timeline, 50).toFixed(2)}/${percentile(timeline, 99).toFixed(2)}, ` +
            `page ${percentile(page, 50).toFixed(2)}/${percentile(page, 99).toFixed(2)}, stats ${percentile(stats, 50).toFixed(2)}/${percentile(stats, 99).toFixed(2)}`,
        );
      }
      // How a page is read, to tell I/O from CPU in the tail: the plan of one at a random time, in the
      // shape CheckpointCatalog.page sends (the page's rows as one JSON array).
      const plan = await dataSource.query<{ 'QUERY PLAN': string }[]>(
        `EXPLAIN (ANALYZE, BUFFERS)
         SELECT json_agg(json_build_array((extract(epoch FROM captured_at) * 1000000)::bigint, id, cut, kind, name, vm_id) ORDER BY captured_at, id)
           FROM (SELECT captured_at, id, cut, kind, name, vm_id FROM checkpoints
                  WHERE vpg_id = $1 AND captured_at >= $2 ORDER BY captured_at, id LIMIT 101) c`,
        [pick(), new Date(firstMs + Math.random() * (END - firstMs - 100 * STEP_MS))],
      );
      const lines = plan.map((p) => p['QUERY PLAN'].trim()).filter((l) => /Scan|Heap Fetches|Buffers|Execution Time/.test(l));
      ctx.log(`  a page's plan: ${lines.join('; ')}`);
    } finally {
      await reader.close();
      await dataSource.destroy();
    }

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
