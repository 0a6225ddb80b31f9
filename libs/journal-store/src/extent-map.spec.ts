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
