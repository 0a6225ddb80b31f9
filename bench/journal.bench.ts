import { randomUUID } from 'node:crypto';
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { type DataSource } from 'typeorm';
import { decodeRecord, encodeWriteRecord } from '@cdp/contracts';
import { EmbeddedPostgresServer, createDataSource, migrations, runMigrations } from '@cdp/database';
import { JournalCompactor, JournalReader, JournalStore, journalEntities, type VerifiedRecord } from '@cdp/journal-store';
import { fio } from './block.bench';
import { type BenchContext, type BenchSuite, type Figure, median } from './suite';

/**
 * The journal's own figures, below the NBD path: ingest through JournalStore.commit (segment append,
 * fdatasync, one Postgres transaction) beside Postgres COPY of the same number of per-write index rows
 * and fio's sequential write on the same disk; the index's bytes in Postgres per journaled write; the
 * time to open a point-in-time view and read 4 KiB from it with a large journal (10M writes in full
 * mode); and sequential reads through a view beside reading the same bytes from a plain file.
 *
 * Workload: 512-byte writes at random 512-aligned offsets of an 8 GiB volume, committed in batches of
 * 1,000 records (what the journal writer commits under load). Random offsets are the index's hard case:
 * a batch touches many of the volume's 64 MiB regions, so its writes spread over many rows.
 */
const WRITE_BYTES = 512;
const VOLUME_BYTES = 8 * 1024 ** 3;
const BATCH = 1_000;
const MiB = 1024 * 1024;
/** As the journal writer does (journal-writer.service.ts): a compaction round every 2 s beside the commits. */
const COMPACTION_INTERVAL_MS = 2_000;

async function run(ctx: BenchContext): Promise<Figure[]> {
  const { quick, work, log } = ctx;
  const ingestWrites = quick ? 20_000 : 1_000_000;
  const journalWrites = quick ? 100_000 : 10_000_000;
  const sequentialBytes = quick ? 64 * MiB : 1024 * MiB;
  const server = new EmbeddedPostgresServer({ dataDir: join(work, 'pg'), logger: { log: () => undefined, warn: (m) => log(m) } });
  const { url } = await server.start();
  const dataSource = createDataSource({ url, entities: journalEntities, migrations, applicationName: 'journal-bench' });
  const journalDir = join(work, 'journal');
  const figures: Figure[] = [];
  try {
    await runMigrations(dataSource);
    const compactor = new JournalCompactor(dataSource);
    const store = new JournalStore(dataSource, journalDir, { onIndexed: (vpgId, vpgKey, rows) => compactor.noteCommitted(vpgId, vpgKey, rows) });
    const reader = new JournalReader(dataSource, journalDir);
    try {
      figures.push(...(await ingest(ctx, dataSource, store, compactor, ingestWrites)));
      figures.push(...(await largeJournal(ctx, dataSource, store, compactor, reader, journalWrites)));
      figures.push(await sequentialRead(ctx, store, reader, sequentialBytes));
    } finally {
      await store.close();
    }
  } finally {
    if (dataSource.isInitialized) {
      await dataSource.destroy();
    }
    await server.stop();
  }
  return figures;
}

/** Encoded records seq first..first+count-1 of random 512-byte writes; `seed` varies the payloads. */
function randomBatch(first: number, count: number, random: () => number, payload: Buffer, capturedAtMicros: (seq: number) => number): VerifiedRecord[] {
  const records: VerifiedRecord[] = [];
  for (let i = 0; i < count; i++) {
    const seq = first + i;
    payload.writeUInt32LE(seq, 0);
    const offset = Math.floor(random() * (VOLUME_BYTES / WRITE_BYTES)) * WRITE_BYTES;
    const bytes = encodeWriteRecord({ seq, volumeIndex: 0, offset, capturedAtMicros: capturedAtMicros(seq), flags: 0, data: payload });
    records.push({ bytes, decoded: decodeRecord(bytes) });
  }
  return records;
}

function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

/**
 * Commits the writes batch by batch; returns the seconds spent in JournalStore.commit. Encoding the
 * records (what the splitter does at capture) is not counted: the journal writer receives them encoded.
 */
async function commitAll(
  store: JournalStore,
  compactor: JournalCompactor,
  vpgId: string,
  writes: number,
  seed: number,
  capturedAtMicros: (seq: number) => number,
): Promise<number> {
  const random = xorshift(seed);
  const payload = Buffer.alloc(WRITE_BYTES, seed & 0xff);
  let inCommit = 0;
  // Compaction rounds run beside the commits on their own connection, as in the journal writer; the
  // last one after the commits is the round that would come next.
  let round: Promise<unknown> = Promise.resolve();
  let compacting = true;
  const tick = setInterval(() => {
    round = round.then(() => (compacting ? compactor.compact(vpgId) : undefined));
  }, COMPACTION_INTERVAL_MS);
  try {
    for (let first = 1; first <= writes; first += BATCH) {
      const batch = randomBatch(first, Math.min(BATCH, writes - first + 1), random, payload, capturedAtMicros);
      const start = performance.now();
      await store.commit(vpgId, batch);
      inCommit += performance.now() - start;
    }
  } finally {
    clearInterval(tick);
  }
  await round;
  compacting = false;
  await compactor.compact(vpgId);
  return inCommit / 1000;
}

async function ingest(ctx: BenchContext, dataSource: DataSource, store: JournalStore, compactor: JournalCompactor, writes: number): Promise<Figure[]> {
  const { work, log, repeats } = ctx;
  const writesPerSecond: number[] = [];
  const megabytesPerSecond: number[] = [];
  const copyRowsPerSecond: number[] = [];
  const fioMegabytes: number[] = [];
  const now = Date.now() * 1000;
  await dataSource.query(`CREATE TABLE bench_copy_rows (
      vpg_key int NOT NULL, seq bigint NOT NULL, volume_index smallint NOT NULL, byte_offset bigint NOT NULL,
      length int NOT NULL, segment int NOT NULL, position bigint NOT NULL, PRIMARY KEY (vpg_key, seq))`);
  // The rows a per-write index would hold for the same writes.
  const csv = join(work, 'index-rows.csv');
  const random = xorshift(7);
  const lines: string[] = [];
  for (let seq = 1; seq <= writes; seq++) {
    lines.push(`1,${seq},0,${Math.floor(random() * (VOLUME_BYTES / WRITE_BYTES)) * WRITE_BYTES},${WRITE_BYTES},1,${(seq - 1) * (WRITE_BYTES + 48)}`);
  }
  writeFileSync(csv, `${lines.join('\n')}\n`, { mode: 0o644 });
  for (let i = 0; i < repeats; i++) {
    const seconds = await commitAll(store, compactor, randomUUID(), writes, 100 + i, (seq) => now + seq);
    writesPerSecond.push(writes / seconds);
    megabytesPerSecond.push((writes * WRITE_BYTES) / seconds / 1e6);
    await dataSource.query(`TRUNCATE bench_copy_rows`);
    const copyStart = performance.now();
    await dataSource.query(`COPY bench_copy_rows FROM '${csv}' WITH (FORMAT csv)`);
    copyRowsPerSecond.push(writes / ((performance.now() - copyStart) / 1000));
    fioMegabytes.push(
      fio(['--name=disk', `--filename=${join(work, 'fio-disk.dat')}`, '--rw=write', '--bs=1M', '--iodepth=4', '--ioengine=libaio', '--direct=1', `--size=${ctx.quick ? 64 : 1024}M`]).result.mbPerSecond,
    );
    log(`ingest run ${i + 1}: ${writesPerSecond[i]?.toFixed(0)} writes/s, COPY ${copyRowsPerSecond[i]?.toFixed(0)} rows/s, fio ${fioMegabytes[i]?.toFixed(0)} MB/s`);
  }
  await dataSource.query(`DROP TABLE bench_copy_rows`);
  const command = `JournalStore.commit of ${writes} random ${WRITE_BYTES}-byte writes in batches of ${BATCH} (bench/journal.bench.ts)`;
  return [
    {
      name: `journal ingest, durable and indexed (${WRITE_BYTES} B writes, batches of ${BATCH})`,
      value: median(writesPerSecond),
      unit: 'writes/s',
      baseline: 'Postgres COPY of the same number of per-write index rows (PK on vpg, seq), same server',
      baselineValue: median(copyRowsPerSecond),
      ratio: median(writesPerSecond) / median(copyRowsPerSecond),
      goal: 'report',
      met: null,
      command,
      runs: writesPerSecond,
      baselineRuns: copyRowsPerSecond,
    },
    {
      name: `journal ingest, payload bytes durable and indexed (${WRITE_BYTES} B writes)`,
      value: median(megabytesPerSecond),
      unit: 'MB/s',
      baseline: 'fio sequential write, 1 MiB, QD4, direct, same disk',
      baselineValue: median(fioMegabytes),
      ratio: median(megabytesPerSecond) / median(fioMegabytes),
      goal: 'report',
      met: null,
      command,
      runs: megabytesPerSecond,
      baselineRuns: fioMegabytes,
    },
  ];
}

async function largeJournal(ctx: BenchContext, dataSource: DataSource, store: JournalStore, compactor: JournalCompactor, reader: JournalReader, writes: number): Promise<Figure[]> {
  const { log, repeats } = ctx;
  const vpgId = randomUUID();
  const baseMicros = Date.parse('2026-11-25T00:00:00Z') * 1000;
  // The index tables hold this journal alone (the ingest runs' journals are not counted in its bytes).
  await dataSource.query(`TRUNCATE journal_batches, journal_extents`);
  // One write per millisecond of capture time, so a time maps to a known seq.
  const seconds = await commitAll(store, compactor, vpgId, writes, 42, (seq) => baseMicros + seq * 1000);
  log(`built a journal of ${writes} writes in ${seconds.toFixed(0)} s`);
  const indexSize = async (): Promise<number> => {
    const size = await dataSource.query<{ bytes: string }[]>(`SELECT pg_total_relation_size('journal_batches') + pg_total_relation_size('journal_extents') AS bytes`);
    const parts = await dataSource.query<{ name: string; heap: string; indexes: string; toast: string; dead: string }[]>(
      `SELECT c.relname AS name, pg_relation_size(c.oid) AS heap, pg_indexes_size(c.oid) AS indexes,
              coalesce(pg_total_relation_size(c.reltoastrelid), 0) AS toast, coalesce(pg_stat_get_dead_tuples(c.oid), 0) AS dead
         FROM pg_class c WHERE c.relname IN ('journal_batches', 'journal_extents')`,
    );
    // (The dead-tuple counts are the statistics collector's: after VACUUM FULL they lag.)
    log(`index: ${parts.map((p) => `${p.name} heap ${p.heap}, indexes ${p.indexes}, toast ${p.toast} bytes, ${p.dead} dead tuples`).join('; ')}`);
    return Number(size[0]?.bytes ?? 0);
  };
  // As left: the rows compaction replaced are dead tuples until (auto)vacuum makes their space free for
  // the next inserts; the table does not shrink, so in a long run this is the high-water mark.
  const asLeft = await indexSize();
  const rows = await dataSource.query<{ n: string }[]>(`SELECT count(*) AS n FROM journal_extents`);
  log(`journal_extents: ${rows[0]?.n ?? '?'} rows for ${writes} writes after compaction; ${(asLeft / writes).toFixed(1)} bytes a write as left`);
  const cut = await store.appliedSeq(vpgId);
  const places = [0, 0.25, 0.5, 0.75, 1].map((f) => Math.min(VOLUME_BYTES - 4096, Math.floor((f * VOLUME_BYTES) / 4096) * 4096));
  const atSeq: number[] = [];
  const atTime: number[] = [];
  for (let i = 0; i < repeats; i++) {
    for (const place of places) {
      let start = performance.now();
      let view = await reader.openView(vpgId, 0, VOLUME_BYTES, cut);
      await view.read(place, 4096);
      atSeq.push(performance.now() - start);
      await view.close();
      // Any time in the middle of the history: resolved to a seq, then the same first read.
      start = performance.now();
      view = await reader.openViewAt(vpgId, 0, VOLUME_BYTES, new Date((baseMicros + Math.floor(writes / 2) * 1000 + 1000 * i) / 1000));
      await view.read(place, 4096);
      atTime.push(performance.now() - start);
      await view.close();
    }
  }
  log(`first reads at the newest seq: ${atSeq.map((t) => t.toFixed(1)).join(', ')} ms`);
  // What the rows that hold the journal take: the tables rewritten without the dead tuples.
  await dataSource.query(`VACUUM FULL journal_batches, journal_extents`);
  const indexBytes = await indexSize();
  const command = `JournalReader.openView + read 4 KiB at ${places.length} places of an 8 GiB volume, journal of ${writes} writes (bench/journal.bench.ts)`;
  return [
    {
      name: `index bytes in Postgres per journaled write (${writes} random ${WRITE_BYTES} B writes, batches of ${BATCH}, compacted as the journal writer does; live rows, ${(asLeft / writes).toFixed(1)} bytes a write with the dead tuples of compaction)`,
      value: indexBytes / writes,
      unit: 'bytes',
      baseline: 'none',
      baselineValue: null,
      ratio: null,
      goal: '<= 32 bytes',
      met: indexBytes / writes <= 32,
      command: `pg_total_relation_size(journal_batches) + pg_total_relation_size(journal_extents) after VACUUM FULL, divided by the writes`,
      runs: [indexBytes / writes],
      baselineRuns: [],
    },
    {
      name: `point-in-time view: open + first 4 KiB read, ${writes} journaled writes`,
      value: median(atSeq),
      unit: 'ms',
      baseline: 'none',
      baselineValue: null,
      ratio: null,
      goal: '<= 100 ms',
      met: median(atSeq) <= 100,
      command,
      runs: atSeq,
      baselineRuns: [],
    },
    {
      name: `point-in-time view at a time T (resolve T, open, first 4 KiB read), ${writes} journaled writes`,
      value: median(atTime),
      unit: 'ms',
      baseline: 'none',
      baselineValue: null,
      ratio: null,
      goal: '<= 100 ms',
      met: median(atTime) <= 100,
      command: command.replace('openView', 'openViewAt'),
      runs: atTime,
      baselineRuns: [],
    },
  ];
}

/**
 * A volume written front to back in 64 KiB writes (as a first sync writes it), read back through a
 * view in 1 MiB reads, beside reading the same bytes from a plain file written the same way. The figure
 * is the view's overhead over the same memory, so both are read once before the measured runs: the
 * journal's commits of 4 MiB bypass the page cache (DIRECT_WRITE_MIN_BYTES in journal.store.ts), and
 * without that pass the view's first run read the disk (456 MB/s on Dec 5, against 1,623 and 2,046 for
 * the next two) while the plain file, written through the cache, was read from memory. Each side reads
 * into memory it reuses, as a server does (the NBD server gives a view's buffers back with `release`):
 * with a fresh 1 MiB buffer a read, both sides measured mostly the allocator and the collector, and
 * the plain file's runs of one pass ranged from 950 to 4,900 MB/s.
 */
async function sequentialRead(ctx: BenchContext, store: JournalStore, reader: JournalReader, bytes: number): Promise<Figure> {
  const { work, repeats } = ctx;
  const vpgId = randomUUID();
  const chunk = 64 * 1024;
  const plain = join(work, 'plain');
  mkdirSync(plain, { recursive: true });
  const file = join(plain, 'volume.img');
  const fd = openSync(file, 'w');
  const payload = Buffer.alloc(chunk);
  let seq = 0;
  const now = Date.now() * 1000;
  for (let offset = 0; offset < bytes; ) {
    const records: VerifiedRecord[] = [];
    for (let i = 0; i < 64 && offset < bytes; i++, offset += chunk) {
      seq++;
      payload.fill(seq & 0xff);
      payload.writeUInt32LE(seq, 0);
      writeSync(fd, payload, 0, chunk, offset);
      const encoded = encodeWriteRecord({ seq, volumeIndex: 0, offset, capturedAtMicros: now + seq, flags: 0, data: payload });
      records.push({ bytes: encoded, decoded: decodeRecord(encoded) });
    }
    await store.commit(vpgId, records);
  }
  closeSync(fd);
  // Read as the view reads its segments, and as a Node server would serve a plain file: async.
  const readFile = async (): Promise<number> => {
    const handle = await open(file, 'r');
    const start = performance.now();
    const buf = Buffer.alloc(MiB);
    for (let offset = 0; offset < bytes; offset += MiB) {
      await handle.read(buf, 0, MiB, offset);
    }
    const rate = bytes / 1e6 / ((performance.now() - start) / 1000);
    await handle.close();
    return rate;
  };
  const readView = async (): Promise<number> => {
    const view = await reader.openView(vpgId, 0, bytes, seq);
    const start = performance.now();
    for (let offset = 0; offset < bytes; offset += MiB) {
      view.release(await view.read(offset, MiB));
    }
    const rate = bytes / 1e6 / ((performance.now() - start) / 1000);
    await view.close();
    return rate;
  };
  const coldView = await readView();
  await readFile();
  ctx.log(`point-in-time view: the unmeasured first pass read ${Math.round(coldView)} MB/s (the journal's direct writes are not in the page cache)`);
  const viewRuns: number[] = [];
  const fileRuns: number[] = [];
  for (let i = 0; i < repeats; i++) {
    fileRuns.push(await readFile());
    viewRuns.push(await readView());
  }
  return {
    name: `point-in-time view: sequential read, 1 MiB reads, ${bytes / MiB} MiB written in 64 KiB writes`,
    value: median(viewRuns),
    unit: 'MB/s',
    baseline: 'the same bytes read from a plain file in 1 MiB reads (FileHandle.read into one reused buffer)',
    baselineValue: median(fileRuns),
    ratio: median(viewRuns) / median(fileRuns),
    goal: 'ratio >= 0.8',
    met: median(viewRuns) / median(fileRuns) >= 0.8,
    command: 'PitView.read(offset, 1 MiB) front to back, each reply given back with release, vs FileHandle.read (bench/journal.bench.ts)',
    runs: viewRuns,
    baselineRuns: fileRuns,
  };
}

export const suite: BenchSuite = { name: 'journal', tools: ['fio'], run };
