import { randomBytes } from 'node:crypto';
import { Client } from 'pg';
import { type DataSource } from 'typeorm';
import { createDataSource, migrations, runMigrations, type DataSourceConfig } from '@cdp/database';
import { type Vpg } from '@cdp/domain';
import { ADMIN_URL_VARIABLE } from './env';

export interface TestDatabase {
  /** URL of the new, empty database. */
  readonly url: string;
  readonly name: string;
  /** Drops the database, ending any connection still open to it. */
  drop(): Promise<void>;
}

/**
 * A fresh database on the integration tier's server, so that test files (and tests inside a file,
 * if they want) never see each other's rows. Call drop() in afterAll.
 */
export async function createTestDatabase(): Promise<TestDatabase> {
  const adminUrl = process.env[ADMIN_URL_VARIABLE];
  if (adminUrl === undefined || adminUrl === '') {
    throw new Error(
      `${ADMIN_URL_VARIABLE} is not set: integration tests run through jest.int.config.js, whose global setup provides the server`,
    );
  }
  const name = `cdp_test_${Date.now().toString(36)}_${randomBytes(4).toString('hex')}`;
  await withAdmin(adminUrl, (client) => client.query(`CREATE DATABASE ${client.escapeIdentifier(name)}`));
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  let dropped = false;
  return {
    url: url.toString(),
    name,
    drop: async () => {
      if (dropped) {
        return;
      }
      dropped = true;
      // FORCE: a pool a test forgot to close must not turn cleanup into a failure of its own.
      await withAdmin(adminUrl, (client) =>
        client.query(`DROP DATABASE IF EXISTS ${client.escapeIdentifier(name)} WITH (FORCE)`),
      );
    },
  };
}

async function withAdmin(url: string, work: (client: Client) => Promise<unknown>): Promise<void> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    await work(client);
  } finally {
    await client.end();
  }
}

/**
 * A fresh test database with every migration run, and a DataSource on it mapping `entities`. `drop()`
 * closes the DataSource (if still open) and drops the database.
 */
export async function createMigratedDatabase(entities: DataSourceConfig['entities'] = []): Promise<{ dataSource: DataSource; drop: () => Promise<void> }> {
  const database = await createTestDatabase();
  const dataSource = createDataSource({ url: database.url, entities, migrations });
  try {
    await runMigrations(dataSource);
  } catch (err) {
    await database.drop();
    throw err;
  }
  return {
    dataSource,
    drop: async () => {
      if (dataSource.isInitialized) {
        await dataSource.destroy();
      }
      await database.drop();
    },
  };
}

/**
 * A VPG in the `vpgs` read model only, as the orchestrator's create leaves it (no events, no splitter):
 * for tests of services that read VPGs from the table.
 */
export async function insertVpgRow(dataSource: DataSource, vpg: Vpg): Promise<void> {
  await dataSource.query(`INSERT INTO vpgs (id, name, definition, version, created_at, updated_at) VALUES ($1, $2, $3, 1, $4, $4)`, [
    vpg.id,
    vpg.name,
    JSON.stringify(vpg),
    vpg.createdAt,
  ]);
}
