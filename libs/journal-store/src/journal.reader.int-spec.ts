import { randomUUID } from 'node:crypto';
import { type DataSource } from 'typeorm';
import { decodeRecord, encodeCheckpointRecord } from '@cdp/contracts';
import { createMigratedDatabase, tempDir, type TempDir } from '@cdp/testing';
import { journalEntities } from './journal.entities';
import { JournalReader } from './journal.reader';
import { JournalStore } from './journal.store';

/** Which checkpoints a list returns: the newest by default, pages forward from a time on request. */
describe('JournalReader.checkpoints', () => {
  let dataSource: DataSource;
  let dropDatabase: () => Promise<void>;
  let dir: TempDir;
  let store: JournalStore;
  let reader: JournalReader;
  const vpgId = randomUUID();
  const start = Date.parse('2026-11-25T00:00:00Z');

  beforeAll(async () => {
    ({ dataSource, drop: dropDatabase } = await createMigratedDatabase(journalEntities));
    dir = await tempDir('reader-');
    store = new JournalStore(dataSource, dir.path);
    reader = new JournalReader(dataSource, dir.path);
    // Ten checkpoints, one a minute.
    const records = Array.from({ length: 10 }, (_, i) => {
      const bytes = encodeCheckpointRecord({
        seq: i + 1,
        capturedAtMicros: (start + i * 60_000) * 1000,
        marker: { id: randomUUID(), kind: 'automatic', name: null, vmId: null },
      });
      return { bytes, decoded: decodeRecord(bytes) };
    });
    await store.commit(vpgId, records);
  });

  afterAll(async () => {
    await reader?.close();
    await store?.close();
    await dataSource?.destroy();
    await dropDatabase?.();
    await dir?.cleanup();
  });

  it('without a start time, returns the newest ones, oldest first', async () => {
    const list = await reader.checkpoints(vpgId, { limit: 3 });
    expect(list.map((c) => c.cut)).toEqual([8, 9, 10]);
  });

  it('with a start time, pages forward from it', async () => {
    const first = await reader.checkpoints(vpgId, { from: new Date(start + 2 * 60_000), limit: 3 });
    expect(first.map((c) => c.cut)).toEqual([3, 4, 5]);
    const next = await reader.checkpoints(vpgId, { from: new Date(Date.parse(first[2]!.capturedAt) + 1), limit: 3 });
    expect(next.map((c) => c.cut)).toEqual([6, 7, 8]);
  });

  it('honours an end time', async () => {
    const list = await reader.checkpoints(vpgId, { to: new Date(start + 4 * 60_000), limit: 100 });
    expect(list.map((c) => c.cut)).toEqual([1, 2, 3, 4, 5]);
  });
});
