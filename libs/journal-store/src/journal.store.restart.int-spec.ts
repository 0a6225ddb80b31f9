import { randomUUID } from 'node:crypto';
import { type DataSource } from 'typeorm';
import { decodeRecord, encodeCheckpointRecord, encodeRestartRecord, encodeWriteRecord } from '@cdp/contracts';
import { createMigratedDatabase, tempDir, type TempDir } from '@cdp/testing';
import { journalEntities } from './journal.entities';
import { JournalStore, type VerifiedRecord } from './journal.store';

const verified = (bytes: Buffer): VerifiedRecord => ({ bytes, decoded: decodeRecord(bytes) });
const write = (seq: number): VerifiedRecord =>
  verified(encodeWriteRecord({ seq, volumeIndex: 0, offset: seq * 512, capturedAtMicros: seq, flags: 0, data: Buffer.alloc(512, seq) }));
const marker = (seq: number, id: string): VerifiedRecord =>
  verified(encodeCheckpointRecord({ seq, capturedAtMicros: seq, marker: { id, kind: 'tagged', name: `at ${seq}`, vmId: null } }));
const restart = (seq: number, capturedAt: Date): VerifiedRecord =>
  verified(encodeRestartRecord({ seq, capturedAtMicros: capturedAt.getTime() * 1000, restart: { resyncId: 'r', voidFrom: 6, reason: 'lost', member: null } }));

/**
 * A restart (RecordKind.Restart) as the first record of a commit takes the place of the seqs the
 * journal lacks before it; the journal's segments and index keep working across the jump.
 */
describe('JournalStore committing a restart of the order', () => {
  let dataSource: DataSource;
  let dropDatabase: () => Promise<void>;
  let dir: TempDir;
  const vpgId = randomUUID();

  beforeAll(async () => {
    ({ dataSource, drop: dropDatabase } = await createMigratedDatabase(journalEntities));
    dir = await tempDir('journal-restart-');
  });

  afterAll(async () => {
    await dataSource?.destroy();
    await dropDatabase?.();
    await dir?.cleanup();
  });

  it('jumps to the restart, drops the requests it made void, refuses anything else out of order, and reopens across the jump', async () => {
    const store = new JournalStore(dataSource, dir.path);
    const recordedBefore = randomUUID();
    expect((await store.commit(vpgId, [write(1), write(2), marker(3, recordedBefore), write(4), write(5)])).appliedSeq).toBe(5);

    // Requests: one sent before the restart and never recorded (its marker was in the void seqs), one
    // recorded, one sent after the restart, one not sent yet.
    const restartAt = new Date(Date.now() - 60_000);
    const [lost, after, unsent] = [randomUUID(), randomUUID(), randomUUID()];
    const request = (id: string, sentAt: Date | null): Promise<unknown> =>
      dataSource.query(`INSERT INTO checkpoint_requests (id, vpg_id, kind, name, vm_id, requested_at, sent_at) VALUES ($1, $2, 'tagged', 'x', NULL, $3, $3)`, [id, vpgId, sentAt]);
    await request(lost, new Date(restartAt.getTime() - 5_000));
    await request(recordedBefore, new Date(restartAt.getTime() - 5_000));
    await request(after, new Date(restartAt.getTime() + 5_000));
    await dataSource.query(`INSERT INTO checkpoint_requests (id, vpg_id, kind, name, vm_id, requested_at, sent_at) VALUES ($1, $2, 'tagged', 'x', NULL, now(), NULL)`, [unsent, vpgId]);

    // Only a restart may jump, and only as the first record of a commit.
    await expect(store.commit(vpgId, [write(20)])).rejects.toThrow(/expected seq 6, got 20/);
    await expect(store.commit(vpgId, [write(6), restart(20, restartAt)])).rejects.toThrow(/expected seq 7, got 20/);
    const afterRestart = randomUUID();
    const result = await store.commit(vpgId, [restart(20, restartAt), write(21), marker(22, afterRestart)]);
    expect(result.appliedSeq).toBe(22);
    expect(result.checkpoints.map((c) => c.id)).toEqual([afterRestart]);
    expect(result.droppedRequests).toEqual([lost]);
    const left = await dataSource.query<{ id: string }[]>(`SELECT id FROM checkpoint_requests WHERE vpg_id = $1 ORDER BY id`, [vpgId]);
    expect(left.map((r) => r.id).sort()).toEqual([recordedBefore, after, unsent].sort());
    // An old restart again is out of order like any other record.
    await expect(store.commit(vpgId, [restart(20, restartAt)])).rejects.toThrow(/expected seq 23, got 20/);
    const batches = await dataSource.query<{ first_seq: string; last_seq: string }[]>(
      `SELECT b.first_seq, b.last_seq FROM journal_batches b JOIN journal_vpgs j ON j.vpg_key = b.vpg_key WHERE j.vpg_id = $1 ORDER BY b.first_seq`,
      [vpgId],
    );
    expect(batches.map((b) => [Number(b.first_seq), Number(b.last_seq)])).toEqual([
      [1, 5],
      [20, 22],
    ]);
    await store.close();

    // A new writer reopens the journal's segments, which jump from 5 to 20, and goes on.
    const reopened = new JournalStore(dataSource, dir.path);
    expect(await reopened.appliedSeq(vpgId)).toBe(22);
    expect((await reopened.commit(vpgId, [write(23)])).appliedSeq).toBe(23);
    await reopened.close();
  });
});
