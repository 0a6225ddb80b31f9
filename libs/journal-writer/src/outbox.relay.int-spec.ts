import { randomUUID } from 'node:crypto';
import { type DataSource } from 'typeorm';
import { type BusMessage, type BusProducer } from '@cdp/bus';
import { decodeRecord, encodeCheckpointRecord } from '@cdp/contracts';
import { JournalStore, journalEntities } from '@cdp/journal-store';
import { createMigratedDatabase, tempDir, waitFor, type TempDir } from '@cdp/testing';
import { OutboxRelay } from './outbox.relay';

/** A producer that records what it was sent and can be told to refuse. */
class RecordingProducer implements BusProducer {
  readonly sent: { topic: string; message: BusMessage }[] = [];
  refuse = false;

  send(topic: string, messages: readonly BusMessage[]): Promise<void> {
    if (this.refuse) {
      return Promise.reject(new Error('broker unreachable'));
    }
    this.sent.push(...messages.map((message) => ({ topic, message })));
    return Promise.resolve();
  }
}

describe('journal outbox', () => {
  let dataSource: DataSource;
  let dropDatabase: () => Promise<void>;
  let dir: TempDir;
  let store: JournalStore;

  beforeAll(async () => {
    ({ dataSource, drop: dropDatabase } = await createMigratedDatabase(journalEntities));
    dir = await tempDir('outbox-');
    store = new JournalStore(dataSource, dir.path);
  });

  afterAll(async () => {
    await store.close();
    await dataSource.destroy();
    await dropDatabase();
    await dir.cleanup();
  });

  const marker = (seq: number): { bytes: Buffer; decoded: ReturnType<typeof decodeRecord> } => {
    const bytes = encodeCheckpointRecord({ seq, capturedAtMicros: Date.now() * 1000, marker: { id: randomUUID(), kind: 'tagged', name: `cp-${seq}`, vmId: null } });
    return { bytes, decoded: decodeRecord(bytes) };
  };
  const pending = async (): Promise<number> => Number((await dataSource.query<{ n: string }[]>(`SELECT count(*) AS n FROM journal_outbox`))[0]?.n);

  it('keeps the messages of a commit with the commit, and none of a commit that fails', async () => {
    const vpgId = randomUUID();
    const outbox = (recorded: readonly { id: string }[]) => recorded.map((c) => ({ topic: 'cdp.events', key: vpgId, value: Buffer.from(c.id) }));
    const committed = await store.commit(vpgId, [marker(1), marker(2)], { outbox });
    expect(committed.checkpoints).toHaveLength(2);
    expect(await pending()).toBe(2);
    // A commit the journal refuses (it does not continue the order) writes nothing to the outbox.
    await expect(store.commit(vpgId, [marker(5)], { outbox })).rejects.toThrow(/expected seq 3/);
    expect(await pending()).toBe(2);
    // A failure inside the transaction rolls the outbox rows back with everything else.
    await expect(
      store.commit(vpgId, [marker(3)], {
        outbox: () => {
          throw new Error('cannot build the messages');
        },
      }),
    ).rejects.toThrow('cannot build the messages');
    expect(await pending()).toBe(2);
    await dataSource.query(`DELETE FROM journal_outbox`);
  });

  it('publishes in commit order and deletes only what the bus took; retries by itself after a refusal', async () => {
    const vpgId = randomUUID();
    const producer = new RecordingProducer();
    const relay = new OutboxRelay(dataSource, producer, { batchRows: 3, retryInitialMs: 10, retryMaxMs: 20 });
    const outbox = (recorded: readonly { id: string; name: string | null }[]) =>
      recorded.map((c) => ({ topic: 'cdp.events', key: vpgId, value: Buffer.from(c.name ?? '') }));
    for (let seq = 1; seq <= 7; seq++) {
      await store.commit(vpgId, [marker(seq)], { outbox });
    }
    producer.refuse = true;
    await expect(relay.publish()).rejects.toThrow('broker unreachable');
    expect(await pending()).toBe(7);
    // The relay retries on its own; once the bus takes them, all seven arrive, in order, once.
    producer.refuse = false;
    await waitFor(async () => (await pending()) === 0, { timeoutMs: 5_000, message: 'the outbox was never published' });
    expect(producer.sent.map((s) => s.message.value.toString())).toEqual(['cp-1', 'cp-2', 'cp-3', 'cp-4', 'cp-5', 'cp-6', 'cp-7']);
    expect(producer.sent.every((s) => s.topic === 'cdp.events' && s.message.key === vpgId)).toBe(true);
    await relay.stop();
  });
});
