import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { createDataSource, migrations, poolQuery } from '@cdp/database';
import { JournalReader } from '@cdp/journal-store';
import { percentile } from './suite';

/**
 * The query phase of the checkpoints suite, in a process of its own (forked by checkpoints.bench.ts
 * once the load is done), as the catalog runs in a service's process and not in one that has just
 * generated 51.8M rows.
 *
 * Why apart (measured Dec 5, with the suite's first-timeline loop on a 51.8M-checkpoint catalog and
 * --trace-gc): in a process that had generated 10M of the load's CSV lines just before, V8 ran a full
 * collection (Mark-Compact, 3 to 9 ms of pause plus incremental steps of up to 10 ms) every 130 to
 * 180 ms of first timelines, and they took 6.1 ms at p50, 21 to 32 ms at p99 (passes 2 to 4); in a
 * fresh process the same loop ran young-generation collections only, at 3.4 to 4.9 ms p50 and 7.4 to
 * 9.8 ms p99. The load's heap, not the catalog's, set the GC regime of the first figure.
 */
export interface QueryInput {
  readonly url: string;
  readonly work: string;
  readonly vpgs: readonly string[];
  readonly perVpg: number;
  readonly queries: number;
  readonly repeats: number;
  /** The newest loaded checkpoint's nominal time, epoch ms, and the interval between checkpoints. */
  readonly end: number;
  readonly stepMs: number;
}

export interface QueryRuns {
  readonly timeline: number[][];
  readonly page: number[][];
  readonly stats: number[][];
  readonly cold: number[][];
}

/** What the child sends its parent: progress lines, then the samples (or the error). */
export type QueryMessage = { readonly log: string } | { readonly runs: QueryRuns } | { readonly error: string };

async function measure(input: QueryInput, log: (line: string) => void): Promise<QueryRuns> {
  const { vpgs, perVpg, queries, repeats, end: END, stepMs: STEP_MS } = input;
  const memory = process.memoryUsage();
  log(`  query process: heap used ${(memory.heapUsed / 2 ** 20).toFixed(0)} MiB of ${(memory.heapTotal / 2 ** 20).toFixed(0)} MiB, rss ${(memory.rss / 2 ** 20).toFixed(0)} MiB`);
  const dataSource = createDataSource({ url: input.url, entities: [], migrations, poolSize: 4 });
  await dataSource.initialize();
  const reader = new JournalReader(dataSource, join(input.work, 'journal'));
  const now = new Date(END + 1000);
  const firstMs = END - (perVpg - 1) * STEP_MS;
  const pick = (): string => vpgs[Math.floor(Math.random() * vpgs.length)]!;
  const runs = { timeline: [] as number[][], page: [] as number[][], stats: [] as number[][], cold: [] as number[][] };
  // Checkpoints recorded per VPG after the load, at END + k × 5 s (k = 1, 2, ...).
  const appended = new Map<string, number>();
  try {
    // The first timeline of each VPG reads its whole day (the reader's day cache is empty); later
    // ones only what was appended since. Measured apart, each VPG once per run with a new reader.
    for (let r = 0; r < repeats; r++) {
      const coldReader = new JournalReader(dataSource, join(input.work, 'journal'));
      const cold: number[] = [];
      for (const vpgId of vpgs) {
        const t = performance.now();
        await coldReader.timeline(vpgId, now);
        cold.push(performance.now() - t);
      }
      runs.cold.push(cold);
      await coldReader.close();
      log(`  run ${r + 1}: first timeline of each VPG p50/p99 ms ${percentile(cold, 50).toFixed(2)}/${percentile(cold, 99).toFixed(2)}`);
    }
    // The polled figure is of a warm day cache: each VPG's first timeline (the whole day read, measured
    // above) is made before the polls are timed. Otherwise those 100 first reads are 5% of the polls
    // and most of their p99.
    for (const vpgId of vpgs) {
      await reader.timeline(vpgId, now);
    }
    for (let r = 0; r < repeats; r++) {
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
      log(
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
    log(`  a page's plan: ${lines.join('; ')}`);
  } finally {
    await reader.close();
    await dataSource.destroy();
  }
  return runs;
}

/** The environment variable that carries the QueryInput to the child, as JSON. */
export const QUERY_INPUT_ENV = 'CDP_BENCH_CHECKPOINT_QUERIES';

if (require.main === module) {
  // The channel is closed once the last message is handed over, and then the process ends by itself.
  const sendLast = (message: QueryMessage): void => {
    process.send?.(message, undefined, {}, () => process.disconnect?.());
  };
  const input = JSON.parse(process.env[QUERY_INPUT_ENV] ?? 'null') as QueryInput | null;
  if (!input) {
    throw new Error(`${QUERY_INPUT_ENV} is not set: this script is run by checkpoints.bench.ts`);
  }
  measure(input, (line) => process.send?.({ log: line } satisfies QueryMessage)).then(
    (runs) => sendLast({ runs }),
    (err: unknown) => {
      process.exitCode = 1;
      sendLast({ error: err instanceof Error ? (err.stack ?? err.message) : String(err) });
    },
  );
}
