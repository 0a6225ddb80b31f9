import { Client } from 'pg';
import { ADMIN_URL_VARIABLE } from './env';
import { createTestDatabase } from './test-database';

async function withClient<T>(url: string, work: (client: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

async function exists(name: string): Promise<boolean> {
  const rows = await withClient(process.env[ADMIN_URL_VARIABLE]!, async (c) =>
    (await c.query<{ one: number }>('SELECT 1 AS one FROM pg_database WHERE datname = $1', [name])).rows,
  );
  return rows.length === 1;
}

describe('createTestDatabase', () => {
  it('gives each caller its own database and drops it, even with a connection left open', async () => {
    const a = await createTestDatabase();
    const b = await createTestDatabase();
    expect(a.name).not.toBe(b.name);
    await withClient(a.url, (c) => c.query('CREATE TABLE only_in_a (x int)'));
    const inB = await withClient(b.url, async (c) => (await c.query<{ t: string | null }>("SELECT to_regclass('only_in_a') AS t")).rows);
    expect(inB).toEqual([{ t: null }]);

    const forgotten = new Client({ connectionString: a.url });
    forgotten.on('error', () => undefined); // it is about to be terminated by the drop
    await forgotten.connect();
    await a.drop();
    await b.drop();
    expect(await exists(a.name)).toBe(false);
    expect(await exists(b.name)).toBe(false);
    await forgotten.end().catch(() => undefined);
  });
});
