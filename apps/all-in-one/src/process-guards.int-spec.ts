import { spawn, spawnSync } from 'node:child_process';
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
