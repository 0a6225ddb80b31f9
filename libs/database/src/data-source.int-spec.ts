// The boundary rule has no notion of test files; only tests import the testing library.
import { createTestDatabase, type TestDatabase } from '@cdp/testing';
import { QueryFailedError, type DataSource } from 'typeorm';
import { createDataSource, poolQuery } from './data-source';
import { toDatabaseError } from './database.error';
import { migrations } from './migrations';

/** poolQuery against a real server: the same answers and errors as dataSource.query, through pg's pool. */
describe('poolQuery', () => {
  let db: TestDatabase;
  let dataSource: DataSource;

  beforeEach(async () => {
    db = await createTestDatabase();
    dataSource = createDataSource({ url: db.url, entities: [], migrations, poolSize: 2 });
  });

  afterEach(async () => {
    if (dataSource.isInitialized) {
      await dataSource.destroy();
    }
    await db.drop();
  });

  it('returns the rows dataSource.query returns, parsed the same way', async () => {
    await dataSource.initialize();
    const sql = `SELECT $1::int AS n, $2::text AS s, '2026-12-04T00:00:00Z'::timestamptz AS t, 9007199254740993::bigint AS big, NULL::uuid AS u
                 FROM generate_series(1, 3)`;
    const params = [7, 'seven'];
    const rows = await poolQuery<Record<string, unknown>>(dataSource, sql, params);
    expect(rows).toEqual(await dataSource.query(sql, params));
    expect(rows).toHaveLength(3);
    expect(rows[0]).toEqual({ n: 7, s: 'seven', t: new Date('2026-12-04T00:00:00Z'), big: '9007199254740993', u: null });
  });

  it('fails like dataSource.query: a QueryFailedError with the SQLSTATE, classified the same', async () => {
    await dataSource.initialize();
    await dataSource.query('CREATE TABLE t (id int PRIMARY KEY)');
    await poolQuery(dataSource, 'INSERT INTO t VALUES ($1)', [1]);
    const failure = await poolQuery(dataSource, 'INSERT INTO t VALUES ($1)', [1]).then(
      () => null,
      (error: unknown) => error,
    );
    expect(failure).toBeInstanceOf(QueryFailedError);
    expect(failure).toMatchObject({ query: 'INSERT INTO t VALUES ($1)', parameters: [1] });
    const classified = toDatabaseError(failure);
    expect(classified).toMatchObject({ code: 'unique-violation', sqlState: '23505', constraint: 't_pkey' });
    // Nothing was half-done: the pool still answers.
    expect(await poolQuery(dataSource, 'SELECT count(*)::int AS n FROM t')).toEqual([{ n: 1 }]);
  });

  it('before initialize and after destroy, refuses as dataSource.query does', async () => {
    const expected = await dataSource.query('SELECT 1').then(
      () => null,
      (error: unknown) => (error as Error).constructor,
    );
    expect(expected).not.toBeNull();
    await expect(poolQuery(dataSource, 'SELECT 1')).rejects.toBeInstanceOf(expected!);
    await dataSource.initialize();
    await dataSource.destroy();
    await expect(poolQuery(dataSource, 'SELECT 1')).rejects.toThrow();
  });
});
