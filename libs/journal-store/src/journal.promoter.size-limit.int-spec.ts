import { randomUUID } from 'node:crypto';
import { type DataSource } from 'typeorm';
import { decodeRecord, encodeCheckpointRecord, encodeWriteRecord } from '@cdp/contracts';
import { ReferenceModel, createMigratedDatabase, randomBuffer, seededRandom, tempDir, type TempDir } from '@cdp/testing';
import { journalEntities } from './journal.entities';
import { JournalPromoter } from './journal.promoter';
import { JournalReader } from './journal.reader';
import { JournalStore } from './journal.store';

const KiB = 1024;
const MiB = 1024 * KiB;
const VOLUME_BYTES = 2 * MiB;
const BASE_MS = Date.parse('2026-01-01T00:00:00Z');
const INTERVALS = 16;
const WRITES_PER_INTERVAL = 8;
const WRITE_BYTES = 24 * KiB;

/**
 * The journal size limit at the storage level: a journal of about 3 MiB with a 1 MiB limit and an
 * hour of history, promoted at a time when nothing is older than the history. The limit alone makes
 * promotion go to the oldest checkpoint that brings the journal within it, and every checkpoint left
 * recovers bit-exact against a reference model.
 */
describe('JournalPromoter with a journal size limit', () => {
  let dir: TempDir;
  let ds: DataSource;
  let drop: () => Promise<void>;
  let store: JournalStore;
  let reader: JournalReader;
  let promoter: JournalPromoter;
  let vpgKey: number;
  const vpgId = randomUUID();
  const model = new ReferenceModel(new Map([['0', VOLUME_BYTES]]));
  const random = seededRandom(77);
  const checkpoints: { id: string; cut: number }[] = [];
  let seq = 0;
  let at = BASE_MS;
  // Promotion at a moment right after the journal's newest record: nothing is older than the history.
  const now = (): Date => new Date(at + 1_000);

  /** One batch: `writes` random writes, then a checkpoint unless `checkpoint` is false. */
  async function commitInterval(writes: number, checkpoint = true): Promise<void> {
    const records: Buffer[] = [];
    for (let w = 0; w < writes; w++) {
      const offset = Math.floor(random() * (VOLUME_BYTES - WRITE_BYTES));
      const data = randomBuffer(random, WRITE_BYTES);
      seq++;
      at += 100;
      records.push(encodeWriteRecord({ seq, volumeIndex: 0, offset, capturedAtMicros: at * 1000, flags: 0, data }));
      model.record({ seq, volumeId: '0', offset, data });
    }
    if (checkpoint) {
      seq++;
      at += 100;
      const id = randomUUID();
      records.push(encodeCheckpointRecord({ seq, capturedAtMicros: at * 1000, marker: { id, kind: 'automatic', name: null, vmId: null } }));
      checkpoints.push({ id, cut: seq });
    }
    await store.commit(vpgId, records.map((bytes) => ({ bytes, decoded: decodeRecord(bytes) })));
  }

  async function batches(): Promise<{ firstSeq: number; lastSeq: number; bytes: number }[]> {
    const rows = await ds.query<{ first_seq: string; last_seq: string; bytes: number }[]>(
      `SELECT first_seq, last_seq, bytes FROM journal_batches WHERE vpg_key = $1 ORDER BY first_seq`,
      [vpgKey],
    );
    return rows.map((r) => ({ firstSeq: Number(r.first_seq), lastSeq: Number(r.last_seq), bytes: r.bytes }));
  }

  /** Exactly `expected` are recorded, and each recovers bit-exact (replica + journal). */
  async function expectRemainingBitExact(expected: readonly { id: string; cut: number }[]): Promise<void> {
    const rows = await ds.query<{ id: string }[]>(`SELECT id FROM checkpoints WHERE vpg_id = $1 ORDER BY cut`, [vpgId]);
    expect(rows.map((r) => r.id)).toEqual(expected.map((c) => c.id));
    const images = model.imagesAt(expected.map((c) => c.cut));
    for (const checkpoint of expected) {
      const chunks: Buffer[] = [];
      for await (const chunk of reader.image(vpgId, 0, VOLUME_BYTES, checkpoint.cut)) {
        chunks.push(chunk);
      }
      expect(Buffer.concat(chunks).equals(images.get(checkpoint.cut)!.get('0')!)).toBe(true);
    }
  }

  beforeAll(async () => {
    ({ dataSource: ds, drop } = await createMigratedDatabase(journalEntities));
    dir = await tempDir('journal-size-limit-');
    const vpg = {
      id: vpgId,
      name: 'limited',
      vms: [{ id: randomUUID(), name: 'vm', volumes: [{ id: randomUUID(), name: 'v0', index: 0, sizeBytes: VOLUME_BYTES, blockSize: 512 }] }],
      settings: { journalHistorySeconds: 3600, checkpointIntervalSeconds: 5, historyWarningSeconds: 2700, historyAlertSeconds: 900, journalSizeLimitMb: 1 },
      createdAt: new Date(BASE_MS).toISOString(),
    };
    await ds.query(`INSERT INTO vpgs (id, name, definition, version, created_at, updated_at) VALUES ($1, $2, $3, 1, now(), now())`, [vpgId, vpg.name, JSON.stringify(vpg)]);
    store = new JournalStore(ds, dir.path, { segmentBytes: 256 * KiB });
    reader = new JournalReader(ds, dir.path);
    promoter = new JournalPromoter(ds, store);
    for (let i = 0; i < INTERVALS; i++) {
      await commitInterval(WRITES_PER_INTERVAL);
    }
    vpgKey = (await ds.query<{ vpg_key: number }[]>(`SELECT vpg_key FROM journal_vpgs WHERE vpg_id = $1`, [vpgId]))[0]!.vpg_key;
  });

  afterAll(async () => {
    await reader?.close();
    await store?.close();
    await drop?.();
    await dir?.cleanup();
  });

  it('promotes to the oldest checkpoint that brings the journal within its limit, though all of it is inside the history', async () => {
    const before = await batches();
    const total = before.reduce((sum, b) => sum + b.bytes, 0);
    expect(total).toBeGreaterThan(2 * MiB);
    // Summed from the newest batch back: the newest batch that does not fit, and the checkpoint after it.
    let newer = 0;
    let mustGo = 0;
    for (const b of [...before].reverse()) {
      newer += b.bytes;
      if (newer > MiB) {
        mustGo = b.lastSeq;
        break;
      }
    }
    const k = checkpoints.find((c) => c.cut > mustGo)!;

    const result = await promoter.promote(vpgId, now());
    expect(result).toMatchObject({ promoted: true, sizeLimited: true, fromSeq: 0, replicaSeq: k.cut - 1, oldestCheckpoint: { id: k.id, cut: k.cut } });
    expect(result.segmentsDeleted).toBeGreaterThan(0);
    const after = await batches();
    expect(after.reduce((sum, b) => sum + b.bytes, 0)).toBeLessThanOrEqual(MiB);
    // The least that fits: one checkpoint older would have kept a batch too many.
    const gone = before.filter((b) => b.lastSeq <= k.cut - 1);
    expect(after.reduce((sum, b) => sum + b.bytes, 0) + gone[gone.length - 1]!.bytes).toBeGreaterThan(MiB);
    await expectRemainingBitExact(checkpoints.filter((c) => c.cut >= k.cut));

    // Within the limit now: nothing more.
    expect(await promoter.promote(vpgId, now())).toMatchObject({ promoted: false, sizeLimited: false });
  });

  it('with no checkpoint past what must go, goes as far as the newest checkpoint, and on once a newer one comes', async () => {
    // 1.5 MiB of writes and no checkpoint after them: only the newest checkpoint bounds promotion.
    await commitInterval(64, false);
    const newest = checkpoints[checkpoints.length - 1]!;
    const result = await promoter.promote(vpgId, now());
    expect(result).toMatchObject({ promoted: true, sizeLimited: true, replicaSeq: newest.cut - 1, oldestCheckpoint: { id: newest.id } });
    await expectRemainingBitExact([newest]);

    await commitInterval(1);
    const next = checkpoints[checkpoints.length - 1]!;
    expect(await promoter.promote(vpgId, now())).toMatchObject({ promoted: true, sizeLimited: true, replicaSeq: next.cut - 1 });
    await expectRemainingBitExact([next]);
    expect((await batches()).reduce((sum, b) => sum + b.bytes, 0)).toBeLessThanOrEqual(MiB);
  });

  it('without a limit, only the history window counts', async () => {
    await ds.query(`UPDATE vpgs SET definition = jsonb_set(definition, '{settings,journalSizeLimitMb}', 'null') WHERE id = $1`, [vpgId]);
    await commitInterval(64);
    expect(await promoter.promote(vpgId, now())).toMatchObject({ promoted: false, sizeLimited: false });
    expect((await batches()).reduce((sum, b) => sum + b.bytes, 0)).toBeGreaterThan(MiB);
  });
});
