// The boundary rule has no notion of test files; only tests import the testing library.
import { createTestDatabase, type TestDatabase } from '@cdp/testing';
import { type DataSource } from 'typeorm';
import { createDataSource, runMigrations } from './data-source';
import { DatabaseError } from './database.error';
import { migrations } from './migrations';

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
    syncing: 'bool NOT NULL default',
    updated_at: 'timestamptz NOT NULL default',
  },
  journal_writes: {
    vpg_key: 'int4 NOT NULL',
    seq: 'int8 NOT NULL',
    volume_index: 'int2 NOT NULL',
    byte_offset: 'int8 NOT NULL',
    length: 'int4 NOT NULL',
    segment: 'int4 NOT NULL',
    position: 'int8 NOT NULL',
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
    expect(await runMigrations(ds)).toEqual(['InitialSchema1795564800000']);

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
      journal_writes_pkey: 'PRIMARY KEY (vpg_key, seq)',
    });
    expect(byName['checkpoints_kind_check']).toContain("'application-consistent'");

    const indexes = await ds.query<{ indexname: string; indexdef: string }[]>(
      "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'checkpoints' ORDER BY indexname",
    );
    expect(indexes.map((i) => i.indexdef.replace(/^.* USING btree /, ''))).toEqual(
      expect.arrayContaining(['(vpg_id, captured_at)', '(vpg_id, cut)']),
    );

    const comment = await ds.query<{ comment: string | null }[]>("SELECT obj_description('vpg_events'::regclass) AS comment");
    expect(comment[0]?.comment).toMatch(/append-only/);

    // Idempotent: nothing pending, nothing run, schema untouched.
    expect(await runMigrations(ds)).toEqual([]);
    expect(await runMigrations(dataSource())).toEqual([]);
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
    expect(results.flat()).toEqual(['InitialSchema1795564800000']);
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
