import { type INestApplication } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { type Bus } from '@cdp/bus';
import { loadConfig } from '@cdp/config';
import { type Vpg } from '@cdp/domain';
import { configureHttp, listen } from '@cdp/http-edge';
import { ApiClient, createTestDatabase, tempDir, waitFor } from '@cdp/testing';
import { AllInOneModule } from './all-in-one.module';

export interface TestApp {
  readonly app: INestApplication;
  readonly api: ApiClient;
  readonly databaseUrl: string;
  readonly dataDir: string;
  close(): Promise<void>;
}

/** The all-in-one application inside the test process, on a fresh database and data directory. */
export async function startTestApp(options: { readonly bus?: Bus; readonly env?: Readonly<Record<string, string>> } = {}): Promise<TestApp> {
  const database = await createTestDatabase();
  const dir = await tempDir('all-in-one-');
  const config = loadConfig({
    CDP_DATA_DIR: dir.path,
    DATABASE_URL: database.url,
    CDP_HTTP_PORT: '0',
    // A free port each, unless the test puts a server on a Unix socket instead.
    CDP_NBD_PORT: options.env?.['CDP_NBD_SOCKET'] ? undefined : '0',
    CDP_RECOVERY_NBD_PORT: options.env?.['CDP_RECOVERY_NBD_SOCKET'] ? undefined : '0',
    // Set by the Jest configuration for every test run (see PayloadRing).
    CDP_POISON_RELEASED_PAYLOADS: process.env['CDP_POISON_RELEASED_PAYLOADS'],
    ...options.env,
  });
  const app = await NestFactory.create(AllInOneModule.forRoot(config, options), { bodyParser: false, logger: ['error', 'warn'] });
  configureHttp(app);
  const api = new ApiClient(await listen(app, '127.0.0.1', 0));
  return {
    app,
    api,
    databaseUrl: database.url,
    dataDir: dir.path,
    close: async () => {
      await app.close();
      await database.drop();
      await dir.cleanup();
    },
  };
}

/** Creates a VPG through the API and waits until the splitter protects it. */
export async function createProtectedVpg(api: ApiClient, body: unknown): Promise<Vpg> {
  const vpg = await api.ok<Vpg>('POST', '/vpgs', body);
  await waitFor(async () => (await api.json('GET', `/splitter/vpgs/${vpg.id}`)).status === 200, {
    timeoutMs: 10_000,
    message: `the splitter never picked up VPG ${vpg.name}`,
  });
  return vpg;
}

/**
 * For a describe block: the all-in-one and one VPG created from `body` and protected, started before
 * the block's tests and closed after them. Read the fields inside tests (they are set in beforeAll).
 */
export function appWithProtectedVpg(body: unknown, options: { readonly bus?: Bus } = {}): { readonly testApp: TestApp; readonly api: ApiClient; readonly vpg: Vpg } {
  const ctx = {} as { testApp: TestApp; api: ApiClient; vpg: Vpg };
  beforeAll(async () => {
    ctx.testApp = await startTestApp(options);
    ctx.api = ctx.testApp.api;
    ctx.vpg = await createProtectedVpg(ctx.api, body);
  });
  afterAll(async () => {
    await ctx.testApp?.close();
  });
  return ctx;
}
