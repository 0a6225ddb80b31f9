import { randomUUID } from 'node:crypto';
import { migrations, createDataSource, DatabaseError, runMigrations } from '@cdp/database';
import {
  DomainError,
  type VpgCommand,
  type VpgEvent,
  type VpgState,
  decideVpg,
  evolveVpg,
  initialVpgState,
} from '@cdp/domain';
// The boundary rule has no notion of test files; only tests import the testing library.
import { createTestDatabase, type TestDatabase } from '@cdp/testing';
import { type DataSource } from 'typeorm';
import { ConcurrencyError } from './concurrency.error';
import { VpgEntity, eventStoreEntities } from './entities';
import { EventStore } from './event-store';
import { type Decider, handleCommand } from './handle-command';
import { projectVpg } from './vpg.projection';

const vpgDecider: Decider<VpgCommand, VpgEvent, VpgState> = {
  decide: decideVpg,
  evolve: evolveVpg,
  initialState: initialVpgState,
};

function createVpg(vpgId: string, name = `vpg-${vpgId.slice(0, 8)}`): VpgCommand {
  return {
    type: 'CreateVpg',
    vpgId,
    name,
    vms: [
      {
        id: randomUUID(),
        name: 'db-server',
        volumes: [{ id: randomUUID(), name: 'data', sizeBytes: 1024 * 1024 * 1024, blockSize: 4096 }],
      },
    ],
    settings: {},
    now: '2026-11-25T10:00:00.000Z',
  };
}

function changeSettings(vpgId: string, checkpointIntervalSeconds: number, now = '2026-11-25T11:00:00.000Z'): VpgCommand {
  return { type: 'ChangeVpgSettings', vpgId, settings: { checkpointIntervalSeconds }, now };
}

type TestEvent = { readonly type: 'Noted'; readonly n: number };
const noted = (...ns: number[]): TestEvent[] => ns.map((n) => ({ type: 'Noted', n }));

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (error: unknown) => error,
  );
}

describe('EventStore', () => {
  let db: TestDatabase;
  let ds: DataSource;
  let store: EventStore;

  beforeAll(async () => {
    db = await createTestDatabase();
    ds = createDataSource({ url: db.url, entities: eventStoreEntities, migrations, applicationName: 'event-store-test' });
    await runMigrations(ds);
    store = new EventStore(ds);
  });

  afterAll(async () => {
    await ds.destroy();
    await db.drop();
  });

  async function eventCount(streamId: string): Promise<number> {
    const rows = await ds.query<{ n: number }[]>('SELECT count(*)::int AS n FROM vpg_events WHERE stream_id = $1', [streamId]);
    return rows[0]?.n ?? -1;
  }

  describe('append and read', () => {
    it('reads a missing stream as version 0 and appends with consecutive versions', async () => {
      const streamId = randomUUID();
      expect(await store.readStream(streamId)).toEqual({ version: 0, events: [] });

      const first = await store.append(streamId, 0, noted(1, 2));
      expect(first.version).toBe(2);
      expect(first.positions).toHaveLength(2);
      expect(first.positions[1]).toBeGreaterThan(first.positions[0]!);
      const second = await store.append(streamId, 2, noted(3));
      expect(second.version).toBe(3);

      // Stored as { type, data: the whole event }.
      expect(await store.readStream<TestEvent>(streamId)).toEqual({
        version: 3,
        events: [
          { type: 'Noted', data: { type: 'Noted', n: 1 } },
          { type: 'Noted', data: { type: 'Noted', n: 2 } },
          { type: 'Noted', data: { type: 'Noted', n: 3 } },
        ],
      });
    });

    it('rejects an append at a stale or a future version with a retriable ConcurrencyError', async () => {
      const streamId = randomUUID();
      await store.append(streamId, 0, noted(1, 2));
      for (const expected of [0, 1, 5]) {
        const error = await rejection(store.append(streamId, expected, noted(9)));
        expect(error).toBeInstanceOf(ConcurrencyError);
        expect(error).toBeInstanceOf(DatabaseError);
        expect(error).toMatchObject({ code: 'conflict', retriable: true, expectedVersion: expected, actualVersion: 2 });
      }
      expect(await eventCount(streamId)).toBe(2);
    });

    it('lets exactly one of two concurrent appends at the same version win', async () => {
      const streamId = randomUUID();
      await store.append(streamId, 0, noted(0));
      const results = await Promise.allSettled([store.append(streamId, 1, noted(1, 11)), store.append(streamId, 1, noted(2, 22))]);
      const won = results.filter((r) => r.status === 'fulfilled');
      const lost = results.filter((r) => r.status === 'rejected');
      expect(won).toHaveLength(1);
      expect(lost).toHaveLength(1);
      expect(lost[0]?.status === 'rejected' && lost[0].reason).toBeInstanceOf(ConcurrencyError);

      const stream = await store.readStream<TestEvent>(streamId);
      expect(stream.version).toBe(3);
      const winner = results[0].status === 'fulfilled' ? [1, 11] : [2, 22];
      expect(stream.events.map((e) => e.data.n)).toEqual([0, ...winner]);
    });

    it('maps a unique-violation on (stream_id, version) to ConcurrencyError', async () => {
      // Writers that bypass the store's lock meet the constraint instead; here, the projection is one.
      const streamId = randomUUID();
      const error = await rejection(
        store.append(streamId, 0, noted(1), async (em) => {
          await em.query(`INSERT INTO vpg_events (stream_id, version, type, data) VALUES ($1, 1, 'Noted', '{}')`, [streamId]);
        }),
      );
      expect(error).toBeInstanceOf(ConcurrencyError);
      expect(error).toMatchObject({ code: 'conflict', retriable: true, actualVersion: undefined });
      expect(await eventCount(streamId)).toBe(0);
    });

    it('runs the projection in the same transaction: a failing projection leaves no event behind', async () => {
      const streamId = randomUUID();
      const failure = new Error('projection failed');
      const error = await rejection(
        store.append(streamId, 0, noted(1), async (em) => {
          await em.query('CREATE TEMP TABLE IF NOT EXISTS scratch (x int)');
          await em.query('INSERT INTO scratch VALUES (1)');
          throw failure;
        }),
      );
      // The projection's own error, unchanged.
      expect(error).toBe(failure);
      expect(await eventCount(streamId)).toBe(0);

      const dbError = await rejection(
        store.append(streamId, 0, noted(1), async (em) => {
          await em.query('INSERT INTO no_such_table VALUES (1)');
        }),
      );
      expect(dbError).toBeInstanceOf(DatabaseError);
      expect(await eventCount(streamId)).toBe(0);

      await store.append(streamId, 0, noted(1), async (em) => {
        await em.query('INSERT INTO event_relay_cursors (name, position) VALUES ($1, 7)', [`projection-${streamId}`]);
      });
      expect(await eventCount(streamId)).toBe(1);
      const rows = await ds.query<{ position: string }[]>('SELECT position FROM event_relay_cursors WHERE name = $1', [
        `projection-${streamId}`,
      ]);
      expect(rows).toEqual([{ position: '7' }]);
    });

    it('reads all streams in position order, after a position, up to a limit', async () => {
      const a = randomUUID();
      const b = randomUUID();
      const { positions: [start] } = await store.append(a, 0, noted(1));
      await store.append(b, 0, noted(2));
      await store.append(a, 1, noted(3));
      const after = start! - 1;
      const all = await store.readAll(after, 10);
      expect(all.map((e) => [e.streamId, e.version, (e.data as TestEvent).n])).toEqual([
        [a, 1, 1],
        [b, 1, 2],
        [a, 2, 3],
      ]);
      expect(all.every((e) => !Number.isNaN(Date.parse(e.recordedAt)))).toBe(true);
      expect((await store.readAll(after, 2)).map((e) => e.position)).toEqual(all.slice(0, 2).map((e) => e.position));
      expect(await store.readAll(all.at(-1)!.position, 10)).toEqual([]);
    });

    it('reports a malformed stream id as a DatabaseError', async () => {
      expect(await rejection(store.readStream('not-a-uuid'))).toMatchObject({ code: 'invalid-input', retriable: false });
    });
  });

  describe('handleCommand with the VPG decider', () => {
    async function readModel(vpgId: string): Promise<VpgEntity | null> {
      return ds.getRepository(VpgEntity).findOneBy({ id: vpgId });
    }

    it('creates a VPG, changes its settings, and keeps the vpgs row in step', async () => {
      const vpgId = randomUUID();
      const created = await handleCommand(store, vpgId, createVpg(vpgId, 'payroll'), vpgDecider, projectVpg);
      expect(created.events.map((e) => e.type)).toEqual(['VpgCreated']);
      expect(created.version).toBe(1);
      expect(created.state).toMatchObject({ status: 'active', vpg: { id: vpgId, name: 'payroll' } });
      expect(await readModel(vpgId)).toMatchObject({
        name: 'payroll',
        version: 1,
        createdAt: new Date('2026-11-25T10:00:00.000Z'),
        updatedAt: new Date('2026-11-25T10:00:00.000Z'),
      });

      const changed = await handleCommand(store, vpgId, changeSettings(vpgId, 10), vpgDecider, projectVpg);
      expect(changed.events).toHaveLength(1);
      expect(changed.events[0]).toMatchObject({ type: 'VpgSettingsChanged', vpgId, settings: { checkpointIntervalSeconds: 10 } });
      expect(changed.version).toBe(2);
      expect(changed.state.status === 'active' && changed.state.vpg.settings.checkpointIntervalSeconds).toBe(10);

      const row = await readModel(vpgId);
      expect(row).toMatchObject({ version: 2, updatedAt: new Date('2026-11-25T11:00:00.000Z') });
      expect(row?.definition.settings.checkpointIntervalSeconds).toBe(10);

      // The stream replays to the same state.
      const stream = await store.readStream<VpgEvent>(vpgId);
      expect(stream.events.map((e) => e.data).reduce(evolveVpg, initialVpgState)).toEqual(changed.state);
    });

    it('refuses to create the same VPG twice, writing nothing', async () => {
      const vpgId = randomUUID();
      await handleCommand(store, vpgId, createVpg(vpgId), vpgDecider, projectVpg);
      const error = await rejection(handleCommand(store, vpgId, createVpg(vpgId), vpgDecider, projectVpg));
      expect(error).toBeInstanceOf(DomainError);
      expect(error).toMatchObject({ code: 'already-exists' });
      expect(await eventCount(vpgId)).toBe(1);
    });

    it('refuses a second VPG with a taken name through the read model, writing nothing', async () => {
      const first = randomUUID();
      const second = randomUUID();
      await handleCommand(store, first, createVpg(first, 'finance'), vpgDecider, projectVpg);
      const error = await rejection(handleCommand(store, second, createVpg(second, 'finance'), vpgDecider, projectVpg));
      expect(error).toBeInstanceOf(DomainError);
      expect(error).toMatchObject({ code: 'already-exists' });
      expect(await eventCount(second)).toBe(0);
      expect(await readModel(second)).toBeNull();
    });

    it('decides again on fresh state when another writer got in between', async () => {
      const vpgId = randomUUID();
      await handleCommand(store, vpgId, createVpg(vpgId), vpgDecider, projectVpg);

      // Interleave deterministically: right after our command has read the stream, another command
      // changes the VPG, so our append meets a newer version.
      const racingStore = new EventStore(ds);
      const read = racingStore.readStream.bind(racingStore);
      const spy = jest.spyOn(racingStore, 'readStream').mockImplementationOnce(async (id) => {
        const stale = await read(id);
        await handleCommand(store, vpgId, changeSettings(vpgId, 20), vpgDecider, projectVpg);
        return stale;
      });
      const result = await handleCommand(racingStore, vpgId, changeSettings(vpgId, 30, '2026-11-25T12:00:00.000Z'), vpgDecider, projectVpg);
      expect(spy).toHaveBeenCalledTimes(2);
      expect(result.version).toBe(3);
      expect(result.state.status === 'active' && result.state.vpg.settings.checkpointIntervalSeconds).toBe(30);
      expect(await readModel(vpgId)).toMatchObject({ version: 3 });

      // With a single attempt the conflict reaches the caller.
      jest.spyOn(racingStore, 'readStream').mockImplementationOnce(async (id) => {
        const stale = await read(id);
        await handleCommand(store, vpgId, changeSettings(vpgId, 40), vpgDecider, projectVpg);
        return stale;
      });
      const error = await rejection(
        handleCommand(racingStore, vpgId, changeSettings(vpgId, 50), vpgDecider, projectVpg, { maxAttempts: 1 }),
      );
      expect(error).toBeInstanceOf(ConcurrencyError);
      expect(await eventCount(vpgId)).toBe(4);
    });

    it('passes domain errors through without writing', async () => {
      const vpgId = randomUUID();
      const error = await rejection(handleCommand(store, vpgId, changeSettings(vpgId, 10), vpgDecider, projectVpg));
      expect(error).toMatchObject({ name: 'DomainError', code: 'not-found' });
      expect(await eventCount(vpgId)).toBe(0);
    });
  });
});
