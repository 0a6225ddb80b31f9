import { randomUUID } from 'node:crypto';
import { closeSync, existsSync, openSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { type DataSource } from 'typeorm';
import { decodeRecord, encodeCheckpointRecord, encodeWriteRecord, peekRecordLength, recordSeq } from '@cdp/contracts';
import { createDataSource, migrations, runMigrations } from '@cdp/database';
import { fileRuns } from '@cdp/native-file';
import {
  ReferenceModel,
  createTestDatabase,
  randomBuffer,
  seededRandom,
  tempDir,
  waitFor,
  type TempDir,
  type TestDatabase,
} from '@cdp/testing';
import { unpackRow } from './journal-index.codec';
import { journalEntities } from './journal.entities';
import { JournalCompactor } from './journal.compactor';
import { JournalPromoter, PromotionPostponedError } from './journal.promoter';
import { JournalReader } from './journal.reader';
import { JournalStore } from './journal.store';
import { REPLICA_LOCK_CLASS, readPromotionIntent, replicaFile } from './replica';

/**
 * Promotion at the storage level: a journal built by committing records straight into a
 * JournalStore (two volumes, random overlapping writes, checkpoints ten seconds apart in capture
 * time), promoted with clocks that make more and more of it older than the 60 s history. After every
 * step each remaining checkpoint must recover bit-exact (replica + journal) against a reference
 * model that knows nothing of journals, replicas or extent maps.
 */
const KiB = 1024;
const HISTORY_SECONDS = 60;
const BASE_MS = Date.parse('2026-01-01T00:00:00Z');
const VOLUME_SIZES = [256 * KiB, 1536 * KiB] as const;
const CHECKPOINTS = 12;
const WRITES_PER_CHECKPOINT = 40;
/** Checkpoint i is captured at BASE + 10 s * (i + 1). */
const capturedAt = (i: number): number => BASE_MS + 10_000 * (i + 1);
/** A clock at which checkpoints 0..i are older than the history and i + 1 is not. */
const clockMaking = (i: number): Date => new Date(capturedAt(i) + HISTORY_SECONDS * 1000 + 5_000);

interface RecordedCheckpoint {
  readonly id: string;
  readonly cut: number;
  readonly index: number;
}

describe('JournalPromoter', () => {
  let db: TestDatabase;
  let dir: TempDir;
  let ds: DataSource;
  let store: JournalStore;
  let reader: JournalReader;
  let promoter: JournalPromoter;
  const vpgId = randomUUID();
  let vpgKey: number;
  const model = new ReferenceModel(new Map(VOLUME_SIZES.map((size, index) => [String(index), size])));
  const checkpoints: RecordedCheckpoint[] = [];
  let taggedRequestId: string;

  beforeAll(async () => {
    db = await createTestDatabase();
    dir = await tempDir('journal-promoter-');
    ds = createDataSource({ url: db.url, entities: journalEntities, migrations, applicationName: 'journal-promoter-test' });
    await runMigrations(ds);
    await ds.query(`INSERT INTO vpgs (id, name, definition, version, created_at, updated_at) VALUES ($1, 'promo', $2, 1, now(), now())`, [
      vpgId,
      JSON.stringify({
        id: vpgId,
        name: 'promo',
        vms: [
          {
            id: randomUUID(),
            name: 'vm',
            volumes: VOLUME_SIZES.map((sizeBytes, index) => ({ id: randomUUID(), name: `v${index}`, index, sizeBytes, blockSize: 512 })),
          },
        ],
        settings: { journalHistorySeconds: HISTORY_SECONDS, checkpointIntervalSeconds: 5, historyWarningSeconds: 30, historyAlertSeconds: 10 },
        createdAt: new Date(BASE_MS).toISOString(),
      }),
    ]);
    // Small segments, so the journal spans many and promotion has whole segments to delete.
    store = new JournalStore(ds, dir.path, { segmentBytes: 64 * KiB });
    reader = new JournalReader(ds, dir.path);
    promoter = new JournalPromoter(ds, store, { now: () => new Date(0) });

    const random = seededRandom(4242);
    const pending: Buffer[] = [];
    let seq = 0;
    for (let c = 0; c < CHECKPOINTS; c++) {
      for (let w = 0; w < WRITES_PER_CHECKPOINT; w++) {
        const volumeIndex = random() < 0.5 ? 0 : 1;
        const size = VOLUME_SIZES[volumeIndex];
        const length = 1 + Math.floor(random() * (random() < 0.2 ? 64 * KiB : 6 * KiB));
        // Half the writes land in the first 32 KiB, so they overlap a lot across checkpoints.
        const span = random() < 0.5 ? Math.min(size, 32 * KiB + length) : size;
        const offset = Math.floor(random() * (span - length + 1));
        const data = randomBuffer(random, length);
        seq++;
        const micros = (capturedAt(c) - 10_000 + Math.floor((w * 10_000) / WRITES_PER_CHECKPOINT)) * 1000;
        pending.push(encodeWriteRecord({ seq, volumeIndex, offset, capturedAtMicros: micros, flags: 0, data }));
        model.record({ seq, volumeId: String(volumeIndex), offset, data });
      }
      seq++;
      const id = randomUUID();
      const tagged = c === 2;
      if (tagged) {
        taggedRequestId = id;
      }
      pending.push(
        encodeCheckpointRecord({
          seq,
          capturedAtMicros: capturedAt(c) * 1000,
          marker: { id, kind: tagged ? 'tagged' : 'automatic', name: tagged ? 'before-upgrade' : null, vmId: null },
        }),
      );
      checkpoints.push({ id, cut: seq, index: c });
    }
    // Commit in batches of random size, as the journal writer would.
    while (pending.length > 0) {
      const batch = pending.splice(0, 1 + Math.floor(random() * 30));
      await store.commit(vpgId, batch.map((bytes) => ({ bytes, decoded: decodeRecord(bytes) })));
    }
    // The tagged checkpoint's request, as the scheduler leaves it: it must go with its checkpoint.
    await ds.query(`INSERT INTO checkpoint_requests (id, vpg_id, kind, name, requested_at, sent_at) VALUES ($1, $2, 'tagged', 'before-upgrade', now(), now())`, [
      taggedRequestId,
      vpgId,
    ]);
    const keys = await ds.query<{ vpg_key: number }[]>(`SELECT vpg_key FROM journal_vpgs WHERE vpg_id = $1`, [vpgId]);
    vpgKey = keys[0]!.vpg_key;
  });

  afterAll(async () => {
    await reader?.close();
    await store?.close();
    if (ds?.isInitialized) {
      await ds.destroy();
    }
    await db?.drop();
    await dir?.cleanup();
  });

  const cp = (i: number): RecordedCheckpoint => checkpoints[i]!;

  async function image(cut: number, volumeIndex: number): Promise<Buffer> {
    const chunks: Buffer[] = [];
    for await (const chunk of reader.image(vpgId, volumeIndex, VOLUME_SIZES[volumeIndex]!, cut)) {
      chunks.push(chunk);
    }
    return Buffer.concat(chunks);
  }

  /** Every checkpoint still recorded recovers bit-exact, and exactly `expected` are recorded. */
  async function expectRemainingBitExact(expected: readonly RecordedCheckpoint[]): Promise<void> {
    const rows = await ds.query<{ id: string; cut: string }[]>(`SELECT id, cut FROM checkpoints WHERE vpg_id = $1 ORDER BY cut`, [vpgId]);
    expect(rows.map((r) => r.id)).toEqual(expected.map((c) => c.id));
    const images = model.imagesAt(expected.map((c) => c.cut));
    for (const checkpoint of expected) {
      for (const volumeIndex of [0, 1]) {
        const got = await image(checkpoint.cut, volumeIndex);
        const want = images.get(checkpoint.cut)!.get(String(volumeIndex))!;
        if (!got.equals(want)) {
          throw new Error(`checkpoint ${checkpoint.index} (cut ${checkpoint.cut}), volume ${volumeIndex} differs from the model`);
        }
        await expectAllocationExact(checkpoint.cut, volumeIndex, want);
      }
    }
  }

  /**
   * What a view's block status says at `cut`: runs that tile the volume, holes only where the image
   * reads as zeros, and data exactly over the journal writes after the replica and the replica file's
   * own data (asked a few runs at a time, so answers that end early are continued from where they end).
   */
  async function expectAllocationExact(cut: number, volumeIndex: number, want: Buffer): Promise<void> {
    const size = VOLUME_SIZES[volumeIndex]!;
    const { replicaSeq } = await journalState();
    const view = await reader.openView(vpgId, volumeIndex, size, cut);
    const data: [number, number][] = [];
    try {
      for (let at = 0; at < size; ) {
        const runs = await view.allocation(at, size - at, 3);
        expect(runs.length).toBeGreaterThan(0);
        expect(runs.length).toBeLessThanOrEqual(3);
        for (const run of runs) {
          expect(run.start).toBe(at);
          expect(run.end).toBeGreaterThan(run.start);
          if (run.data) {
            addRange(data, run.start, run.end);
          } else if (!want.subarray(run.start, run.end).every((b) => b === 0)) {
            throw new Error(`cut ${cut}, volume ${volumeIndex}: [${run.start}, ${run.end}) is called a hole but does not read as zeros`);
          }
          at = run.end;
        }
      }
    } finally {
      await view.close();
    }
    const expected: [number, number][] = [];
    const replica = replicaFile(dir.path, vpgId, volumeIndex);
    if (existsSync(replica)) {
      const fd = openSync(replica, 'r');
      try {
        for (const run of fileRuns(fd, 0, size, 1_000_000).filter((r) => r.data)) {
          addRange(expected, run.start, run.end);
        }
      } finally {
        closeSync(fd);
      }
    }
    for (const w of model.all()) {
      if (w.volumeId === String(volumeIndex) && w.seq > replicaSeq && w.seq <= cut) {
        addRange(expected, w.offset, w.offset + w.data.length);
      }
    }
    expect(data).toEqual(expected);
    // Not everything is data: the test would pass a view that called all of it allocated otherwise.
    expect(data.reduce((sum, [a, b]) => sum + b - a, 0)).toBeLessThan(size);
  }

  async function journalState(): Promise<{ replicaSeq: number; minWriteSeq: number | null }> {
    const rows = await ds.query<{ replica_seq: string }[]>(`SELECT replica_seq FROM journal_vpgs WHERE vpg_id = $1`, [vpgId]);
    // Every write the index still lists, unpacked from its extent rows.
    const extents = await ds.query<{ volume_index: number; region: number; first_seq: string; segment: number; position: string; entries: Buffer }[]>(
      `SELECT volume_index, region, first_seq, segment, position, entries FROM journal_extents WHERE vpg_key = $1`,
      [vpgKey],
    );
    const seqs = extents.flatMap((e) =>
      unpackRow({ volumeIndex: e.volume_index, region: e.region, firstSeq: Number(e.first_seq), segment: e.segment, position: Number(e.position), entries: e.entries }).map((w) => w.seq),
    );
    return { replicaSeq: Number(rows[0]!.replica_seq), minWriteSeq: seqs.length === 0 ? null : Math.min(...seqs) };
  }

  /** Seq range of every segment file on disk, by segment number. */
  async function segmentsOnDisk(): Promise<{ segment: number; first: number; last: number }[]> {
    const segDir = JournalStore.segmentDir(dir.path, vpgId);
    const names = (await readdir(segDir)).filter((n) => n.endsWith('.seg')).sort();
    const out: { segment: number; first: number; last: number }[] = [];
    for (const name of names) {
      const buf = await readFile(join(segDir, name));
      let pos = 0;
      const seqs: number[] = [];
      // A segment written with direct I/O may end in zero padding after its last record.
      const next = (): number | undefined => (buf.subarray(pos).every((b) => b === 0) ? undefined : peekRecordLength(buf, pos));
      for (let length = next(); length !== undefined && pos + length <= buf.length; length = next()) {
        seqs.push(recordSeq(buf.subarray(pos, pos + length)));
        pos += length;
      }
      out.push({ segment: Number(name.slice(0, 16)), first: seqs[0] ?? 0, last: seqs[seqs.length - 1] ?? 0 });
    }
    return out;
  }

  async function replicaBytes(): Promise<Buffer[]> {
    return Promise.all([0, 1].map((v) => readFile(replicaFile(dir.path, vpgId, v)).catch(() => Buffer.alloc(0))));
  }

  it('before any promotion every checkpoint recovers from the journal alone', async () => {
    expect(await promoter.promote(vpgId)).toMatchObject({ promoted: false, replicaSeq: 0, writes: 0 });
    await expectRemainingBitExact(checkpoints);
  });

  it('promotes up to the newest old checkpoint, which becomes the oldest point of history', async () => {
    const before = await segmentsOnDisk();
    expect(before.length).toBeGreaterThan(4);
    const k = cp(3);
    const result = await promoter.promote(vpgId, clockMaking(3));
    expect(result).toMatchObject({
      promoted: true,
      fromSeq: 0,
      replicaSeq: k.cut - 1,
      writes: 4 * WRITES_PER_CHECKPOINT,
      checkpointsRemoved: 3,
      oldestCheckpoint: { id: k.id, cut: k.cut },
    });
    expect(result.bytes).toBe(model.all().filter((w) => w.seq < k.cut).reduce((sum, w) => sum + w.data.length, 0));
    expect(await journalState()).toEqual({ replicaSeq: k.cut - 1, minWriteSeq: k.cut + 1 });
    // The tagged checkpoint went, and its request with it (the scheduler would send it again).
    expect(await ds.query(`SELECT id FROM checkpoint_requests WHERE id = $1`, [taggedRequestId])).toEqual([]);

    const after = await segmentsOnDisk();
    expect(result.segmentsDeleted).toBe(before.length - after.length);
    expect(result.segmentsDeleted).toBeGreaterThan(0);
    // Every segment wholly at or below the replica seq is gone (the active one always stays), and
    // every record after it is still on disk.
    for (const s of after.slice(0, -1)) {
      expect(s.last).toBeGreaterThan(k.cut - 1);
    }
    expect(after[0]!.first).toBeLessThanOrEqual(k.cut);
    expect(before.filter((s) => s.last <= k.cut - 1).map((s) => s.segment)).toEqual(
      before.filter((s) => !after.some((a) => a.segment === s.segment)).map((s) => s.segment),
    );

    await expectRemainingBitExact(checkpoints.slice(3));
    await expect(image(cp(2).cut, 0)).rejects.toMatchObject({ code: 'failed-precondition' });
    await expect(image(cp(2).cut, 0)).rejects.toThrow(/no longer inside the journal's history/);
  });

  it('does nothing when run again with the same clock', async () => {
    const replica = await replicaBytes();
    const segments = await segmentsOnDisk();
    const result = await promoter.promote(vpgId, clockMaking(3));
    expect(result).toMatchObject({ promoted: false, replicaSeq: cp(3).cut - 1, writes: 0, checkpointsRemoved: 0, segmentsDeleted: 0 });
    const again = await replicaBytes();
    expect(again.map((b, i) => b.equals(replica[i]!))).toEqual([true, true]);
    expect(await segmentsOnDisk()).toEqual(segments);
    await expectRemainingBitExact(checkpoints.slice(3));
  });

  it('compaction of the rest merges rows across batches and segments; the promotions after it trim merged rows exactly', async () => {
    const before = await journalState();
    const count = async (): Promise<number> => Number((await ds.query<{ n: string }[]>(`SELECT count(*) AS n FROM journal_extents WHERE vpg_key = $1`, [vpgKey]))[0]!.n);
    const rowsBefore = await count();
    // Promotion holds the replica lock exclusively: a compaction must wait for it, not interleave.
    const holder = ds.createQueryRunner();
    await holder.connect();
    await holder.query(`SELECT pg_advisory_lock($1, $2)`, [REPLICA_LOCK_CLASS, vpgKey]);
    const compacted = new JournalCompactor(ds, { minRows: 2, targetBytes: 400, regionsPerTransaction: 8 }).compact(vpgId);
    let done = false;
    void compacted.then(() => (done = true));
    await waitFor(async () => (await ds.query<{ n: string }[]>(`SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`))[0]!.n === '1', { timeoutMs: 10_000, message: 'the compaction never waited for the replica lock' });
    expect(done).toBe(false);
    await holder.query(`SELECT pg_advisory_unlock($1, $2)`, [REPLICA_LOCK_CLASS, vpgKey]);
    await holder.release();
    const result = await compacted;
    expect(result.rowsMerged).toBeGreaterThan(0);
    expect(await count()).toBe(rowsBefore - result.rowsMerged + result.rowsWritten);
    expect(await journalState()).toEqual(before);
    // The next promotion (to checkpoint 6) has merged rows to trim, not only whole rows to drop.
    const straddling = await ds.query<{ n: string }[]>(`SELECT count(*) AS n FROM journal_extents WHERE vpg_key = $1 AND first_seq <= $2 AND last_seq > $2`, [vpgKey, cp(6).cut - 1]);
    expect(Number(straddling[0]!.n)).toBeGreaterThan(0);
    await expectRemainingBitExact(checkpoints.slice(3));
  });

  it('after a crash between the replica and the commit, promotes again to the same result', async () => {
    const k = cp(6);
    const crashing = new JournalPromoter(ds, store, {
      hooks: {
        afterReplicaSynced: () => {
          throw new Error('simulated crash after step 1');
        },
      },
    });
    await expect(crashing.promote(vpgId, clockMaking(6))).rejects.toThrow('simulated crash after step 1');
    // Nothing committed, but the replica already holds writes up to K.cut - 1 and says so.
    expect((await journalState()).replicaSeq).toBe(cp(3).cut - 1);
    expect(await readPromotionIntent(dir.path, vpgId)).toEqual({ fromSeq: cp(3).cut - 1, toSeq: k.cut - 1 });
    // Checkpoints the interrupted promotion covers are refused, not served from a replica that is
    // already past them; later ones are still exact.
    await expect(image(cp(4).cut, 1)).rejects.toMatchObject({ code: 'failed-precondition' });
    const images = model.imagesAt([k.cut, cp(9).cut]);
    for (const c of [k, cp(9)]) {
      expect((await image(c.cut, 1)).equals(images.get(c.cut)!.get('1')!)).toBe(true);
    }

    // The retry uses an older clock (as if the history had been raised meanwhile): it must still
    // finish what the interrupted promotion started, since the replica is already there.
    const result = await promoter.promote(vpgId, clockMaking(4));
    expect(result).toMatchObject({ promoted: true, fromSeq: cp(3).cut - 1, replicaSeq: k.cut - 1, checkpointsRemoved: 3, oldestCheckpoint: { id: k.id } });
    expect(await journalState()).toEqual({ replicaSeq: k.cut - 1, minWriteSeq: k.cut + 1 });
    await expectRemainingBitExact(checkpoints.slice(6));
  });

  it('waits for an image being read at a checkpoint it would remove, then removes it', async () => {
    const doomed = cp(7);
    const k = cp(9);
    const open = reader.image(vpgId, 1, VOLUME_SIZES[1], doomed.cut);
    const first = await open.next();
    if (first.done) {
      throw new Error('the image ended before its first chunk');
    }

    let settled = false;
    const promotion = promoter.promote(vpgId, clockMaking(9)).finally(() => {
      settled = true;
    });
    await waitFor(
      async () => {
        const rows = await ds.query<{ n: number }[]>(
          `SELECT count(*)::int AS n FROM pg_locks
            WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND mode = 'ExclusiveLock' AND NOT granted`,
          [REPLICA_LOCK_CLASS, vpgKey],
        );
        return rows[0]!.n === 1;
      },
      { timeoutMs: 5_000, message: 'the promotion never queued behind the reader' },
    );
    expect(settled).toBe(false);
    expect((await journalState()).replicaSeq).toBe(cp(6).cut - 1);

    // The reader finishes its image undisturbed, from the state it started with.
    const rest: Buffer[] = [first.value];
    for (let next = await open.next(); !next.done; next = await open.next()) {
      rest.push(next.value);
    }
    expect(Buffer.concat(rest).equals(model.imagesAt([doomed.cut]).get(doomed.cut)!.get('1')!)).toBe(true);

    const result = await promotion;
    expect(result).toMatchObject({ promoted: true, replicaSeq: k.cut - 1, checkpointsRemoved: 3, oldestCheckpoint: { id: k.id } });
    await expect(image(doomed.cut, 1)).rejects.toMatchObject({ code: 'failed-precondition' });
    await expectRemainingBitExact(checkpoints.slice(9));
  });

  /** Replica locks of the VPG currently held (granted), by anyone. */
  const held = async (): Promise<number> =>
    (
      await ds.query<{ n: number }[]>(
        `SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND granted`,
        [REPLICA_LOCK_CLASS, vpgKey],
      )
    )[0]!.n;

  it('releases the reader lock when a consumer stops reading early', async () => {
    const newest = cp(CHECKPOINTS - 1);
    const open = reader.image(vpgId, 1, VOLUME_SIZES[1], newest.cut);
    await open.next();
    expect(await held()).toBe(1);
    await open.return(undefined);
    expect(await held()).toBe(0);

    // With every checkpoint old, the newest stays as the only one, and it is the replica.
    const result = await promoter.promote(vpgId, clockMaking(CHECKPOINTS - 1));
    expect(result).toMatchObject({ promoted: true, replicaSeq: newest.cut - 1, oldestCheckpoint: { id: newest.id } });
    await expectRemainingBitExact([newest]);
    const replica = await replicaBytes();
    const want = model.imagesAt([newest.cut]).get(newest.cut)!;
    expect(replica[0]!.equals(want.get('0')!)).toBe(true);
    expect(replica[1]!.equals(want.get('1')!)).toBe(true);
    expect(await held()).toBe(0);
  });

  it('abandons an image nobody asks to continue, releasing its lock', async () => {
    const impatient = new JournalReader(ds, dir.path, { idleImageTimeoutMs: 100 });
    const newest = cp(CHECKPOINTS - 1);
    const open = impatient.image(vpgId, 1, VOLUME_SIZES[1], newest.cut);
    await open.next();
    expect(await held()).toBe(1);
    await waitFor(async () => (await held()) === 0, { timeoutMs: 5_000, message: 'the idle image never released its lock' });
    await expect(open.next()).rejects.toThrow(/abandoned/);
  });

  it('reads at most maxConcurrentImages images at once; the next waits for a slot', async () => {
    const limited = new JournalReader(ds, dir.path, { maxConcurrentImages: 1 });
    const newest = cp(CHECKPOINTS - 1);
    const first = limited.image(vpgId, 0, VOLUME_SIZES[0], newest.cut);
    await first.next();
    const second = limited.image(vpgId, 0, VOLUME_SIZES[0], newest.cut);
    let started = false;
    const secondChunk = second.next().then((r) => {
      started = true;
      return r;
    });
    // Round trips to the server give the second image every chance to get ahead if it could.
    for (let i = 0; i < 3; i++) {
      expect(await held()).toBe(1);
    }
    expect(started).toBe(false);
    await first.return(undefined);
    expect((await secondChunk).done).toBe(false);
    await second.return(undefined);
    expect(await held()).toBe(0);
  });

  it('gives up after lockTimeoutMs while a reader holds the lock, and journaling goes on meanwhile', async () => {
    const newest = cp(CHECKPOINTS - 1);
    const open = reader.image(vpgId, 1, VOLUME_SIZES[1], newest.cut);
    await open.next();
    const hurried = new JournalPromoter(ds, store, { lockTimeoutMs: 300 });
    const attempt = hurried.promote(vpgId, clockMaking(CHECKPOINTS + 5)).then(
      () => 'promoted',
      (err: unknown) => (err instanceof PromotionPostponedError ? err.message : `unexpected: ${String(err)}`),
    );
    // Journaling does not wait for promotion or for readers.
    const seq = (await store.appliedSeq(vpgId)) + 1;
    const data = Buffer.alloc(3000, 0xab);
    const id = randomUUID();
    const records = [
      encodeWriteRecord({ seq, volumeIndex: 0, offset: 1000, capturedAtMicros: capturedAt(CHECKPOINTS) * 1000, flags: 0, data }),
      encodeCheckpointRecord({ seq: seq + 1, capturedAtMicros: capturedAt(CHECKPOINTS) * 1000, marker: { id, kind: 'automatic', name: null, vmId: null } }),
    ];
    await store.commit(vpgId, records.map((bytes) => ({ bytes, decoded: decodeRecord(bytes) })));
    model.record({ seq, volumeId: '0', offset: 1000, data });
    expect(await attempt).toMatch(/image readers held the replica lock/);
    await open.return(undefined);
    expect((await journalState()).replicaSeq).toBe(newest.cut - 1);
    await expectRemainingBitExact([newest, { id, cut: seq + 1, index: CHECKPOINTS }]);
  });
});

/** Adds [start, end) to a sorted list of disjoint ranges, merging where they overlap or touch. */
function addRange(ranges: [number, number][], start: number, end: number): void {
  let lo = start;
  let hi = end;
  const kept: [number, number][] = [];
  for (const [a, b] of ranges) {
    if (b < lo || a > hi) {
      kept.push([a, b]);
    } else {
      lo = Math.min(lo, a);
      hi = Math.max(hi, b);
    }
  }
  kept.push([lo, hi]);
  kept.sort((x, y) => x[0] - y[0]);
  ranges.splice(0, ranges.length, ...kept);
}
