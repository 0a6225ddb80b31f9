import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { createTestDatabase, serviceCommand, startAllInOne, tempDir, type AllInOneProcess, type TempDir } from '@cdp/testing';

/** Two processes must never share a data directory, and a taken port fails clearly, changing nothing. */
describe('process guards', () => {
  let first: AllInOneProcess;
  let dir: TempDir;
  let database: { url: string; drop(): Promise<void> };

  beforeAll(async () => {
    dir = await tempDir('guards-');
    database = await createTestDatabase();
    first = await startAllInOne({ CDP_DATA_DIR: join(dir.path, 'a'), DATABASE_URL: database.url });
  });

  afterAll(async () => {
    await first?.stop();
    await database?.drop();
    await dir?.cleanup();
  });

  const run = (env: Record<string, string>): { status: number | null; stderr: string } => {
    const { command, args, options } = serviceCommand('all-in-one', env);
    const result = spawnSync(command, args, { ...options, encoding: 'utf8', timeout: 60_000 });
    return { status: result.status, stderr: result.stderr };
  };

  it('refuses a second process on the same data directory', () => {
    const second = run({ CDP_DATA_DIR: join(dir.path, 'a'), DATABASE_URL: database.url });
    expect(second.status).toBe(2);
    expect(second.stderr).toContain(`is in use by process ${first.pid}`);
  });

  it('says which address is taken, and stops what it started', () => {
    const port = new URL(first.url).port;
    const second = run({ CDP_DATA_DIR: join(dir.path, 'b'), DATABASE_URL: database.url, CDP_HTTP_PORT: port });
    expect(second.status).toBe(2);
    expect(second.stderr).toContain(`127.0.0.1:${port} is already in use`);
    // It released its own data directory on the way out.
    const third = run({ CDP_DATA_DIR: join(dir.path, 'b'), DATABASE_URL: database.url, CDP_HTTP_PORT: port });
    expect(third.stderr).not.toContain('is in use by process');
  });

  it('names every bad variable and exits 2', () => {
    const bad = run({ CDP_DATA_DIR: join(dir.path, 'c'), CDP_HTTP_PORT: 'http', DATABASE_URL: 'mysql://nope' });
    expect(bad.status).toBe(2);
    expect(bad.stderr).toContain('CDP_HTTP_PORT');
    expect(bad.stderr).toContain('DATABASE_URL');
  });

  it('the first process is unaffected', async () => {
    const response = await fetch(`${first.url}/api/health`);
    expect(response.status).toBe(200);
  });
});
