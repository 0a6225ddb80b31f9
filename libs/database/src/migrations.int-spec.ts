// The boundary rule has no notion of test files; only tests import the testing library.
import { createTestDatabase, type TestDatabase } from '@cdp/testing';
import { type DataSource } from 'typeorm';
import { createDataSource, runMigrations } from './data-source';
import { DatabaseError } from './database.error';
import { migrations } from './migrations';
import { CompactJournalIndex1795737600000 } from './migrations/1795737600000-compact-journal-index';
import { CheckpointHours1796256000000 } from './migrations/1796256000000-checkpoint-hours';
import { CheckpointHourOffsets1796342400000 } from './migrations/1796342400000-checkpoint-hour-offsets';

const MIGRATION_NAMES = migrations.map((m) => new m().name);

/** The schema other services code against: table -> column -> "type, NULL|NOT NULL[, default]". */
const EXPECTED_COLUMNS: Record<string, Record<string, string>> = {
  vpg_events: {
    position: 'int8 NOT NULL default',
    stream_id: 'uuid NOT NULL',
    version: 'int4 NOT NULL',
    type: 'text NOT NULL',
    data: 'jsonb NOT NULL',
    recorded_at: 'timestamptz NOT NULL default',
  },
  vpgs: {
    id: 'uuid NOT NULL',
    name: 'text NOT NULL',
    definition: 'jsonb NOT NULL',
    version: 'int4 NOT NULL',
    created_at: 'timestamptz NOT NULL',
    updated_at: 'timestamptz NOT NULL',
  },
  event_relay_cursors: { name: 'text NOT NULL', position: 'int8 NOT NULL' },
  journal_vpgs: {
    vpg_id: 'uuid NOT NULL',
    vpg_key: 'int4 NOT NULL default',
    applied_seq: 'int8 NOT NULL default',
    segment: 'int4 NOT NULL default',
    segment_end: 'int8 NOT NULL default',
    replica_seq: 'int8 NOT NULL default',
    last_captured_at: 'timestamptz NULL',
    members: 'jsonb NULL',
    updated_at: 'timestamptz NOT NULL default',
  },
  journal_batches: {
    vpg_key: 'int4 NOT NULL',
    first_seq: 'int8 NOT NULL',
    last_seq: 'int8 NOT NULL',
    segment: 'int4 NOT NULL',
    position: 'int8 NOT NULL',
    bytes: 'int4 NOT NULL',
    captured_upto: 'int8 NOT NULL',
  },
  journal_extents: {
    vpg_key: 'int4 NOT NULL',
    volume_index: 'int2 NOT NULL',
    region: 'int4 NOT NULL',
    first_seq: 'int8 NOT NULL',
    last_seq: 'int8 NOT NULL',
    segment: 'int4 NOT NULL',
    position: 'int8 NOT NULL',
    entries: 'bytea NOT NULL',
  },
  journal_syncs: {
    vpg_key: 'int4 NOT NULL',
    from_seq: 'int8 NOT NULL',
    until_seq: 'int8 NULL',
    reason: 'text NOT NULL',
  },
  journal_outbox: {
    position: 'int8 NOT NULL default',
    topic: 'text NOT NULL',
    key: 'text NOT NULL',
    value: 'bytea NOT NULL',
    created_at: 'timestamptz NOT NULL default',
  },
  checkpoints: {
    id: 'uuid NOT NULL',
    vpg_id: 'uuid NOT NULL',
    cut: 'int8 NOT NULL',
    kind: 'text NOT NULL',
    name: 'text NULL',
    vm_id: 'uuid NULL',
    captured_at: 'timestamptz NOT NULL',
    recorded_at: 'timestamptz NOT NULL default',
  },
  checkpoint_stats: {
    vpg_id: 'uuid NOT NULL',
    automatic: 'int8 NOT NULL default',
    tagged: 'int8 NOT NULL default',
    application_consistent: 'int8 NOT NULL default',
    removals: 'int8 NOT NULL default',
  },
  checkpoint_hours: {
    vpg_id: 'uuid NOT NULL',
    hour: 'timestamptz NOT NULL',
    count: 'int4 NOT NULL',
    times: 'bytea NOT NULL',
    marked: '_int4 NOT NULL',
  },
  vpg_history_status: {
    vpg_id: 'uuid NOT NULL',
    status: 'text NOT NULL',
    actual_seconds: 'int8 NOT NULL',
    configured_seconds: 'int8 NOT NULL',
    evaluated_at: 'timestamptz NOT NULL',
    changed_at: 'timestamptz NOT NULL',
    alert_raised_at: 'timestamptz NULL',
    rpo_seconds: 'int8 NULL',
    rpo_target_seconds: 'int8 NULL',
    rpo_alert_raised_at: 'timestamptz NULL',
  },
  site_reports: {
    vpg_id: 'uuid NOT NULL',
    host: 'text NOT NULL',
    instance: 'uuid NOT NULL',
    reported_at: 'timestamptz NOT NULL',
  },
  site_alerts: {
    vpg_id: 'uuid NOT NULL',
    host: 'text NOT NULL',
    kind: 'text NOT NULL',
    raised_at: 'timestamptz NOT NULL',
    message: 'text NOT NULL',
  },
  checkpoint_requests: {
    id: 'uuid NOT NULL',
    vpg_id: 'uuid NOT NULL',
    kind: 'text NOT NULL',
    name: 'text NULL',
    vm_id: 'uuid NULL',
    requested_at: 'timestamptz NOT NULL',
    sent_at: 'timestamptz NULL',
  },
};

describe('migrations', () => {
  let db: TestDatabase;
  const sources: DataSource[] = [];

  function dataSource(poolSize?: number): DataSource {
    const ds = createDataSource({ url: db.url, entities: [], migrations, poolSize, applicationName: 'migrations-test' });
    sources.push(ds);
    return ds;
  }

  /** A database migrated up to, not including, `migration`, as a release before it left it. */
  async function migratedUpTo(migration: (typeof migrations)[number]): Promise<{ before: typeof migrations; old: DataSource }> {
    const before = migrations.slice(0, migrations.indexOf(migration));
    const old = createDataSource({ url: db.url, entities: [], migrations: before, applicationName: 'migrations-test' });
    sources.push(old);
    await runMigrations(old);
    return { before, old };
  }

  beforeEach(async () => {
    db = await createTestDatabase();
  });

  afterEach(async () => {
    for (const ds of sources.splice(0)) {
      if (ds.isInitialized) {
        await ds.destroy();
      }
    }
    await db.drop();
  });

  it('creates the schema on an empty database, and a second run does nothing', async () => {
    const ds = dataSource();
    expect(await runMigrations(ds)).toEqual(MIGRATION_NAMES);

    const columns = await ds.query<{ table_name: string; column_name: string; udt_name: string; is_nullable: string; column_default: string | null }[]>(
      `SELECT table_name, column_name, udt_name, is_nullable, column_default
         FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name <> 'migrations'`,
    );
    const actual: Record<string, Record<string, string>> = {};
    for (const c of columns) {
      const description = `${c.udt_name} ${c.is_nullable === 'YES' ? 'NULL' : 'NOT NULL'}${c.column_default === null ? '' : ' default'}`;
      (actual[c.table_name] ??= {})[c.column_name] = description;
    }
    expect(actual).toEqual(EXPECTED_COLUMNS);

    const constraints = await ds.query<{ conname: string; def: string }[]>(
      `SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace AND contype IN ('u', 'p', 'c') ORDER BY conname`,
    );
    const byName = Object.fromEntries(constraints.map((c) => [c.conname, c.def]));
    expect(byName).toMatchObject({
      vpg_events_stream_id_version_key: 'UNIQUE (stream_id, version)',
      vpgs_name_key: 'UNIQUE (name)',
      journal_vpgs_vpg_key_key: 'UNIQUE (vpg_key)',
      journal_batches_pkey: 'PRIMARY KEY (vpg_key, first_seq)',
      journal_extents_pkey: 'PRIMARY KEY (vpg_key, volume_index, region, first_seq)',
      journal_outbox_pkey: 'PRIMARY KEY ("position")',
      journal_syncs_pkey: 'PRIMARY KEY (vpg_key, from_seq)',
      site_reports_pkey: 'PRIMARY KEY (vpg_id, host)',
      site_alerts_pkey: 'PRIMARY KEY (vpg_id, host, kind)',
    });
    expect(byName['checkpoints_kind_check']).toContain("'application-consistent'");

    const indexes = await ds.query<{ indexname: string; indexdef: string }[]>(
      "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'checkpoints' ORDER BY indexname",
    );
    expect(indexes.map((i) => i.indexdef.replace(/^.* USING btree /, ''))).toEqual(
      expect.arrayContaining(['(vpg_id, captured_at, id) INCLUDE (kind, cut, name, vm_id)', '(vpg_id, cut)']),
    );
    const options = await ds.query<{ reloptions: string[] }[]>("SELECT reloptions FROM pg_class WHERE oid = 'checkpoints'::regclass");
    expect(options[0]?.reloptions).toEqual(expect.arrayContaining(['autovacuum_vacuum_insert_threshold=20000', 'autovacuum_vacuum_insert_scale_factor=0']));
    const journalIndexes = await ds.query<{ indexdef: string }[]>("SELECT indexdef FROM pg_indexes WHERE tablename = 'journal_batches'");
    expect(journalIndexes.map((i) => i.indexdef.replace(/^.* USING btree /, ''))).toEqual(expect.arrayContaining(['(vpg_key, captured_upto)']));

    const comment = await ds.query<{ comment: string | null }[]>("SELECT obj_description('vpg_events'::regclass) AS comment");
    expect(comment[0]?.comment).toMatch(/append-only/);

    // Idempotent: nothing pending, nothing run, schema untouched.
    expect(await runMigrations(ds)).toEqual([]);
    expect(await runMigrations(dataSource())).toEqual([]);
  });

  it('refuses to drop a pre-release journal_writes index that holds writes, and changes nothing', async () => {
    const { before, old } = await migratedUpTo(CompactJournalIndex1795737600000);
    await old.query(`INSERT INTO journal_writes (vpg_key, seq, volume_index, byte_offset, length, segment, position) VALUES (1, 1, 0, 0, 512, 1, 0)`);
    await expect(runMigrations(dataSource())).rejects.toThrow(/journal_writes holds journaled writes from a pre-release version/);
    expect(await old.query(`SELECT seq FROM journal_writes`)).toEqual([{ seq: '1' }]);
    expect(await old.query(`SELECT to_regclass('journal_batches') AS t`)).toEqual([{ t: null }]);

    await old.query(`DELETE FROM journal_writes`);
    expect(await runMigrations(dataSource())).toEqual(MIGRATION_NAMES.slice(before.length));
    expect(await old.query(`SELECT to_regclass('journal_writes') AS t`)).toEqual([{ t: null }]);
  });

  it('packs the checkpoints a database already holds into checkpoint_hours, as its triggers would, and reverts cleanly', async () => {
    const { before, old } = await migratedUpTo(CheckpointHours1796256000000);
    // Two VPGs over three hours and a half at 5 s, a marked one every 50, and pairs sharing a capture time.
    await old.query(`
      INSERT INTO checkpoints (id, vpg_id, cut, kind, name, captured_at)
      SELECT gen_random_uuid(), v, i, CASE WHEN i % 50 = 0 THEN 'tagged' ELSE 'automatic' END, NULL,
             timestamptz '2026-11-25 08:30:00Z' + (i / 2) * interval '5 seconds'
        FROM generate_series(1, 5040) i, (VALUES ('00000000-0000-4000-8000-000000000001'::uuid), ('00000000-0000-4000-8000-000000000002'::uuid)) vpgs(v)`);
    const ds = dataSource();
    expect(await runMigrations(ds)).toEqual(MIGRATION_NAMES.slice(before.length));
    const hours = (): Promise<unknown[]> => ds.query(`SELECT vpg_id, hour, count, encode(times, 'hex') AS times, marked FROM checkpoint_hours ORDER BY vpg_id, hour`);
    const backfilled = await hours();
    // 08:30 to 12:00 inclusive: hours 8 to 12.
    expect(backfilled).toHaveLength(2 * 5);
    expect(await ds.query(`SELECT sum(count)::int AS n, sum(cardinality(marked))::int AS marked FROM checkpoint_hours`)).toEqual([{ n: 2 * 5040, marked: 2 * 100 }]);
    // The triggers' rebuild of every hour gives the same rows.
    await ds.query(`UPDATE checkpoints SET kind = kind`);
    expect(await hours()).toEqual(backfilled);

    // The migrations after it first, then CheckpointHours itself.
    for (let i = migrations.indexOf(CheckpointHours1796256000000); i < migrations.length; i++) {
      await ds.undoLastMigration({ transaction: 'each' });
    }
    expect(await ds.query(`SELECT to_regclass('checkpoint_hours') AS t`)).toEqual([{ t: null }]);
    // No trigger is left behind on checkpoints: recording and removing checkpoints still works.
    await ds.query(`DELETE FROM checkpoints WHERE cut % 2 = 0`);
    await ds.query(`INSERT INTO checkpoints (id, vpg_id, cut, kind, captured_at) VALUES (gen_random_uuid(), gen_random_uuid(), 1, 'automatic', now())`);
  });

  it('re-encodes the packed hours as 4-byte offsets in their hour, exactly, and back', async () => {
    const { before, old } = await migratedUpTo(CheckpointHourOffsets1796342400000);
    // Microsecond times, the first and last microsecond of an hour, ties, and times before 1970 and 2000.
    await old.query(`
      INSERT INTO checkpoints (id, vpg_id, cut, kind, name, captured_at)
      SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000001', i, CASE WHEN i % 7 = 0 THEN 'tagged' ELSE 'automatic' END, NULL, t
        FROM unnest(ARRAY[timestamptz '2026-11-25 08:00:00Z', '2026-11-25 08:59:59.999999Z', '2026-11-25 08:59:59.999999Z',
                          '2026-11-25 09:17:03.000001Z', '1999-12-31 23:59:59.999999Z', '1969-07-20 20:17:40.123456Z']) WITH ORDINALITY AS r(t, i)`);
    await old.query(`
      INSERT INTO checkpoints (id, vpg_id, cut, kind, name, captured_at)
      SELECT gen_random_uuid(), '00000000-0000-4000-8000-000000000002', i, 'automatic', NULL,
             timestamptz '2026-11-25 10:00:00Z' + i * interval '4999.777 milliseconds'
        FROM generate_series(1, 2000) i`);
    const expected = async (source: DataSource): Promise<Map<string, number[]>> => {
      const rows = await source.query<{ vpg_id: string; hour_us: string; at_us: string }[]>(
        `SELECT vpg_id, (extract(epoch FROM date_trunc('hour', captured_at, 'UTC')) * 1000000)::bigint::text AS hour_us,
                (extract(epoch FROM captured_at) * 1000000)::bigint::text AS at_us
           FROM checkpoints ORDER BY vpg_id, captured_at, id`,
      );
      const byHour = new Map<string, number[]>();
      for (const row of rows) {
        const key = `${row.vpg_id} ${row.hour_us}`;
        byHour.set(key, [...(byHour.get(key) ?? []), Number(row.at_us)]);
      }
      return byHour;
    };
    const packed = async (source: DataSource, bytesEach: 4 | 8): Promise<Map<string, number[]>> => {
      const rows = await source.query<{ vpg_id: string; hour_us: string; count: number; times: string }[]>(
        `SELECT vpg_id, (extract(epoch FROM hour) * 1000000)::bigint::text AS hour_us, count, encode(times, 'hex') AS times FROM checkpoint_hours`,
      );
      const byHour = new Map<string, number[]>();
      for (const row of rows) {
        const bytes = Buffer.from(row.times, 'hex');
        expect(bytes.length).toBe(row.count * bytesEach);
        const times: number[] = [];
        for (let o = 0; o < bytes.length; o += bytesEach) {
          times.push(
            bytesEach === 4
              ? Number(row.hour_us) + bytes.readUInt32BE(o)
              : Number(bytes.readBigInt64BE(o) + 946_684_800_000_000n),
          );
        }
        byHour.set(`${row.vpg_id} ${row.hour_us}`, times);
      }
      return byHour;
    };
    const truth = await expected(old);
    expect(await packed(old, 8)).toEqual(truth);

    const ds = dataSource();
    expect(await runMigrations(ds)).toEqual(MIGRATION_NAMES.slice(before.length));
    expect(await packed(ds, 4)).toEqual(truth);
    // The triggers' rebuild, with the new encoding, gives the same rows; and keeps them as checkpoints change.
    await ds.query(`UPDATE checkpoints SET kind = kind`);
    expect(await packed(ds, 4)).toEqual(truth);
    await ds.query(`DELETE FROM checkpoints WHERE cut % 3 = 0`);
    await ds.query(`INSERT INTO checkpoints (id, vpg_id, cut, kind, captured_at) VALUES (gen_random_uuid(), '00000000-0000-4000-8000-000000000001', 99, 'automatic', '2026-11-25 08:59:59.999998Z')`);
    const changed = await expected(ds);
    expect(await packed(ds, 4)).toEqual(changed);

    // Undone down to and including the offsets' migration (those after it first).
    for (let n = MIGRATION_NAMES.length - MIGRATION_NAMES.indexOf('CheckpointHourOffsets1796342400000'); n > 0; n--) {
      await ds.undoLastMigration({ transaction: 'each' });
    }
    expect(await packed(ds, 8)).toEqual(changed);
    await ds.query(`UPDATE checkpoints SET kind = kind`);
    expect(await packed(ds, 8)).toEqual(changed);
  });

  it('enforces the checkpoint kinds', async () => {
    const ds = dataSource();
    await runMigrations(ds);
    const insert = (kind: string): Promise<unknown> =>
      ds.query(
        `INSERT INTO checkpoints (id, vpg_id, cut, kind, captured_at) VALUES (gen_random_uuid(), gen_random_uuid(), 1, $1, now())`,
        [kind],
      );
    await insert('tagged');
    await expect(insert('bogus')).rejects.toThrow(/checkpoints_kind_check/);
  });

  it('lets processes that start together run the migrations once', async () => {
    const results = await Promise.all([runMigrations(dataSource()), runMigrations(dataSource()), runMigrations(dataSource(1))]);
    expect(results.flat()).toEqual(MIGRATION_NAMES);
  });

  it('reports an unreachable server as a retriable DatabaseError', async () => {
    const url = new URL(db.url);
    url.port = '1';
    const ds = createDataSource({ url: url.toString(), entities: [], migrations });
    const error = await runMigrations(ds).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(DatabaseError);
    expect(error).toMatchObject({ code: 'unavailable', retriable: true });
  });
});
