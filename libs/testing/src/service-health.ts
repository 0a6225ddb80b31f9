import { spawn } from 'node:child_process';
import { createTestDatabase } from './test-database';
import { tempDir } from './temp-dir';
import { serviceCommand, startService } from './service.process';

/**
 * A service process starts on its own (with a database if it needs one); `/api/health` and
 * `/api/health/live` answer ok, `/api/health/ready` answers 200 with every readiness check passing
 * (the service started, the bus, and the database where it has one); SIGTERM ends it with code 0.
 */
export async function expectServiceHealthEndpoints(app: string, options: { readonly database: boolean }): Promise<void> {
  const dir = await tempDir(`${app}-`);
  const database = options.database ? await createTestDatabase() : undefined;
  try {
    const service = await startService(app, { CDP_DATA_DIR: dir.path, ...(database ? { DATABASE_URL: database.url } : {}) });
    try {
      for (const path of ['/api/health', '/api/health/live']) {
        const response = await fetch(`${service.url}${path}`);
        expect({ path, status: response.status, body: await response.json() }).toEqual({ path, status: 200, body: { status: 'ok' } });
      }
      const ready = await fetch(`${service.url}/api/health/ready`);
      const body = (await ready.json()) as { status: string; notReady: string[]; checks: Record<string, { ready: boolean }> };
      expect({ status: ready.status, body: body.status, notReady: body.notReady }).toEqual({ status: 200, body: 'ready', notReady: [] });
      expect(Object.keys(body.checks).sort()).toEqual(options.database ? ['bus', 'database', 'service'] : ['bus', 'service']);
    } finally {
      expect(await service.stop()).toBe(0);
    }
  } finally {
    await database?.drop();
    await dir.cleanup();
  }
}

/** Runs apps/<app> until it exits by itself (a start-up refusal); resolves with its code and output. */
export function runServiceToExit(app: string, env: Record<string, string>, timeoutMs = 60_000): Promise<{ code: number | null; output: string }> {
  const { command, args, options } = serviceCommand(app, env);
  const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${app} did not exit within ${timeoutMs} ms:\n${output}`));
    }, timeoutMs);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
}
