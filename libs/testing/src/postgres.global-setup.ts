import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
// Jest loads global setup with Node's own resolver, which does not know the @cdp/* path aliases,
// so this one import has to be relative.
// eslint-disable-next-line @nx/enforce-module-boundaries
import { EmbeddedPostgresServer } from '../../database/src/embedded-postgres.server';
import { ADMIN_URL_VARIABLE, EXTERNAL_URL_VARIABLE } from './env';
import { setTestPostgresState } from './postgres.global-state';

/**
 * Integration tier: one PostgreSQL server for the whole run, each test file in its own database
 * (createTestDatabase). An external server named by CDP_TEST_DATABASE_URL wins; otherwise an
 * embedded one starts in a fresh directory and disappears with the run.
 */
export default async function globalSetup(): Promise<void> {
  const external = process.env[EXTERNAL_URL_VARIABLE];
  if (external !== undefined && external !== '') {
    const version = await serverVersion(external);
    process.env[ADMIN_URL_VARIABLE] = external;
    announce(`external PostgreSQL ${version} at ${redact(external)} (${EXTERNAL_URL_VARIABLE})`);
    return;
  }
  const started = Date.now();
  // Straight under tmpdir: the server's system user must be able to walk down to it.
  const dataDir = await mkdtemp(join(tmpdir(), 'cdp-int-pg-'));
  const server = new EmbeddedPostgresServer({
    dataDir,
    // The one line below says what matters; the server's own chatter would only bury it.
    logger: { log: () => undefined, warn: (message) => announce(message) },
  });
  const removeDir = (): Promise<void> => rm(dataDir, { recursive: true, force: true });
  let url: string;
  let port: number;
  let version: string;
  try {
    ({ url, port } = await server.start());
    version = await serverVersion(url);
  } catch (error) {
    // Jest runs no teardown after a failed setup: clean up here.
    await server.stop().catch(() => undefined);
    await removeDir();
    throw error;
  }
  setTestPostgresState({
    stop: async () => {
      await server.stop();
      await removeDir();
    },
  });
  process.env[ADMIN_URL_VARIABLE] = url;
  announce(`embedded PostgreSQL ${version} at 127.0.0.1:${port}, started in ${Date.now() - started} ms (${dataDir})`);
}

function announce(message: string): void {
  // The first line of a run's output: which server this tier talks to.
  // eslint-disable-next-line no-console
  console.log(`\n[integration] ${message}`);
}

async function serverVersion(url: string): Promise<string> {
  const client = new Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  try {
    await client.connect();
    const result = await client.query<{ server_version: string }>('SHOW server_version');
    return result.rows[0]?.server_version ?? 'unknown version';
  } catch (error) {
    throw new Error(`integration tier: cannot reach PostgreSQL at ${redact(url)}: ${String(error)}`, { cause: error });
  } finally {
    await client.end().catch(() => undefined);
  }
}

function redact(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password !== '') {
      parsed.password = '***';
    }
    return parsed.toString();
  } catch {
    return '(unparsable URL)';
  }
}
