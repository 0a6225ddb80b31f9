import { spawn, spawnSync } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
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

  it('says in one line why an NBD setting cannot be used, stops what it started, and exits 2', async () => {
    const oneLine = (stderr: string): void => expect(stderr).not.toMatch(/^\s+at /m);
    // Each run uses the same data directory: one that failed must have released it for the next.
    const socket = join(dir.path, 'missing', 'nbd.sock');
    // An empty variable is an unset one: the socket replaces the port the test harness sets.
    const noDirectory = run({ CDP_DATA_DIR: join(dir.path, 'e'), DATABASE_URL: database.url, CDP_NBD_PORT: '', CDP_NBD_SOCKET: socket });
    expect(noDirectory.status).toBe(2);
    expect(noDirectory.stderr).toContain(
      `all-in-one: cannot serve protected volumes over NBD on the Unix socket ${socket} (cannot put a socket at ${socket}: ${join(dir.path, 'missing')} is not an existing directory); set CDP_NBD_SOCKET to another path`,
    );
    oneLine(noDirectory.stderr);
    const keys = join(dir.path, 'none.psk');
    const noKeys = run({ CDP_DATA_DIR: join(dir.path, 'e'), DATABASE_URL: database.url, CDP_NBD_TLS_PSK_FILE: keys });
    expect(noKeys.status).toBe(2);
    expect(noKeys.stderr).toContain(`all-in-one: cannot read the NBD TLS PSK file ${keys}`);
    oneLine(noKeys.stderr);
    // The exports' port taken: named as that, not as the HTTP port.
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const taken = (holder.address() as AddressInfo).port;
    try {
      const busy = run({ CDP_DATA_DIR: join(dir.path, 'e'), DATABASE_URL: database.url, CDP_RECOVERY_NBD_PORT: String(taken) });
      expect(busy.status).toBe(2);
      expect(busy.stderr).toContain(`all-in-one: cannot serve point-in-time exports over NBD on 127.0.0.1:${taken} (EADDRINUSE); set CDP_RECOVERY_NBD_PORT`);
      oneLine(busy.stderr);
    } finally {
      await new Promise((resolve) => holder.close(resolve));
    }
  });

  it('`npm start` hands a SIGTERM sent to npm (by a service manager, `docker stop`) to the application, which shuts down cleanly', async () => {
    const { options } = serviceCommand('all-in-one', { CDP_DATA_DIR: join(dir.path, 'd'), DATABASE_URL: database.url });
    // Without the prestart step: it would install the dependencies if the lockfile is newer, mid-test.
    const npm = spawn('npm', ['start', '--ignore-scripts'], { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    npm.stdout.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
    npm.stderr.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
    const npmExited = new Promise<void>((resolve) => npm.once('exit', () => resolve()));
    const appPid = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`npm start did not come up within 60 s:\n${output}`)), 60_000);
      const check = (): void => {
        // Nest's log lines carry the process id; the app is up once it listens.
        const pid = /\[Nest\] (\d+) /.exec(output)?.[1];
        if (pid && /listening on http:\/\//.test(output)) {
          clearTimeout(timer);
          npm.stdout.off('data', check);
          resolve(Number(pid));
        }
      };
      npm.stdout.on('data', check);
      npm.once('exit', (code) => reject(new Error(`npm start exited (${String(code)}) before it was up:\n${output}`)));
    });
    expect(appPid).not.toBe(npm.pid);
    process.kill(npm.pid as number, 'SIGTERM');
    await npmExited;
    // The application got the signal (no shell in between to swallow it) and stopped by itself.
    const deadline = Date.now() + 20_000;
    while (isAlive(appPid) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    if (isAlive(appPid)) {
      process.kill(appPid, 'SIGKILL');
      throw new Error(`the application (pid ${appPid}) outlived npm:\n${output}`);
    }
    expect(output).toContain('SIGTERM: shutting down');
  });

  it('the first process is unaffected', async () => {
    const response = await fetch(`${first.url}/api/health`);
    expect(response.status).toBe(200);
  });
});

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
