import { spawn } from 'node:child_process';
import { chmod, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Client } from 'pg';
// The boundary rule has no notion of test files; only tests import the testing library.
import { tempDir, type TempDir, waitFor } from '@cdp/testing';
import { DatabaseError } from './database.error';
import { EmbeddedPostgresServer, PASSWORD_FILE } from './embedded-postgres.server';

const quiet = { log: (): void => undefined, warn: (): void => undefined };

async function query<T extends object>(url: string, sql: string): Promise<T[]> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(sql)).rows;
  } finally {
    await client.end();
  }
}

/** Dead, or a zombie its parent has not reaped yet: either way no longer a server. */
async function isGone(pid: number): Promise<boolean> {
  try {
    process.kill(pid, 0);
  } catch {
    return true;
  }
  const status = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  return /^\d+ \(.*\) Z/.test(status);
}

async function pidFileExists(dataDir: string): Promise<boolean> {
  return stat(join(dataDir, 'postmaster.pid')).then(
    () => true,
    () => false,
  );
}

describe('EmbeddedPostgresServer', () => {
  let dir: TempDir;
  const cleanups: (() => Promise<void>)[] = [];

  beforeEach(async () => {
    dir = await tempDir('cdp-embedded-pg');
  });

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) {
      await cleanup();
    }
    await dir.cleanup();
  });

  function track(server: EmbeddedPostgresServer): EmbeddedPostgresServer {
    cleanups.push(() => server.stop());
    return server;
  }

  it('keeps its data in a subdirectory of a test temp dir, as the applications do under their data dir', async () => {
    const server = track(new EmbeddedPostgresServer({ dataDir: join(dir.path, 'data', 'postgres'), logger: quiet }));
    const running = await server.start();
    expect(await query<{ ok: number }>(running.url, 'SELECT 1 AS ok')).toEqual([{ ok: 1 }]);
  });

  it('initialises a cluster, serves queries on loopback, stops, and restarts with the same password', async () => {
    const lines: string[] = [];
    const first = track(new EmbeddedPostgresServer({ dataDir: dir.path, logger: quiet, onLog: (l) => lines.push(l) }));
    const t0 = Date.now();
    const running = await first.start();
    const startMs = Date.now() - t0;
    expect(running.adopted).toBe(false);
    expect(new URL(running.url).hostname).toBe('127.0.0.1');
    expect(lines.some((l) => l.includes('ready to accept connections'))).toBe(true);
    // Initialisation and start together stay well inside the tier's budget.
    expect(startMs).toBeLessThan(5_000);

    const settings = await query<{ name: string; setting: string }>(
      running.url,
      `SELECT name, setting FROM pg_settings
        WHERE name IN ('listen_addresses', 'unix_socket_directories', 'fsync', 'synchronous_commit', 'full_page_writes', 'password_encryption')`,
    );
    expect(Object.fromEntries(settings.map((s) => [s.name, s.setting]))).toEqual({
      listen_addresses: '127.0.0.1',
      unix_socket_directories: '',
      fsync: 'on',
      synchronous_commit: 'on',
      full_page_writes: 'on',
      password_encryption: 'scram-sha-256',
    });
    await query(running.url, 'CREATE TABLE survives_restart (x int); INSERT INTO survives_restart VALUES (42)');

    const passwordFile = await stat(join(dir.path, PASSWORD_FILE));
    expect(passwordFile.mode & 0o777).toBe(0o600);

    await first.stop();
    expect(await isGone(running.pid)).toBe(true);
    expect(await pidFileExists(dir.path)).toBe(false);

    const second = track(new EmbeddedPostgresServer({ dataDir: dir.path, logger: quiet }));
    const again = await second.start();
    expect(again.adopted).toBe(false);
    expect(new URL(again.url).password).toBe(new URL(running.url).password);
    expect(await query<{ x: number }>(again.url, 'SELECT x FROM survives_restart')).toEqual([{ x: 42 }]);
    await again.stop();
  });

  it('starts the server again on the same port when it dies without being stopped, and stops that one', async () => {
    const said: string[] = [];
    const server = track(new EmbeddedPostgresServer({ dataDir: join(dir.path, 'pg'), logger: { log: () => undefined, warn: (m) => said.push(m) } }));
    const running = await server.start();
    await query(running.url, 'CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)');
    const first = running.pid;
    // The postmaster this test started (through the server), killed as the OOM killer would.
    process.kill(first, 'SIGKILL');
    await waitFor(async () => running.pid !== first && (await query(running.url, 'SELECT 1').then(() => true, () => false)), {
      timeoutMs: 60_000,
      intervalMs: 100,
      message: 'PostgreSQL was not started again',
    });
    expect(await query<{ v: number }>(running.url, 'SELECT v FROM kept')).toEqual([{ v: 42 }]);
    expect(said.some((m) => m.includes(`pid ${first}`) && m.includes('died (killed by SIGKILL)'))).toBe(true);
    const second = running.pid;
    await server.stop();
    expect(await isGone(second)).toBe(true);
    expect(await pidFileExists(join(dir.path, 'pg'))).toBe(false);
  });

  it('leaves a server down that was asked to shut down (a Ctrl-C that reached it, pg_ctl stop)', async () => {
    const said: string[] = [];
    const server = track(new EmbeddedPostgresServer({ dataDir: join(dir.path, 'pg'), logger: { log: () => undefined, warn: (m) => said.push(m) } }));
    const running = await server.start();
    process.kill(running.pid, 'SIGINT');
    // The decision is taken when its exit is seen: either this message or the one that starts it again.
    await waitFor(() => said.length > 0, { timeoutMs: 30_000, message: 'the shutdown was never noticed' });
    expect(said).toEqual([expect.stringContaining('shut down without being stopped by this process; not starting it again')]);
    expect(await isGone(running.pid)).toBe(true);
    await server.stop();
  });

  it('rejects a wrong password: the cluster uses password authentication', async () => {
    const server = track(new EmbeddedPostgresServer({ dataDir: dir.path, logger: quiet }));
    const running = await server.start();
    const url = new URL(running.url);
    url.password = 'not-the-password';
    await expect(query(url.toString(), 'SELECT 1')).rejects.toThrow(/password authentication failed/);
  });

  it('adopts a server that is still running on its directory instead of failing, and stops it', async () => {
    const owner = track(new EmbeddedPostgresServer({ dataDir: dir.path, logger: quiet }));
    const original = await owner.start();

    const messages: string[] = [];
    const adopter = track(
      new EmbeddedPostgresServer({
        dataDir: dir.path,
        logger: { log: (m) => messages.push(m), warn: (m) => messages.push(m) },
      }),
    );
    const adopted = await adopter.start();
    expect(adopted.adopted).toBe(true);
    expect(adopted.pid).toBe(original.pid);
    expect(adopted.port).toBe(original.port);
    expect(messages.some((m) => m.includes('adopted') && m.includes(String(original.pid)))).toBe(true);
    expect(await query<{ ok: number }>(adopted.url, 'SELECT 1 AS ok')).toEqual([{ ok: 1 }]);

    await adopter.stop();
    expect(await pidFileExists(dir.path)).toBe(false);
    await waitFor(() => isGone(original.pid), { timeoutMs: 10_000, message: `postmaster ${original.pid} still running` });
    // The first owner sees its child gone and has nothing left to stop.
    await owner.stop();
  });

  it('adopts the orphan of an owner process killed with SIGKILL', async () => {
    const fixture = join(__dirname, 'fixtures', 'embedded-postgres-owner.ts');
    const register = join(__dirname, '..', '..', '..', 'tools', 'register.cjs');
    const ownerProcess = spawn(process.execPath, ['-r', register, fixture, dir.path], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    ownerProcess.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const ownerExited = new Promise<void>((resolve) => ownerProcess.once('exit', () => resolve()));
    const firstLine = await new Promise<string>((resolve, reject) => {
      createInterface({ input: ownerProcess.stdout }).once('line', resolve);
      void ownerExited.then(() => reject(new Error(`owner process exited early: ${stderr}`)));
    });
    const orphan = JSON.parse(firstLine) as { pid: number; port: number };

    ownerProcess.kill('SIGKILL');
    await ownerExited;
    // Nobody stopped it: the server outlives its owner.
    expect(await isGone(orphan.pid)).toBe(false);

    const adopter = track(new EmbeddedPostgresServer({ dataDir: dir.path, logger: quiet }));
    cleanups.push(async () => {
      // Never leave the orphan behind, even when an assertion below fails.
      if (!(await isGone(orphan.pid))) {
        process.kill(orphan.pid, 'SIGINT');
        await waitFor(() => isGone(orphan.pid), { timeoutMs: 30_000, message: `orphan ${orphan.pid} ignores SIGINT` });
      }
    });
    const adopted = await adopter.start();
    expect(adopted).toMatchObject({ adopted: true, pid: orphan.pid, port: orphan.port });
    expect(await query<{ ok: number }>(adopted.url, 'SELECT 1 AS ok')).toEqual([{ ok: 1 }]);

    await adopted.stop();
    expect(await pidFileExists(dir.path)).toBe(false);
    await waitFor(() => isGone(orphan.pid), { timeoutMs: 10_000, message: `orphan ${orphan.pid} still running` });
  });

  it('starts normally over a stale lock file whose process is gone', async () => {
    const first = track(new EmbeddedPostgresServer({ dataDir: dir.path, logger: quiet }));
    const running = await first.start();
    await first.stop();
    // A lock file as a server killed together with its machine leaves it: pid of a dead process.
    const dead = spawn('true');
    await new Promise((resolve) => dead.once('exit', resolve));
    await writeFile(
      join(dir.path, 'postmaster.pid'),
      `${dead.pid}\n${dir.path}\n1700000000\n${running.port}\n\n127.0.0.1\n  1234  5678\nready   \n`,
    );
    const second = track(new EmbeddedPostgresServer({ dataDir: dir.path, logger: quiet }));
    const again = await second.start();
    expect(again.adopted).toBe(false);
    expect(again.pid).not.toBe(dead.pid);
    expect(await query<{ ok: number }>(again.url, 'SELECT 1 AS ok')).toEqual([{ ok: 1 }]);
  });

  it('refuses to initialise over a directory that holds other files', async () => {
    await writeFile(join(dir.path, 'precious.txt'), 'not a database');
    const server = new EmbeddedPostgresServer({ dataDir: dir.path, logger: quiet });
    await expect(server.start()).rejects.toThrow(/holds files but no PostgreSQL cluster/);
  });

  const asRoot = process.getuid?.() === 0 ? it : it.skip;
  asRoot('names the directory the postgres user cannot traverse', async () => {
    // Owned by root and private: the server's user cannot enter it.
    await chmod(dir.path, 0o700);
    const dataDir = join(dir.path, 'pg');
    const server = new EmbeddedPostgresServer({ dataDir, logger: quiet });
    const error = await server.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(DatabaseError);
    expect((error as DatabaseError).message).toContain(`cannot enter ${dir.path} `);
    expect((error as DatabaseError).message).toContain('mode 700');
  });
});
