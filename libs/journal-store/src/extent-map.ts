/**
 * Which write supplies each byte of a volume range at a cut: a sorted list of disjoint extents, each
 * naming the newest write that covers it. Writes are added oldest first (a later one wins where they
 * overlap); the list is built once, on first use, by a sweep over the writes sorted by start with a
 * max-heap of the writes covering the sweep position (stale ones dropped lazily), so building from n
 * writes is O(n log n) whatever their overlap. Adding after the list was built rebuilds it.
 */
export interface Extent<T> {
  /** Volume byte range [start, end). */
  readonly start: number;
  readonly end: number;
  readonly source: T;
  /** Offset of `start` from the beginning of the source write's payload. */
  readonly sourceOffset: number;
}

interface Piece<T> {
  readonly start: number;
  readonly end: number;
  /** Payload offset of `start`. */
  readonly sourceOffset: number;
  readonly source: T;
}

export class ExtentMap<T> {
  private readonly pieces: Piece<T>[] = [];
  private built: Extent<T>[] | undefined;

  /**
   * Lays down `length` bytes at `offset` on top of everything added before. `sourceOffset` is the
   * payload offset of `offset` (non-zero when the caller clipped the write to a range).
   */
  add(offset: number, length: number, source: T, sourceOffset = 0): void {
    if (length <= 0) {
      return;
    }
    this.pieces.push({ start: offset, end: offset + length, sourceOffset, source });
    this.built = undefined;
  }

  get size(): number {
    return this.list().length;
  }

  /** The extents in volume order. */
  list(): readonly Extent<T>[] {
    this.built ??= sweep(this.pieces);
    return this.built;
  }
}

/** Index i of `pieces` has priority i: the higher wins. */
function sweep<T>(pieces: readonly Piece<T>[]): Extent<T>[] {
  const order = pieces.map((_, i) => i).sort((a, b) => (pieces[a] as Piece<T>).start - (pieces[b] as Piece<T>).start || a - b);
  const heap = new MaxHeap();
  const out: Extent<T>[] = [];
  let next = 0;
  let pos = 0;
  const push = (extent: Extent<T>): void => {
    const last = out[out.length - 1];
    // Two runs of one write that meet (a newer write ended inside it and nothing else intervened).
    if (last && last.source === extent.source && last.end === extent.start && last.sourceOffset + (last.end - last.start) === extent.sourceOffset) {
      out[out.length - 1] = { ...last, end: extent.end };
    } else {
      out.push(extent);
    }
  };
  while (next < order.length || heap.size > 0) {
    while (heap.size > 0 && (pieces[heap.peek()] as Piece<T>).end <= pos) {
      heap.pop();
    }
    if (heap.size === 0) {
      if (next >= order.length) {
        break;
      }
      pos = Math.max(pos, (pieces[order[next] as number] as Piece<T>).start);
    }
    while (next < order.length && (pieces[order[next] as number] as Piece<T>).start <= pos) {
      const index = order[next++] as number;
      if ((pieces[index] as Piece<T>).end > pos) {
        heap.push(index);
      }
    }
    if (heap.size === 0) {
      continue;
    }
    const top = pieces[heap.peek()] as Piece<T>;
    const nextStart = next < order.length ? (pieces[order[next] as number] as Piece<T>).start : Number.POSITIVE_INFINITY;
    const until = Math.min(top.end, nextStart);
    push({ start: pos, end: until, source: top.source, sourceOffset: top.sourceOffset + (pos - top.start) });
    pos = until;
  }
  return out;
}

/** A binary max-heap of piece indices (the index is the priority). */
class MaxHeap {
  private readonly items: number[] = [];

  get size(): number {
    return this.items.length;
  }

  peek(): number {
    return this.items[0] as number;
  }

  push(value: number): void {
    const items = this.items;
    items.push(value);
    let i = items.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if ((items[parent] as number) >= value) {
        break;
      }
      items[i] = items[parent] as number;
      i = parent;
    }
    items[i] = value;
  }

  pop(): void {
    const items = this.items;
    const last = items.pop() as number;
    if (items.length === 0) {
      return;
    }
    let i = 0;
    for (;;) {
      const left = 2 * i + 1;
      if (left >= items.length) {
        break;
      }
      const right = left + 1;
      const child = right < items.length && (items[right] as number) > (items[left] as number) ? right : left;
      if ((items[child] as number) <= last) {
        break;
      }
      items[i] = items[child] as number;
      i = child;
    }
    items[i] = last;
  }
}
