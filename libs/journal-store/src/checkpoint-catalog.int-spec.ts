import { randomUUID } from 'node:crypto';
import { type DataSource } from 'typeorm';
import { compareTimelineCheckpoints, selectTimeline, type Checkpoint, type CheckpointKind } from '@cdp/domain';
import { createMigratedDatabase, seededRandom } from '@cdp/testing';
import { CheckpointCatalog, decodeCursor } from './checkpoint-catalog';

const HOUR = 3_600_000;
const byTimeThenId = (a: Checkpoint, b: Checkpoint): number =>
  compareTimelineCheckpoints({ ...a, capturedAt: Date.parse(a.capturedAt) }, { ...b, capturedAt: Date.parse(b.capturedAt) });
const NOW = new Date('2026-11-25T12:00:00.000Z');

/**
 * The data source with every statement the catalog runs passed through `around`: the catalog queries
 * through pg's pool (poolQuery: dataSource.driver.master), so that is where this sits.
 */
function interceptPool(dataSource: DataSource, around: (sql: string, params: unknown[] | undefined, run: () => Promise<unknown>) => Promise<unknown>): DataSource {
  const driver = dataSource.driver as unknown as { master: { query: (sql: string, params?: unknown[]) => Promise<unknown> } };
  const pool = new Proxy(driver.master, {
    get(target, prop, receiver) {
      return prop === 'query'
        ? (sql: string, params?: unknown[]) => around(sql, params, () => target.query(sql, params))
        : (Reflect.get(target, prop, receiver) as unknown);
    },
  });
  const interceptedDriver = new Proxy(driver, {
    get(target, prop, receiver) {
      return prop === 'master' ? pool : (Reflect.get(target, prop, receiver) as unknown);
    },
  });
  return new Proxy(dataSource, {
    get(target, prop, receiver) {
      return prop === 'driver' ? interceptedDriver : (Reflect.get(target, prop, receiver) as unknown);
    },
  });
}

/** The catalog against real PostgreSQL with the real migrations: lists, cursor, stats kept by triggers, the slider. */
describe('CheckpointCatalog', () => {
  let dataSource: DataSource;
  let drop: () => Promise<void>;
  let catalog: CheckpointCatalog;

  async function insert(rows: readonly Checkpoint[]): Promise<void> {
    await dataSource.query(
      `INSERT INTO checkpoints (id, vpg_id, cut, kind, name, vm_id, captured_at)
       SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[], $6::uuid[], $7::timestamptz[])`,
      [
        rows.map((r) => r.id),
        rows.map((r) => r.vpgId),
        rows.map((r) => r.cut),
        rows.map((r) => r.kind),
        rows.map((r) => r.name),
        rows.map((r) => r.vmId),
        rows.map((r) => r.capturedAt),
      ],
    );
  }

  /** Checkpoints every `stepMs` for `spanMs` ending at NOW, some marked, some sharing a capture time. */
  function series(vpgId: string, spanMs: number, stepMs: number, seed: number): Checkpoint[] {
    const random = seededRandom(seed);
    const out: Checkpoint[] = [];
    let cut = 0;
    for (let t = NOW.getTime() - spanMs; t <= NOW.getTime(); t += stepMs) {
      const r = random();
      const kind: CheckpointKind = r < 0.01 ? 'tagged' : r < 0.02 ? 'application-consistent' : 'automatic';
      cut += 1 + Math.floor(random() * 10);
      out.push({ id: randomUUID(), vpgId, cut, kind, name: kind === 'automatic' ? null : `n${cut}`, vmId: null, capturedAt: new Date(t).toISOString() });
      if (random() < 0.02) {
        // Same capture time, another id: ties are broken by id everywhere.
        out.push({ id: randomUUID(), vpgId, cut: cut + 1, kind: 'tagged', name: 'twin', vmId: null, capturedAt: new Date(t).toISOString() });
        cut++;
      }
    }
    return out;
  }

  beforeAll(async () => {
    ({ dataSource, drop: drop } = await createMigratedDatabase());
    catalog = new CheckpointCatalog(dataSource);
  });

  afterAll(async () => {
    await dataSource?.destroy();
    await drop?.();
  });

  it('pages through a range with a cursor that stays valid while checkpoints are recorded and trimmed', async () => {
    const vpgId = randomUUID();
    const all = series(vpgId, 2 * HOUR, 10_000, 1);
    await insert(all);
    await insert(series(randomUUID(), 2 * HOUR, 10_000, 2));
    const from = new Date(NOW.getTime() - 90 * 60_000);
    const to = new Date(NOW.getTime() - 30 * 60_000);
    const expected = all.filter((c) => Date.parse(c.capturedAt) >= from.getTime() && Date.parse(c.capturedAt) <= to.getTime());

    const seen: Checkpoint[] = [];
    let cursor: string | undefined;
    let pages = 0;
    do {
      const page = await catalog.page(vpgId, { from, to, after: cursor, limit: 37 });
      seen.push(...page.checkpoints);
      cursor = page.next ?? undefined;
      pages++;
      if (pages === 2) {
        // Meanwhile: the oldest ones are trimmed, and one is recorded behind the cursor and one ahead.
        await dataSource.query(`DELETE FROM checkpoints WHERE vpg_id = $1 AND captured_at < $2`, [vpgId, from]);
        const behind = { ...all[0]!, id: randomUUID(), capturedAt: seen[0]!.capturedAt, cut: 1 };
        const ahead = { ...all[0]!, id: randomUUID(), capturedAt: new Date(to.getTime() - 1).toISOString(), cut: 10 ** 9 };
        await insert([behind, ahead]);
        expected.push(ahead);
      }
    } while (cursor !== undefined);
    expect(pages).toBeGreaterThan(5);
    expected.sort(byTimeThenId);
    // Every one once, in order; the one recorded behind the cursor is not seen, the one ahead is.
    expect(seen.map((c) => c.id)).toEqual(expected.map((c) => c.id));
    expect(seen.map((c) => c.id).length).toBe(new Set(seen.map((c) => c.id)).size);
  });

  it('returns the newest ones by default and refuses a cursor it did not hand out', async () => {
    const vpgId = randomUUID();
    const all = series(vpgId, HOUR, 60_000, 3);
    await insert(all);
    const newest = await catalog.newest(vpgId, { limit: 3 });
    expect(newest.map((c) => c.capturedAt)).toEqual(all.slice(-3).map((c) => c.capturedAt));
    for (const bad of ['', 'nope', Buffer.from('c1:12:not-a-uuid').toString('base64url'), Buffer.from(`c2:1:${vpgId}`).toString('base64url')]) {
      expect(() => decodeCursor(bad)).toThrow(/cursor/);
    }
    await expect(catalog.page(vpgId, { after: 'garbage!', limit: 10 })).rejects.toMatchObject({ code: 'invalid-argument' });
  });

  it('keeps stats per VPG and kind through inserts, deletes, updates and truncation, without counting', async () => {
    const vpgId = randomUUID();
    expect(await catalog.stats(vpgId)).toEqual({ count: 0, byKind: { automatic: 0, tagged: 0, 'application-consistent': 0 }, earliest: null, latest: null });
    const all = series(vpgId, HOUR, 5_000, 4);
    await insert(all);
    const count = async (): Promise<Record<string, number>> => {
      const rows = await dataSource.query<{ kind: string; n: string }[]>(`SELECT kind, count(*) AS n FROM checkpoints WHERE vpg_id = $1 GROUP BY kind`, [vpgId]);
      return Object.fromEntries(rows.map((r) => [r.kind, Number(r.n)]));
    };
    const expectStatsMatchTable = async (): Promise<void> => {
      const stats = await catalog.stats(vpgId);
      const counted = await count();
      expect(stats.byKind).toEqual({ automatic: counted['automatic'] ?? 0, tagged: counted['tagged'] ?? 0, 'application-consistent': counted['application-consistent'] ?? 0 });
      expect(stats.count).toBe(Object.values(counted).reduce((a, b) => a + b, 0));
    };
    await expectStatsMatchTable();
    const stats = await catalog.stats(vpgId);
    expect(stats.count).toBe(all.length);
    const sorted = [...all].sort(byTimeThenId);
    expect(stats.earliest).toEqual(sorted[0]);
    expect(stats.latest).toEqual(sorted[sorted.length - 1]);

    await dataSource.query(`DELETE FROM checkpoints WHERE vpg_id = $1 AND captured_at < $2`, [vpgId, new Date(NOW.getTime() - HOUR / 2)]);
    await expectStatsMatchTable();
    expect((await catalog.stats(vpgId)).earliest?.capturedAt).toBe(new Date(NOW.getTime() - HOUR / 2).toISOString());
    await dataSource.query(`UPDATE checkpoints SET kind = 'tagged', name = 'x' WHERE vpg_id = $1 AND kind = 'automatic' AND cut % 3 = 0`, [vpgId]);
    await expectStatsMatchTable();
    // A failed transaction leaves the counts as they were.
    await expect(
      dataSource.transaction(async (em) => {
        await em.query(`DELETE FROM checkpoints WHERE vpg_id = $1`, [vpgId]);
        throw new Error('rolled back');
      }),
    ).rejects.toThrow('rolled back');
    await expectStatsMatchTable();
    await dataSource.query(`TRUNCATE checkpoints`);
    expect((await catalog.stats(vpgId)).count).toBe(0);
  });

  it('keeps checkpoint_hours exactly what checkpoints holds: out of order, ties, deletes, updates, rollbacks, concurrent writers', async () => {
    const HOUR_US = 3_600_000_000n;
    /** The packed hours from the table itself, checked against what the trigger-kept table holds. */
    const expectHoursMatchTable = async (): Promise<number> => {
      const rows = await dataSource.query<{ vpg_id: string; at_us: string; kind: CheckpointKind }[]>(
        `SELECT vpg_id, (extract(epoch FROM captured_at) * 1000000)::bigint::text AS at_us, kind FROM checkpoints ORDER BY vpg_id, captured_at, id`,
      );
      const expected = new Map<string, { times: bigint[]; marked: number[] }>();
      for (const row of rows) {
        const at = BigInt(row.at_us);
        const hour = at - (((at % HOUR_US) + HOUR_US) % HOUR_US);
        const key = `${row.vpg_id} ${hour}`;
        const entry = expected.get(key) ?? { times: [], marked: [] };
        if (row.kind !== 'automatic') {
          entry.marked.push(entry.times.length);
        }
        entry.times.push(at);
        expected.set(key, entry);
      }
      const hours = await dataSource.query<{ vpg_id: string; hour_us: string; count: number; times: string; marked: number[] }[]>(
        `SELECT vpg_id, (extract(epoch FROM hour) * 1000000)::bigint::text AS hour_us, count, encode(times, 'hex') AS times, marked FROM checkpoint_hours`,
      );
      const actual = new Map<string, { times: bigint[]; marked: number[] }>();
      for (const h of hours) {
        // Each time in 4 bytes: microseconds since the hour's start (CheckpointHourOffsets).
        const bytes = Buffer.from(h.times, 'hex');
        const times: bigint[] = [];
        for (let o = 0; o < bytes.length; o += 4) {
          times.push(BigInt(h.hour_us) + BigInt(bytes.readUInt32BE(o)));
        }
        expect(h.count).toBe(times.length);
        actual.set(`${h.vpg_id} ${h.hour_us}`, { times, marked: h.marked });
      }
      expect(actual).toEqual(expected);
      return actual.size;
    };
    const vpgs = [randomUUID(), randomUUID()];
    const random = seededRandom(21);
    // Two VPGs over three hours, inserted in shuffled chunks: every statement lands out of order.
    const rows = vpgs.flatMap((vpgId, i) => series(vpgId, 3 * HOUR, 5_000, 30 + i));
    for (let i = rows.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [rows[i], rows[j]] = [rows[j]!, rows[i]!];
    }
    for (let i = 0; i < rows.length; i += 500) {
      await insert(rows.slice(i, i + 500));
    }
    expect(await expectHoursMatchTable()).toBe(8);
    // Ties at an existing capture time, before and after it by id, and one recorded late in an old hour.
    const tiedAt = rows.find((r) => r.vpgId === vpgs[0] && r.kind === 'automatic')!.capturedAt;
    await insert([
      { id: '00000000-0000-4000-8000-000000000000', vpgId: vpgs[0]!, cut: 1, kind: 'tagged', name: 'first', vmId: null, capturedAt: tiedAt },
      { id: 'ffffffff-ffff-4fff-bfff-ffffffffffff', vpgId: vpgs[0]!, cut: 2, kind: 'automatic', name: null, vmId: null, capturedAt: tiedAt },
      { id: randomUUID(), vpgId: vpgs[1]!, cut: 3, kind: 'application-consistent', name: 'late', vmId: null, capturedAt: new Date(NOW.getTime() - 2.5 * HOUR).toISOString() },
    ]);
    await expectHoursMatchTable();
    // The promoter's trim: part of an hour, then all of one (its row goes).
    await dataSource.query(`DELETE FROM checkpoints WHERE vpg_id = $1 AND captured_at < $2`, [vpgs[0], new Date(NOW.getTime() - 2.75 * HOUR)]);
    await expectHoursMatchTable();
    await dataSource.query(`DELETE FROM checkpoints WHERE vpg_id = $1 AND captured_at < $2`, [vpgs[1], new Date(Math.floor(NOW.getTime() / HOUR) * HOUR - HOUR)]);
    await expectHoursMatchTable();
    // Marks changed, and checkpoints moved to another hour: both hours are rebuilt.
    await dataSource.query(`UPDATE checkpoints SET kind = 'tagged', name = 'x' WHERE vpg_id = $1 AND kind = 'automatic' AND cut % 7 = 0`, [vpgs[1]]);
    await expectHoursMatchTable();
    await dataSource.query(`UPDATE checkpoints SET captured_at = captured_at - interval '1 hour' WHERE vpg_id = $1 AND cut % 5 = 0`, [vpgs[0]]);
    await expectHoursMatchTable();
    await expect(
      dataSource.transaction(async (em) => {
        await em.query(`DELETE FROM checkpoints WHERE vpg_id = $1`, [vpgs[0]]);
        throw new Error('rolled back');
      }),
    ).rejects.toThrow('rolled back');
    await expectHoursMatchTable();

    // Two transactions recording into the same hour at once, in an hour that has a row and in one that
    // does not yet: the second waits for the first's lock on the hour, then sees its checkpoint.
    for (const at of [new Date(NOW.getTime() - 1_000), new Date(NOW.getTime() + 2 * HOUR)]) {
      const first = dataSource.createQueryRunner();
      const second = dataSource.createQueryRunner();
      try {
        await first.startTransaction();
        await second.startTransaction();
        const record = (runner: typeof first, id: string, offsetMs: number): Promise<unknown> =>
          runner.query(`INSERT INTO checkpoints (id, vpg_id, cut, kind, name, vm_id, captured_at) VALUES ($1, $2, 9, 'automatic', NULL, NULL, $3)`, [
            id,
            vpgs[1],
            new Date(at.getTime() + offsetMs),
          ]);
        await record(first, randomUUID(), 0);
        const pid = ((await second.query('SELECT pg_backend_pid() AS pid')) as { pid: number }[])[0]?.pid;
        expect(pid).toEqual(expect.any(Number));
        const waiting = record(second, randomUUID(), 10);
        // Synchronised on the server's own view: the second is blocked on a lock before the first commits.
        for (;;) {
          const [state] = await dataSource.query<{ wait_event_type: string | null }[]>(`SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1`, [pid]);
          if (state?.wait_event_type === 'Lock') {
            break;
          }
          await new Promise<void>((resolve) => setImmediate(resolve));
        }
        await first.commitTransaction();
        await waiting;
        await second.commitTransaction();
      } finally {
        await first.release();
        await second.release();
      }
      await expectHoursMatchTable();
    }
    await dataSource.query(`DELETE FROM checkpoints WHERE vpg_id = ANY($1::uuid[])`, [vpgs]);
    expect(await expectHoursMatchTable()).toBe(0);
  });

  it('gives the slider the picks of the rule over the full rows (3 days at 5 s, ties in time, marked ones)', async () => {
    const vpgId = randomUUID();
    // 3 days at 5 s (the query only ever reads the last 24 h; older rows are there to be skipped).
    const all = series(vpgId, 72 * HOUR, 5_000, 5);
    for (let i = 0; i < all.length; i += 20_000) {
      await insert(all.slice(i, i + 20_000));
    }
    for (const now of [NOW, new Date(NOW.getTime() - 7 * HOUR + 1234), new Date(NOW.getTime() + 30 * 60_000)]) {
      const full = await catalog.within(vpgId, new Date(now.getTime() - 24 * HOUR), now);
      const expected = selectTimeline(full.map((c) => ({ id: c.id, capturedAt: Date.parse(c.capturedAt), kind: c.kind, name: c.name })), now);
      const result = await catalog.timeline(vpgId, now);
      expect(result.checkpoints.map((c) => c.id)).toEqual(expected.map((e) => e.id));
      expect(result.checkpoints.map((c) => c.marked)).toEqual(expected.map((e) => e.marked));
      const byId = new Map(full.map((c) => [c.id, c]));
      for (const c of result.checkpoints) {
        const { marked, ...checkpoint } = c;
        expect(checkpoint).toEqual(byId.get(c.id));
        expect(marked).toBe(c.kind !== 'automatic');
      }
      expect(result.checkpoints.length).toBe(180);
      expect(result).toMatchObject({ from: new Date(now.getTime() - 24 * HOUR).toISOString(), to: now.toISOString() });
    }
    expect((await catalog.timeline(randomUUID(), NOW)).checkpoints).toEqual([]);
  });

  it('reads the day exactly: microsecond capture times, times before 2000, marked ones inside runs of ties', async () => {
    const vpgId = randomUUID();
    const random = seededRandom(7);
    // PostgreSQL counts timestamps from 2000-01-01: a window across it has negative and positive raw values.
    const now = new Date('2000-01-01T06:00:00.000Z');
    const rows: { id: string; kind: CheckpointKind; us: bigint }[] = [];
    let us = BigInt(now.getTime() - 25 * HOUR) * 1000n;
    while (us <= BigInt(now.getTime()) * 1000n) {
      // 1 to 9 s apart with a microsecond part, and now and then a run of 2 to 4 at one capture time
      // whose ids sort apart from the order they were made in, marked ones anywhere in the run.
      us += BigInt(1_000_000 + Math.floor(random() * 8_000_000)) + BigInt(Math.floor(random() * 1000));
      const run = random() < 0.05 ? 2 + Math.floor(random() * 3) : 1;
      for (let i = 0; i < run; i++) {
        const r = random();
        rows.push({ id: randomUUID(), kind: r < 0.03 ? 'tagged' : r < 0.06 ? 'application-consistent' : 'automatic', us });
      }
    }
    await dataSource.query(
      `INSERT INTO checkpoints (id, vpg_id, cut, kind, name, vm_id, captured_at)
       SELECT id, $1, n, kind, NULL, NULL, 'epoch'::timestamptz + make_interval(secs => us / 1000000.0)
         FROM unnest($2::uuid[], $3::text[], $4::bigint[]) WITH ORDINALITY AS r(id, kind, us, n)`,
      [vpgId, rows.map((r) => r.id), rows.map((r) => r.kind), rows.map((r) => r.us.toString())],
    );
    // The rule over the full rows with their exact times (fractional milliseconds), read back from the table.
    const full = await dataSource.query<{ id: string; kind: CheckpointKind; us: string }[]>(
      `SELECT id, kind, (extract(epoch FROM captured_at) * 1000000)::bigint::text AS us FROM checkpoints WHERE vpg_id = $1`,
      [vpgId],
    );
    expect(full.map((r) => r.us).sort()).toEqual(rows.map((r) => r.us.toString()).sort());
    for (const at of [now, new Date(now.getTime() - 5 * HOUR - 1)]) {
      const expected = selectTimeline(full.map((r) => ({ id: r.id, capturedAt: Number(r.us) / 1000, kind: r.kind, name: null })), at);
      const result = await new CheckpointCatalog(dataSource).timeline(vpgId, at);
      expect(result.checkpoints.map((c) => c.id)).toEqual(expected.map((e) => e.id));
      expect(result.checkpoints.map((c) => c.marked)).toEqual(expected.map((e) => e.marked));
      // The runs of ties and the marked ones inside them are really there to be told apart.
      const perTime = new Map<number, number>();
      for (const r of full) {
        perTime.set(Number(r.us), (perTime.get(Number(r.us)) ?? 0) + 1);
      }
      const tiedMarked = expected.filter((e) => e.marked && perTime.get(e.capturedAt * 1000)! > 1);
      expect(tiedMarked.length).toBeGreaterThan(3);
    }
  });

  it('stays exact while checkpoints are appended, trimmed and recorded late (the day cache)', async () => {
    const vpgId = randomUUID();
    await insert(series(vpgId, 26 * HOUR, 5_000, 6));
    const fresh = new CheckpointCatalog(dataSource);
    let now = NOW.getTime();
    let cut = 10 ** 7;
    const expectExact = async (): Promise<void> => {
      const at = new Date(now);
      const full = await fresh.within(vpgId, new Date(now - 24 * HOUR), at);
      const expected = selectTimeline(full.map((c) => ({ id: c.id, capturedAt: Date.parse(c.capturedAt), kind: c.kind, name: c.name })), at);
      // Through the cache and through a catalog that has none: both what the table holds.
      expect((await fresh.timeline(vpgId, at)).checkpoints.map((c) => c.id)).toEqual(expected.map((e) => e.id));
      expect((await new CheckpointCatalog(dataSource).timeline(vpgId, at)).checkpoints.map((c) => c.id)).toEqual(expected.map((e) => e.id));
    };
    const append = async (count: number, kind: CheckpointKind = 'automatic'): Promise<void> => {
      const rows: Checkpoint[] = [];
      for (let i = 0; i < count; i++) {
        now += 5_000;
        rows.push({ id: randomUUID(), vpgId, cut: cut++, kind, name: kind === 'automatic' ? null : 'late', vmId: null, capturedAt: new Date(now).toISOString() });
      }
      await insert(rows);
    };
    await expectExact();
    for (let round = 0; round < 6; round++) {
      await append(50 + round * 100);
      await expectExact();
      await append(1, 'tagged');
      await expectExact();
    }
    // Calls at once from one cached day, each appending what its own read saw, one of them also a
    // checkpoint recorded meanwhile behind the newest: the first answered appends in place, the others
    // get arrays of their own, and each answer is what the table held when it read.
    await append(2);
    const early = new Date(now);
    const first = fresh.timeline(vpgId, early);
    const second = fresh.timeline(vpgId, early);
    await append(1);
    const behind: Checkpoint = { id: randomUUID(), vpgId, cut: cut++, kind: 'tagged', name: 'meanwhile', vmId: null, capturedAt: new Date(now - 7_500).toISOString() };
    await insert([behind]);
    const third = fresh.timeline(vpgId, new Date(now));
    const answers = await Promise.all([first, second, third]);
    const picks = async (at: Date, without?: string): Promise<string[]> => {
      const full = (await fresh.within(vpgId, new Date(at.getTime() - 24 * HOUR), at)).filter((c) => c.id !== without);
      return selectTimeline(full.map((c) => ({ id: c.id, capturedAt: Date.parse(c.capturedAt), kind: c.kind, name: c.name })), at).map((e) => e.id);
    };
    // The two early calls may have read before or after `behind` was recorded (inside their window;
    // tagged, so always picked: the two possible answers differ).
    const earlyAnswers = [await picks(early, behind.id), await picks(early)];
    expect(earlyAnswers[0]).not.toEqual(earlyAnswers[1]);
    for (const answer of answers.slice(0, 2)) {
      expect(earlyAnswers).toContainEqual(answer.checkpoints.map((c) => c.id));
    }
    expect(answers[2].checkpoints.map((c) => c.id)).toEqual(await picks(new Date(now)));
    await expectExact();
    // The promoter trims inside the window.
    await dataSource.query(`DELETE FROM checkpoints WHERE vpg_id = $1 AND captured_at < $2`, [vpgId, new Date(now - 3 * HOUR)]);
    await expectExact();
    // A tagged checkpoint recorded behind the newest one (a source clock that stepped back).
    await insert([{ id: randomUUID(), vpgId, cut: cut++, kind: 'tagged', name: 'behind', vmId: null, capturedAt: new Date(now - HOUR).toISOString() }]);
    await expectExact();
    // Appended at the newest one's capture time, after it by id (so read as appended): a marked one
    // whose rank among the ties counts the cached newest one too.
    await fresh.timeline(vpgId, new Date(now));
    const newestAt = new Date(now).toISOString();
    await insert([
      { id: 'ffffffff-ffff-4fff-bfff-fffffffffff0', vpgId, cut: cut++, kind: 'automatic', name: null, vmId: null, capturedAt: newestAt },
      { id: 'ffffffff-ffff-4fff-bfff-fffffffffff1', vpgId, cut: cut++, kind: 'application-consistent', name: 'tie', vmId: null, capturedAt: newestAt },
    ]);
    await expectExact();
    expect((await fresh.timeline(vpgId, new Date(now))).checkpoints.at(-1)).toMatchObject({ id: 'ffffffff-ffff-4fff-bfff-fffffffffff1', marked: true });
    // Time moves on by more than a day: the cache's old part falls out of the window.
    await append(10);
    now += 25 * HOUR;
    await append(3);
    await expectExact();
  });

  it('keeps each version of the day intact when a concurrent call appends to the arrays first', async () => {
    const vpgId = randomUUID();
    await insert(series(vpgId, 2 * HOUR, 5_000, 8));
    // Every query runs on the real server at once; only the delivery of a chosen result is held back,
    // which fixes the order in which two calls' answers come in.
    const held: (() => void)[] = [];
    const waiting: { n: number; resolve: () => void }[] = [];
    let holdNext: ((sql: string) => boolean) | null = null;
    const gate = async (sql: string, run: () => Promise<unknown>): Promise<unknown> => {
      const hold = holdNext?.(sql) ?? false;
      if (hold) {
        holdNext = null;
      }
      const result = await run();
      if (hold) {
        await new Promise<void>((release) => {
          held.push(release);
          waiting.filter((w) => w.n <= held.length).forEach((w) => w.resolve());
        });
      }
      return result;
    };
    const gated = interceptPool(dataSource, (sql, _params, run) => gate(sql, run));
    // Fails fast rather than at the test's timeout when the query to hold never comes (its SQL changed).
    const heldCount = (n: number): Promise<void> =>
      held.length >= n
        ? Promise.resolve()
        : new Promise((resolve, reject) => {
            const timer = setTimeout(() => reject(new Error(`only ${held.length} of ${n} queries were held: did the catalog's SQL change?`)), 10_000);
            waiting.push({ n, resolve: () => (clearTimeout(timer), resolve()) });
          });
    const catalog = new CheckpointCatalog(gated);
    const row = (at: number, kind: CheckpointKind): Checkpoint => ({
      id: randomUUID(),
      vpgId,
      cut: 10 ** 6 + at / 1000,
      kind,
      name: kind === 'automatic' ? null : 'meanwhile',
      vmId: null,
      capturedAt: new Date(at).toISOString(),
    });
    const later = new Date(NOW.getTime() + 10_000);
    await catalog.timeline(vpgId, NOW);
    const newest = row(later.getTime(), 'automatic');
    await insert([newest]);
    // A reads the newest one appended, and waits.
    holdNext = () => true;
    const a = catalog.timeline(vpgId, later);
    await heldCount(1);
    // A tagged one recorded behind it; B reads both appended, appends them to the shared arrays and
    // waits for its rows; then A appends its one where B's first one is.
    const behind = row(NOW.getTime() + 5_000, 'tagged');
    await insert([behind]);
    holdNext = (sql) => sql.includes('unnest($2::bigint[])');
    const b = catalog.timeline(vpgId, later);
    await heldCount(2);
    held[0]!();
    const answerA = await a;
    held[1]!();
    const answerB = await b;
    const picks = async (without?: string): Promise<string[]> => {
      const full = (await catalog.within(vpgId, new Date(later.getTime() - 24 * HOUR), later)).filter((c) => c.id !== without);
      return selectTimeline(full.map((c) => ({ id: c.id, capturedAt: Date.parse(c.capturedAt), kind: c.kind, name: c.name })), later).map((e) => e.id);
    };
    expect(answerA.checkpoints.map((c) => c.id)).toEqual(await picks(behind.id));
    expect(answerB.checkpoints.map((c) => c.id)).toEqual(await picks());
    expect(answerB.checkpoints.map((c) => c.id)).toContain(behind.id);
  });
});
