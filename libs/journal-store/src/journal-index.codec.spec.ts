import fc from 'fast-check';
import { RECORD_HEADER_BYTES } from '@cdp/contracts';
import { JournalIndexError, REGION_BYTES, RegionWrites, mergeRows, packBatch, trimRow, unpackRow, type ExtentRow, type IndexedWrite } from './journal-index.codec';

/** A batch as the store lays it out: records back to back from `position`, markers in between. */
function layOut(
  firstSeq: number,
  position: number,
  items: readonly ({ readonly marker: true; readonly length: number } | { readonly marker: false; readonly volumeIndex: number; readonly offset: number; readonly length: number })[],
  segment = 7,
): IndexedWrite[] {
  const writes: IndexedWrite[] = [];
  let at = position;
  items.forEach((item, i) => {
    if (!item.marker) {
      writes.push({ seq: firstSeq + i, volumeIndex: item.volumeIndex, offset: item.offset, length: item.length, segment, position: at });
    }
    at += RECORD_HEADER_BYTES + item.length;
  });
  return writes;
}

const item = fc.oneof(
  fc.record({ marker: fc.constant(true as const), length: fc.integer({ min: 1, max: 300 }) }),
  fc.record({
    marker: fc.constant(false as const),
    volumeIndex: fc.integer({ min: 0, max: 3 }),
    // Mostly small volumes, sometimes far out, sometimes across a region boundary.
    // Sector-aligned ones (packed in sectors) mixed with byte-aligned ones.
    offset: fc.oneof(
      fc.integer({ min: 0, max: (3 * REGION_BYTES) / 512 }).map((n) => n * 512),
      fc.integer({ min: 0, max: 3 * REGION_BYTES }),
      fc.integer({ min: 0, max: 2 ** 44 }),
      fc.constant(REGION_BYTES - 100),
    ),
    length: fc.oneof(fc.integer({ min: 1, max: 128 }).map((n) => n * 512), fc.integer({ min: 1, max: 4096 }), fc.integer({ min: 1, max: 2 * REGION_BYTES })),
  }),
);

describe('journal index codec', () => {
  it('unpacks every row to exactly the writes that touch its region, and each write has one home row', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 ** 40 }), fc.integer({ min: 0, max: 2 ** 36 }), fc.array(item, { minLength: 1, maxLength: 60 }), (firstSeq, position, items) => {
        const writes = layOut(firstSeq, position, items);
        const rows = packBatch({ firstSeq, segment: 7, position }, writes);
        const home: IndexedWrite[] = [];
        for (const row of rows) {
          const unpacked = unpackRow(row);
          const regionStart = row.region * REGION_BYTES;
          const expected = writes.filter(
            (w) => w.volumeIndex === row.volumeIndex && w.offset < regionStart + REGION_BYTES && w.offset + w.length > regionStart,
          );
          expect(unpacked).toEqual(expected);
          expect(row.lastSeq).toBe(expected[expected.length - 1]!.seq);
          home.push(...unpacked.filter((w) => Math.floor(w.offset / REGION_BYTES) === row.region));
        }
        expect(home.sort((a, b) => a.seq - b.seq)).toEqual(writes);
      }),
      { numRuns: 300 },
    );
  });

  it('packs a batch of small sequential writes in about four bytes a write', () => {
    const writes = layOut(1, 0, Array.from({ length: 1000 }, (_, i) => ({ marker: false as const, volumeIndex: 0, offset: i * 4096, length: 4096 })));
    const rows = packBatch({ firstSeq: 1, segment: 7, position: 0 }, writes);
    expect(rows).toHaveLength(1);
    expect(rows[0]!.entries.length).toBeLessThanOrEqual(4 * 1000);
  });

  it('keeps the marked writes of a region, in order, in columns of their size', () => {
    const writes = layOut(10, 100, Array.from({ length: 20 }, (_, i) => ({ marker: false as const, volumeIndex: 1, offset: i * 1000, length: 700 })));
    const [row] = packBatch({ firstSeq: 10, segment: 7, position: 100 }, writes);
    const region = new RegionWrites();
    region.addRow(row!, 0, Number.MAX_SAFE_INTEGER);
    const keep = new Uint8Array(20).map((_, i) => (i % 3 === 0 ? 1 : 0));
    region.retain(keep);
    expect(region.count).toBe(7);
    expect(region.seq).toHaveLength(7);
    expect(Array.from({ length: region.count }, (_, i) => region.write(i, 1))).toEqual(writes.filter((_, i) => i % 3 === 0));
    region.retain(new Uint8Array(7));
    expect(region.count).toBe(0);
  });

  it('trims a row to the writes after a seq, and drops it when none is left', () => {
    const writes = layOut(10, 100, Array.from({ length: 20 }, (_, i) => ({ marker: false as const, volumeIndex: 1, offset: i * 1000, length: 700 })));
    const [row] = packBatch({ firstSeq: 10, segment: 7, position: 100 }, writes);
    const trimmed = trimRow(row!, 19);
    expect(unpackRow(trimmed!)).toEqual(writes.filter((w) => w.seq > 19));
    expect(trimmed).toMatchObject({ firstSeq: 10, lastSeq: 29, region: 0, volumeIndex: 1 });
    expect(trimRow(row!, 29)).toBeUndefined();
  });

  it('merges consecutive rows of a region across batches and segments into one row that unpacks and trims to the same writes', () => {
    const batchOf = fc.record({ segmentStep: fc.integer({ min: 0, max: 3 }), gap: fc.integer({ min: 0, max: 5000 }), items: fc.array(item, { minLength: 1, maxLength: 20 }) });
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 2 ** 40 }), fc.array(batchOf, { minLength: 1, maxLength: 12 }), fc.double({ min: 0, max: 1, noNaN: true }), (startSeq, batches, trimAt) => {
        // Batches back to back in the log: a later one in the same segment or a later segment.
        let seq = startSeq;
        let segment = 3;
        let position = 0;
        const rowsByRegion = new Map<string, ExtentRow[]>();
        const all: IndexedWrite[] = [];
        for (const batch of batches) {
          if (batch.segmentStep > 0) {
            segment += batch.segmentStep;
            position = 0;
          }
          position += batch.gap;
          const writes = layOut(seq, position, batch.items, segment);
          for (const row of packBatch({ firstSeq: seq, segment, position }, writes)) {
            const key = `${row.volumeIndex}:${row.region}`;
            rowsByRegion.set(key, [...(rowsByRegion.get(key) ?? []), row]);
          }
          all.push(...writes);
          position += batch.items.reduce((sum, it) => sum + RECORD_HEADER_BYTES + it.length, 0);
          seq += batch.items.length;
        }
        for (const rows of rowsByRegion.values()) {
          const merged = mergeRows(rows);
          const expected = rows.flatMap((row) => unpackRow(row));
          expect(unpackRow(merged)).toEqual(expected);
          expect(merged).toMatchObject({ firstSeq: rows[0]!.firstSeq, segment: rows[0]!.segment, position: rows[0]!.position, lastSeq: rows[rows.length - 1]!.lastSeq });
          // Never bigger than the rows it replaces (escapes cost at most what the rows' own bases did).
          expect(merged.entries.length).toBeLessThanOrEqual(rows.reduce((sum, row) => sum + row.entries.length + 16, 0));
          const after = expected[Math.floor(trimAt * (expected.length - 1))]!.seq;
          const trimmed = trimRow(merged, after);
          const left = expected.filter((w) => w.seq > after);
          if (left.length === 0) {
            expect(trimmed).toBeUndefined();
          } else {
            expect(unpackRow(trimmed!)).toEqual(left);
          }
        }
        // Every write is in its home region's merged row.
        const homes = [...rowsByRegion.values()].flatMap((rows) => unpackRow(mergeRows(rows)).filter((w) => Math.floor(w.offset / REGION_BYTES) === rows[0]!.region));
        expect(homes.sort((x, y) => x.seq - y.seq)).toEqual(all);
      }),
      { numRuns: 300 },
    );
  });

  it('refuses to merge rows of different regions or none, and a damaged segment change', () => {
    const a = packBatch({ firstSeq: 1, segment: 7, position: 0 }, layOut(1, 0, [{ marker: false, volumeIndex: 0, offset: 0, length: 512 }]))[0]!;
    const b = packBatch({ firstSeq: 2, segment: 8, position: 0 }, layOut(2, 0, [{ marker: false, volumeIndex: 0, offset: REGION_BYTES, length: 512 }], 8))[0]!;
    expect(() => mergeRows([a, b])).toThrow(JournalIndexError);
    expect(() => mergeRows([])).toThrow(JournalIndexError);
    const c = packBatch({ firstSeq: 2, segment: 8, position: 0 }, layOut(2, 0, [{ marker: false, volumeIndex: 0, offset: 4096, length: 512 }], 8))[0]!;
    const merged = mergeRows([a, c]);
    expect(unpackRow(merged).map((w) => w.segment)).toEqual([7, 8]);
    // The escape is the second group of four varints: 0, 1, 0, 0. A segment step of 0 is damage.
    const damaged = Buffer.from(merged.entries);
    const escapeAt = damaged.indexOf(Buffer.from([0, 1, 0, 0]));
    expect(escapeAt).toBeGreaterThan(0);
    damaged[escapeAt + 1] = 0;
    expect(() => unpackRow({ ...merged, entries: damaged })).toThrow(JournalIndexError);
    // Segments going back cannot be packed.
    expect(() => mergeRows([c, a])).toThrow(JournalIndexError);
  });

  it('refuses writes out of order and damaged entries', () => {
    const writes = layOut(1, 0, [
      { marker: false, volumeIndex: 0, offset: 0, length: 10 },
      { marker: false, volumeIndex: 0, offset: 10, length: 10 },
    ]);
    expect(() => packBatch({ firstSeq: 1, segment: 7, position: 0 }, [writes[1]!, writes[0]!])).toThrow(JournalIndexError);
    expect(() => packBatch({ firstSeq: 1, segment: 8, position: 0 }, writes)).toThrow(JournalIndexError);
    const [row] = packBatch({ firstSeq: 1, segment: 7, position: 0 }, writes);
    expect(() => unpackRow({ ...row!, entries: row!.entries.subarray(0, row!.entries.length - 1) })).toThrow(JournalIndexError);
    expect(() => unpackRow({ ...row!, entries: Buffer.from([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80]) })).toThrow(JournalIndexError);
  });
});
