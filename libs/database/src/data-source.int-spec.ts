// The boundary rule has no notion of test files; only tests import the testing library.
import { createTestDatabase, type TestDatabase } from '@cdp/testing';
import { QueryFailedError, type DataSource } from 'typeorm';
import { createDataSource, poolQuery, poolTransaction } from './data-source';
import { toDatabaseError } from './database.error';
import { migrations } from './migrations';

/** What a promise rejected with, or null if it resolved. */
const failureOf = (promise: Promise<unknown>): Promise<unknown> =>
  promise.then(
    () => null,
    (error: unknown) => error,
  );

/** poolQuery and poolTransaction against a real server: the same answers and errors as TypeORM's, through pg's pool. */
describe('poolQuery and poolTransaction', () => {
  let db: TestDatabase;
  let dataSource: DataSource;

  beforeEach(async () => {
    db = await createTestDatabase();
    // One connection: a transaction that left it unusable would break the next call.
    dataSource = createDataSource({ url: db.url, entities: [], migrations, poolSize: 1 });
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

  it('before initialize and after destroy, refuses as TypeORM does, running nothing', async () => {
    const expected = await dataSource.query('SELECT 1').then(
      () => null,
      (error: unknown) => (error as Error).constructor,
    );
    expect(expected).not.toBeNull();
    await expect(poolQuery(dataSource, 'SELECT 1')).rejects.toBeInstanceOf(expected!);
    const work = jest.fn(() => Promise.resolve());
    await expect(poolTransaction(dataSource, work)).rejects.toBeInstanceOf(expected!);
    await dataSource.initialize();
    await dataSource.destroy();
    await expect(poolQuery(dataSource, 'SELECT 1')).rejects.toThrow();
    await expect(poolTransaction(dataSource, work)).rejects.toThrow();
    expect(work).not.toHaveBeenCalled();
  });

  it('commits what the work did when it resolves, with the rows and counts of each statement', async () => {
    await dataSource.initialize();
    await dataSource.query('CREATE TABLE t (id int PRIMARY KEY, v text)');
    const result = await poolTransaction(dataSource, async (tx) => {
      const inserted = await tx.execute('INSERT INTO t SELECT i, $1 FROM generate_series(1, 3) i', ['a']);
      const returned = await tx.query<{ id: number }>('UPDATE t SET v = $1 WHERE id >= $2 RETURNING id', ['b', 2]);
      const deleted = await tx.execute('DELETE FROM t WHERE id = $1', [99]);
      return { inserted, returned, deleted };
    });
    expect(result).toEqual({ inserted: 3, returned: [{ id: 2 }, { id: 3 }], deleted: 0 });
    expect(await poolQuery(dataSource, 'SELECT id, v FROM t ORDER BY id')).toEqual([
      { id: 1, v: 'a' },
      { id: 2, v: 'b' },
      { id: 3, v: 'b' },
    ]);
  });

  it('rolls back when the work throws, and rethrows its error unchanged', async () => {
    await dataSource.initialize();
    await dataSource.query('CREATE TABLE t (id int PRIMARY KEY)');
    const own = new Error('the applied position moved');
    await expect(
      poolTransaction(dataSource, async (tx) => {
        await tx.execute('INSERT INTO t VALUES (1)');
        throw own;
      }),
    ).rejects.toBe(own);
    expect(await poolQuery(dataSource, 'SELECT count(*)::int AS n FROM t')).toEqual([{ n: 0 }]);
  });

  it('rolls back when a statement fails, which comes as a QueryFailedError with its SQLSTATE', async () => {
    await dataSource.initialize();
    await dataSource.query('CREATE TABLE t (id int PRIMARY KEY)');
    const failure = await failureOf(
      poolTransaction(dataSource, async (tx) => {
        await tx.execute('INSERT INTO t VALUES (1)');
        await tx.execute('INSERT INTO t VALUES (1)');
      }),
    );
    expect(failure).toBeInstanceOf(QueryFailedError);
    expect(toDatabaseError(failure)).toMatchObject({ code: 'unique-violation', sqlState: '23505' });
    expect(await poolQuery(dataSource, 'SELECT count(*)::int AS n FROM t')).toEqual([{ n: 0 }]);
    // The connection went back to the pool usable: the next transaction runs on it.
    await poolTransaction(dataSource, (tx) => tx.execute('INSERT INTO t VALUES (2)'));
    expect(await poolQuery(dataSource, 'SELECT id FROM t')).toEqual([{ id: 2 }]);
  });

  it('closes a connection that died in a transaction instead of handing it out again', async () => {
    await dataSource.initialize();
    await dataSource.query('CREATE TABLE t (id int PRIMARY KEY)');
    const failure = await failureOf(
      poolTransaction(dataSource, async (tx) => {
        await tx.execute('INSERT INTO t VALUES (1)');
        // The server ends this very connection, as a restart or an administrator would.
        await tx.query('SELECT pg_terminate_backend(pg_backend_pid())');
      }),
    );
    expect(failure).toBeInstanceOf(QueryFailedError);
    expect(toDatabaseError(failure)).toMatchObject({ code: 'connection-lost', sqlState: '57P01' });
    // The pool's one connection was replaced: the next transaction works, and nothing was committed.
    await poolTransaction(dataSource, (tx) => tx.execute('INSERT INTO t VALUES (2)'));
    expect(await poolQuery(dataSource, 'SELECT id FROM t')).toEqual([{ id: 2 }]);
  });
});
