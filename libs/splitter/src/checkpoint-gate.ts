import { type CheckpointMarkerBody } from '@cdp/contracts';

/**
 * Keeps checkpoints out of a stretch of a VPG's write order that no checkpoint may fall inside: a
 * forced resync, and the tracking of dirty regions with their sync after it. A cut there would hold
 * some regions as the protected volume has them and others as they were, a state the volume was never
 * in.
 *
 * Each such stretch holds the gate under its own name; while any holds it, automatic markers are
 * skipped (the scheduler's next tick after it covers the gap) and tagged and application-consistent
 * ones are deferred, one copy each, to be inserted in arrival order once the last holder lets go. The
 * first checkpoint after that is consistent.
 */
export class CheckpointGate {
  private readonly holders = new Set<string>();
  private deferred: CheckpointMarkerBody[] = [];
  private skipped = 0;

  /**
   * `insert` puts a deferred marker into the order; called only once no holder is left. `stretch`
   * hears when the gate goes from open to held (`began`) and back (`ended`): the capture marks where
   * such a stretch begins in the order for the journal (a sync record).
   */
  constructor(
    private readonly insert: (marker: CheckpointMarkerBody) => void,
    private readonly stretch: { began(): void; ended(): void } = { began: () => undefined, ended: () => undefined },
  ) {}

  get held(): boolean {
    return this.holders.size > 0;
  }

  hold(holder: string): void {
    const open = this.holders.size === 0;
    this.holders.add(holder);
    if (open) {
      this.stretch.began();
    }
  }

  /**
   * `holder` lets go. When it was the last, the deferred markers are inserted and the return says how
   * many were inserted and how many automatic ones were skipped while it was held; otherwise undefined.
   */
  release(holder: string): { readonly inserted: number; readonly skipped: number } | undefined {
    if (!this.holders.delete(holder) || this.holders.size > 0) {
      return undefined;
    }
    this.stretch.ended();
    const deferred = this.deferred;
    const skipped = this.skipped;
    this.deferred = [];
    this.skipped = 0;
    for (const marker of deferred) {
      this.insert(marker);
    }
    return { inserted: deferred.length, skipped };
  }

  /** Called for every marker before it is inserted: true if the gate took it (skipped or deferred). */
  intercept(marker: CheckpointMarkerBody): boolean {
    if (!this.held) {
      return false;
    }
    if (marker.kind === 'automatic') {
      this.skipped++;
    } else if (!this.deferred.some((m) => m.id === marker.id)) {
      // The scheduler sends a tagged request again until it is recorded: keep one copy.
      this.deferred.push(marker);
    }
    return true;
  }
}
