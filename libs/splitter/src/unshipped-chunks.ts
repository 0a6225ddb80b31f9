/** What the bookkeeping needs from the capture: how far the bus has acknowledged, and how often the log was cut back. */
export interface ShippingProgress {
  shippedSeq(): number;
  /** How many times the log has been cut back after a failed append (seqs handed out again). */
  logCuts(): number;
}

export interface UnshippedChunk {
  readonly seq: number;
  readonly bytes: number;
}

/**
 * The chunks a resync (forced, or of dirty regions) has captured and the bus has not acknowledged
 * yet, oldest first. A chunk is done only once the bus acknowledged its seq. A cut of the log hands
 * the seqs of the records it removed to other records, so after a cut the bus acknowledging a pending
 * chunk's seq says nothing about the chunk: every pending chunk is then given up, to be read again.
 * (A chunk the bus acknowledged before the cut was durable, so the cut did not take it.)
 */
export class UnshippedChunks<T extends UnshippedChunk> {
  private readonly pending: T[] = [];
  private pendingBytes = 0;
  private cuts: number;

  constructor(private readonly progress: ShippingProgress) {
    this.cuts = progress.logCuts();
  }

  get bytes(): number {
    return this.pendingBytes;
  }

  get oldest(): T | undefined {
    return this.pending[0];
  }

  get newest(): T | undefined {
    return this.pending[this.pending.length - 1];
  }

  push(chunk: T): void {
    this.pending.push(chunk);
    this.pendingBytes += chunk.bytes;
  }

  /**
   * The chunks acknowledged since the last call, oldest first, now off the list; or 'cut' when the
   * log was cut back since: then every pending chunk is dropped, and the caller reads them again.
   */
  settle(): T[] | 'cut' {
    const cuts = this.progress.logCuts();
    if (cuts !== this.cuts) {
      this.cuts = cuts;
      this.pending.length = 0;
      this.pendingBytes = 0;
      return 'cut';
    }
    const shipped = this.progress.shippedSeq();
    let n = 0;
    while (n < this.pending.length && (this.pending[n] as T).seq <= shipped) {
      this.pendingBytes -= (this.pending[n] as T).bytes;
      n++;
    }
    return this.pending.splice(0, n);
  }
}
