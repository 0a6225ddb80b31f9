import { CommitPacer, type PacerClock } from './commit-pacer';

/** A clock that moves only when told to, firing due timers in order. */
class ManualClock implements PacerClock {
  private time = 1_000;
  private readonly timers: { at: number; fn: () => void; cancelled: boolean }[] = [];

  now(): number {
    return this.time;
  }

  after(ms: number, fn: () => void): () => void {
    const timer = { at: this.time + ms, fn, cancelled: false };
    this.timers.push(timer);
    return () => {
      timer.cancelled = true;
    };
  }

  advance(ms: number): void {
    this.time += ms;
    for (const timer of this.timers.filter((t) => t.at <= this.time && !t.cancelled)) {
      timer.cancelled = true;
      timer.fn();
    }
  }

  get scheduled(): number {
    return this.timers.filter((t) => !t.cancelled).length;
  }
}

/** Whether the promise has settled once pending microtasks have run. */
async function settled(promise: Promise<void>): Promise<boolean> {
  let done = false;
  void promise.then(() => (done = true));
  await Promise.resolve();
  await Promise.resolve();
  return done;
}

describe('CommitPacer', () => {
  it('lets the first batch through at once', async () => {
    const pacer = new CommitPacer(25, new ManualClock());
    expect(await settled(pacer.ready())).toBe(true);
  });

  it('holds the next batch until the interval since the last one started has passed', async () => {
    const clock = new ManualClock();
    const pacer = new CommitPacer(25, clock);
    pacer.started();
    clock.advance(10); // the commit took 10 ms
    const ready = pacer.ready();
    expect(await settled(ready)).toBe(false);
    clock.advance(14);
    expect(await settled(ready)).toBe(false);
    clock.advance(1);
    expect(await settled(ready)).toBe(true);
  });

  it('never holds a batch that comes after the interval (an idle writer adds no delay)', async () => {
    const clock = new ManualClock();
    const pacer = new CommitPacer(25, clock);
    pacer.started();
    clock.advance(40); // a commit slower than the interval, or a quiet bus
    expect(await settled(pacer.ready())).toBe(true);
    expect(clock.scheduled).toBe(0);
  });

  it('with an interval of 0 never waits', async () => {
    const clock = new ManualClock();
    const pacer = new CommitPacer(0, clock);
    pacer.started();
    expect(await settled(pacer.ready())).toBe(true);
    expect(clock.scheduled).toBe(0);
  });

  it('stop() releases a waiting batch and every later one, and cancels the timer', async () => {
    const clock = new ManualClock();
    const pacer = new CommitPacer(1_000, clock);
    pacer.started();
    const ready = pacer.ready();
    expect(await settled(ready)).toBe(false);
    pacer.stop();
    expect(await settled(ready)).toBe(true);
    expect(clock.scheduled).toBe(0);
    pacer.started();
    expect(await settled(pacer.ready())).toBe(true);
  });

  it.each([-1, 2.5, Number.NaN])('refuses an interval of %p', (interval) => {
    expect(() => new CommitPacer(interval)).toThrow(RangeError);
  });
});
