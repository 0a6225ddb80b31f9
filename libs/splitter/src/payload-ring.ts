/**
 * Memory for write payloads, allocated once and reused in the order it was handed out.
 *
 * Why: a 1 MiB write's payload lives from its NBD request until the journal has it durable (the
 * splitter log's fsync, the shipper, the bus, the journal commit): a few hundred milliseconds, longer
 * than two young collections, so V8 promotes it and only a mark-compact frees it. A fresh ArrayBuffer
 * per write is external memory to V8, and every 64 MB or so of it starts a full mark of the heap:
 * measured with 1 MiB sequential writes through NBD, a mark-compact every 100 to 150 ms and about a
 * quarter of the process's CPU. Views into one large buffer allocated once are not new external memory.
 *
 * Payloads are released in about the order they were taken (capture order is also the order of the
 * log, the shipper, the bus and the journal), so the ring is a FIFO: regions are carved at the head and
 * the tail moves past a region once it and every region before it are released. A region released out
 * of order waits for the ones before it. When the ring has no room (the journal is behind, or a holder
 * keeps a region long), `acquire` returns undefined and the caller allocates as before: a full ring
 * costs speed, never correctness.
 *
 * Safety rests on every holder counting itself: `retain()` while it keeps a reference into the
 * region, `release()` exactly once when it stops. Releasing more often than retained throws. With
 * `poison` set (CDP_POISON_RELEASED_PAYLOADS, which the Jest configuration sets) a region is overwritten as soon as
 * its last holder releases it, so a holder that forgot to retain reads garbage in tests (and checksums
 * fail) instead of reading the right bytes by luck.
 */
export class PayloadRing {
  private readonly memory: Buffer;
  /** Regions handed out and not yet passed by the tail, oldest first: regions[head..]. */
  private regions: PayloadLease[] = [];
  private first = 0;
  /** Where the next region starts. */
  private next = 0;
  private fallbacks = 0;
  private served = 0;

  constructor(
    readonly capacity: number,
    private readonly options: { readonly poison?: boolean } = {},
  ) {
    if (!Number.isSafeInteger(capacity) || capacity < ALIGN) {
      throw new RangeError(`payload ring capacity must be an integer of at least ${ALIGN} bytes, got ${capacity}`);
    }
    // Allocated whole, never from Node's small-buffer pool; its pages are touched only as it fills.
    this.memory = Buffer.allocUnsafeSlow(capacity);
  }

  /**
   * A region of `bytes` bytes with one holder (the caller), or undefined when the ring has no room for
   * it now (the caller then allocates on its own).
   */
  acquire(bytes: number): PayloadLease | undefined {
    if (!Number.isSafeInteger(bytes) || bytes <= 0) {
      throw new RangeError(`a payload region needs a positive integer size, got ${bytes}`);
    }
    const size = Math.ceil(bytes / ALIGN) * ALIGN;
    const start = this.place(size);
    if (start === undefined) {
      this.fallbacks++;
      return undefined;
    }
    const lease = new PayloadLease(this, this.memory.subarray(start, start + bytes), start, start + size);
    this.regions.push(lease);
    this.served++;
    this.next = start + size;
    return lease;
  }

  /** What the ring holds now, and how often `acquire` was served and found no room (for the status). */
  stats(): PayloadRingStats {
    const oldest = this.regions[this.first];
    let liveBytes = 0;
    if (oldest) {
      liveBytes = this.next > oldest.start ? this.next - oldest.start : this.capacity - oldest.start + this.next;
    }
    return { capacityBytes: this.capacity, liveRegions: this.regions.length - this.first, liveBytes, served: this.served, fallbacks: this.fallbacks };
  }

  /** Where a region of `size` bytes fits now, or undefined. */
  private place(size: number): number | undefined {
    const oldest = this.regions[this.first];
    if (!oldest) {
      // Empty: start over at the front, the largest run there is.
      return size <= this.capacity ? 0 : undefined;
    }
    const tail = oldest.start;
    if (this.next > tail) {
      // Live bytes are [tail, next): room after them, else wrap to the front, before the tail.
      if (this.next + size <= this.capacity) {
        return this.next;
      }
      return size <= tail ? 0 : undefined;
    }
    // Wrapped (live bytes are [tail, capacity) and [0, next), next === tail when full): the room is [next, tail).
    return this.next + size <= tail ? this.next : undefined;
  }

  /** Called by a lease whose last holder released it. */
  freed(lease: PayloadLease): void {
    if (this.options.poison) {
      this.memory.fill(POISON, lease.start, lease.end);
    }
    // Move the tail past every released region at the front.
    while (this.first < this.regions.length && (this.regions[this.first] as PayloadLease).holders === 0) {
      this.first++;
    }
    if (this.first === this.regions.length) {
      this.regions = [];
      this.first = 0;
      this.next = 0;
    } else if (this.first > 1024 && this.first * 2 > this.regions.length) {
      this.regions = this.regions.slice(this.first);
      this.first = 0;
    }
  }
}

export interface PayloadRingStats {
  readonly capacityBytes: number;
  /** Regions handed out and not yet reusable (a released region waits for the ones before it). */
  readonly liveRegions: number;
  /** Bytes from the oldest of them to where the next one starts (unused ends skipped at a wrap included). */
  readonly liveBytes: number;
  /** Payloads received into the ring since start. */
  readonly served: number;
  /** Payloads it had no room for (allocated on their own instead): many mean the ring is too small. */
  readonly fallbacks: number;
}

/** One region of the ring: `data` is the caller's, to be used only while it holds the lease. */
export class PayloadLease {
  private count = 1;

  constructor(
    private readonly ring: PayloadRing,
    readonly data: Buffer,
    readonly start: number,
    readonly end: number,
  ) {}

  get holders(): number {
    return this.count;
  }

  retain(): void {
    if (this.count === 0) {
      throw new Error('a payload region was retained after its last holder released it');
    }
    this.count++;
  }

  release(): void {
    if (this.count === 0) {
      throw new Error('a payload region was released more often than it was retained');
    }
    this.count--;
    if (this.count === 0) {
      this.ring.freed(this);
    }
  }
}

/** Region starts are multiples of this: cache lines, so no two regions share one. */
const ALIGN = 64;
const POISON = 0xdb;
