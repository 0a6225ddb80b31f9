import { createTestDatabase } from './test-database';
import { tempDir } from './temp-dir';
import { startService } from './service.process';

/**
 * A service process starts on its own (with a database if it needs one), answers its health check,
 * and exits with code 0 on SIGTERM. Shared by every app's process test.
 */
export async function expectServiceProcessLifecycle(app: string, options: { readonly database: boolean }): Promise<void> {
  const dir = await tempDir(`${app}-`);
  const database = options.database ? await createTestDatabase() : undefined;
  try {
    const service = await startService(app, { CDP_DATA_DIR: dir.path, ...(database ? { DATABASE_URL: database.url } : {}) });
    try {
      const response = await fetch(`${service.url}/api/health`);
      expect(response.status).toBe(200);
      expect(await response.json()).toEqual({ status: 'ok' });
    } finally {
      expect(await service.stop()).toBe(0);
    }
  } finally {
    await database?.drop();
    await dir.cleanup();
  }
}
