import { poolQuery } from '@cdp/database';
import { type DataSource } from 'typeorm';
import {
  CHECKPOINT_KINDS,
  DomainError,
  TIMELINE_DEFAULTS,
  selectTimelineSorted,
  type Checkpoint,
  type CheckpointKind,
  type TimelineOptions,
} from '@cdp/domain';

/**
 * The checkpoint catalog: every query about a VPG's recorded checkpoints, built to stay within a few
 * milliseconds with 30 days of 5-second checkpoints per VPG (about 518,000 rows) and a hundred VPGs in
 * one table. The indexes and the per-VPG counts it relies on are made by migrations (libs/database):
 * the index (vpg_id, captured_at, id) INCLUDE (kind, cut, name, vm_id), which holds every column
 * PACKED reads, so every query by VPG and time is an index-only scan (CheckpointListCovering: one
 * VPG's rows are scattered over the heap among the other VPGs'); checkpoint_stats, kept by triggers
 * (CheckpointCatalog); and checkpoint_hours, each hour's capture times packed in one row, kept by
 * triggers too (CheckpointHours).
 *
 * Every list is in (capturedAt, id) order, the order the timeline rule uses too.
 */

export interface CheckpointPageQuery {
  /** Inclusive bounds on capturedAt. */
  readonly from?: Date;
  readonly to?: Date;
  /** Resume after this position (from a previous page's `next`). */
  readonly after?: string;
  readonly limit: number;
}

export interface CheckpointPage {
  readonly checkpoints: Checkpoint[];
  /**
   * Where the next page starts, or null when this page reached the end of the range as it stood. An
   * opaque string: the position (capture time in microseconds and id) of this page's last checkpoint.
   * It stays valid whatever is recorded or trimmed meanwhile: the next page holds the checkpoints
   * after that position, never one twice.
   */
  readonly next: string | null;
}

export interface CheckpointStats {
  readonly count: number;
  readonly byKind: Readonly<Record<CheckpointKind, number>>;
  readonly earliest: Checkpoint | null;
  readonly latest: Checkpoint | null;
}

export interface TimelineResult {
  readonly from: string;
  readonly to: string;
  readonly checkpoints: (Checkpoint & { readonly marked: boolean })[];
}

/**
 * A checkpoint as every catalog query sends it: a JSON array, all of a query's checkpoints in one json
 * value, which node-pg parses with one JSON.parse. Sent as rows, node-pg made a string of every field
 * and a Date of every capture time: for the 180 rows of a timeline that was most of what a poll
 * allocated (sampled with the heap profiler), the garbage that set the pace of the young-generation
 * collections. The capture time is in whole microseconds since the epoch (timestamptz's own
 * precision): a JSON number holds it exactly until the year 2255.
 */
type PackedCheckpoint = [atUs: number, id: string, cut: number, kind: CheckpointKind, name: string | null, vmId: string | null];

/** What a checkpoint query selects. Every column read here is in the index (vpg_id, captured_at, id) INCLUDE (...): keep them in step. */
const PACKED = 'json_build_array((extract(epoch FROM captured_at) * 1000000)::bigint, id, cut, kind, name, vm_id)';
/** The columns PACKED reads, for the subqueries packedList wraps. */
const PACKED_COLUMNS = 'captured_at, id, cut, kind, name, vm_id';

/** The checkpoints `inner` selects (it selects PACKED_COLUMNS), in (captured_at, id) order, as one json array in the column `list`. */
function packedList(inner: string): string {
  return `SELECT coalesce(json_agg(${PACKED} ORDER BY captured_at, id), '[]'::json) AS list FROM (${inner}) c`;
}

const CURSOR_VERSION = 'c1';
const HOUR_MS = 3_600_000;

export class CheckpointCatalog {
  private readonly days = new Map<string, DayCache>();

  constructor(private readonly dataSource: DataSource) {}

  /**
   * The manual list: every checkpoint captured in [from, to], oldest first, `limit` at a time. Keyset
   * paging on (captured_at, id): each page is one index range scan however deep into the range it is.
   */
  async page(vpgId: string, query: CheckpointPageQuery): Promise<CheckpointPage> {
    const after = query.after === undefined ? null : decodeCursor(query.after);
    const params: unknown[] = [vpgId, query.limit + 1];
    const conditions = ['vpg_id = $1'];
    if (query.from) {
      params.push(query.from);
      conditions.push(`captured_at >= $${params.length}`);
    }
    if (query.to) {
      params.push(query.to);
      conditions.push(`captured_at <= $${params.length}`);
    }
    if (after) {
      params.push(microsToTimestamp(after.atMicros), after.id);
      conditions.push(`(captured_at, id) > ($${params.length - 1}::timestamptz, $${params.length}::uuid)`);
    }
    const rows = await this.packed(
      `SELECT ${PACKED_COLUMNS} FROM checkpoints WHERE ${conditions.join(' AND ')} ORDER BY captured_at, id LIMIT $2`,
      params,
    );
    const more = rows.length > query.limit;
    const pageRows = more ? rows.slice(0, query.limit) : rows;
    const last = pageRows[pageRows.length - 1];
    return { checkpoints: pageRows.map((row) => unpack(vpgId, row)), next: more && last ? encodeCursor(last) : null };
  }

  /** The newest `limit` checkpoints captured in [from, to], oldest first ("what can I recover to now"). */
  async newest(vpgId: string, query: { readonly from?: Date; readonly to?: Date; readonly limit: number }): Promise<Checkpoint[]> {
    const rows = await this.packed(
      `SELECT ${PACKED_COLUMNS} FROM checkpoints
        WHERE vpg_id = $1 AND ($2::timestamptz IS NULL OR captured_at >= $2) AND ($3::timestamptz IS NULL OR captured_at <= $3)
        ORDER BY captured_at DESC, id DESC LIMIT $4`,
      [vpgId, query.from ?? null, query.to ?? null, query.limit],
    );
    return rows.map((row) => unpack(vpgId, row));
  }

  /** Every checkpoint captured in (from, to], oldest first. Unbounded: for short ranges only. */
  async within(vpgId: string, from: Date, to: Date): Promise<Checkpoint[]> {
    const rows = await this.packed(`SELECT ${PACKED_COLUMNS} FROM checkpoints WHERE vpg_id = $1 AND captured_at > $2 AND captured_at <= $3`, [vpgId, from, to]);
    return rows.map((row) => unpack(vpgId, row));
  }

  async get(vpgId: string, checkpointId: string): Promise<Checkpoint> {
    const row = (await this.packed(`SELECT ${PACKED_COLUMNS} FROM checkpoints WHERE id = $1 AND vpg_id = $2`, [checkpointId, vpgId]))[0];
    if (!row) {
      throw new DomainError('not-found', `checkpoint ${checkpointId} is not recorded for VPG ${vpgId}`);
    }
    return unpack(vpgId, row);
  }

  /**
   * Earliest, latest, and how many of each kind: the counts from checkpoint_stats, the two ends as one
   * index probe each, in one round trip.
   */
  async stats(vpgId: string): Promise<CheckpointStats> {
    const rows = await poolQuery<
      {
        automatic: string | null;
        tagged: string | null;
        application_consistent: string | null;
        earliest: PackedCheckpoint | null;
        latest: PackedCheckpoint | null;
      }
    >(
      this.dataSource,
      `SELECT s.automatic, s.tagged, s.application_consistent,
              (SELECT ${PACKED} FROM checkpoints WHERE vpg_id = $1 ORDER BY captured_at, id LIMIT 1) AS earliest,
              (SELECT ${PACKED} FROM checkpoints WHERE vpg_id = $1 ORDER BY captured_at DESC, id DESC LIMIT 1) AS latest
         FROM (SELECT $1::uuid AS vpg_id) v LEFT JOIN checkpoint_stats s ON s.vpg_id = v.vpg_id`,
      [vpgId],
    );
    const row = rows[0];
    const byKind = {
      automatic: Number(row?.automatic ?? 0),
      tagged: Number(row?.tagged ?? 0),
      'application-consistent': Number(row?.application_consistent ?? 0),
    } satisfies Record<CheckpointKind, number>;
    return {
      count: CHECKPOINT_KINDS.reduce((sum, kind) => sum + byKind[kind], 0),
      byKind,
      earliest: row?.earliest ? unpack(vpgId, row.earliest) : null,
      latest: row?.latest ? unpack(vpgId, row.latest) : null,
    };
  }

  /**
   * The recovery slider (selectTimeline's rule) without bringing the day's checkpoints into Node as
   * rows: a day at 5 s is 17,280 of them, and parsing that many rows costs more than the budget.
   *
   * 1. The day: for each checkpoint in (capturedAt, id) order its capture time and whether it is
   *    marked, nothing else (the rule needs nothing else). It comes from the day cache (below), or
   *    from checkpoint_hours: 25 rows of packed times, with nothing formatted per checkpoint (see
   *    loadDay).
   * 2. The rule (selectTimelineSorted, over the columns: no object per checkpoint) picks at most 180
   *    positions.
   * 3. One query fetches the rows at the picked capture times (an index probe each); a position among
   *    checkpoints sharing its time is resolved by id order, the order of step 1.
   *
   * The day cache: per VPG, the day as typed arrays (9 bytes a checkpoint, 160 KB for a day
   * at 5 s), brought up to date on each call by one round trip that reads the VPG's counts and only
   * the checkpoints after the newest cached one (an index-only scan of a few rows, see dayColumns),
   * appended in place (a poll allocates no day-sized array). It is used only if nothing else changed:
   * the count grew by exactly the appended ones and no statement removed or changed a checkpoint
   * (checkpoint_stats.removals); otherwise (a trim by the promoter, a checkpoint recorded behind the
   * newest) the day is read again. So the result is always what the table holds, in any process.
   *
   * The result equals selectTimeline over the full rows (the integration test checks that).
   */
  async timeline(vpgId: string, now: Date, options: TimelineOptions = {}): Promise<TimelineResult> {
    const windowHours = options.windowHours ?? TIMELINE_DEFAULTS.windowHours;
    const nowMs = now.getTime();
    if (!Number.isFinite(nowMs)) {
      throw new DomainError('invalid-argument', 'now must be a valid date');
    }
    const from = new Date(nowMs - windowHours * HOUR_MS);
    const base = { from: from.toISOString(), to: now.toISOString() };
    const day = await this.day(vpgId, from.getTime() * 1000);
    // The window's first position: the cache may start earlier (it was read for an earlier `now`).
    const windowStartUs = from.getTime() * 1000;
    let lo = 0;
    let hi = day.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (day.times[mid]! <= windowStartUs) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    const first = lo;
    const count = day.length - first;
    if (count === 0) {
      return { ...base, checkpoints: [] };
    }
    const selected = selectTimelineSorted(day.times.subarray(first, day.length), day.marked.subarray(first, day.length), now, options, 1000);
    if (selected.positions.length === 0) {
      return { ...base, checkpoints: [] };
    }
    const positions = selected.positions.map((p) => first + p);
    const byTime = await this.rowsAt(vpgId, [...new Set(positions.map((p) => day.times[p]!))]);
    const checkpoints: (Checkpoint & { marked: boolean })[] = [];
    positions.forEach((p, i) => {
      let firstOfTime = p;
      while (firstOfTime > 0 && day.times[firstOfTime - 1] === day.times[p]) {
        firstOfTime--;
      }
      const row = byTime.get(day.times[p]!)?.[p - firstOfTime];
      // Missing only if the promoter trimmed it since step 1: it is no longer recoverable.
      if (row) {
        checkpoints.push(unpackMarked(vpgId, row, selected.marked[i]!));
      }
    });
    return { ...base, checkpoints };
  }

  /**
   * Every checkpoint captured at each of `times`, in id order: one query, an index probe each.
   *
   * Nothing is kept for the next call. Keeping the rows shown (up to 2,048 times per VPG, later only
   * the last call's) saved a query on a poll with nothing new, but each new checkpoint moves most of
   * the points (the hours are counted back from it), and the kept rows, a few objects each, outlived
   * young-generation GCs: with 100 VPGs polled, every scavenge copied megabytes of them and paused the
   * event loop 4 to 10 ms, which was the p99 of every catalog query (measured with --trace-gc-nvp).
   */
  private async rowsAt(vpgId: string, times: readonly number[]): Promise<Map<number, PackedCheckpoint[]>> {
    // The times go as integers and become timestamps in the server, exactly (an interval's arithmetic
    // is in whole microseconds): formatting 180 timestamps here, and node-pg quoting each into an array
    // literal, was a tenth of what a poll allocated. ARRAY(...) is computed once, before the scan, so
    // the index still takes every time as one of its keys.
    const rows = await this.packed(
      `SELECT ${PACKED_COLUMNS} FROM checkpoints
        WHERE vpg_id = $1 AND captured_at = ANY(ARRAY(SELECT 'epoch'::timestamptz + t * interval '1 microsecond' FROM unnest($2::bigint[]) t))`,
      [vpgId, `{${times.join(',')}}`],
    );
    const found = new Map<number, PackedCheckpoint[]>();
    for (const row of rows) {
      const list = found.get(row[0]);
      if (list) {
        list.push(row);
      } else {
        found.set(row[0], [row]);
      }
    }
    return found;
  }

  private async packed(inner: string, params: readonly unknown[]): Promise<PackedCheckpoint[]> {
    return (await poolQuery<{ list: PackedCheckpoint[] }>(this.dataSource, packedList(inner), params))[0]?.list ?? [];
  }

  /** The VPG's checkpoints captured after `fromUs` (at least), from the day cache brought up to date, or read afresh. */
  private async day(vpgId: string, fromUs: number): Promise<DayCache> {
    const cached = this.days.get(vpgId);
    if (cached && cached.fromUs <= fromUs) {
      const rows = await poolQuery<DayRow>(this.dataSource, 
        `SELECT s.automatic + s.tagged + s.application_consistent AS total, s.removals::text AS removals,
                d.times, d.marked_times, d.marked_ranks, l.last_us, l.last_id
           FROM (SELECT $1::uuid AS vpg_id) v
           LEFT JOIN checkpoint_stats s ON s.vpg_id = v.vpg_id
           LEFT JOIN LATERAL (SELECT ${dayColumns('t.vpg_id = $1 AND (t.captured_at, t.id) > ($2::timestamptz, $3::uuid)')}
                                FROM (SELECT captured_at, kind, id FROM checkpoints
                                       WHERE vpg_id = $1 AND (captured_at, id) > ($2::timestamptz, $3::uuid)
                                       ORDER BY captured_at, id) r) d ON true
           ${NEWEST_JOIN}`,
        [vpgId, microsToTimestamp(BigInt(cached.lastUs)), cached.lastId ?? ZERO_UUID],
      );
      const row = rows[0];
      const added = decodeDay(row);
      if (row && row.total !== null && Number(row.total) === cached.total + added.times.length && row.removals === cached.removals) {
        const next = added.times.length === 0 ? cached : appendDay(cached, added, Number(row.total), row.last_us, row.last_id, fromUs);
        this.remember(vpgId, next);
        return next;
      }
    }
    const loaded = await this.loadDay(vpgId, fromUs);
    this.remember(vpgId, loaded);
    return loaded;
  }

  /**
   * The checkpoints of every UTC hour that ends after `fromUs`, from checkpoint_hours (one packed row an
   * hour, kept by triggers: see the migration CheckpointHours), with the VPG's counts and its newest
   * checkpoint, in one statement and so one snapshot. The first hour may start before `fromUs`: the
   * cache then holds a little more than asked, which every reader of it allows for.
   */
  private async loadDay(vpgId: string, fromUs: number): Promise<DayCache> {
    const rows = await poolQuery<HoursRow>(this.dataSource, 
      `SELECT s.automatic + s.tagged + s.application_consistent AS total, s.removals::text AS removals,
              d.hours, d.times, d.counts, d.marked, l.last_us, l.last_id
         FROM (SELECT $1::uuid AS vpg_id) v
         LEFT JOIN checkpoint_stats s ON s.vpg_id = v.vpg_id
         LEFT JOIN LATERAL (SELECT string_agg((extract(epoch FROM h.hour) * 1000000)::bigint::text, ',' ORDER BY h.hour) AS hours,
                                   encode(string_agg(h.times, ''::bytea ORDER BY h.hour), 'base64') AS times,
                                   string_agg(h.count::text, ',' ORDER BY h.hour) AS counts,
                                   string_agg(array_to_string(h.marked, ' '), ',' ORDER BY h.hour) AS marked
                              FROM checkpoint_hours h
                             WHERE h.vpg_id = $1 AND h.hour > $2::timestamptz - interval '1 hour') d ON true
         ${NEWEST_JOIN}`,
      [vpgId, microsToTimestamp(BigInt(fromUs))],
    );
    const row = rows[0];
    const { columns, length } = decodeHours(row);
    columns.used = length;
    return {
      fromUs,
      times: columns.times,
      marked: columns.marked,
      columns,
      length,
      total: Number(row?.total ?? 0),
      removals: row?.removals ?? null,
      lastUs: row?.last_us ?? String(fromUs),
      lastId: row?.last_id ?? null,
    };
  }

  private remember(vpgId: string, day: DayCache): void {
    // Least recently used first in the map's order: delete and set again on every use.
    this.days.delete(vpgId);
    this.days.set(vpgId, day);
    if (this.days.size > MAX_CACHED_DAYS) {
      const oldest = this.days.keys().next();
      if (!oldest.done) {
        this.days.delete(oldest.value);
      }
    }
  }
}

/**
 * A VPG's checkpoints from `fromUs` on, oldest first: capture times in microseconds since the epoch
 * (exact in a float64 until the year 2255; ties are found by them; the timeline rule takes them as
 * they are) and marks, in (capturedAt, id) order, in the first `length` entries of the columns.
 * `lastUs`/`lastId` is the newest checkpoint of the VPG when read; `total` and `removals` are
 * checkpoint_stats then.
 */
interface DayCache {
  readonly fromUs: number;
  readonly times: Float64Array;
  readonly marked: Uint8Array;
  /** The columns' owner, shared by the day's versions; a version appends in place only at the end of what is used. */
  readonly columns: DayColumns;
  readonly length: number;
  readonly total: number;
  readonly removals: string | null;
  readonly lastUs: string;
  readonly lastId: string | null;
}

/**
 * The arrays a day's versions share. A poll appends a checkpoint or two: written after the entries in
 * use when nothing else was appended there (`used` is the end of the newest version), so each poll
 * allocates and copies nothing; otherwise (a concurrent call appended first, or the front is dropped)
 * the next version gets arrays of its own.
 */
interface DayColumns {
  readonly times: Float64Array;
  readonly marked: Uint8Array;
  used: number;
}

/**
 * The two columns in one ArrayBuffer, 9 bytes a checkpoint: a first read allocates one backing store,
 * and decodeHours fills it directly. The times are kept once, in microseconds (the rule divides), not
 * a second time in milliseconds beside them (17 bytes a checkpoint before Dec 5): the cache of 256 VPGs
 * at 5 s is 41 MB rather than 77 MB. Backing stores, though outside V8's heap, pace its full
 * collections, which mark the whole heap on both cores. On the 51.8M-checkpoint catalog the smaller
 * layout moved first reads' p99 only within the noise (9 to 15 ms against 7 to 25 ms, passes of 100);
 * what had kept them slow was the spread that built each point (see unpackMarked).
 */
function newColumns(capacity: number): DayColumns {
  const buffer = new ArrayBuffer(capacity * 9);
  return {
    times: new Float64Array(buffer, 0, capacity),
    marked: new Uint8Array(buffer, capacity * 8, capacity),
    used: 0,
  };
}

/** VPGs whose day is cached (about 160 KB each at 5 s). */
const MAX_CACHED_DAYS = 256;
/** Room for appends past a day read whole: an hour at 5 s. */
const DAY_SLACK = 720;
const ZERO_UUID = '00000000-0000-0000-0000-000000000000';

/** What one day read returns: checkpoint_stats, the day's columns (dayColumns) and the newest checkpoint. */
interface DayRow {
  total: string | null;
  removals: string | null;
  times: string | null;
  marked_times: string | null;
  marked_ranks: string | null;
  last_us: string | null;
  last_id: string | null;
}

/** What the day read from checkpoint_hours returns: per hour, in hour order, its packed times, its count and its marked positions. */
interface HoursRow {
  total: string | null;
  removals: string | null;
  /** Each hour's start, microseconds since the Unix epoch, comma-separated. */
  hours: string | null;
  /** The hours' `times` concatenated, base64: 4 bytes a checkpoint, microseconds since its hour's start (CheckpointHourOffsets). */
  times: string | null;
  /** Each hour's count, comma-separated. */
  counts: string | null;
  /** Each hour's marked positions (space-separated, possibly none), the hours comma-separated. */
  marked: string | null;
  last_us: string | null;
  last_id: string | null;
}

/**
 * checkpoint_hours rows (HoursRow) as capture times in (captured_at, id) order and marks (1 for marked),
 * decoded straight into new day columns (with room for appends after them), the first `length` entries.
 */
function decodeHours(row: HoursRow | undefined): { columns: DayColumns; length: number } {
  const counts = row?.counts ? row.counts.split(',').map(Number) : [];
  const starts = row?.hours ? row.hours.split(',').map(Number) : [];
  const marks = row?.marked !== null && row?.marked !== undefined ? row.marked.split(',') : [];
  if (marks.length !== counts.length || starts.length !== counts.length) {
    throw new Error(`the day read has ${counts.length} hours but marks for ${marks.length} and starts for ${starts.length}`);
  }
  const bytes = row?.times ? Buffer.from(row.times, 'base64') : Buffer.alloc(0);
  if (bytes.length % 4 !== 0) {
    throw new Error(`the day read's times are ${bytes.length} bytes, not a multiple of 4`);
  }
  const length = bytes.length / 4;
  const columns = newColumns(length + DAY_SLACK);
  const { times, marked } = columns;
  let base = 0;
  counts.forEach((count, hour) => {
    if (base + count > length) {
      throw new Error(`the day read's hours count more than its ${length} times`);
    }
    const start = starts[hour]!;
    for (let i = base, o = base * 4; i < base + count; i++, o += 4) {
      times[i] = start + bytes.readUInt32BE(o);
    }
    const positions = marks[hour] === '' ? [] : (marks[hour] as string).split(' ').map(Number);
    for (const p of positions) {
      if (!Number.isInteger(p) || p < 0 || p >= count) {
        throw new Error(`the day read has a marked position ${p} outside its hour of ${count}`);
      }
      marked[base + p] = 1;
    }
    base += count;
  });
  if (base !== length) {
    throw new Error(`the day read has ${length} times but its hours count ${base}`);
  }
  return { columns, length };
}

/**
 * The columns of the checkpoints a poll appends (those after the cached newest one), from rows
 * (captured_at, kind, id) in (captured_at, id) order, none formatted per row (when a whole day was
 * read this way, formatting its 17,280 times as text was most of the server's time, and parsing them
 * most of ours; checkpoint_hours packs them the same way):
 * - times: every capture time as timestamptz_send writes it (int64 microseconds since 2000-01-01 UTC,
 *   big-endian), concatenated, base64 (a bytea's hex text would be half as long again);
 * - marked_times: the same for the marked checkpoints only (tagged, application-consistent: a few);
 * - marked_ranks: for each marked one, how many of the rows read share its capture time with a smaller
 *   id ("0,0,1"), so that it is found among ties. The subquery runs for the marked rows only.
 * `rows` is the condition that selects the rows read, on the alias t (a rank counts only those).
 * The aggregates take the rows in the subquery's order, which the index scan already delivers.
 */
function dayColumns(rows: string): string {
  return `encode(string_agg(timestamptz_send(captured_at), ''::bytea), 'base64') AS times,
          encode(string_agg(timestamptz_send(captured_at), ''::bytea) FILTER (WHERE kind <> 'automatic'), 'base64') AS marked_times,
          string_agg((SELECT count(*) FROM checkpoints t
                       WHERE ${rows} AND t.captured_at = r.captured_at AND t.id < r.id)::text, ',')
            FILTER (WHERE kind <> 'automatic') AS marked_ranks`;
}

/** The VPG's newest checkpoint, as last_us and last_id. */
const NEWEST_JOIN = `LEFT JOIN LATERAL (SELECT (extract(epoch FROM captured_at) * 1000000)::bigint::text AS last_us, id::text AS last_id
                              FROM checkpoints c WHERE c.vpg_id = v.vpg_id ORDER BY captured_at DESC, id DESC LIMIT 1) l ON true`;

/** PostgreSQL's timestamp epoch (2000-01-01 UTC) in microseconds since the Unix epoch. */
const PG_EPOCH_US = 946_684_800_000_000;

/** dayColumns as capture times (microseconds since the Unix epoch) and marks (1 for marked), in order. */
function decodeDay(row: DayRow | undefined): { times: Float64Array; marked: Uint8Array } {
  const times = decodeTimes(row?.times ?? null);
  const marked = new Uint8Array(times.length);
  const markedTimes = decodeTimes(row?.marked_times ?? null);
  const ranks = row?.marked_ranks ? row.marked_ranks.split(',').map(Number) : [];
  if (ranks.length !== markedTimes.length) {
    throw new Error(`the day read has ${markedTimes.length} marked times but ${ranks.length} ranks`);
  }
  // Both lists are in (captured_at, id) order, so one forward walk finds every marked position.
  let p = 0;
  for (let i = 0; i < markedTimes.length; i++) {
    const t = markedTimes[i]!;
    while (p < times.length && times[p]! < t) {
      p++;
    }
    const at = p + ranks[i]!;
    if (times[p] !== t || times[at] !== t) {
      throw new Error(`the day read's marked checkpoint at ${t} µs (rank ${ranks[i]}) is not among its times`);
    }
    marked[at] = 1;
  }
  return { times, marked };
}

/** Concatenated timestamptz_send values, base64, as microseconds since the Unix epoch. */
function decodeTimes(base64: string | null): Float64Array {
  if (base64 === null) {
    return new Float64Array(0);
  }
  // encode() breaks base64 into lines; Buffer.from skips the newlines.
  const bytes = Buffer.from(base64, 'base64');
  if (bytes.length % 8 !== 0) {
    throw new Error(`the day read's times are ${bytes.length} bytes, not a multiple of 8`);
  }
  const out = new Float64Array(bytes.length / 8);
  for (let i = 0, o = 0; i < out.length; i++, o += 8) {
    // High and low halves of the int64: exact in a float64 for any time before the year 2255.
    out[i] = bytes.readInt32BE(o) * 4_294_967_296 + bytes.readUInt32BE(o + 4) + PG_EPOCH_US;
  }
  return out;
}

/** The cached day with `added` after it; what fell before `fromUs` is dropped once it is most of the arrays. */
function appendDay(
  day: DayCache,
  added: { times: Float64Array; marked: Uint8Array },
  total: number,
  lastUs: string | null,
  lastId: string | null,
  fromUs: number,
): DayCache {
  let drop = 0;
  while (drop < day.length && day.times[drop]! <= fromUs) {
    drop++;
  }
  const keepFrom = drop * 2 > day.length ? drop : 0;
  const length = day.length - keepFrom + added.times.length;
  let columns = day.columns;
  if (keepFrom > 0 || columns.used !== day.length || length > columns.times.length) {
    columns = newColumns(length + Math.max(DAY_SLACK, length >>> 2));
    columns.times.set(day.times.subarray(keepFrom, day.length));
    columns.marked.set(day.marked.subarray(keepFrom, day.length));
  }
  const at = day.length - keepFrom;
  columns.times.set(added.times, at);
  columns.marked.set(added.marked, at);
  columns.used = length;
  return {
    fromUs: keepFrom > 0 ? fromUs : day.fromUs,
    times: columns.times,
    marked: columns.marked,
    columns,
    length,
    total,
    removals: day.removals,
    lastUs: lastUs ?? day.lastUs,
    lastId: lastId ?? day.lastId,
  };
}

/** The cursor: version, capture time in microseconds, id; base64url so it travels in a query string. */
function encodeCursor(row: PackedCheckpoint): string {
  return Buffer.from(`${CURSOR_VERSION}:${row[0]}:${row[1]}`, 'utf8').toString('base64url');
}

export function decodeCursor(cursor: string): { atMicros: bigint; id: string } {
  const bad = (): DomainError => new DomainError('invalid-argument', 'cursor is not one this server handed out');
  if (!/^[A-Za-z0-9_-]{1,200}$/.test(cursor)) {
    throw bad();
  }
  const match = /^c1:(-?\d{1,19}):([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/.exec(
    Buffer.from(cursor, 'base64url').toString('utf8'),
  );
  if (!match) {
    throw bad();
  }
  return { atMicros: BigInt(match[1]!), id: match[2]! };
}

/** An exact timestamptz literal for microseconds since the epoch (a Date would drop the microseconds). */
function microsToTimestamp(micros: bigint): string {
  const ms = micros / 1000n - (micros % 1000n < 0n ? 1n : 0n);
  const rest = micros - ms * 1000n;
  const iso = new Date(Number(ms)).toISOString();
  return `${iso.slice(0, -1)}${rest.toString().padStart(3, '0')}Z`;
}

/** A packed checkpoint as the API shows it; capturedAt truncated to the millisecond, as node-pg's Date of the timestamptz was. */
function unpack(vpgId: string, row: PackedCheckpoint): Checkpoint {
  return { id: row[1], vpgId, cut: row[2], kind: row[3], name: row[4], vmId: row[5], capturedAt: capturedAtOf(row) };
}

/**
 * unpack with the timeline's mark, written out in one literal. `{ ...unpack(vpgId, row), marked }`
 * gives the same object, but on Node 20 (V8 11.3) a spread with a property added after it left every
 * copy alive through young-generation collections until the next full one: 1.3 MB promoted per
 * scavenge and 4 to 7 ms pauses during first timelines, against 40 to 70 KB and 2 ms written out
 * (--trace-gc-nvp, Dec 5; a standalone script shows the same, and `{ ...x }` alone does not).
 */
function unpackMarked(vpgId: string, row: PackedCheckpoint, marked: boolean): Checkpoint & { marked: boolean } {
  return { id: row[1], vpgId, cut: row[2], kind: row[3], name: row[4], vmId: row[5], capturedAt: capturedAtOf(row), marked };
}

function capturedAtOf(row: PackedCheckpoint): string {
  return new Date(Math.floor(row[0] / 1000)).toISOString();
}
