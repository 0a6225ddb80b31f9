import fc from 'fast-check';
import { ExtentMap } from './extent-map';

describe('ExtentMap', () => {
  it('lets the newest write win and splits older ones at its edges', () => {
    const map = new ExtentMap<string>();
    map.add(0, 100, 'a');
    map.add(40, 20, 'b');
    map.add(90, 20, 'c');
    expect(map.list()).toEqual([
      { start: 0, end: 40, source: 'a', sourceOffset: 0 },
      { start: 40, end: 60, source: 'b', sourceOffset: 0 },
      { start: 60, end: 90, source: 'a', sourceOffset: 60 },
      { start: 90, end: 110, source: 'c', sourceOffset: 0 },
    ]);
  });

  it('describes exactly the bytes that applying the writes in order would leave', () => {
    const size = 256;
    const write = fc.record({ offset: fc.integer({ min: 0, max: size - 1 }), length: fc.integer({ min: 1, max: 64 }) });
    fc.assert(
      fc.property(fc.array(write, { maxLength: 60 }), (writes) => {
        const expected = new Int32Array(size).fill(-1);
        const map = new ExtentMap<number>();
        writes.forEach((w, i) => {
          const length = Math.min(w.length, size - w.offset);
          expected.fill(i, w.offset, w.offset + length);
          map.add(w.offset, length, i);
        });
        const actual = new Int32Array(size).fill(-1);
        let previousEnd = 0;
        for (const e of map.list()) {
          expect(e.start).toBeGreaterThanOrEqual(previousEnd);
          previousEnd = e.end;
          const w = writes[e.source]!;
          expect(w.offset + e.sourceOffset).toBe(e.start);
          actual.fill(e.source, e.start, e.end);
        }
        expect(Array.from(actual)).toEqual(Array.from(expected));
      }),
      { numRuns: 300 },
    );
  });
});

describe('ExtentMap with clipped writes', () => {
  it('reproduces the bytes of a window, writes clipped to it, against a byte-array model', () => {
    const size = 512;
    const write = fc.record({ offset: fc.integer({ min: 0, max: size - 1 }), length: fc.integer({ min: 1, max: 200 }), fill: fc.integer({ min: 1, max: 255 }) });
    fc.assert(
      fc.property(fc.array(write, { maxLength: 80 }), fc.integer({ min: 0, max: size - 1 }), fc.integer({ min: 1, max: size }), (writes, from, span) => {
        const to = Math.min(size, from + span);
        const model = new Uint8Array(size);
        const payloads = writes.map((w) => {
          const length = Math.min(w.length, size - w.offset);
          // Each payload byte differs, so a wrong sourceOffset shows.
          const data = Uint8Array.from({ length }, (_, k) => (w.fill + k) % 256);
          model.set(data, w.offset);
          return { offset: w.offset, data };
        });
        const map = new ExtentMap<{ offset: number; data: Uint8Array }>();
        for (const p of payloads) {
          const start = Math.max(p.offset, from);
          const end = Math.min(p.offset + p.data.length, to);
          map.add(start, end - start, p, start - p.offset);
        }
        const actual = new Uint8Array(size);
        for (const e of map.list()) {
          expect(e.start).toBeGreaterThanOrEqual(from);
          expect(e.end).toBeLessThanOrEqual(to);
          actual.set(e.source.data.subarray(e.sourceOffset, e.sourceOffset + (e.end - e.start)), e.start);
        }
        expect(Array.from(actual.subarray(from, to))).toEqual(Array.from(model.subarray(from, to)));
      }),
      { numRuns: 300 },
    );
  });

  it('merges the two runs of one write that a newer one ended inside and nothing else split', () => {
    const map = new ExtentMap<string>();
    map.add(0, 100, 'a');
    map.add(10, 10, 'b');
    map.add(0, 10, 'c');
    map.add(5, 50, 'd');
    expect(map.list()).toEqual([
      { start: 0, end: 5, source: 'c', sourceOffset: 0 },
      { start: 5, end: 55, source: 'd', sourceOffset: 0 },
      { start: 55, end: 100, source: 'a', sourceOffset: 55 },
    ]);
  });
});
