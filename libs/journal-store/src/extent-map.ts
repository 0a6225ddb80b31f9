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
  const starts = new Float64Array(pieces.length);
  for (let i = 0; i < pieces.length; i++) {
    starts[i] = (pieces[i] as Piece<T>).start;
  }
  const order = Uint32Array.from(pieces.keys()).sort((a, b) => (starts[a] as number) - (starts[b] as number) || a - b);
  const heap = new MaxHeap();
  const out: Extent<T>[] = [];
  // The extent being grown: a write stays on top across many sweep steps (a large write with small
  // older ones under it), and its runs that meet are one extent, emitted once it ends.
  let open: Piece<T> | undefined;
  let openStart = 0;
  let openEnd = 0;
  const emit = (start: number, end: number, top: Piece<T>): void => {
    if (open && openEnd === start && (open === top || (open.source === top.source && open.sourceOffset + (start - open.start) === top.sourceOffset + (start - top.start)))) {
      openEnd = end;
      return;
    }
    if (open) {
      out.push({ start: openStart, end: openEnd, source: open.source, sourceOffset: open.sourceOffset + (openStart - open.start) });
    }
    open = top;
    openStart = start;
    openEnd = end;
  };
  let next = 0;
  let pos = 0;
  while (next < order.length || heap.size > 0) {
    while (heap.size > 0 && (pieces[heap.peek()] as Piece<T>).end <= pos) {
      heap.pop();
    }
    if (heap.size === 0) {
      if (next >= order.length) {
        break;
      }
      pos = Math.max(pos, starts[order[next] as number] as number);
    }
    while (next < order.length && (starts[order[next] as number] as number) <= pos) {
      const index = order[next++] as number;
      if ((pieces[index] as Piece<T>).end > pos) {
        heap.push(index);
      }
    }
    if (heap.size === 0) {
      continue;
    }
    const top = pieces[heap.peek()] as Piece<T>;
    const nextStart = next < order.length ? (starts[order[next] as number] as number) : Number.POSITIVE_INFINITY;
    const until = Math.min(top.end, nextStart);
    emit(pos, until, top);
    pos = until;
  }
  if (open) {
    out.push({ start: openStart, end: openEnd, source: open.source, sourceOffset: open.sourceOffset + (openStart - open.start) });
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
