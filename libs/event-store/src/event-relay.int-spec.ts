import { randomUUID } from 'node:crypto';
import { migrations, createDataSource, runMigrations } from '@cdp/database';
// The boundary rule has no notion of test files; only tests import the testing library.
import { createTestDatabase, type TestDatabase, waitFor } from '@cdp/testing';
import { type DataSource } from 'typeorm';
import { eventStoreEntities } from './entities';
import { EventRelay } from './event-relay';
import { EventStore, type StoredEvent } from './event-store';

const quiet = { warn: (): void => undefined };
type Noted = { readonly type: 'Noted'; readonly n: number };

describe('EventRelay', () => {
  let db: TestDatabase;
  let ds: DataSource;
  let store: EventStore;
  const relays: EventRelay[] = [];

  beforeEach(async () => {
    // A database per test: the relay reads every stream, so tests must not see each other's events.
    db = await createTestDatabase();
    ds = createDataSource({ url: db.url, entities: eventStoreEntities, migrations, applicationName: 'event-relay-test' });
    await runMigrations(ds);
    store = new EventStore(ds);
  });

  afterEach(async () => {
    for (const relay of relays.splice(0)) {
      await relay.stop();
    }
    await ds.destroy();
    await db.drop();
  });

  function relay(options: Omit<ConstructorParameters<typeof EventRelay>[1], 'publish'>, published: StoredEvent[]): EventRelay {
    const instance = new EventRelay(ds, {
      logger: quiet,
      ...options,
      publish: async (events) => {
        published.push(...events);
        return Promise.resolve();
      },
    });
    relays.push(instance);
    return instance;
  }

  /** Appends n events spread over a few streams; returns their positions in order. */
  async function appendEvents(n: number, first = 0): Promise<number[]> {
    const streams = [randomUUID(), randomUUID(), randomUUID()];
    const versions = new Map<string, number>();
    const positions: number[] = [];
    for (let i = 0; i < n; i++) {
      const streamId = streams[i % streams.length]!;
      const version = versions.get(streamId) ?? 0;
      const result = await store.append<Noted>(streamId, version, [{ type: 'Noted', n: first + i }]);
      versions.set(streamId, result.version);
      positions.push(...result.positions);
    }
    return positions;
  }

  async function storedCursor(name: string): Promise<number | undefined> {
    const rows = await ds.query<{ position: string }[]>('SELECT position FROM event_relay_cursors WHERE name = $1', [name]);
    return rows[0] === undefined ? undefined : Number(rows[0].position);
  }

  it('publishes every event once, in order, and resumes from its cursor after a restart', async () => {
    const positions = await appendEvents(25);
    const published: StoredEvent[] = [];
    const first = relay({ name: 'bus', batchSize: 10, pollIntervalMs: 20 }, published);
    await first.start();
    await waitFor(() => published.length >= 25, { timeoutMs: 10_000, message: 'the relay did not publish 25 events' });
    expect(published.map((e) => e.position)).toEqual(positions);
    expect(published.map((e) => (e.data as Noted).n)).toEqual([...Array(25).keys()]);
    await waitFor(async () => (await storedCursor('bus')) === positions.at(-1), {
      timeoutMs: 5_000,
      message: 'the cursor did not reach the last event',
    });
    await first.stop();

    const more = await appendEvents(5, 100);
    const resumed: StoredEvent[] = [];
    const second = relay({ name: 'bus', batchSize: 10, pollIntervalMs: 20 }, resumed);
    await second.start();
    await waitFor(() => resumed.length >= 5, { timeoutMs: 10_000, message: 'the restarted relay did not publish' });
    // Give it rounds to (wrongly) publish anything twice before looking.
    await waitFor(async () => (await storedCursor('bus')) === more.at(-1), { timeoutMs: 5_000, message: 'cursor stuck' });
    await second.stop();
    expect(resumed.map((e) => e.position)).toEqual(more);
    expect(second.position).toBe(more.at(-1));
  });

  it('starts from the beginning when told to, for a bus that lost everything', async () => {
    const positions = await appendEvents(6);
    const before: StoredEvent[] = [];
    const first = relay({ name: 'volatile', pollIntervalMs: 20 }, before);
    await first.start();
    await waitFor(() => before.length === 6, { timeoutMs: 10_000, message: 'first relay did not publish' });
    await first.stop();

    const again: StoredEvent[] = [];
    const second = relay({ name: 'volatile', pollIntervalMs: 20, fromStart: true }, again);
    await second.start();
    await waitFor(() => again.length === 6, { timeoutMs: 10_000, message: 'the relay did not republish from the start' });
    expect(again.map((e) => e.position)).toEqual(positions);
  });

  it('publishes right away when poked after an append', async () => {
    const published: StoredEvent[] = [];
    // Polling would take an hour: only the poke can explain a quick publish.
    const instance = relay({ name: 'poked', pollIntervalMs: 3_600_000 }, published);
    await instance.start();
    const [position] = await appendEvents(1);
    instance.poke();
    await waitFor(() => published.length === 1, { timeoutMs: 5_000, message: 'the poke did not publish' });
    expect(published[0]?.position).toBe(position);
  });

  it('retries a failed publish without skipping anything', async () => {
    const positions = await appendEvents(12);
    const delivered: number[] = [];
    let failures = 0;
    const instance = new EventRelay(ds, {
      name: 'flaky',
      batchSize: 5,
      pollIntervalMs: 10,
      logger: quiet,
      publish: async (events) => {
        // The second batch fails twice before it goes through.
        if (events[0]?.position === positions[5] && failures < 2) {
          failures++;
          throw new Error('bus unavailable');
        }
        delivered.push(...events.map((e) => e.position));
        return Promise.resolve();
      },
    });
    relays.push(instance);
    await instance.start();
    await waitFor(() => delivered.length === 12, { timeoutMs: 10_000, message: 'not everything was delivered' });
    expect(failures).toBe(2);
    expect(delivered).toEqual(positions);
  });

  it('misses nothing while many writers append concurrently', async () => {
    const published: StoredEvent[] = [];
    const instance = relay({ name: 'busy', batchSize: 7, pollIntervalMs: 1 }, published);
    await instance.start();
    const writers = Array.from({ length: 8 }, async () => {
      const streamId = randomUUID();
      for (let version = 0; version < 10; version++) {
        await store.append<Noted>(streamId, version, [{ type: 'Noted', n: version }]);
        instance.poke();
      }
    });
    await Promise.all(writers);
    await waitFor(() => published.length >= 80, { timeoutMs: 10_000, message: 'the relay fell behind for good' });
    const all = await store.readAll(0, 1_000);
    expect(published.map((e) => e.position)).toEqual(all.map((e) => e.position));
  });

  it('leaves no timer behind once stopped', async () => {
    // Counting every active timer in the process is not enough: the database pool arms and clears idle
    // timers of its own while the relay queries. So follow the relay's poll timer itself, told apart by
    // its interval.
    const pollIntervalMs = 3_600_000;
    const armed: NodeJS.Timeout[] = [];
    const realSetTimeout = global.setTimeout;
    const setSpy = jest.spyOn(global, 'setTimeout').mockImplementation(((
      callback: (...args: unknown[]) => void,
      ms?: number,
      ...args: unknown[]
    ) => {
      const handle = realSetTimeout(callback, ms, ...args);
      if (ms === pollIntervalMs) {
        armed.push(handle);
      }
      return handle;
    }) as typeof setTimeout);
    const clearSpy = jest.spyOn(global, 'clearTimeout');
    try {
      const instance = relay({ name: 'timers', pollIntervalMs }, []);
      await instance.start();
      await waitFor(() => armed.length > 0, { timeoutMs: 5_000, message: 'the relay never armed its poll timer' });
      await instance.stop();
      const cleared = new Set(clearSpy.mock.calls.map(([handle]) => handle));
      // stop() waited for the round in progress, so a timer armed at its end is in `armed` too.
      expect(armed.filter((handle) => !cleared.has(handle))).toEqual([]);
    } finally {
      setSpy.mockRestore();
      clearSpy.mockRestore();
      // Should the relay have left its hour-long timer, do not let it hold the test process open.
      armed.forEach((handle) => clearTimeout(handle));
    }
  });
});
