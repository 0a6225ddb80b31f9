import { randomUUID } from 'node:crypto';
import { type DataSource } from 'typeorm';
import { decodeRecord, encodeCheckpointRecord, encodeWriteRecord } from '@cdp/contracts';
import { createMigratedDatabase, randomBuffer, seededRandom, tempDir, type TempDir } from '@cdp/testing';
import { REGION_BYTES, unpackRow } from './journal-index.codec';
import { JournalCompactor } from './journal.compactor';
import { journalEntities } from './journal.entities';
import { JournalReader } from './journal.reader';
import { JournalStore } from './journal.store';

/**
 * Compaction rewrites the index, never what it says: every checkpoint reads the same bytes before and
 * after, including through a view opened before the compaction, while the region's rows become few.
 * The journal: two volumes (one of three regions and a bit, one small), random writes clustered at
 * region boundaries (some crossing them), committed in small batches into 64 KiB segments, so merged
 * rows span many batches and segments.
 */
const KiB = 1024;
const SIZES = [3 * REGION_BYTES + 1024 * KiB, 512 * KiB] as const;
/** Where the writes land: near the start, around both inner region boundaries, at the very end. */
const HOT = [0, REGION_BYTES - 48 * KiB, 2 * REGION_BYTES - 48 * KiB, SIZES[0] - 96 * KiB] as const;
const HOT_BYTES = 96 * KiB;

interface Written {
  readonly seq: number;
  readonly volumeIndex: number;
  readonly offset: number;
  readonly data: Buffer;
}

describe('JournalCompactor', () => {
  let dataSource: DataSource;
  let drop: () => Promise<void>;
  let dir: TempDir;
  let store: JournalStore;
  let reader: JournalReader;
  let compactor: JournalCompactor;
  const vpgId = randomUUID();
  const written: Written[] = [];
  const cuts: number[] = [];

  beforeAll(async () => {
    ({ dataSource, drop } = await createMigratedDatabase(journalEntities));
    dir = await tempDir('journal-compactor-');
    compactor = new JournalCompactor(dataSource, { minRows: 4, targetBytes: 600, regionsPerTransaction: 2 });
    store = new JournalStore(dataSource, dir.path, { segmentBytes: 64 * KiB, onIndexed: (id, key, rows) => compactor.noteCommitted(id, key, rows) });
    reader = new JournalReader(dataSource, dir.path);
    const random = seededRandom(99);
    const records: Buffer[] = [];
    for (let seq = 1; seq <= 900; seq++) {
      if (seq % 60 === 0) {
        records.push(encodeCheckpointRecord({ seq, capturedAtMicros: seq, marker: { id: randomUUID(), kind: 'automatic', name: null, vmId: null } }));
        cuts.push(seq);
        continue;
      }
      const volumeIndex = random() < 0.8 ? 0 : 1;
      const length = 1 + Math.floor(random() * (random() < 0.1 ? 40 * KiB : 4 * KiB));
      const base = volumeIndex === 0 ? (HOT[Math.floor(random() * HOT.length)] as number) : 0;
      const span = volumeIndex === 0 ? HOT_BYTES : SIZES[1];
      // Half sector-aligned, as most real writes are.
      let offset = base + Math.floor(random() * (span - length + 1));
      if (random() < 0.5) {
        offset -= offset % 512;
      }
      const data = randomBuffer(random, length);
      written.push({ seq, volumeIndex, offset, data });
      records.push(encodeWriteRecord({ seq, volumeIndex, offset, capturedAtMicros: seq, flags: 0, data }));
    }
    records.push(encodeCheckpointRecord({ seq: 901, capturedAtMicros: 901, marker: { id: randomUUID(), kind: 'tagged', name: 'end', vmId: null } }));
    cuts.push(901);
    while (records.length > 0) {
      const batch = records.splice(0, 1 + Math.floor(random() * 12));
      await store.commit(vpgId, batch.map((bytes) => ({ bytes, decoded: decodeRecord(bytes) })));
    }
  });

  afterAll(async () => {
    await reader?.close();
    await store?.close();
    await dataSource?.destroy();
    await drop?.();
    await dir?.cleanup();
  });

  /** The bytes of [offset, offset + length) of a volume after every write up to `cut`. */
  function expected(volumeIndex: number, cut: number, offset: number, length: number): Buffer {
    const out = Buffer.alloc(length);
    for (const w of written) {
      if (w.seq > cut || w.volumeIndex !== volumeIndex) {
        continue;
      }
      const from = Math.max(w.offset, offset);
      const to = Math.min(w.offset + w.data.length, offset + length);
      if (from < to) {
        w.data.copy(out, from - offset, from - w.offset, to - w.offset);
      }
    }
    return out;
  }

  /** Every hot range of both volumes at every cut, through fresh views, against the writes. */
  async function expectEveryCutExact(): Promise<void> {
    for (const cut of cuts) {
      for (const [volumeIndex, ranges] of [
        [0, HOT.map((at) => [at, HOT_BYTES] as const)],
        [1, [[0, SIZES[1]] as const]],
      ] as const) {
        const view = await reader.openView(vpgId, volumeIndex, SIZES[volumeIndex], cut);
        try {
          for (const [offset, length] of ranges) {
            const got = await view.read(offset, length);
            if (!got.equals(expected(volumeIndex, cut, offset, length))) {
              throw new Error(`cut ${cut}, volume ${volumeIndex}: [${offset}, ${offset + length}) differs`);
            }
          }
        } finally {
          await view.close();
        }
      }
    }
  }

  async function rows(): Promise<{ volume_index: number; region: number; first_seq: string; last_seq: string; segment: number; position: string; entries: Buffer }[]> {
    return dataSource.query(`SELECT volume_index, region, first_seq, last_seq, segment, position, entries FROM journal_extents ORDER BY volume_index, region, first_seq`);
  }

  it('merges each region into few rows holding exactly the same writes, and every checkpoint reads the same bytes', async () => {
    await expectEveryCutExact();
    const before = await rows();
    const unpack = (list: typeof before): string[] =>
      list.flatMap((r) =>
        unpackRow({ volumeIndex: r.volume_index, region: r.region, firstSeq: Number(r.first_seq), segment: r.segment, position: Number(r.position), entries: r.entries }).map(
          (w) => `${r.region}:${w.seq}:${w.offset}:${w.length}:${w.segment}:${w.position}`,
        ),
      );
    // A view opened now loads its regions after the compaction below.
    const early = await reader.openView(vpgId, 0, SIZES[0], cuts[3]!);

    expect(compactor.vpgs()).toEqual([vpgId]);
    const result = await compactor.compact(vpgId);
    expect(result.rowsMerged).toBeGreaterThan(0);
    expect(result.rowsWritten).toBeLessThan(result.rowsMerged / 3);
    const after = await rows();
    expect(after.length).toBe(before.length - result.rowsMerged + result.rowsWritten);
    expect(unpack(after).sort()).toEqual(unpack(before).sort());
    // Merged rows span segments; rows stay ordered and disjoint in seq within their region.
    const spanning = after.filter((r) => new Set(unpackRow({ volumeIndex: r.volume_index, region: r.region, firstSeq: Number(r.first_seq), segment: r.segment, position: Number(r.position), entries: r.entries }).map((w) => w.segment)).size > 1);
    expect(spanning.length).toBeGreaterThan(0);
    for (let i = 1; i < after.length; i++) {
      const [prev, row] = [after[i - 1]!, after[i]!];
      if (prev.volume_index === row.volume_index && prev.region === row.region) {
        expect(Number(row.first_seq)).toBeGreaterThan(Number(prev.last_seq));
      }
    }

    try {
      for (const at of HOT) {
        expect((await early.read(at, HOT_BYTES)).equals(expected(0, cuts[3]!, at, HOT_BYTES))).toBe(true);
      }
    } finally {
      await early.close();
    }
    await expectEveryCutExact();
  });

  it('goes on from where it stopped: new commits are compacted with the rows before them, an idle region is left alone', async () => {
    const random = seededRandom(7);
    let seq = 901;
    for (let batch = 0; batch < 10; batch++) {
      const records: Buffer[] = [];
      for (let i = 0; i < 3; i++) {
        seq++;
        const offset = HOT[1] + Math.floor(random() * (HOT_BYTES - 4 * KiB));
        const data = randomBuffer(random, 4 * KiB);
        written.push({ seq, volumeIndex: 0, offset, data });
        records.push(encodeWriteRecord({ seq, volumeIndex: 0, offset, capturedAtMicros: seq, flags: 0, data }));
      }
      await store.commit(vpgId, records.map((bytes) => ({ bytes, decoded: decodeRecord(bytes) })));
    }
    seq++;
    await store.commit(vpgId, [encodeCheckpointRecord({ seq, capturedAtMicros: seq, marker: { id: randomUUID(), kind: 'automatic', name: null, vmId: null } })].map((bytes) => ({ bytes, decoded: decodeRecord(bytes) })));
    cuts.push(seq);

    const before = await rows();
    const result = await compactor.compact(vpgId);
    // Only regions 0 and 1 of volume 0 had new rows (the writes straddle their boundary).
    expect(result.regions).toBeGreaterThan(0);
    expect(result.regions).toBeLessThanOrEqual(2);
    expect(result.rowsMerged).toBeGreaterThanOrEqual(10);
    const after = await rows();
    const untouched = (list: typeof before): string[] => list.filter((r) => r.volume_index === 1 || r.region >= 2).map((r) => `${r.volume_index}:${r.region}:${r.first_seq}:${r.entries.toString('hex')}`);
    expect(untouched(after)).toEqual(untouched(before));
    expect(compactor.vpgs()).toEqual([]);
    expect(await compactor.compact(vpgId)).toMatchObject({ regions: 0, rowsMerged: 0 });
    await expectEveryCutExact();
  });

  it('after a restart, finds the small rows committed before it and compacts them', async () => {
    const random = seededRandom(8);
    let seq = Math.max(...cuts);
    // Committed by a store whose compactor is gone (as before a restart).
    const plain = new JournalStore(dataSource, dir.path, { segmentBytes: 64 * KiB });
    await store.close();
    for (let batch = 0; batch < 8; batch++) {
      seq++;
      const offset = Math.floor(random() * (SIZES[1] - 512));
      const data = randomBuffer(random, 512);
      written.push({ seq, volumeIndex: 1, offset, data });
      const bytes = encodeWriteRecord({ seq, volumeIndex: 1, offset, capturedAtMicros: seq, flags: 0, data });
      await plain.commit(vpgId, [{ bytes, decoded: decodeRecord(bytes) }]);
    }
    seq++;
    const marker = encodeCheckpointRecord({ seq, capturedAtMicros: seq, marker: { id: randomUUID(), kind: 'automatic', name: null, vmId: null } });
    await plain.commit(vpgId, [{ bytes: marker, decoded: decodeRecord(marker) }]);
    cuts.push(seq);
    store = plain;

    const fresh = new JournalCompactor(dataSource, { minRows: 4, targetBytes: 600, regionsPerTransaction: 16 });
    expect(fresh.vpgs()).toEqual([]);
    const result = await fresh.compact(vpgId);
    expect(result.rowsMerged).toBeGreaterThanOrEqual(8);
    const volumeOne = (await rows()).filter((r) => r.volume_index === 1);
    expect(volumeOne.length).toBeLessThan(6);
    await expectEveryCutExact();
    // An unknown VPG has nothing to compact.
    expect(await fresh.compact(randomUUID())).toEqual(expect.objectContaining({ regions: 0, rowsMerged: 0 }));
  });
});
