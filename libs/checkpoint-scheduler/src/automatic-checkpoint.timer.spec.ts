import fc from 'fast-check';
import { AutomaticCheckpointTimer, firstDueAt, type SchedulerClock } from './automatic-checkpoint.timer';

/** A clock whose time moves only when the test says, running due timeouts in order as it goes. */
class ManualClock implements SchedulerClock {
  private timeouts: { id: number; at: number; callback: () => void }[] = [];
  private nextId = 1;

  constructor(private time: number) {}

  now(): number {
    return this.time;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.timeouts.push({ id, at: this.time + ms, callback });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timeouts = this.timeouts.filter((t) => t.id !== handle);
  }

  /** Moves to `until`, firing every timeout due on the way at its own time. `lagMs` delays each firing (a busy event loop). */
  advanceTo(until: number, lagMs = 0): void {
    for (;;) {
      this.timeouts.sort((a, b) => a.at - b.at || a.id - b.id);
      const next = this.timeouts[0];
      if (!next || next.at + lagMs > until) {
        break;
      }
      this.timeouts.shift();
      this.time = Math.max(this.time, next.at + lagMs);
      next.callback();
    }
    this.time = until;
  }

  pending(): number {
    return this.timeouts.length;
  }
}

const INTERVAL = 5_000;
const T0 = Date.parse('2026-11-25T12:00:00Z');

function run(clock: ManualClock, fired: number[]): AutomaticCheckpointTimer {
  return new AutomaticCheckpointTimer(INTERVAL, clock, () => fired.push(clock.now()));
}

describe('firstDueAt', () => {
  it('is one interval after the newest checkpoint (or from now without one), or now if that has passed', () => {
    expect(firstDueAt(T0, INTERVAL, T0 + 2_000)).toBe(T0 + INTERVAL);
    expect(firstDueAt(T0, INTERVAL, T0 + 60_000)).toBe(T0 + 60_000);
    expect(firstDueAt(null, INTERVAL, T0)).toBe(T0 + INTERVAL);
    // A newest checkpoint stamped in the future by a source clock ahead of ours.
    expect(firstDueAt(T0 + 3_600_000, INTERVAL, T0)).toBe(T0 + INTERVAL);
  });
});

describe('AutomaticCheckpointTimer', () => {
  it('fires every interval, anchored to due times so a late callback does not drift', () => {
    const clock = new ManualClock(T0);
    const fired: number[] = [];
    run(clock, fired).start(T0 + INTERVAL);
    clock.advanceTo(T0 + 10 * INTERVAL, 300);
    expect(fired).toEqual(Array.from({ length: 9 }, (_, i) => T0 + (i + 1) * INTERVAL + 300));
  });

  it('after a stall of several intervals fires once, then one interval later: no burst', () => {
    const clock = new ManualClock(T0);
    const fired: number[] = [];
    run(clock, fired).start(T0 + INTERVAL);
    clock.advanceTo(T0 + INTERVAL);
    // The event loop is blocked for 23 s: the timeout due at T0 + 2 intervals runs 23 s late.
    clock.advanceTo(T0 + 2 * INTERVAL + 23_000, 23_000);
    clock.advanceTo(T0 + 40_000);
    expect(fired).toEqual([T0 + INTERVAL, T0 + 2 * INTERVAL + 23_000, T0 + 2 * INTERVAL + 23_000 + INTERVAL]);
  });

  it('stops for good', () => {
    const clock = new ManualClock(T0);
    const fired: number[] = [];
    const timer = run(clock, fired);
    timer.start(T0);
    clock.advanceTo(T0 + INTERVAL);
    timer.stop();
    clock.advanceTo(T0 + 10 * INTERVAL);
    expect(fired).toEqual([T0, T0 + INTERVAL]);
    expect(clock.pending()).toBe(0);
  });

  it('rejects an interval that is not a positive whole number of milliseconds', () => {
    const clock = new ManualClock(T0);
    expect(() => new AutomaticCheckpointTimer(0, clock, () => undefined)).toThrow(RangeError);
    expect(() => new AutomaticCheckpointTimer(1.5, clock, () => undefined)).toThrow(RangeError);
  });

  it('across a restart: no gap longer than one interval beyond the downtime, and never two checkpoints closer than one interval', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 60 }).map((s) => s * 1000),
        fc.integer({ min: 1, max: 200_000 }),
        fc.integer({ min: 0, max: 300_000 }),
        (interval, runMs, downMs) => {
          const clock = new ManualClock(T0);
          const fired: number[] = [];
          // First life of the scheduler: its newest checkpoint is long past, so the first is due at once.
          const first = new AutomaticCheckpointTimer(interval, clock, () => fired.push(clock.now()));
          first.start(firstDueAt(T0 - 10 * interval, interval, clock.now()));
          clock.advanceTo(T0 + runMs);
          first.stop();
          const newest = fired[fired.length - 1]!;
          // Down for downMs; the new process reads the newest recorded checkpoint and starts again.
          clock.advanceTo(T0 + runMs + downMs);
          const restartedAt = clock.now();
          const second = new AutomaticCheckpointTimer(interval, clock, () => fired.push(clock.now()));
          second.start(firstDueAt(newest, interval, restartedAt));
          clock.advanceTo(restartedAt + 5 * interval);
          second.stop();

          const afterRestart = fired.filter((t) => t > newest);
          // The first checkpoint after the restart: one interval after the newest, or at once if that passed.
          expect(afterRestart[0]).toBe(Math.max(restartedAt, newest + interval));
          for (let i = 1; i < fired.length; i++) {
            const gap = fired[i]! - fired[i - 1]!;
            expect(gap).toBeGreaterThanOrEqual(interval);
            if (fired[i - 1]! !== newest) {
              expect(gap).toBe(interval);
            }
          }
        },
      ),
      { numRuns: 200 },
    );
  });
});
