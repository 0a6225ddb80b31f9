/** Where the timer reads the time and sets its timeouts: the real ones in production, hand-driven in tests. */
export interface SchedulerClock {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemSchedulerClock: SchedulerClock = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms).unref(),
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/**
 * When the first automatic checkpoint after a (re)start is due: one interval after the VPG's newest
 * recorded checkpoint, or at once if that moment has passed (the scheduler was down, or slow to
 * start). A VPG without checkpoints gets its first at once. So a restart adds no gap beyond what the
 * downtime itself made, and the time missed is not made up by a burst of checkpoints: one checkpoint
 * covers it, since a checkpoint is a cut of everything written before it.
 */
export function firstDueAt(newestCheckpointAt: number | null, intervalMs: number, now: number): number {
  if (newestCheckpointAt === null || !Number.isFinite(newestCheckpointAt)) {
    return now + intervalMs;
  }
  // A newest checkpoint from the future (a source clock ahead of ours) must not hold the timer back.
  return Math.max(now, Math.min(newestCheckpointAt, now) + intervalMs);
}

/**
 * Fires `fire` for one VPG at its interval. Due times are anchored to the previous due time, not to
 * when the callback happened to run, so timer lateness does not accumulate into drift. After a stall
 * of an interval or more (a blocked event loop, a suspended host) the late checkpoint is the only one
 * and the next is one interval after it: never a catch-up burst.
 */
export class AutomaticCheckpointTimer {
  private handle: unknown = null;
  private due = 0;
  private stopped = false;

  constructor(
    readonly intervalMs: number,
    private readonly clock: SchedulerClock,
    private readonly fire: () => void,
  ) {
    if (!Number.isSafeInteger(intervalMs) || intervalMs < 1) {
      throw new RangeError(`interval must be a positive whole number of milliseconds, got ${intervalMs}`);
    }
  }

  /** Starts with the first checkpoint at `firstDue` (see firstDueAt). */
  start(firstDue: number): void {
    this.stopped = false;
    this.arm(firstDue);
  }

  stop(): void {
    this.stopped = true;
    if (this.handle !== null) {
      this.clock.clearTimeout(this.handle);
      this.handle = null;
    }
  }

  private arm(due: number): void {
    this.due = due;
    this.handle = this.clock.setTimeout(() => this.onTimeout(), Math.max(0, due - this.clock.now()));
  }

  private onTimeout(): void {
    this.handle = null;
    if (this.stopped) {
      return;
    }
    this.fire();
    const now = this.clock.now();
    const next = this.due + this.intervalMs;
    // Late by a whole interval or more: the checkpoint just taken covers the missed one.
    this.arm(next > now ? next : now + this.intervalMs);
  }
}
