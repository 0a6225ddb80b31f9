import { randomUUID } from 'node:crypto';
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type DataSource } from 'typeorm';
import { CorruptRecordError, RECORD_HEADER_BYTES, decodeRecord, encodeCheckpointRecord, encodeWriteRecord } from '@cdp/contracts';
import { DomainError } from '@cdp/domain';
import { ReferenceModel, createMigratedDatabase, randomBuffer, seededRandom, tempDir, type TempDir } from '@cdp/testing';
import { SegmentReader } from '@cdp/segment-log';
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

  /**
   * The shapes a sequential reader meets: 1 MiB reads, four in flight, over a volume written in
   * writes larger than a read (read once, kept for the reads that continue into them), writes exactly
   * one read long (sent without a copy) and small writes over them.
   */
  describe('sequential reads in flight together', () => {
    const MiB = 1024 * 1024;
    const seqSize = 16 * MiB;
    const seqVpg = randomUUID();
    const seqModel = new ReferenceModel(new Map([['v0', seqSize]]));
    let seqCut = 0;

    beforeAll(async () => {
      const random = seededRandom(23);
      const { write, commit } = volumeJournal(seqModel);
      // 3 MiB writes over the first 12 MiB, 1 MiB writes over the rest, small ones on top of both; the
      // last 1 MiB only partly written (the rest reads as zeros).
      for (let offset = 0; offset < 12 * MiB; offset += 3 * MiB) {
        write(offset, randomBuffer(random, 3 * MiB));
      }
      for (let offset = 12 * MiB; offset < 15 * MiB; offset += MiB) {
        write(offset, randomBuffer(random, MiB));
      }
      // (None over the first two large writes, whose reads each take bytes from one write only.)
      for (let i = 0; i < 40; i++) {
        write(6 * MiB + Math.floor(random() * ((seqSize - 6 * MiB) / 4096 - 1)) * 4096, randomBuffer(random, 4096));
      }
      seqCut = await commit(store, seqVpg);
    });

    it('returns the volume at the cut; a buffer the caller changes and gives back changes nothing the view keeps', async () => {
      const want = seqModel.imagesAt([seqCut]).get(seqCut)!.get('v0')!;
      const view = await reader.openView(seqVpg, 0, seqSize, seqCut);
      try {
        for (let pass = 0; pass < 2; pass++) {
          for (let offset = 0; offset < seqSize; offset += 4 * MiB) {
            const batch = await Promise.all([0, 1, 2, 3].map((k) => view.read(offset + k * MiB, MiB)));
            batch.forEach((got, k) => {
              const at = offset + k * MiB;
              if (!got.equals(want.subarray(at, at + MiB))) {
                throw new Error(`pass ${pass}: read [${at}, ${at + MiB}) differs`);
              }
              // What an NBD device with a writable overlay does to the buffer it got; then it is
              // given back, as the NBD server does once the reply is sent, to be lent out again.
              got.fill(0xff);
              view.release(got);
            });
          }
        }
        // 4 KiB reads that come back into the large writes after them.
        for (const at of [MiB, 2 * MiB + 4096, 12 * MiB + 8192]) {
          expect((await view.read(at, 4096)).equals(want.subarray(at, at + 4096))).toBe(true);
        }
      } finally {
        await view.close();
      }
    });

    it('fails every read that needs a damaged record with CorruptRecordError, however it was fetched', async () => {
      const damaged = await damageRecordAt(JournalStore.segmentDir(dir.path, seqVpg), 3 * MiB);
      try {
        const view = await reader.openView(seqVpg, 0, seqSize, seqCut);
        try {
          // Sequential reads: the one before it fetches the damaged record ahead, and succeeds.
          await view.read(0, MiB);
          await view.read(MiB, MiB);
          await expect(view.read(2 * MiB, MiB)).resolves.toHaveLength(MiB);
          await expect(view.read(3 * MiB, MiB)).rejects.toThrow(CorruptRecordError);
          // Nothing of it was kept: a read further into it fails too.
          await expect(view.read(4 * MiB, MiB)).rejects.toThrow(CorruptRecordError);
          await expect(view.read(5 * MiB, 4096)).rejects.toThrow(CorruptRecordError);
          await expect(view.read(6 * MiB, MiB)).resolves.toHaveLength(MiB);
        } finally {
          await view.close();
        }
      } finally {
        await damaged.restore();
      }
    });
  });


  it('reads the writes a read takes whole straight into its reply, beside the records it copies, and verifies every one', async () => {
    const KiB = 1024;
    const MiB = KiB * KiB;
    const volume = 4 * MiB;
    const vpg = randomUUID();
    const reference = new ReferenceModel(new Map([['v0', volume]]));
    const random = seededRandom(41);
    const { write, commit } = volumeJournal(reference);
    // The first 3 MiB front to back in 64 KiB writes, each of which a 1 MiB read takes whole. Between
    // them in the segment: 512-byte writes to the last MiB, hidden later (bytes between the records a
    // read wants), and a 4 KiB write over every fifth 64 KiB write (which is then copied, not placed).
    // Then a 96 KiB write across the first 1 MiB boundary, and the last MiB in 256 KiB writes, so the
    // journal covers every byte.
    for (let offset = 0, k = 0; offset < 3 * MiB; offset += 64 * KiB, k++) {
      write(offset, randomBuffer(random, 64 * KiB));
      write(3 * MiB + Math.floor(random() * 2048) * 512, randomBuffer(random, 512));
      if (k % 5 === 0) {
        write(offset + 4096, randomBuffer(random, 4096));
      }
    }
    write(MiB - 48 * KiB, randomBuffer(random, 96 * KiB));
    for (let offset = 3 * MiB; offset < volume; offset += 256 * KiB) {
      write(offset, randomBuffer(random, 256 * KiB));
    }
    const cutHere = await commit(store, vpg);
    const want = reference.imagesAt([cutHere]).get(cutHere)!.get('v0')!;
    const scattered = jest.spyOn(SegmentReader.prototype, 'readScattered');
    try {
      const view = await reader.openView(vpg, 0, volume, cutHere);
      try {
        for (const size of [MiB, 256 * KiB, volume]) {
          for (let pass = 0; pass < 2; pass++) {
            for (let offset = 0; offset < volume; offset += 4 * size) {
              const batch = await Promise.all([0, 1, 2, 3].filter((k) => offset + (k + 1) * size <= volume).map((k) => view.read(offset + k * size, size)));
              batch.forEach((got, k) => {
                const at = offset + k * size;
                if (!got.equals(want.subarray(at, at + size))) {
                  throw new Error(`${size}-byte reads, pass ${pass}: read [${at}, ${at + size}) differs`);
                }
                got.fill(0xee);
                view.release(got);
              });
            }
          }
        }
        for (let i = 0; i < 100; i++) {
          const length = 1 + Math.floor(random() * 300 * KiB);
          const offset = Math.floor(random() * (volume - length + 1));
          expect((await view.read(offset, length)).equals(want.subarray(offset, offset + length))).toBe(true);
        }
      } finally {
        await view.close();
      }
      expect(scattered).toHaveBeenCalled();

      // A payload read into a reply is verified before the reply is given: damaged, the read fails.
      const damaged = await damageRecordAt(JournalStore.segmentDir(dir.path, vpg), 2 * MiB);
      try {
        const again = await reader.openView(vpg, 0, volume, cutHere);
        try {
          const calls = scattered.mock.calls.length;
          await expect(again.read(MiB, MiB)).resolves.toHaveLength(MiB);
          await expect(again.read(2 * MiB, MiB)).rejects.toThrow(CorruptRecordError);
          await expect(again.read(2 * MiB, 64 * KiB)).rejects.toThrow(CorruptRecordError);
          expect((await again.read(3 * MiB, MiB)).equals(want.subarray(3 * MiB, 4 * MiB))).toBe(true);
          expect(scattered.mock.calls.length).toBeGreaterThan(calls);
        } finally {
          await again.close();
        }
      } finally {
        await damaged.restore();
      }
    } finally {
      scattered.mockRestore();
    }
  });

  it('holds only the writes a read can see: those under a newer write covering their windows whole are dropped', async () => {
    const MiB = 1024 * 1024;
    const volume = 8 * MiB;
    const vpg = randomUUID();
    const reference = new ReferenceModel(new Map([['v0', volume]]));
    const random = seededRandom(31);
    const { write, commit } = volumeJournal(reference);
    // Small writes everywhere, then whole windows 0 to 5 written over them, then small writes again
    // in windows 2 and 7, and one large write that covers no window whole ([6.5 MiB, 7.5 MiB)).
    const small = Array.from({ length: 600 }, () => Math.floor(random() * (volume / 4096)) * 4096);
    small.forEach((offset) => write(offset, randomBuffer(random, 4096)));
    for (let w = 0; w < 6; w++) {
      write(w * MiB, randomBuffer(random, MiB));
    }
    for (let i = 0; i < 10; i++) {
      write((i % 2 === 0 ? 2 * MiB : 7 * MiB) + i * 8192, randomBuffer(random, 4096));
    }
    write(6.5 * MiB, randomBuffer(random, MiB));
    const cutHere = await commit(store, vpg);

    const want = reference.imagesAt([cutHere]).get(cutHere)!.get('v0')!;
    const view = await reader.openView(vpg, 0, volume, cutHere);
    try {
      expect((await view.read(0, volume)).equals(want)).toBe(true);
      for (const at of [0, 2 * MiB + 8192, 6 * MiB - 4096, 6.5 * MiB - 4096, 7 * MiB + 4096]) {
        expect((await view.read(at, 8192)).equals(want.subarray(at, at + 8192))).toBe(true);
      }
      // Kept: the six whole-window writes, the small ones in windows 6 and 7, the ten after them and
      // the large unaligned one.
      expect(view.heldWrites).toBe(6 + small.filter((offset) => offset >= 6 * MiB).length + 10 + 1);
    } finally {
      await view.close();
    }
  });

  it('maps allocation without reading data: journal writes, holes between, and regions without writes in one answer', async () => {
    const MiB = 1024 * 1024;
    const region = 64 * MiB;
    const volume = 5 * region;
    const vpg = randomUUID();
    const reference = new ReferenceModel(new Map([['v0', volume]]));
    const { write, commit } = volumeJournal(reference);
    write(4096, Buffer.alloc(8192, 1));
    write(8192, Buffer.alloc(8192, 2));
    write(region - 512, Buffer.alloc(1024, 3));
    write(3 * region + MiB, Buffer.alloc(4096, 4));
    const cutHere = await commit(store, vpg);
    const view = await reader.openView(vpg, 0, volume, cutHere);
    try {
      expect(await view.allocation(0, volume, 100)).toEqual([
        { start: 0, end: 4096, data: false },
        { start: 4096, end: 16384, data: true },
        { start: 16384, end: region - 512, data: false },
        { start: region - 512, end: region, data: true },
      ]);
      // From region 1, which holds the write's tail, over region 2 (no writes) up to region 3, which has some.
      expect(await view.allocation(region, volume - region, 100)).toEqual([
        { start: region, end: region + 512, data: true },
        { start: region + 512, end: 3 * region, data: false },
      ]);
      // Region 3, then on over region 4 (none) to the end of the volume.
      expect(await view.allocation(3 * region, 2 * region, 100)).toEqual([
        { start: 3 * region, end: 3 * region + MiB, data: false },
        { start: 3 * region + MiB, end: 3 * region + MiB + 4096, data: true },
        { start: 3 * region + MiB + 4096, end: volume, data: false },
      ]);
      // Past the last region with writes: one hole to the end; the length asked for bounds the answer.
      expect(await view.allocation(4 * region, region, 100)).toEqual([{ start: 4 * region, end: volume, data: false }]);
      expect(await view.allocation(region + 4096, 4096, 100)).toEqual([{ start: region + 4096, end: region + 8192, data: false }]);
      // At most `limit` runs; the caller continues from the last one's end.
      expect(await view.allocation(0, volume, 2)).toEqual([
        { start: 0, end: 4096, data: false },
        { start: 4096, end: 16384, data: true },
      ]);
      // Every hole reads as zeros.
      const want = reference.imagesAt([cutHere]).get(cutHere)!.get('v0')!;
      expect((await view.read(16384, MiB)).equals(want.subarray(16384, 16384 + MiB))).toBe(true);
      await expect(view.allocation(volume - 512, 1024, 10)).rejects.toThrow(DomainError);
      await expect(view.allocation(0, 0, 10)).rejects.toThrow(DomainError);
    } finally {
      await view.close();
    }
    await expect(view.allocation(0, 4096, 10)).rejects.toThrow(/closed/);
  });
});

/**
 * Writes to volume 0 of a VPG, seq 1 on, recorded in `model`; `commit` journals them in one batch
 * followed by a tagged checkpoint, and returns the checkpoint's cut.
 */
function volumeJournal(model: ReferenceModel): { write: (offset: number, data: Buffer) => void; commit: (store: JournalStore, vpgId: string) => Promise<number> } {
  const records: Buffer[] = [];
  let seq = 0;
  return {
    write: (offset, data) => {
      seq++;
      model.record({ seq, volumeId: 'v0', offset, data });
      records.push(encodeWriteRecord({ seq, volumeIndex: 0, offset, capturedAtMicros: seq, flags: 0, data }));
    },
    commit: async (store, vpgId) => {
      const cut = seq + 1;
      records.push(encodeCheckpointRecord({ seq: cut, capturedAtMicros: cut, marker: { id: randomUUID(), kind: 'tagged', name: 'cut', vmId: null } }));
      await store.commit(vpgId, records.map((bytes) => ({ bytes, decoded: decodeRecord(bytes) })));
      return cut;
    },
  };
}

/** Flips one payload byte of the write record whose volume offset is `offset`; `restore` undoes it. */
async function damageRecordAt(dir: string, offset: number): Promise<{ restore: () => Promise<void> }> {
  for (const name of (await readdir(dir)).sort()) {
    const path = join(dir, name);
    const bytes = await readFile(path);
    for (let at = 0; at + RECORD_HEADER_BYTES <= bytes.length; at += bytes.readUInt32LE(at + 8)) {
      if (bytes.readUInt8(at + 13) === 1 && Number(bytes.readBigUInt64LE(at + 32)) === offset) {
        const original = Buffer.from(bytes);
        bytes[at + RECORD_HEADER_BYTES + 100] = (bytes[at + RECORD_HEADER_BYTES + 100] as number) ^ 0x01;
        await writeFile(path, bytes);
        return { restore: () => writeFile(path, original) };
      }
    }
  }
  throw new Error(`no write record at volume offset ${offset} in ${dir}`);
}
