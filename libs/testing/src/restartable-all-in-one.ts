import { ApiClient } from './http-client';
import { startAllInOne, type AllInOneProcess } from './service.process';
import { tempDir, type TempDir } from './temp-dir';
import { createTestDatabase, type TestDatabase } from './test-database';
import { waitFor } from './wait-for';

/**
 * An all-in-one process of a test file's own, on a database and a data directory of its own, for tests
 * that stop, kill or start it again on the same state (a crash, a restart, state changed in between):
 * created in beforeAll, stopped and removed in afterAll.
 */
export interface RestartableAllInOne {
  readonly databaseUrl: string;
  readonly dataDir: string;
  /** Starts it (again) on the same database and data directory; `api` is the new process's. */
  start(): Promise<{ process: AllInOneProcess; api: ApiClient }>;
}

export function restartableAllInOne(prefix: string): RestartableAllInOne {
  let database: TestDatabase | undefined;
  let dir: TempDir | undefined;
  let current: AllInOneProcess | undefined;
  beforeAll(async () => {
    database = await createTestDatabase();
    dir = await tempDir(prefix);
  });
  afterAll(async () => {
    await current?.stop();
    await database?.drop();
    await dir?.cleanup();
  });
  const ready = (): { database: TestDatabase; dir: TempDir } => {
    if (!database || !dir) {
      throw new Error('restartableAllInOne: used before its beforeAll ran');
    }
    return { database, dir };
  };
  return {
    get databaseUrl() {
      return ready().database.url;
    },
    get dataDir() {
      return ready().dir.path;
    },
    async start() {
      const { database: db, dir: data } = ready();
      current = await startAllInOne({ CDP_DATA_DIR: data.path, DATABASE_URL: db.url });
      return { process: current, api: new ApiClient(current.url) };
    },
  };
}

/** Waits until the journal holds everything the VPG's splitter captured, and no resync runs there. */
export async function waitUntilJournaled(api: ApiClient, vpgId: string, timeoutMs = 30_000): Promise<void> {
  await waitFor(
    async () => {
      const splitter = await api.json<{ lastSeq: number; resync: unknown }>('GET', `/splitter/vpgs/${vpgId}`);
      const vpg = await api.json<{ journal: { appliedSeq: number } }>('GET', `/vpgs/${vpgId}`);
      return splitter.status === 200 && vpg.status === 200 && splitter.body.resync === null && vpg.body.journal.appliedSeq === splitter.body.lastSeq;
    },
    { timeoutMs, message: 'the journal never caught up with the splitter' },
  );
}
