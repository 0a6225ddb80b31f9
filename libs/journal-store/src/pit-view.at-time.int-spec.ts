import { randomUUID } from 'node:crypto';
import { type DataSource } from 'typeorm';
import { decodeRecord, encodeCheckpointRecord, encodeRestartRecord, encodeSyncRecord, encodeWriteRecord } from '@cdp/contracts';
import { createMigratedDatabase, randomBuffer, seededRandom, tempDir, type TempDir } from '@cdp/testing';
import { REGION_BYTES } from './journal-index.codec';
import { journalEntities } from './journal.entities';
import { JournalReader } from './journal.reader';
import { JournalConflictError, JournalStore } from './journal.store';

/**
 * Views at any seq and at any time over a volume of several index regions: writes cluster around the
 * region boundaries (and cross them), so every read exercises more than one region's rows. Expected
 * bytes come from the test's own model: the writes with seq <= cut applied in order to the window.
 */
const KiB = 1024;
const SIZE = 3 * REGION_BYTES;
/** Windows of the volume the workload writes into; everything else stays zero. */
const WINDOWS = [
  { start: 0, end: 256 * KiB },
  { start: REGION_BYTES - 128 * KiB, end: REGION_BYTES + 128 * KiB },
  { start: 2 * REGION_BYTES - 64 * KiB, end: 2 * REGION_BYTES + 192 * KiB },
  { start: SIZE - 128 * KiB, end: SIZE },
] as const;
const BASE_MICROS = Date.parse('2026-11-25T00:00:00Z') * 1000;

interface Write {
  readonly seq: number;
  readonly offset: number;
  readonly data: Buffer;
  readonly micros: number;
}

describe('PitView at any seq and any time', () => {
  let dataSource: DataSource;
  let dropDatabase: () => Promise<void>;
  let dir: TempDir;
  let store: JournalStore;
  let reader: JournalReader;
  const vpgId = randomUUID();
  const writes: Write[] = [];
  /** Capture time of every record (writes and markers), by seq. */
  const times: number[] = [0];
  let lastSeq = 0;

  function expectedWindow(cut: number, window: { start: number; end: number }): Buffer {
    const image = Buffer.alloc(window.end - window.start);
    for (const w of writes) {
      if (w.seq > cut) {
        break;
      }
      const from = Math.max(w.offset, window.start);
      const to = Math.min(w.offset + w.data.length, window.end);
      if (from < to) {
        w.data.copy(image, from - window.start, from - w.offset, to - w.offset);
      }
    }
    return image;
  }

  async function expectViewAt(view: { read: (o: number, l: number) => Promise<Buffer> }, cut: number): Promise<void> {
    for (const window of WINDOWS) {
      const got = await view.read(window.start, window.end - window.start);
      if (!got.equals(expectedWindow(cut, window))) {
        throw new Error(`cut ${cut}: window [${window.start}, ${window.end}) differs from the model`);
      }
    }
    // Outside the windows nothing was written.
    expect((await view.read(REGION_BYTES + 1024 * KiB, 64 * KiB)).equals(Buffer.alloc(64 * KiB))).toBe(true);
  }

  beforeAll(async () => {
    ({ dataSource, drop: dropDatabase } = await createMigratedDatabase(journalEntities));
    dir = await tempDir('pit-at-time-');
    store = new JournalStore(dataSource, dir.path, { segmentBytes: 256 * KiB });
    reader = new JournalReader(dataSource, dir.path);
    const random = seededRandom(99);
    let micros = BASE_MICROS;
    const pending: Buffer[] = [];
    for (let seq = 1; seq <= 600; seq++) {
      // Time moves forward in steps, sometimes not at all (several records share a microsecond).
      micros += random() < 0.3 ? 0 : 1 + Math.floor(random() * 5_000_000);
      times.push(micros);
      if (random() < 0.05) {
        pending.push(encodeCheckpointRecord({ seq, capturedAtMicros: micros, marker: { id: randomUUID(), kind: 'automatic', name: null, vmId: null } }));
        continue;
      }
      const window = WINDOWS[Math.floor(random() * WINDOWS.length)]!;
      const length = 1 + Math.floor(random() * 48 * KiB);
      const offset = window.start + Math.floor(random() * (window.end - window.start - length + 1));
      const data = randomBuffer(random, length);
      writes.push({ seq, offset, data, micros });
      pending.push(encodeWriteRecord({ seq, volumeIndex: 0, offset, capturedAtMicros: micros, flags: 0, data }));
    }
    lastSeq = 600;
    while (pending.length > 0) {
      const batch = pending.splice(0, 1 + Math.floor(random() * 40));
      await store.commit(vpgId, batch.map((bytes) => ({ bytes, decoded: decodeRecord(bytes) })));
    }
  });

  afterAll(async () => {
    await store?.close();
    await dataSource?.destroy();
    await dropDatabase?.();
    await dir?.cleanup();
  });

  it('reads the volume at arbitrary seqs, not only at checkpoints', async () => {
    const random = seededRandom(7);
    for (const cut of [1, lastSeq, ...Array.from({ length: 6 }, () => 1 + Math.floor(random() * lastSeq))]) {
      const view = await reader.openView(vpgId, 0, SIZE, cut);
      try {
        await expectViewAt(view, cut);
      } finally {
        await view.close();
      }
    }
    await expect(reader.openView(vpgId, 0, SIZE, lastSeq + 1)).rejects.toMatchObject({ code: 'failed-precondition' });
  });

  it('recovers a random time T to the image after the last write at or before T', async () => {
    const random = seededRandom(11);
    // Whole milliseconds (what an ISO time carries) from the first record's to the last one's.
    const first = Math.ceil(times[1]! / 1000);
    const last = Math.floor(times[lastSeq]! / 1000);
    const instants = [first, last, ...Array.from({ length: 8 }, () => first + Math.floor(random() * (last - first)))];
    for (const ms of instants) {
      const atMicros = ms * 1000;
      // The model's answer: the last seq captured at or before T (times never go back here).
      let want = 0;
      for (let seq = 1; seq <= lastSeq && times[seq]! <= atMicros; seq++) {
        want = seq;
      }
      const view = await reader.openViewAt(vpgId, 0, SIZE, new Date(ms));
      try {
        expect(view.cut).toBe(want);
        expect(view.capturedAt).toBe(new Date(Math.floor(times[want]! / 1000)).toISOString());
        await expectViewAt(view, want);
      } finally {
        await view.close();
      }
    }
  });

  it('refuses a time before the journal or after its latest write, and says which', async () => {
    await expect(reader.openViewAt(vpgId, 0, SIZE, new Date(Math.floor(times[1]! / 1000) - 1))).rejects.toThrow(/before the journal's history/);
    await expect(reader.openViewAt(vpgId, 0, SIZE, new Date(Math.floor(times[lastSeq]! / 1000) + 1))).rejects.toThrow(/after the latest journaled write/);
    await expect(reader.openViewAt(vpgId, 0, SIZE, new Date(Number.NaN))).rejects.toMatchObject({ code: 'invalid-argument' });
    await expect(reader.openViewAt(randomUUID(), 0, SIZE, new Date())).rejects.toMatchObject({ code: 'not-found' });
  });

  it('drops an unindexed tail after a failed commit and indexes the records once when they come again', async () => {
    const seq = lastSeq + 1;
    const data = Buffer.alloc(8 * KiB, 0x5a);
    const bytes = encodeWriteRecord({ seq, volumeIndex: 0, offset: REGION_BYTES - 4 * KiB, capturedAtMicros: times[lastSeq]! + 1, flags: 0, data });
    const records = [{ bytes, decoded: decodeRecord(bytes) }];
    // Another writer moved applied_seq: the commit appends to the segment, then its transaction fails.
    await dataSource.query(`UPDATE journal_vpgs SET applied_seq = applied_seq + 1000 WHERE vpg_id = $1`, [vpgId]);
    await expect(store.commit(vpgId, records)).rejects.toThrow(JournalConflictError);
    await dataSource.query(`UPDATE journal_vpgs SET applied_seq = applied_seq - 1000 WHERE vpg_id = $1`, [vpgId]);

    // A new writer (as after a restart) truncates the tail to segment_end and takes the record again.
    const restarted = new JournalStore(dataSource, dir.path, { segmentBytes: 256 * KiB });
    try {
      expect(await restarted.appliedSeq(vpgId)).toBe(lastSeq);
      expect(await restarted.commit(vpgId, records)).toMatchObject({ appliedSeq: seq });
    } finally {
      await restarted.close();
    }
    const batches = await dataSource.query<{ n: number }[]>(
      `SELECT count(*)::int AS n FROM journal_batches b JOIN journal_vpgs j USING (vpg_key) WHERE j.vpg_id = $1 AND b.first_seq = $2`,
      [vpgId, seq],
    );
    expect(batches[0]!.n).toBe(1);
    writes.push({ seq, offset: REGION_BYTES - 4 * KiB, data, micros: times[lastSeq]! + 1 });
    const view = await reader.openView(vpgId, 0, SIZE, seq);
    try {
      await expectViewAt(view, seq);
    } finally {
      await view.close();
    }
  });

  it('refuses a time inside a sync or after a restart until the first checkpoint after it, and says where consistent points begin', async () => {
    const base = Math.ceil(times[lastSeq]! / 1000) + 1_000;
    const ms = (k: number): number => base + k * 1_000;
    const commit = (...records: Buffer[]): Promise<unknown> => store.commit(vpgId, records.map((bytes) => ({ bytes, decoded: decodeRecord(bytes) })));
    const write = (seq: number, k: number): Buffer =>
      encodeWriteRecord({ seq, volumeIndex: 0, offset: 0, capturedAtMicros: ms(k) * 1000, flags: 0, data: Buffer.alloc(4 * KiB, seq & 0xff) });
    const marker = (seq: number, k: number): Buffer =>
      encodeCheckpointRecord({ seq, capturedAtMicros: ms(k) * 1000, marker: { id: randomUUID(), kind: 'automatic', name: null, vmId: null } });
    const at = (k: number): Date => new Date(ms(k));
    expect((await reader.status(vpgId)).syncing).toBe(false);

    // A forced resync: a sync record, chunks, and (later) the first checkpoint after it.
    await commit(write(602, 0), encodeSyncRecord({ seq: 603, capturedAtMicros: ms(1) * 1000, sync: { reason: 'resync r-7 (distrusted)', member: null } }), write(604, 2), write(605, 3));
    expect((await reader.status(vpgId)).syncing).toBe(true);
    await expect(reader.openViewAt(vpgId, 0, SIZE, at(2))).rejects.toThrow(/falls inside a sync of VPG .* \(resync r-7 \(distrusted\)\), from seq 603: .*It is still running/);
    // The sync record's own time is inside too: the stream there no longer follows the volume.
    await expect(reader.openViewAt(vpgId, 0, SIZE, at(1))).rejects.toMatchObject({ code: 'failed-precondition', details: { syncFromSeq: 603, consistentAgainAt: null } });
    await commit(write(606, 4), marker(607, 5), write(608, 6));
    expect((await reader.status(vpgId)).syncing).toBe(false);
    await expect(reader.openViewAt(vpgId, 0, SIZE, at(4))).rejects.toMatchObject({
      details: { syncFromSeq: 603, consistentAgainAt: { seq: 607, capturedAt: at(5).toISOString() } },
    });
    for (const [k, cut] of [
      [0, 602],
      [5, 607],
      [6, 608],
    ] as const) {
      const view = await reader.openViewAt(vpgId, 0, SIZE, at(k));
      expect(view.cut).toBe(cut);
      await view.close();
    }

    // A restart of the order (the journal lacked 609 to 699): the same, from the restart on.
    await commit(encodeRestartRecord({ seq: 700, capturedAtMicros: ms(7) * 1000, restart: { resyncId: 'r-8', voidFrom: 609, reason: 'lost', member: null } }), write(701, 8));
    await expect(reader.openViewAt(vpgId, 0, SIZE, at(8))).rejects.toThrow(/\(restart of the order: lost\), from seq 700/);
    await commit(marker(702, 9));
    const view = await reader.openViewAt(vpgId, 0, SIZE, at(9));
    expect(view.cut).toBe(702);
    await view.close();
  });
});
