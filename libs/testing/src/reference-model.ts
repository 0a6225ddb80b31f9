/**
 * The test's own model of what the protected volumes hold: every acknowledged write with its seq.
 * The expected image of a volume at a cut is every write with a smaller seq, applied in seq order.
 * It is computed independently of the system under test (no journal, no extent map).
 */
export interface ReferenceWrite {
  readonly seq: number;
  readonly volumeId: string;
  readonly offset: number;
  readonly data: Buffer;
}

export class ReferenceModel {
  private readonly writes: ReferenceWrite[] = [];

  constructor(private readonly volumeSizes: ReadonlyMap<string, number>) {}

  record(write: ReferenceWrite): void {
    this.writes.push(write);
  }

  get count(): number {
    return this.writes.length;
  }

  all(): readonly ReferenceWrite[] {
    return this.writes;
  }

  /** Images of every volume at each cut, for many cuts in one pass. */
  imagesAt(cuts: readonly number[]): Map<number, Map<string, Buffer>> {
    const sortedWrites = [...this.writes].sort((a, b) => a.seq - b.seq);
    const current = new Map<string, Buffer>();
    for (const [id, size] of this.volumeSizes) {
      current.set(id, Buffer.alloc(size));
    }
    const result = new Map<number, Map<string, Buffer>>();
    let next = 0;
    for (const cut of [...new Set(cuts)].sort((a, b) => a - b)) {
      while (next < sortedWrites.length && (sortedWrites[next] as ReferenceWrite).seq < cut) {
        const w = sortedWrites[next] as ReferenceWrite;
        const image = current.get(w.volumeId);
        if (!image) {
          throw new Error(`write to unknown volume ${w.volumeId}`);
        }
        w.data.copy(image, w.offset);
        next++;
      }
      result.set(cut, new Map([...current].map(([id, image]) => [id, Buffer.from(image)])));
    }
    return result;
  }
}

/** A small seeded PRNG (mulberry32) so a failing workload can be replayed from its seed. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomBuffer(random: () => number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i += 4) {
    const v = (random() * 0x100000000) >>> 0;
    for (let j = 0; j < 4 && i + j < length; j++) {
      buf[i + j] = (v >>> (j * 8)) & 0xff;
    }
  }
  return buf;
}
