import { randomUUID } from 'node:crypto';
import { type DataSource } from 'typeorm';
import { decodeRecord, encodeCheckpointRecord, encodeWriteRecord } from '@cdp/contracts';
import { DomainError } from '@cdp/domain';
import { ReferenceModel, createMigratedDatabase, randomBuffer, seededRandom, tempDir, type TempDir } from '@cdp/testing';
import { journalEntities } from './journal.entities';
import { JournalReader } from './journal.reader';
import { JournalStore } from './journal.store';

/** A point-in-time view answers reads at any offset with exactly the bytes of the volume at its cut. */
describe('PitView', () => {
  let dataSource: DataSource;
  let dropDatabase: () => Promise<void>;
  let dir: TempDir;
  let store: JournalStore;
  let reader: JournalReader;
  const vpgId = randomUUID();
  const size = 1024 * 1024;
  const model = new ReferenceModel(new Map([['v0', size]]));
  let cut = 0;
  // Cuts are always a marker's seq, which no write has: one in the middle, one at the end.
  const middleCut = 200;

  beforeAll(async () => {
    ({ dataSource, drop: dropDatabase } = await createMigratedDatabase(journalEntities));
    dir = await tempDir('pit-view-');
    store = new JournalStore(dataSource, dir.path);
    reader = new JournalReader(dataSource, dir.path);
    const random = seededRandom(17);
    const records = [];
    for (let seq = 1; seq <= 400; seq++) {
      if (seq === middleCut) {
        records.push(encodeCheckpointRecord({ seq, capturedAtMicros: seq, marker: { id: randomUUID(), kind: 'automatic', name: null, vmId: null } }));
        continue;
      }
      const length = 1 + Math.floor(random() * 32 * 1024);
      const offset = Math.floor(random() * (size - length + 1));
      const data = randomBuffer(random, length);
      model.record({ seq, volumeId: 'v0', offset, data });
      records.push(encodeWriteRecord({ seq, volumeIndex: 0, offset, capturedAtMicros: seq, flags: 0, data }));
    }
    cut = 401;
    records.push(encodeCheckpointRecord({ seq: cut, capturedAtMicros: 401, marker: { id: randomUUID(), kind: 'tagged', name: 'x', vmId: null } }));
    await store.commit(vpgId, records.map((bytes) => ({ bytes, decoded: decodeRecord(bytes) })));
  });

  afterAll(async () => {
    await store?.close();
    await dataSource?.destroy();
    await dropDatabase?.();
    await dir?.cleanup();
  });

  it('reads any range, in any order, as the volume was at the cut', async () => {
    const expected = model.imagesAt([cut, middleCut]);
    const random = seededRandom(5);
    for (const at of [cut, middleCut]) {
      const view = await reader.openView(vpgId, 0, size, at);
      try {
        const want = expected.get(at)!.get('v0')!;
        for (let i = 0; i < 300; i++) {
          const length = 1 + Math.floor(random() * 64 * 1024);
          const offset = Math.floor(random() * (size - length + 1));
          const got = await view.read(offset, length);
          if (!got.equals(want.subarray(offset, offset + length))) {
            throw new Error(`cut ${at}: read [${offset}, ${offset + length}) differs`);
          }
        }
        expect((await view.read(0, size)).equals(want)).toBe(true);
        await expect(view.read(size - 1, 2)).rejects.toThrow(DomainError);
      } finally {
        await view.close();
      }
      await expect(view.read(0, 1)).rejects.toThrow(/closed/);
    }
  });
});
