import { DataSource, type EntitySchema, MigrationExecutor, type MigrationInterface } from 'typeorm';
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
