/**
 * Which write supplies each byte of a volume at a cut: a sorted list of disjoint extents, each naming
 * the newest write (by seq) that covers it. Built by laying writes down in seq order; a later write
 * replaces whatever it overlaps, splitting older extents at its edges.
 */
export interface Extent<T> {
  /** Volume byte range [start, end). */
  readonly start: number;
  readonly end: number;
  readonly source: T;
  /** Offset of `start` from the beginning of the source write's payload. */
  readonly sourceOffset: number;
}

export class ExtentMap<T> {
  private extents: Extent<T>[] = [];

  /** Lays down a write of `length` bytes at `offset` on top of everything laid down before. */
  add(offset: number, length: number, source: T): void {
    const start = offset;
    const end = offset + length;
    if (length <= 0) {
      return;
    }
    const list = this.extents;
    // First extent that ends after `start`: everything before it is untouched.
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((list[mid] as Extent<T>).end <= start) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    const first = lo;
    let last = first;
    const replacement: Extent<T>[] = [];
    while (last < list.length && (list[last] as Extent<T>).start < end) {
      const old = list[last] as Extent<T>;
      if (old.start < start) {
        replacement.push({ start: old.start, end: start, source: old.source, sourceOffset: old.sourceOffset });
      }
      if (old.end > end) {
        replacement.push({ start: end, end: old.end, source: old.source, sourceOffset: old.sourceOffset + (end - old.start) });
      }
      last++;
    }
    const head = replacement.filter((e) => e.start < start);
    const tail = replacement.filter((e) => e.start >= end);
    list.splice(first, last - first, ...head, { start, end, source, sourceOffset: 0 }, ...tail);
  }

  /** The extents in volume order. */
  list(): readonly Extent<T>[] {
    return this.extents;
  }
}
