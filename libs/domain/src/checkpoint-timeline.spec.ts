import fc from 'fast-check';
import {
  compareTimelineCheckpoints,
  selectTimeline,
  selectTimelineSorted,
  type TimelineCheckpoint,
  type TimelineEntry,
} from './checkpoint-timeline';
import { DomainError } from './domain.error';

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const NOW = new Date('2026-11-25T12:00:00.000Z');
const NOW_MS = NOW.getTime();

interface Scenario {
  /** Newest automatic checkpoint this long before now (a stalled journal when > 0). */
  readonly endOffsetMs: number;
  readonly spanMs: number;
  readonly intervalSeconds: number;
  /** Ranges with no automatic checkpoints: [start, end) as fractions of the span. */
  readonly gaps: readonly (readonly [number, number])[];
  /** Marked checkpoints at these ages (ms before now; some land in the future or outside the window). */
  readonly marked: readonly (readonly [number, 'tagged' | 'application-consistent'])[];
  readonly shuffleSeed: number | null;
}

/** Builds the input a scenario describes: automatic checkpoints at the interval, oldest first, then marked ones. */
function build(s: Scenario): TimelineCheckpoint[] {
  const out: TimelineCheckpoint[] = [];
  const newest = NOW_MS - s.endOffsetMs;
  const oldest = newest - s.spanMs;
  const step = s.intervalSeconds * SECOND;
  for (let t = newest - Math.floor(s.spanMs / step) * step, n = 0; t <= newest; t += step, n++) {
    const fraction = (t - oldest) / s.spanMs;
    if (s.gaps.some(([a, b]) => fraction >= a && fraction < b)) {
      continue;
    }
    out.push({ id: `a${n.toString().padStart(7, '0')}`, capturedAt: t, kind: 'automatic', name: null });
  }
  s.marked.forEach(([age, kind], i) => {
    out.push({ id: `m${i.toString().padStart(4, '0')}`, capturedAt: NOW_MS - age, kind, name: `marked ${i}` });
  });
  // Sorted, as the index query returns them; a scenario may shuffle to exercise the unsorted path.
  out.sort(compareTimelineCheckpoints);
  if (s.shuffleSeed !== null) {
    let seed = s.shuffleSeed;
    for (let i = out.length - 1; i > 0; i--) {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      const j = seed % (i + 1);
      [out[i], out[j]] = [out[j]!, out[i]!];
    }
  }
  return out;
}

/** A day of 5 s checkpoints ending now, sorted, no gaps, nothing marked, unless overridden. */
function steady(overrides: Partial<Scenario>): TimelineCheckpoint[] {
  const defaults: Scenario = {
    endOffsetMs: 0,
    spanMs: 24 * HOUR,
    intervalSeconds: 5,
    gaps: [],
    marked: [],
    shuffleSeed: null,
  };
  return build({ ...defaults, ...overrides });
}

const markedKind = fc.constantFrom<'tagged' | 'application-consistent'>('tagged', 'application-consistent');
const scenarioArb: fc.Arbitrary<Scenario> = fc.record({
  endOffsetMs: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 3 * HOUR })),
  // Up to 30 days in principle; runs sample up to 2 days to stay fast (the full size is a fixed case below).
  spanMs: fc.oneof(fc.integer({ min: 0, max: 2 * HOUR }), fc.integer({ min: 0, max: 48 * HOUR })),
  intervalSeconds: fc.constantFrom(5, 5, 5, 1, 30, 60),
  gaps: fc.array(
    fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.double({ min: 0, max: 0.3, noNaN: true })).map(
      ([start, length]) => [start, start + length] as const,
    ),
    { maxLength: 5 },
  ),
  marked: fc.oneof(
    fc.array(fc.tuple(fc.integer({ min: -HOUR, max: 26 * HOUR }), markedKind), { maxLength: 40 }),
    // Bursts near now that crowd the newest hour, and sometimes more than the cap.
    fc.array(fc.tuple(fc.integer({ min: 0, max: 2 * HOUR }), markedKind), { maxLength: 200 }),
  ),
  shuffleSeed: fc.option(fc.nat(), { nil: null }),
});

interface Reference {
  readonly window: TimelineCheckpoint[];
  readonly anchor: number;
  readonly hourOf: (c: TimelineCheckpoint) => number;
  readonly hours: Map<number, TimelineCheckpoint[]>;
  readonly marked: TimelineCheckpoint[];
  /** Per hour: marked ones plus first and last, counted once. */
  readonly mandatory: Map<number, number>;
}

/** The rules' terms computed the slow, obvious way, independently of the implementation. */
function reference(input: readonly TimelineCheckpoint[], maxHours = 24): Reference {
  const window = input
    .filter((c) => c.capturedAt > NOW_MS - maxHours * HOUR && c.capturedAt <= NOW_MS)
    .sort(compareTimelineCheckpoints);
  const anchor = window.length > 0 ? window[window.length - 1]!.capturedAt : NOW_MS;
  const hourOf = (c: TimelineCheckpoint): number => Math.floor((anchor - c.capturedAt) / HOUR);
  const hours = new Map<number, TimelineCheckpoint[]>();
  for (const c of window) {
    const list = hours.get(hourOf(c)) ?? [];
    list.push(c);
    hours.set(hourOf(c), list);
  }
  const isMarked = (c: TimelineCheckpoint): boolean => c.kind !== 'automatic';
  const mandatory = new Map<number, number>();
  for (const [k, list] of hours) {
    const set = new Set(list.filter(isMarked));
    set.add(list[0]!);
    set.add(list[list.length - 1]!);
    mandatory.set(k, set.size);
  }
  return { window, anchor, hourOf, hours, marked: window.filter(isMarked), mandatory };
}

function checkRules(input: readonly TimelineCheckpoint[], result: readonly TimelineEntry[], maxPoints = 180): void {
  const ref = reference(input);
  const byId = new Map(input.map((c) => [c.id, c]));
  const shown = new Set(result.map((e) => e.id));

  // Sorted, distinct, a subset of the input with the same fields, inside the window, marked iff tagged or
  // application-consistent.
  for (let i = 1; i < result.length; i++) {
    expect(compareTimelineCheckpoints(result[i - 1]!, result[i]!)).toBeLessThan(0);
  }
  for (const e of result) {
    const c = byId.get(e.id)!;
    expect(e).toEqual({ ...c, marked: c.kind !== 'automatic' });
    expect(e.capturedAt).toBeGreaterThan(NOW_MS - 24 * HOUR);
    expect(e.capturedAt).toBeLessThanOrEqual(NOW_MS);
  }
  expect(result.length).toBeLessThanOrEqual(maxPoints);

  if (ref.marked.length > maxPoints) {
    // Rule 3's overflow: exactly the newest maxPoints marked ones.
    expect(result.map((e) => e.id)).toEqual(ref.marked.slice(-maxPoints).map((c) => c.id));
    return;
  }
  for (const c of ref.marked) {
    expect(shown.has(c.id)).toBe(true);
  }
  // No point wasted: the cap is reached, or everything in the window is shown.
  expect(result.length).toBe(Math.min(maxPoints, ref.window.length));

  const mandatoryTotal = [...ref.mandatory.values()].reduce((a, b) => a + b, 0);
  if (mandatoryTotal <= maxPoints) {
    // Every non-empty hour shows its first and last: at least two, or one if it has one.
    for (const list of ref.hours.values()) {
      expect(shown.has(list[0]!.id)).toBe(true);
      expect(shown.has(list[list.length - 1]!.id)).toBe(true);
    }
  }

  const headTarget = Math.floor(maxPoints / 2) + 1;
  const newestHour = ref.hours.get(0) ?? [];
  const olderMandatory = mandatoryTotal - (ref.mandatory.get(0) ?? 0);
  const inNewestHour = result.filter((e) => ref.hourOf(e) === 0).length;
  const headRoom = olderMandatory + Math.max(ref.mandatory.get(0) ?? 0, headTarget) <= maxPoints;
  if (newestHour.length >= headTarget && headRoom) {
    expect(inNewestHour * 2).toBeGreaterThan(result.length);
  }
}

describe('selectTimeline', () => {
  it('returns nothing for no checkpoints, or none in the window', () => {
    expect(selectTimeline([], NOW)).toEqual([]);
    const outside: TimelineCheckpoint[] = [
      { id: 'old', capturedAt: NOW_MS - 24 * HOUR, kind: 'tagged', name: 'exactly 24 h old' },
      { id: 'future', capturedAt: NOW_MS + 1, kind: 'automatic', name: null },
      { id: 'nan', capturedAt: Number.NaN, kind: 'automatic', name: null },
    ];
    expect(selectTimeline(outside, NOW)).toEqual([]);
  });

  it('shows every checkpoint when the window holds no more than the cap', () => {
    const input = build({
      endOffsetMs: 0,
      spanMs: 10 * MINUTE,
      intervalSeconds: 5,
      gaps: [],
      marked: [[30 * SECOND + 1, 'tagged']],
      shuffleSeed: null,
    });
    const result = selectTimeline(input, NOW);
    expect(result).toHaveLength(122);
    expect(result.filter((e) => e.marked).map((e) => e.id)).toEqual(['m0000']);
  });

  it('for 30 days at 5 s: 180 points, 91 in the newest hour, fewer with age, every hour at least two', () => {
    const input = steady({ spanMs: 30 * 24 * HOUR });
    expect(input).toHaveLength(518_401);
    const result = selectTimeline(input, NOW);
    checkRules(input, result);
    const perHour = new Array<number>(24).fill(0);
    for (const e of result) {
      perHour[Math.floor((NOW_MS - e.capturedAt) / HOUR)]!++;
    }
    expect(result).toHaveLength(180);
    // Shares of 43 spare points in proportion to 1/k over hours 1..23, each on top of the hour's two endpoints.
    expect(perHour).toEqual([91, 13, 8, 6, 5, 4, 4, 4, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2]);
    // Inside the newest hour the 91 points are evenly spaced: 719 s / 90 runs, so gaps of 35 or 40 s.
    const newest = result.filter((e) => e.capturedAt > NOW_MS - HOUR).map((e) => e.capturedAt);
    const gaps = newest.slice(1).map((t, i) => t - newest[i]!);
    expect(Math.min(...gaps)).toBeGreaterThanOrEqual(35 * SECOND);
    expect(Math.max(...gaps)).toBeLessThanOrEqual(45 * SECOND);
    // Timing note, not asserted (it depends on the host). Node 20.20 on the development container, warm,
    // median of 200 runs: 17,280 checkpoints (24 h at 5 s, what the query preselects), sorted: about
    // 0.3 ms; the same shuffled (the sort path): about 4.3 ms; 518,400 sorted (30 days, scanned): 2.3-2.9 ms.
  });

  it('keeps the detail on the newest hour of the journal when replication has stalled', () => {
    const input = steady({ endOffsetMs: 3 * HOUR, spanMs: 6 * HOUR });
    const result = selectTimeline(input, NOW);
    checkRules(input, result);
    const newestHour = result.filter((e) => e.capturedAt > NOW_MS - 4 * HOUR);
    expect(newestHour).toHaveLength(91);
  });

  it('gives the spare points to older hours when the newest hour has fewer than 91 (60 s interval)', () => {
    const input = steady({ intervalSeconds: 60 });
    const result = selectTimeline(input, NOW);
    checkRules(input, result);
    expect(result).toHaveLength(180);
    expect(result.filter((e) => e.capturedAt > NOW_MS - HOUR)).toHaveLength(60);
  });

  it('always shows marked ones and marks them; beyond the cap keeps the newest 180 marked only', () => {
    const marked = Array.from(
      { length: 200 },
      (_, i) => [i * 5 * MINUTE + 1, i % 2 === 0 ? 'tagged' : 'application-consistent'] as const,
    );
    const input = steady({ marked });
    const result = selectTimeline(input, NOW);
    checkRules(input, result);
    expect(result).toHaveLength(180);
    expect(result.every((e) => e.marked)).toBe(true);
    expect(result[0]!.capturedAt).toBe(NOW_MS - 179 * 5 * MINUTE - 1);

    const fewer = steady({ marked: marked.slice(0, 20) });
    const shown = selectTimeline(fewer, NOW);
    checkRules(fewer, shown);
    expect(shown.filter((e) => e.marked)).toHaveLength(20);
    expect(shown.find((e) => e.id === 'm0003')).toMatchObject({
      kind: 'application-consistent',
      name: 'marked 3',
      marked: true,
    });
  });

  it('is deterministic: the same set in any order gives the same result', () => {
    const scenario: Scenario = {
      endOffsetMs: 0,
      spanMs: 26 * HOUR,
      intervalSeconds: 5,
      gaps: [[0.2, 0.4]],
      marked: [[10 * MINUTE, 'tagged'], [5 * HOUR, 'application-consistent']],
      shuffleSeed: null,
    };
    const sorted = selectTimeline(build(scenario), NOW);
    expect(selectTimeline(build({ ...scenario, shuffleSeed: 42 }), NOW)).toEqual(sorted);
    expect(selectTimeline(build(scenario).reverse(), NOW)).toEqual(sorted);
  });

  it('honours maxPoints and windowHours, and rejects bad options', () => {
    const input = steady({ spanMs: 48 * HOUR });
    const small = selectTimeline(input, NOW, { maxPoints: 20, windowHours: 2 });
    expect(small).toHaveLength(20);
    expect(small.filter((e) => e.capturedAt > NOW_MS - HOUR)).toHaveLength(11);
    expect(small.every((e) => e.capturedAt > NOW_MS - 2 * HOUR)).toBe(true);
    expect(selectTimeline(input, NOW, { maxPoints: 1 })).toEqual([expect.objectContaining({ capturedAt: NOW_MS })]);
    for (const options of [{ maxPoints: 0 }, { maxPoints: 1.5 }, { windowHours: -1 }, { windowHours: Number.NaN }]) {
      expect(() => selectTimeline(input, NOW, options)).toThrow(DomainError);
    }
    expect(() => selectTimeline(input, new Date(Number.NaN))).toThrow(DomainError);
  });

  it('keeps every rule over random checkpoint sets (gaps, marked ones, stalls, unsorted input)', () => {
    fc.assert(
      fc.property(scenarioArb, (scenario) => {
        const input = build(scenario);
        const result = selectTimeline(input, NOW);
        checkRules(input, result);
        if (scenario.shuffleSeed !== null) {
          expect(result).toEqual(selectTimeline([...input].sort(compareTimelineCheckpoints), NOW));
        }
      }),
      { numRuns: 60 },
    );
  });

  it('keeps every rule over random sets of up to 30 days at 5 s with random marked ones', () => {
    const longScenario: fc.Arbitrary<Scenario> = fc.record({
      endOffsetMs: fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 30 * HOUR })),
      spanMs: fc.integer({ min: 0, max: 30 * 24 * HOUR }),
      intervalSeconds: fc.constant(5),
      gaps: fc.array(
        fc.tuple(fc.double({ min: 0, max: 1, noNaN: true }), fc.double({ min: 0, max: 0.05, noNaN: true })).map(
          ([start, length]) => [start, start + length] as const,
        ),
        { maxLength: 4 },
      ),
      // Tagged ones anywhere in the 30 days (most fall outside the window), and some near now.
      marked: fc.array(fc.tuple(fc.integer({ min: -HOUR, max: 30 * 24 * HOUR }), markedKind), { maxLength: 300 }),
      shuffleSeed: fc.constant(null),
    });
    fc.assert(
      fc.property(longScenario, (scenario) => {
        const input = build(scenario);
        checkRules(input, selectTimeline(input, NOW));
      }),
      // Each run builds up to 518,400 checkpoints: few runs, the large sizes are what they are for.
      { numRuns: 6 },
    );
  });

  it('keeps the cap, the marked ones and the endpoints with a small cap too', () => {
    fc.assert(
      fc.property(scenarioArb, fc.integer({ min: 1, max: 60 }), (scenario, maxPoints) => {
        const input = build({ ...scenario, spanMs: Math.min(scenario.spanMs, 6 * HOUR) });
        checkRules(input, selectTimeline(input, NOW, { maxPoints }), maxPoints);
      }),
      { numRuns: 60 },
    );
  });
});

describe('selectTimelineSorted', () => {
  it('picks what selectTimeline picks, from sorted columns of times and marks', () => {
    fc.assert(
      fc.property(scenarioArb, fc.option(fc.integer({ min: 1, max: 200 }), { nil: undefined }), (scenario, maxPoints) => {
        const sorted = build({ ...scenario, shuffleSeed: null });
        const times = Float64Array.from(sorted, (c) => c.capturedAt);
        const marks = Uint8Array.from(sorted, (c) => (c.kind === 'automatic' ? 0 : 1));
        const expected = selectTimeline(sorted, NOW, { maxPoints });
        const { positions, marked } = selectTimelineSorted(times, marks, NOW, { maxPoints });
        expect(positions.map((p) => sorted[p]!.id)).toEqual(expected.map((e) => e.id));
        expect(marked).toEqual(expected.map((e) => e.marked));
        // The same times in microseconds (the catalog's unit) pick the same positions.
        const micros = Float64Array.from(times, (t) => t * 1000);
        expect(selectTimelineSorted(micros, marks, NOW, { maxPoints }, 1000)).toEqual({ positions, marked });
      }),
      { numRuns: 60 },
    );
  });

  it('takes a window edge in microseconds exactly', () => {
    // One microsecond past the window's start is in it; the start itself and one past now are not.
    const startUs = (NOW_MS - 24 * HOUR) * 1000;
    const times = [startUs, startUs + 1, NOW_MS * 1000, NOW_MS * 1000 + 1];
    expect(selectTimelineSorted(times, [0, 0, 0, 0], NOW, {}, 1000).positions).toEqual([1, 2]);
    expect(() => selectTimelineSorted(times, [0, 0, 0, 0], NOW, {}, 0)).toThrow(/unitsPerMs/);
    expect(() => selectTimelineSorted(times, [0, 0, 0, 0], NOW, {}, Number.NaN)).toThrow(/unitsPerMs/);
  });

  it('rejects unsorted or mismatched columns and bad options', () => {
    expect(selectTimelineSorted([], [], NOW)).toEqual({ positions: [], marked: [] });
    expect(() => selectTimelineSorted([NOW_MS - 2, NOW_MS - 3], [0, 0], NOW)).toThrow(/not sorted/);
    expect(() => selectTimelineSorted([NOW_MS - 2], [0, 0], NOW)).toThrow(/differ in length/);
    expect(() => selectTimelineSorted([NOW_MS], [0], NOW, { maxPoints: 0 })).toThrow(DomainError);
    expect(() => selectTimelineSorted([NOW_MS], [0], new Date(Number.NaN))).toThrow(DomainError);
  });
});
