import { type CheckpointKind } from './checkpoint.model';
import { DomainError } from './domain.error';

/**
 * The recovery slider's timeline: which checkpoints of the most recent hours are shown, as in the
 * article ("a maximum of 180 checkpoints spread over the most recent 24 hours ... at least two shown
 * per hour ... the majority cover the most recent hour"). Every checkpoint stays reachable through the
 * manual list; this only chooses the slider's points.
 *
 * The rules, in order of precedence (a later rule gives way to an earlier one only when both cannot
 * hold at once):
 *
 * 1. Window. Only checkpoints with `now - windowHours h < capturedAt <= now` take part. Checkpoints
 *    from the future (clock skew) and non-finite times are left out.
 * 2. Cap. At most `maxPoints` are returned, marked ones included: the cap is the slider's drawing
 *    contract and is never exceeded.
 * 3. Marked. Tagged and application-consistent checkpoints are always returned, with `marked: true`.
 *    If the window holds more marked ones than `maxPoints`, the newest `maxPoints` marked ones are
 *    returned and nothing else (older marked ones remain in the manual list).
 * 4. Hours. Hours are counted back from the newest checkpoint in the window (the anchor, "the most
 *    recent hour in the journal"): hour k holds the checkpoints with
 *    `k h <= anchor - capturedAt < (k + 1) h`, so hour 0 is the newest hour and ends at the anchor.
 *    Counting from the anchor rather than from `now` keeps the detail on the newest recoverable
 *    points when replication has stalled. Every non-empty hour shows its first and its last
 *    checkpoint (so at least two, or one if it has one). If the marked ones leave too little room for
 *    every hour's endpoints, the newest hours get theirs first (last before first).
 * 5. Majority. Hour 0 gets at least `floor(maxPoints / 2) + 1` points (91 of 180), or all its
 *    checkpoints if it has fewer, as far as rules 3 and 4 leave room. Hence more than half of the
 *    returned points are in hour 0 whenever hour 0 holds at least `floor(maxPoints / 2) + 1`
 *    checkpoints and M_older + max(M_0, floor(maxPoints / 2) + 1) <= maxPoints, where M_k is hour
 *    k's marked ones and endpoints counted once (by default: the older hours need at most 89 such
 *    points, e.g. 23 hours' endpoints and up to 43 marked ones).
 * 6. Decay. The points left over go to the older hours in proportion to 1 / k (hour 1 gets twice
 *    hour 2's share, three times hour 3's, ...), largest remainder first with ties to the newer hour,
 *    never more than an hour holds (what an hour cannot take goes to the others). With evenly spaced
 *    checkpoints this makes the per-hour counts non-increasing with age. Anything still left goes to
 *    hour 0. So the result has `min(maxPoints, checkpoints in the window)` points whenever rule 3
 *    does not truncate.
 * 7. Spacing. Inside an hour, the points beyond the marked ones and the endpoints are spread evenly by
 *    position over the hour's other checkpoints (the candidates): the j-th of x picks (j = 1..x) among
 *    F candidates is candidate `floor(j (F + 1) / (x + 1)) - 1` (0-based), so that the endpoints and
 *    the picks cut the hour into x + 1 equal runs. Extra points are only given once every hour's
 *    endpoints are shown.
 * 8. Order. The result is sorted by capturedAt, ties broken by id, and depends only on the set of
 *    checkpoints given, not on their order.
 *
 * Cost: one pass to find the window and check the order, O(w log w) to sort the w checkpoints in the
 * window only if they arrive out of order (the index query returns them sorted, and then nothing is
 * allocated per checkpoint), one pass to bucket them by hour, one pass to pick. Allocations: the
 * output, a few arrays of `windowHours` entries, and only on the out-of-order path one Int32Array of
 * the window's indexes.
 */

export interface TimelineCheckpoint {
  readonly id: string;
  /** Capture time, epoch milliseconds (the slider works on numbers; ISO strings are parsed by the caller). */
  readonly capturedAt: number;
  readonly kind: CheckpointKind;
  readonly name: string | null;
}

export interface TimelineEntry extends TimelineCheckpoint {
  /** Tagged or application-consistent: always shown and drawn apart from automatic checkpoints. */
  readonly marked: boolean;
}

export interface TimelineOptions {
  readonly maxPoints?: number;
  readonly windowHours?: number;
}

export const TIMELINE_DEFAULTS = { maxPoints: 180, windowHours: 24 } as const;

const HOUR_MS = 3_600_000;

export function isMarkedCheckpoint(kind: CheckpointKind): boolean {
  return kind !== 'automatic';
}

/** Capture time, then id: the total order the timeline is sorted and deduplicated by. */
export function compareTimelineCheckpoints(a: TimelineCheckpoint, b: TimelineCheckpoint): number {
  const byTime = a.capturedAt - b.capturedAt;
  if (byTime !== 0) {
    return byTime;
  }
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

export function selectTimeline(
  checkpoints: readonly TimelineCheckpoint[],
  now: Date,
  options: TimelineOptions = {},
): TimelineEntry[] {
  const maxPoints = positiveInteger(options.maxPoints ?? TIMELINE_DEFAULTS.maxPoints, 'maxPoints');
  const windowHours = positiveInteger(options.windowHours ?? TIMELINE_DEFAULTS.windowHours, 'windowHours');
  const nowMs = now.getTime();
  if (!Number.isFinite(nowMs)) {
    throw new DomainError('invalid-argument', 'now must be a valid date');
  }
  const startMs = nowMs - windowHours * HOUR_MS;
  // Written so that NaN is outside.
  const inWindow = (t: number): boolean => t > startMs && t <= nowMs;

  // Pass 1: the window's extent in the input, and whether it is already in order.
  let first = -1;
  let last = -1;
  let count = 0;
  let inOrder = true;
  for (let i = 0; i < checkpoints.length; i++) {
    const c = checkpoints[i]!;
    if (!inWindow(c.capturedAt)) {
      continue;
    }
    if (last >= 0 && inOrder && compareTimelineCheckpoints(checkpoints[last]!, c) > 0) {
      inOrder = false;
    }
    if (first < 0) {
      first = i;
    }
    last = i;
    count++;
  }
  if (count === 0) {
    return [];
  }

  // Positions 0..length-1 walk the window in order. In order: input indexes first..last, skipping the
  // out-of-window ones in between. Otherwise: a sorted array of the window's indexes.
  let order: Int32Array | null = null;
  if (!inOrder) {
    order = new Int32Array(count);
    let n = 0;
    for (let i = first; i <= last; i++) {
      if (inWindow(checkpoints[i]!.capturedAt)) {
        order[n++] = i;
      }
    }
    order.sort((a, b) => compareTimelineCheckpoints(checkpoints[a]!, checkpoints[b]!));
  }
  const length = order === null ? last - first + 1 : count;
  const at = (p: number): TimelineCheckpoint => checkpoints[order === null ? first + p : order[p]!]!;
  const view: WindowView = {
    length,
    // Out-of-window ones between first and last exist only on the in-order path.
    time: (p) => {
      const t = at(p).capturedAt;
      return order === null && !inWindow(t) ? Number.NaN : t;
    },
    marked: (p) => isMarkedCheckpoint(at(p).kind),
  };
  return pickPositions(view, maxPoints, windowHours).map((p) => {
    const c = at(p);
    return entry(c, isMarkedCheckpoint(c.kind));
  });
}

/**
 * The same rule over a day given as sorted columns, for a caller that holds capture times and marks
 * rather than objects (the checkpoint catalog keeps a day of them per VPG). `times[i]` is epoch time
 * in units of 1/`unitsPerMs` milliseconds (1: milliseconds, fractions allowed; 1000: microseconds, the
 * catalog's exact times, so that it keeps one column rather than two) and `marked[i]` is 1 for tagged
 * or application-consistent; the columns must be sorted by capture time and, among equal times, in
 * the caller's tie order (the result is then what selectTimeline gives for objects whose ids sort in
 * that order). The rule sees each time as `times[i] / unitsPerMs` milliseconds. Returns the picked
 * indexes into the columns, ascending, with their marks.
 */
export function selectTimelineSorted(
  times: ArrayLike<number>,
  marked: ArrayLike<number>,
  now: Date,
  options: TimelineOptions = {},
  unitsPerMs = 1,
): { readonly positions: number[]; readonly marked: boolean[] } {
  const maxPoints = positiveInteger(options.maxPoints ?? TIMELINE_DEFAULTS.maxPoints, 'maxPoints');
  const windowHours = positiveInteger(options.windowHours ?? TIMELINE_DEFAULTS.windowHours, 'windowHours');
  const nowMs = now.getTime();
  if (!Number.isFinite(nowMs)) {
    throw new DomainError('invalid-argument', 'now must be a valid date');
  }
  if (marked.length !== times.length) {
    throw new DomainError('invalid-argument', `times and marks differ in length (${times.length} and ${marked.length})`);
  }
  if (!(unitsPerMs > 0) || !Number.isFinite(unitsPerMs)) {
    throw new DomainError('invalid-argument', `unitsPerMs must be a positive number, got ${unitsPerMs}`);
  }
  const startMs = nowMs - windowHours * HOUR_MS;
  // Sorted, so the window is one run: the first time after startMs up to the last at or before now.
  // Whole milliseconds times the unit are exact (microseconds stay below 2^53 until the year 2255).
  const first = upperBound(times, startMs * unitsPerMs);
  const end = upperBound(times, nowMs * unitsPerMs);
  if (end <= first) {
    return { positions: [], marked: [] };
  }
  for (let i = first + 1; i < end; i++) {
    if (!(times[i - 1]! <= times[i]!)) {
      throw new DomainError('invalid-argument', `times are not sorted at index ${i}`);
    }
  }
  const picked = pickPositions(
    { length: end - first, time: (p) => times[first + p]! / unitsPerMs, marked: (p) => marked[first + p] === 1 },
    maxPoints,
    windowHours,
  );
  return { positions: picked.map((p) => first + p), marked: picked.map((p) => marked[first + p] === 1) };
}

/** The first index whose time is greater than `t` (times sorted ascending). */
function upperBound(times: ArrayLike<number>, t: number): number {
  let lo = 0;
  let hi = times.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (times[mid]! <= t) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

/**
 * The window in time order: positions 0..length-1, each a checkpoint's time (NaN: a position to skip,
 * not in the window) and whether it is marked. The first and the last position are in the window.
 */
interface WindowView {
  readonly length: number;
  time(p: number): number;
  marked(p: number): boolean;
}

/** Rules 3 to 7 over the window: the picked positions, ascending. */
function pickPositions(view: WindowView, maxPoints: number, windowHours: number): number[] {
  const { length } = view;
  const skip = (p: number): boolean => Number.isNaN(view.time(p));

  // Pass 2: hours. Positions are sorted by time, so each hour is one run of positions, newest hour last.
  const anchorMs = view.time(length - 1);
  const hourStart = new Int32Array(windowHours).fill(-1);
  const hourEnd = new Int32Array(windowHours).fill(-1);
  const hourCount = new Int32Array(windowHours);
  const hourMarked = new Int32Array(windowHours);
  let totalMarked = 0;
  for (let p = 0; p < length; p++) {
    if (skip(p)) {
      continue;
    }
    // 0 <= anchor - time < windowHours h, because both are inside the window.
    const k = Math.floor((anchorMs - view.time(p)) / HOUR_MS);
    if (hourStart[k] === -1) {
      hourStart[k] = p;
    }
    hourEnd[k] = p;
    hourCount[k]!++;
    if (view.marked(p)) {
      hourMarked[k]!++;
      totalMarked++;
    }
  }

  if (totalMarked > maxPoints) {
    return newestMarked(view, maxPoints);
  }

  // Rule 4: the endpoints, newest hour first, as long as there is room.
  let budget = maxPoints - totalMarked;
  const firstShown = new Uint8Array(windowHours);
  const lastShown = new Uint8Array(windowHours);
  const mandatory = new Int32Array(hourMarked);
  for (let k = 0; k < windowHours && budget > 0; k++) {
    if (hourCount[k] === 0) {
      continue;
    }
    const lastP = hourEnd[k]!;
    const firstP = hourStart[k]!;
    if (!view.marked(lastP)) {
      lastShown[k] = 1;
      mandatory[k]!++;
      budget--;
    }
    if (budget > 0 && firstP !== lastP && !view.marked(firstP)) {
      firstShown[k] = 1;
      mandatory[k]!++;
      budget--;
    }
  }

  // Rules 5 and 6: extra points per hour, from the hour's candidates (neither marked nor an endpoint shown).
  const spare = new Int32Array(windowHours);
  for (let k = 0; k < windowHours; k++) {
    spare[k] = hourCount[k]! - mandatory[k]!;
  }
  const extra = new Int32Array(windowHours);
  const headTarget = Math.floor(maxPoints / 2) + 1;
  const headSpare = spare[0]!;
  let headExtra = Math.min(headSpare, Math.max(0, headTarget - mandatory[0]!), budget);
  budget = distributeByAge(budget - headExtra, spare, extra);
  headExtra += Math.min(headSpare - headExtra, budget);
  extra[0] = headExtra;

  // Pass 3: pick, oldest hour first so that the output comes out sorted.
  const out: number[] = [];
  for (let k = windowHours - 1; k >= 0; k--) {
    if (hourCount[k] === 0) {
      continue;
    }
    const startP = hourStart[k]!;
    const endP = hourEnd[k]!;
    const picks = extra[k]!;
    const candidates = spare[k]!;
    let rank = 0;
    // Picks come after the endpoints (rule 4 before 6), so the runs are measured between them.
    const rankOf = (j: number): number => (j <= picks ? Math.floor((j * (candidates + 1)) / (picks + 1)) - 1 : -1);
    let j = 1;
    let nextRank = rankOf(j);
    for (let p = startP; p <= endP; p++) {
      if (skip(p)) {
        continue;
      }
      let take = view.marked(p) || (p === endP && lastShown[k] === 1) || (p === startP && firstShown[k] === 1);
      if (!take) {
        if (rank === nextRank) {
          take = true;
          nextRank = rankOf(++j);
        }
        rank++;
      }
      if (take) {
        out.push(p);
      }
    }
  }
  return out;
}

/**
 * Rule 6: shares `pool` out over hours 1.. in proportion to 1 / k, capped by each hour's `spare`
 * (water-filling: an hour whose share is at least what it holds gets all of it, and the rest is shared
 * again among the others). Returns what no older hour could take.
 */
function distributeByAge(pool: number, spare: Int32Array, extra: Int32Array): number {
  const hours = spare.length;
  const capacity = new Int32Array(hours);
  for (let k = 1; k < hours; k++) {
    capacity[k] = spare[k]!;
  }
  while (pool > 0) {
    let weightSum = 0;
    for (let k = 1; k < hours; k++) {
      if (capacity[k]! > 0) {
        weightSum += 1 / k;
      }
    }
    if (weightSum === 0) {
      return pool;
    }
    let capped = 0;
    for (let k = 1; k < hours; k++) {
      const cap = capacity[k]!;
      if (cap > 0 && (pool * (1 / k)) / weightSum >= cap) {
        // Exactly, the capped hours' capacities add up to at most the pool; the min guards rounding.
        const take = Math.min(cap, pool - capped);
        extra[k]! += take;
        capacity[k] = cap - take;
        capped += take;
      }
    }
    if (capped > 0) {
      pool -= capped;
      continue;
    }
    // No hour is capped: floors, then the remainder one each by largest fractional share (newer hour on ties).
    let given = 0;
    const remainders: { k: number; fraction: number }[] = [];
    for (let k = 1; k < hours; k++) {
      const cap = capacity[k]!;
      if (cap === 0) {
        continue;
      }
      const share = (pool * (1 / k)) / weightSum;
      const whole = Math.min(Math.floor(share), pool - given, cap);
      extra[k]! += whole;
      capacity[k] = cap - whole;
      given += whole;
      remainders.push({ k, fraction: share - Math.floor(share) });
    }
    remainders.sort((a, b) => b.fraction - a.fraction || a.k - b.k);
    for (const { k } of remainders) {
      if (given === pool) {
        break;
      }
      if (capacity[k]! > 0) {
        extra[k]!++;
        capacity[k]!--;
        given++;
      }
    }
    // Floating-point shares can leave a point over (never more than one round's worth); go round again.
    pool -= given;
    if (given === 0) {
      return pool;
    }
  }
  return pool;
}

/** Rule 3's overflow: the newest `maxPoints` marked positions, in order. */
function newestMarked(view: WindowView, maxPoints: number): number[] {
  const out: number[] = [];
  for (let p = view.length - 1; p >= 0 && out.length < maxPoints; p--) {
    if (!Number.isNaN(view.time(p)) && view.marked(p)) {
      out.push(p);
    }
  }
  return out.reverse();
}

function entry(c: TimelineCheckpoint, marked: boolean): TimelineEntry {
  return { id: c.id, capturedAt: c.capturedAt, kind: c.kind, name: c.name, marked };
}

function positiveInteger(value: number, what: string): number {
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new DomainError('invalid-argument', `${what} must be a positive integer, got ${value}`);
  }
  return value;
}
