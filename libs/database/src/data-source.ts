import { DataSource, type EntitySchema, MigrationExecutor, type MigrationInterface, QueryFailedError } from 'typeorm';
import { type PostgresDriver } from 'typeorm/driver/postgres/PostgresDriver';
import { toDatabaseError } from './database.error';

/** A TypeORM entity class. */
export type EntityClass = abstract new (...args: never[]) => object;
/** A TypeORM migration class. */
export type MigrationClass = new () => MigrationInterface;

export interface DataSourceConfig {
  /** postgres://user:password@host:port/database */
  readonly url: string;
  readonly entities: readonly EntityClass[] | readonly EntitySchema[];
  readonly migrations: readonly MigrationClass[];
  /** Connections in the pool (pg's default is 10). */
  readonly poolSize?: number;
  /** Shown in pg_stat_activity, so a DBA can tell which service holds a connection. */
  readonly applicationName?: string;
}

/**
 * A DataSource that never touches the schema on its own: the schema changes only through
 * runMigrations, so what runs in production is exactly the reviewed SQL.
 */
export function createDataSource(config: DataSourceConfig): DataSource {
  return new DataSource({
    type: 'postgres',
    url: config.url,
    entities: [...config.entities],
    migrations: [...config.migrations],
    synchronize: false,
    migrationsRun: false,
    migrationsTransactionMode: 'each',
    logging: false,
    // The schema needs no extension; creating one would need superuser rights in production.
    installExtensions: false,
    poolSize: config.poolSize,
    applicationName: config.applicationName,
  });
}

/** The parts of pg's Pool and its clients that poolQuery and poolTransaction use (TypeORM types the pool as any). */
interface PgResult {
  rows: unknown[];
  rowCount: number | null;
}
interface PgClient {
  query(text: string, values?: readonly unknown[]): Promise<PgResult>;
  /** With an error, the client is closed instead of going back to the pool. */
  release(error?: Error): void;
  on(event: 'error', listener: (error: Error) => void): unknown;
  off(event: 'error', listener: (error: Error) => void): unknown;
}
interface PgPool {
  query(text: string, values?: readonly unknown[]): Promise<PgResult>;
  connect(): Promise<PgClient>;
}

function pgPool(dataSource: DataSource): PgPool | undefined {
  return dataSource.isInitialized ? ((dataSource.driver as PostgresDriver).master as PgPool | undefined) : undefined;
}

function queryFailed(sql: string, params: readonly unknown[], error: unknown): QueryFailedError {
  return new QueryFailedError(sql, [...params], error instanceof Error ? error : new Error(String(error)));
}

/**
 * One statement on a pooled connection, straight through pg: what `dataSource.query` does (the same
 * pool, rows and type parsing; errors wrapped in QueryFailedError), minus the QueryRunner and
 * EntityManager TypeORM builds for every call. Their garbage outlives a young-generation collection:
 * with the catalog's queries at a few hundred a second, 3 MB was promoted per scavenge and each
 * scavenge paused the event loop 10 to 15 ms, against 0.5 to 0.8 ms through the pool (measured with
 * --trace-gc-nvp). For statements on hot paths; poolTransaction is the same for a transaction.
 */
export async function poolQuery<T>(dataSource: DataSource, sql: string, params: readonly unknown[] = []): Promise<T[]> {
  const pool = pgPool(dataSource);
  if (pool === undefined) {
    // Not initialized (or destroyed): TypeORM's own call gives the clear error.
    return dataSource.query<T[]>(sql, [...params]);
  }
  try {
    return (await pool.query(sql, params)).rows as T[];
  } catch (error) {
    throw queryFailed(sql, params, error);
  }
}

/** The statements of one poolTransaction, on its connection. */
export interface PoolTransaction {
  /** The rows of one statement (a SELECT, or a change with RETURNING). */
  query<T>(sql: string, params?: readonly unknown[]): Promise<T[]>;
  /** How many rows one statement changed. */
  execute(sql: string, params?: readonly unknown[]): Promise<number>;
}

/**
 * `work` in one transaction on one pooled connection, straight through pg: BEGIN, then COMMIT if it
 * resolves, ROLLBACK if anything fails (its own error is rethrown unchanged; a statement's failure
 * comes as QueryFailedError, as from TypeORM). A connection whose ROLLBACK fails is closed, not
 * returned to the pool. What `dataSource.transaction` does without the QueryRunner and EntityManager
 * per call (see poolQuery), for the commits on the write path.
 */
export async function poolTransaction<T>(dataSource: DataSource, work: (tx: PoolTransaction) => Promise<T>): Promise<T> {
  const pool = pgPool(dataSource);
  if (pool === undefined) {
    // Not initialized (or destroyed): TypeORM's own call gives the clear error.
    return dataSource.transaction(() => Promise.reject(new Error('unreachable: TypeORM refuses first')));
  }
  let client: PgClient;
  try {
    client = await pool.connect();
  } catch (error) {
    // No connection, so nothing ran: reported as the BEGIN that could not be sent, with pg's error
    // (its code says unreachable or refused) underneath for toDatabaseError.
    throw queryFailed('BEGIN', [], error);
  }
  const run = async (sql: string, params: readonly unknown[]): Promise<PgResult> => {
    try {
      return await client.query(sql, params);
    } catch (error) {
      throw queryFailed(sql, params, error);
    }
  };
  let broken: Error | undefined;
  // A checked-out client whose connection dies emits 'error'; with no listener that would be an
  // uncaught exception (the pool listens only while the client is idle). The statement in flight
  // fails too, so the work fails; the client is then closed, not reused.
  const onError = (error: Error): void => {
    broken = error;
  };
  client.on('error', onError);
  try {
    await run('BEGIN', []);
    const result = await work({
      query: async <R>(sql: string, params: readonly unknown[] = []) => (await run(sql, params)).rows as R[],
      execute: async (sql: string, params: readonly unknown[] = []) => (await run(sql, params)).rowCount ?? 0,
    });
    await run('COMMIT', []);
    return result;
  } catch (error) {
    if (broken === undefined) {
      await client.query('ROLLBACK').catch((rollbackError: unknown) => {
        broken = rollbackError instanceof Error ? rollbackError : new Error(String(rollbackError));
      });
    }
    throw error;
  } finally {
    client.off('error', onError);
    client.release(broken);
  }
}

// Arbitrary, fixed key of the session-level advisory lock that serialises migration runs.
const MIGRATION_LOCK_KEY = 4_711_061_117;

/**
 * Runs the pending migrations, each in its own transaction, and returns the names of those it ran
 * (none when the schema is current). Several processes may start at once against one database (the
 * all-in-one app and a service, or two replicas): an advisory lock makes the second wait for the
 * first and then find nothing to do, instead of racing to create the same tables. The lock and the
 * migrations share one connection, so this works even with a pool of one.
 */
export async function runMigrations(dataSource: DataSource): Promise<string[]> {
  try {
    if (!dataSource.isInitialized) {
      await dataSource.initialize();
    }
    const runner = dataSource.createQueryRunner();
    await runner.connect();
    try {
      await runner.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK_KEY]);
      try {
        const executor = new MigrationExecutor(dataSource, runner);
        executor.transaction = 'each';
        const executed = await executor.executePendingMigrations();
        return executed.map((migration) => migration.name);
      } finally {
        await runner.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK_KEY]);
      }
    } finally {
      await runner.release();
    }
  } catch (error) {
    throw toDatabaseError(error);
  }
}
