import { mkdtempSync, rmSync, truncateSync, statSync, openSync, writeSync, closeSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CorruptRecordError, decodeRecord, encodeRestartRecord, encodeWriteRecord, type WriteRecord } from '@cdp/contracts';
import { SegmentLog, SegmentLogError, segmentFileName } from './segment-log';
import { DIRECT_CHUNK_BYTES, DIRECT_IO_ALIGNMENT, openDirect, writeDirect } from './direct-io';

// The real functions, made replaceable call by call: a file system that refuses O_DIRECT is made to
// order below, on any machine.
jest.mock('./direct-io', () => {
  const actual = jest.requireActual<typeof import('./direct-io')>('./direct-io');
  return { ...actual, openDirect: jest.fn(actual.openDirect), writeDirect: jest.fn(actual.writeDirect) };
});

function record(seq: number, size = 100): Buffer {
  return encodeWriteRecord({ seq, volumeIndex: 0, offset: seq * 512, capturedAtMicros: seq, flags: 0, data: Buffer.alloc(size, seq % 251) });
}

describe('SegmentLog', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'segment-log-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('appends, syncs, reopens and reads back every record in order', async () => {
    const log = await SegmentLog.open({ dir });
    const placed = log.append([record(1), record(2), record(3)]);
    await log.sync();
    expect(placed.map((p) => p.seq)).toEqual([1, 2, 3]);
    await log.close();

    const reopened = await SegmentLog.open({ dir });
    expect(reopened.lastSeq).toBe(3);
    const { records } = await reopened.readChunk(reopened.start, 1 << 20);
    expect(records.map((r) => r.seq)).toEqual([1, 2, 3]);
    const second = await reopened.read(placed[1]!);
    expect((decodeRecord(second) as WriteRecord).data).toEqual(Buffer.alloc(100, 2));
    await reopened.close();
  });

  it('appends on the thread pool: many writes in flight across segment rolls, all in place once a sync resolves', async () => {
    const log = await SegmentLog.open({ dir, segmentBytes: 4096 });
    const placed = [];
    let seq = 1;
    const syncs: Promise<void>[] = [];
    for (let batch = 0; batch < 40; batch++) {
      const records = Array.from({ length: 1 + (batch % 5) }, () => record(seq++, 64 + ((seq * 37) % 900)));
      placed.push(...log.appendAsync(records));
      if (batch % 7 === 0) {
        syncs.push(log.sync());
      }
    }
    await Promise.all(syncs);
    await log.sync();
    for (const at of placed) {
      expect(decodeRecord(await log.read(at)).seq).toBe(at.seq);
    }
    await log.close();
    const reopened = await SegmentLog.open({ dir, segmentBytes: 4096 });
    expect(reopened.lastSeq).toBe(seq - 1);
    await reopened.close();
  });

  it('rolls segments at the size limit, finds any seq and deletes whole segments only', async () => {
    const log = await SegmentLog.open({ dir, segmentBytes: 1000 });
    for (let seq = 1; seq <= 30; seq++) {
      log.append([record(seq)]);
    }
    await log.sync();
    const segments = readdirSync(dir).length;
    expect(segments).toBeGreaterThan(3);
    const at = await log.find(17);
    const { records } = await log.readChunk(at!, 1);
    expect(records[0]?.seq).toBe(17);
    await log.deleteThrough(20);
    expect(log.firstSeq).toBeGreaterThan(14);
    expect(log.firstSeq).toBeLessThanOrEqual(21);
    expect(await log.find(5)).toBeUndefined();
    expect(log.lastSeq).toBe(30);
    await log.deleteThrough(1000);
    expect(readdirSync(dir)).toHaveLength(1);
    expect(log.lastSeq).toBe(30);
    await log.close();
  });

  it('reads a record larger than the chunk whole, one record at a time, and never past the durable end', async () => {
    const log = await SegmentLog.open({ dir });
    const big = [record(1, 300_000), record(2, 1 << 20), record(3, 70_000)];
    log.append(big);
    await log.sync();
    const durable = log.durableEnd;
    log.append([record(4, 200_000)]);
    const seen: Buffer[] = [];
    let cursor = log.start;
    for (;;) {
      const { records, next } = await log.readChunk(cursor, 64 * 1024, durable);
      if (records.length === 0) {
        break;
      }
      // A record larger than the chunk comes alone; smaller ones as many as fit.
      expect(records).toHaveLength(1);
      seen.push(...records.map((r) => r.record));
      cursor = next;
    }
    expect(seen.map((r) => decodeRecord(r).seq)).toEqual([1, 2, 3]);
    seen.forEach((r, i) => expect(r.equals(big[i]!)).toBe(true));
    await log.close();
  });

  it('truncates a torn tail at open and appends after the last whole record', async () => {
    const log = await SegmentLog.open({ dir });
    log.append([record(1), record(2)]);
    await log.sync();
    await log.close();
    const file = join(dir, segmentFileName(1));
    const size = statSync(file).size;
    truncateSync(file, size - 10);

    const reopened = await SegmentLog.open({ dir });
    expect(reopened.lastSeq).toBe(1);
    reopened.append([record(2)]);
    await reopened.sync();
    const { records } = await reopened.readChunk(reopened.start, 1 << 20);
    expect(records.map((r) => r.seq)).toEqual([1, 2]);
    await reopened.close();
  });

  it('truncates to the position the caller knows is durable and drops later segments', async () => {
    const log = await SegmentLog.open({ dir, segmentBytes: 300 });
    const placed = [1, 2, 3, 4, 5].map((seq) => log.append([record(seq)])[0]!);
    await log.sync();
    await log.close();
    const keep = placed[1]!;
    const reopened = await SegmentLog.open({ dir, tail: { segment: keep.segment, position: keep.position + keep.length } });
    expect(reopened.lastSeq).toBe(2);
    await reopened.close();
  });

  it('reports a damaged record as corrupt when read, never returns its bytes', async () => {
    const log = await SegmentLog.open({ dir });
    const [placed] = log.append([record(1, 4096)]);
    await log.sync();
    const fd = openSync(join(dir, segmentFileName(1)), 'r+');
    writeSync(fd, Buffer.from([0xff]), 0, 1, placed!.position + 2000);
    closeSync(fd);
    await expect(log.read(placed!)).rejects.toThrow(CorruptRecordError);
    await log.close();
  });

  it('refuses to open when a record before the tail is corrupt', async () => {
    const log = await SegmentLog.open({ dir, segmentBytes: 200 });
    log.append([record(1)]);
    log.append([record(2)]);
    log.append([record(3)]);
    await log.sync();
    await log.close();
    const fd = openSync(join(dir, segmentFileName(1)), 'r+');
    writeSync(fd, Buffer.from([0x00]), 0, 1, 60);
    closeSync(fd);
    await expect(SegmentLog.open({ dir })).rejects.toThrow(SegmentLogError);
  });

  it('rolls segments while syncs are in flight without closing a descriptor under them', async () => {
    // Many small segments and syncs that are not awaited: rolls keep happening while an fdatasync of
    // the segment being sealed is in flight. Closing its descriptor then would make the sync fail
    // (EBADF) or, worse, sync whatever file reused the number.
    const log = await SegmentLog.open({ dir, segmentBytes: 400 });
    const syncs: Promise<void>[] = [];
    for (let seq = 1; seq <= 3000; seq++) {
      log.append([record(seq, 200)]);
      if (seq % 3 === 0) {
        syncs.push(log.sync());
      }
      if (seq % 50 === 0) {
        await Promise.resolve();
      }
    }
    await Promise.all(syncs);
    await log.sync();
    await log.close();
    const reopened = await SegmentLog.open({ dir });
    expect(reopened.lastSeq).toBe(3000);
    expect(reopened.durableEnd).toEqual(reopened.end);
    await reopened.close();
  });

  it('returns a chunk read while its segment was deleted as empty, starting where the log now starts', async () => {
    // A shipper sending the log again after a restart reads segments the journal is confirming behind
    // it: a segment may be deleted, its read handle closed, between two reads of one chunk.
    const log = await SegmentLog.open({ dir, segmentBytes: 4096 });
    log.append([record(1, 6000)]);
    log.append([record(2)]);
    await log.sync();
    expect(log.start.segment).not.toBe(log.end.segment);
    // A 1 KiB chunk: the 6 KB record takes a second read, after the delete has closed the handle.
    const reading = log.readChunk(log.start, 1024);
    await log.deleteThrough(1);
    await expect(reading).resolves.toEqual({ records: [], next: log.start });
    const { records } = await log.readChunk(log.start, 1 << 20);
    expect(records.map((r) => r.seq)).toEqual([2]);
    await log.close();
  });

  describe('when an fsync fails', () => {
    // The module object the log calls into (an `import * as` would be a copy of it).
    const fs = jest.requireActual<typeof import('node:fs')>('node:fs');
    const realFdatasync = fs.fdatasync;
    type Callback = (err: NodeJS.ErrnoException | null) => void;
    afterEach(() => jest.restoreAllMocks());

    /** The next fdatasync, held until `release` (with an error, or none): the sync in flight, made slow. */
    function holdNextFdatasync(): { started: Promise<void>; release: (err?: NodeJS.ErrnoException) => void } {
      let started!: () => void;
      const startedPromise = new Promise<void>((resolve) => (started = resolve));
      let release!: (err?: NodeJS.ErrnoException) => void;
      const released = new Promise<NodeJS.ErrnoException | undefined>((resolve) => (release = resolve));
      jest.spyOn(fs, 'fdatasync').mockImplementationOnce(((fd: number, callback: Callback) => {
        started();
        realFdatasync(fd, (err) => void released.then((failure) => callback(failure ?? err)));
      }) as typeof fs.fdatasync);
      return { started: startedPromise, release };
    }

    it('fails every sync waiting on the failed one: one with nothing of its own to sync, and one with records appended since', async () => {
      const log = await SegmentLog.open({ dir });
      log.append([record(1)]);
      const held = holdNextFdatasync();
      const failing = log.sync();
      await held.started;
      // Nothing appended since the failing sync began: it covers this one, and so must fail it too
      // (a flush that succeeded here would tell the client that lost records are durable).
      const covered = log.sync();
      log.append([record(2)]);
      const after = log.sync();
      held.release(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO', errno: -5 }));
      await expect(failing).rejects.toThrow(SegmentLogError);
      await expect(covered).rejects.toThrow(SegmentLogError);
      await expect(after).rejects.toThrow(SegmentLogError);
      expect(log.durableEnd).toEqual({ segment: 1, position: 0 });
      expect(() => log.append([record(3)])).toThrow(/must be reopened/);
    });
  });

  describe('with direct writes', () => {
    // Whether this file system takes O_DIRECT: where it does not, the log must fall back to buffered
    // writes and everything below must hold all the same.
    const directSupported = (): boolean => {
      const probe = join(dir, 'probe');
      closeSync(openSync(probe, 'w'));
      const fd = openDirect(probe);
      if (fd !== undefined) {
        closeSync(fd);
      }
      rmSync(probe);
      return fd !== undefined;
    };

    it('keeps every record intact when direct, buffered and synchronous appends interleave across segment rolls', async () => {
      const direct = directSupported();
      const segmentBytes = 3 * 1024 * 1024;
      const log = await SegmentLog.open({ dir, segmentBytes, directWriteMinBytes: 64 * 1024 });
      const written = new Map<number, Buffer>();
      const placed = [];
      let seq = 1;
      const next = (size: number): Buffer => {
        const r = record(seq, size);
        written.set(seq++, r);
        return r;
      };
      const syncs: Promise<void>[] = [];
      for (let round = 0; round < 30; round++) {
        // Sizes that leave the end at every kind of position: mid-block, on a block, past a chunk.
        const sizes = [100 + round * 37, 70_000 + round * 4096, 1 + round, DIRECT_CHUNK_BYTES + 123 * round];
        placed.push(...log.appendAsync([next(sizes[round % 4]!), next(300)]));
        // A synchronous append while the queue may be busy: it must wait its turn, not write under it.
        placed.push(...log.append([next(200 + round)]));
        if (round % 5 === 0) {
          await log.written();
          // Nothing in flight: this one is written at once, buffered, into the block the last direct
          // write padded.
          expect(log.writesInFlight).toBe(false);
          placed.push(...log.append([next(50)]));
        }
        if (round % 3 === 0) {
          syncs.push(log.sync());
        }
      }
      await Promise.all(syncs);
      await log.sync();
      for (const at of placed) {
        expect((await log.read(at)).equals(written.get(at.seq)!)).toBe(true);
      }
      const segments = readdirSync(dir).filter((n) => n.endsWith('.seg'));
      expect(segments.length).toBeGreaterThan(3);
      if (direct) {
        // A direct write pads its last block: the active segment's file ends on an aligned size.
        expect(statSync(join(dir, segments[segments.length - 1]!)).size % DIRECT_IO_ALIGNMENT).toBe(0);
      } else {
        process.stdout.write('segment-log direct-write test: this file system refuses O_DIRECT; checked the buffered fallback\n');
      }
      await log.close();

      // Sealed segments may end in padding: open allows for it and finds every record.
      const reopened = await SegmentLog.open({ dir, segmentBytes, directWriteMinBytes: 64 * 1024 });
      expect(reopened.lastSeq).toBe(seq - 1);
      const seen: number[] = [];
      let cursor = reopened.start;
      for (;;) {
        const { records, next: after } = await reopened.readChunk(cursor, 8 << 20);
        if (records.length === 0) {
          break;
        }
        for (const r of records) {
          expect(r.record.equals(written.get(r.seq)!)).toBe(true);
          seen.push(r.seq);
        }
        cursor = after;
      }
      expect(seen).toEqual(Array.from({ length: seq - 1 }, (_, i) => i + 1));
      // The tail block was read back at open: a direct write continuing the last segment keeps it.
      const more = reopened.appendAsync([record(seq, 100_000)]);
      await reopened.sync();
      expect(decodeRecord(await reopened.read(more[0]!)).seq).toBe(seq);
      expect((await reopened.read(placed[placed.length - 1]!)).equals(written.get(seq - 1)!)).toBe(true);
      await reopened.close();
    });

    // A file system that refuses O_DIRECT (tmpfs and the like), made to order on any machine: at open
    // (EINVAL from open), and at the first write (EINVAL from the write).
    it.each([
      ['open', (): unknown => jest.mocked(openDirect).mockReturnValueOnce(undefined)],
      ['write', (): unknown => jest.mocked(writeDirect).mockRejectedValueOnce(Object.assign(new Error('EINVAL: invalid argument, write'), { code: 'EINVAL' }))],
    ])('falls back to buffered writes, and says so, when the file system refuses O_DIRECT at %s', async (_when, refuse) => {
      const log = await SegmentLog.open({ dir, segmentBytes: 1 << 20, directWriteMinBytes: 64 * 1024 });
      expect(log.directWrites).toBe('on');
      refuse();
      const placed = [...log.appendAsync([record(1, 100_000)]), ...log.append([record(2, 10)]), ...log.appendAsync([record(3, 200_000)])];
      await log.sync();
      expect(log.directWrites).toBe('refused');
      for (const [i, at] of placed.entries()) {
        expect(decodeRecord(await log.read(at)).seq).toBe(i + 1);
      }
      // Buffered from then on: the file ends where the last record does, with no padding.
      expect(statSync(join(dir, segmentFileName(1))).size).toBe(placed[2]!.position + placed[2]!.length);
      await log.close();
      const plain = await SegmentLog.open({ dir, segmentBytes: 1 << 20 });
      expect(plain.directWrites).toBe('off');
      await plain.close();
    });

    it('still refuses a sealed segment that ends in anything but padding', async () => {
      const log = await SegmentLog.open({ dir, segmentBytes: 200, directWriteMinBytes: 0 });
      log.appendAsync([record(1)]);
      log.appendAsync([record(2)]);
      await log.sync();
      await log.close();
      const first = join(dir, segmentFileName(1));
      const size = statSync(first).size;
      const fd = openSync(first, 'r+');
      // Past the record, inside what would be padding: not zero, so not padding.
      writeSync(fd, Buffer.from([0x01]), 0, 1, size + 10);
      closeSync(fd);
      await expect(SegmentLog.open({ dir })).rejects.toThrow(/corrupt/);
    });
  });

  // A full disk, made to order: the file system's error (ENOSPC) from the write system call, after some
  // of the bytes went in or before any did. Everything else is the real file.
  describe('when a write fails (a full disk)', () => {
    // The module object the log calls into (an `import * as` would be a copy of it).
    const fs = jest.requireActual<typeof import('node:fs')>('node:fs');
    const enospc = (): NodeJS.ErrnoException => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28 });
    afterEach(() => jest.restoreAllMocks());

    /** Every record of the log, in order, read back after a reopen. */
    async function reopenAndReadAll(options: { segmentBytes?: number; directWriteMinBytes?: number } = {}): Promise<Buffer[]> {
      const reopened = await SegmentLog.open({ dir, ...options });
      const all: Buffer[] = [];
      let cursor = reopened.start;
      for (;;) {
        const { records, next } = await reopened.readChunk(cursor, 8 << 20);
        if (records.length === 0) {
          break;
        }
        all.push(...records.map((r) => Buffer.from(r.record)));
        cursor = next;
      }
      await reopened.close();
      return all;
    }

    it('a synchronous append that fails part way leaves the log as it was, and the next one takes its place', async () => {
      const log = await SegmentLog.open({ dir });
      const first = [record(1), record(2)];
      log.append(first);
      const realWritev = fs.writevSync;
      // The kernel takes 10 bytes, then has no room for the rest.
      jest
        .spyOn(fs, 'writevSync')
        .mockImplementationOnce((fd, buffers, position) => realWritev(fd, [(buffers[0] as Buffer).subarray(0, 10)], position))
        .mockImplementationOnce(() => {
          throw enospc();
        });
      const error = (() => {
        try {
          log.append([record(3), record(4)]);
        } catch (err) {
          return err;
        }
        return undefined;
      })();
      expect(error).toBeInstanceOf(SegmentLogError);
      expect((error as SegmentLogError).code).toBe('ENOSPC');
      expect(log.lastSeq).toBe(2);
      const end = first[0]!.length + first[1]!.length;
      expect(log.end).toEqual({ segment: 1, position: end });
      expect(statSync(join(dir, segmentFileName(1))).size).toBe(end);
      // Room again: the same seqs go where the failed ones would have.
      const retried = [record(3, 300), record(4)];
      expect(log.append(retried).map((p) => [p.position, p.seq])).toEqual([
        [end, 3],
        [end + retried[0]!.length, 4],
      ]);
      await log.close();
      expect(await reopenAndReadAll()).toEqual([...first, ...retried]);
    });

    it.each([
      ['direct', 64 * 1024, (): unknown => jest.mocked(writeDirect).mockRejectedValueOnce(enospc())],
      [
        'buffered',
        undefined,
        (): unknown =>
          jest.spyOn(fs, 'writev').mockImplementationOnce(((_fd: number, _buffers: unknown, _position: unknown, callback: (err: Error | null, written: number) => void) =>
            callback(enospc(), 0)) as unknown as typeof fs.writev),
      ],
    ])('a failed write on the thread pool (%s): the records before it stay, it and those after are refused, and recover cuts them off', async (_kind, directWriteMinBytes, fail) => {
      const segmentBytes = 600 * 1024;
      const log = await SegmentLog.open({ dir, segmentBytes, directWriteMinBytes });
      const kept = [record(1, 100_000), record(2, 100)];
      const keptAt = log.appendAsync(kept);
      await log.written();
      fail();
      const failedAt = log.appendAsync([record(3, 300_000)]);
      // Behind it, still in flight or queued: a record in the same segment, and one that rolls the segment.
      const afterAt = [...log.appendAsync([record(4, 200_000)]), ...log.appendAsync([record(5, 400_000)])];
      expect(afterAt[1]!.segment).toBe(2);
      await expect(log.written(keptAt[1])).resolves.toBeUndefined();
      await expect(log.written(failedAt[0])).rejects.toMatchObject({ name: 'SegmentLogError', code: 'ENOSPC' });
      await expect(log.written(afterAt[1])).rejects.toMatchObject({ code: 'ENOSPC' });
      expect(log.failedAt).toEqual({ segment: 1, position: failedAt[0]!.position });
      // Nothing is appended until the failed write is cut off, synchronously or not.
      expect(() => log.append([record(6)])).toThrow(/earlier append .* failed/);
      expect(() => log.appendAsync([record(6)])).toThrow(SegmentLogError);
      // A sync makes what precedes it durable, and says that what followed is lost.
      await expect(log.sync()).rejects.toMatchObject({ code: 'ENOSPC' });
      expect(log.durableEnd).toEqual({ segment: 1, position: failedAt[0]!.position });

      await expect(log.recover()).resolves.toEqual({ position: { segment: 1, position: failedAt[0]!.position }, seq: 3 });
      expect(log.failedAt).toBeUndefined();
      expect(log.lastSeq).toBe(2);
      expect(log.end).toEqual({ segment: 1, position: failedAt[0]!.position });
      expect(readdirSync(dir).filter((n) => n.endsWith('.seg'))).toEqual([segmentFileName(1)]);
      await expect(log.recover()).resolves.toBeUndefined();

      // Appends go on from there, with the seqs the refused records had, buffered and on the pool.
      const again = [record(3, 5_000), record(4, 250_000), record(5, 500_000)];
      const againAt = [...log.append([again[0]!]), ...log.appendAsync([again[1]!]), ...log.appendAsync([again[2]!])];
      expect(againAt[0]!.position).toBe(failedAt[0]!.position);
      await log.sync();
      for (const [i, at] of againAt.entries()) {
        expect((await log.read(at)).equals(again[i]!)).toBe(true);
      }
      await log.close();
      expect(await reopenAndReadAll({ segmentBytes, directWriteMinBytes })).toEqual([...kept, ...again]);
    });

    it('close cuts a failed write off, so the log opens again with everything before it', async () => {
      const log = await SegmentLog.open({ dir, segmentBytes: 300 * 1024, directWriteMinBytes: 64 * 1024 });
      const kept = [record(1, 70_000)];
      log.appendAsync(kept);
      await log.written();
      jest.mocked(writeDirect).mockRejectedValueOnce(enospc());
      log.appendAsync([record(2, 100_000)]);
      // Written after the hole, into the next segment: still refused, and cut off with it.
      log.appendAsync([record(3, 250_000)]);
      await expect(log.written()).rejects.toMatchObject({ code: 'ENOSPC' });
      await log.close();
      expect(await reopenAndReadAll()).toEqual(kept);
    });
  });

  describe('with spare segment files (spareSegments)', () => {
    const files = (): string[] => readdirSync(dir).sort();
    // Same-sized records: a reused file's older records then start exactly where the new ones end,
    // the hardest case to tell apart (whole records, valid checksums).
    const seqs = (from: number, to: number): Buffer[] => Array.from({ length: to - from + 1 }, (_, i) => record(from + i));
    const put = (segment: number, ...parts: Buffer[][]): void => writeFileSync(join(dir, segmentFileName(segment)), Buffer.concat(parts.flat()));
    const readAll = async (log: SegmentLog): Promise<number[]> => {
      const out: number[] = [];
      let cursor = log.start;
      for (;;) {
        const { records, next } = await log.readChunk(cursor, 1 << 20);
        if (records.length === 0) {
          return out;
        }
        out.push(...records.map((r) => r.seq));
        cursor = next;
      }
    };

    it('keeps deleted segments as spares, up to the number asked for, and writes new segments into them', async () => {
      const size = record(1).length;
      const log = await SegmentLog.open({ dir, segmentBytes: 4 * size, spareSegments: 2 });
      let seq = 1;
      const appendSegments = async (count: number): Promise<void> => {
        for (let i = 0; i < count * 4; i++) {
          log.append([record(seq++)]);
        }
        await log.sync();
      };
      await appendSegments(4);
      expect(log.segmentFiles).toEqual({ reused: 0, created: 4, spare: 0 });
      // Segments 1 to 3 go; two become spares, the third is deleted.
      await log.deleteThrough(12);
      expect(files()).toEqual([segmentFileName(4), '0000000000000001.spare', '0000000000000002.spare'].sort());
      expect(log.segmentFiles).toEqual({ reused: 0, created: 4, spare: 2 });
      // The next segments take the spares' files (their size shows it before anything is overwritten), then new files.
      log.append([record(seq++)]);
      expect(statSync(join(dir, segmentFileName(5))).size).toBe(4 * size);
      // Four to a segment: the rest of segment 5, segment 6 (the other spare), then a new file for 7.
      for (let i = 0; i < 8; i++) {
        log.append([record(seq++)]);
      }
      await log.sync();
      expect(log.segmentFiles).toEqual({ reused: 2, created: 5, spare: 0 });
      expect(files().filter((n) => n.endsWith('.spare'))).toEqual([]);
      expect(await readAll(log)).toEqual(Array.from({ length: seq - 13 }, (_, i) => 13 + i));
      await log.close();
    });

    it('at open, ends a segment where a reused file\'s older records begin, and appends after the newest record', async () => {
      // Segment 2 reused segment 1's file: two new records, then the rest of what it held before.
      put(1, seqs(11, 14));
      put(2, seqs(15, 16), seqs(3, 4));
      const log = await SegmentLog.open({ dir, spareSegments: 2 });
      expect(log.lastSeq).toBe(16);
      expect(log.end).toEqual({ segment: 2, position: 2 * record(1).length });
      expect(await readAll(log)).toEqual([11, 12, 13, 14, 15, 16]);
      log.append([record(17)]);
      await log.sync();
      await log.close();
      const reopened = await SegmentLog.open({ dir, spareSegments: 2 });
      expect(await readAll(reopened)).toEqual([11, 12, 13, 14, 15, 16, 17]);
      await reopened.close();
    });

    it('accepts a sealed segment that ends before its file when the next one takes the log on from it', async () => {
      put(1, seqs(21, 23), seqs(5, 6));
      put(2, seqs(24, 25), seqs(7, 8));
      const log = await SegmentLog.open({ dir, spareSegments: 2 });
      expect(await readAll(log)).toEqual([21, 22, 23, 24, 25]);
      await log.close();
    });

    it('refuses a log with records missing between segments, or a sealed segment that the next does not continue', async () => {
      put(1, seqs(21, 23), seqs(2, 3));
      put(2, seqs(26, 27));
      writeFileSync(join(dir, '0000000000000001.spare'), Buffer.concat(seqs(1, 2)));
      const before = files().map((name) => [name, statSync(join(dir, name)).size]);
      await expect(SegmentLog.open({ dir, spareSegments: 2 })).rejects.toThrow(/seq 26 where 24 was next: records are missing/);
      // A log that does not open is left as it was, spares included.
      expect(files().map((name) => [name, statSync(join(dir, name)).size])).toEqual(before);
      put(2, seqs(2, 3));
      put(3, seqs(24, 25));
      await expect(SegmentLog.open({ dir, spareSegments: 2 })).rejects.toThrow(/segment 1 of .* is corrupt at byte \d+, before the log's tail/);
    });

    it('lets a restart of the order, and only a restart, skip seqs', async () => {
      const restart = (seq: number): Buffer =>
        encodeRestartRecord({ seq, capturedAtMicros: seq, restart: { resyncId: 'r', voidFrom: 0, reason: 'journal ahead', member: null } });
      put(1, seqs(21, 23), [restart(40)], seqs(41, 42));
      const log = await SegmentLog.open({ dir, spareSegments: 2 });
      expect(await readAll(log)).toEqual([21, 22, 23, 40, 41, 42]);
      expect(log.lastSeq).toBe(42);
      await log.close();
      put(1, seqs(21, 23), seqs(40, 42));
      await expect(SegmentLog.open({ dir, spareSegments: 2 })).rejects.toThrow(/seq 40 where 24 was next: records are missing/);
    });

    it('deletes a segment only once a later one holds a durable record', async () => {
      const size = record(1).length;
      const log = await SegmentLog.open({ dir, segmentBytes: 2 * size, spareSegments: 1 });
      log.append(seqs(1, 2));
      await log.sync();
      // Rolled: segment 2's record is only in the page cache. A power loss now would leave no record
      // at all, had segment 1 gone.
      log.append([record(3)]);
      expect(await log.deleteThrough(2)).toBe(0);
      expect(files()).toEqual([segmentFileName(1), segmentFileName(2)]);
      await log.sync();
      expect(await log.deleteThrough(2)).toBe(1);
      expect(files()).toEqual(['0000000000000001.spare', segmentFileName(2)]);
      await log.close();
    });

    it('deletes spares left by the last run rather than reuse them (one may hold records with seqs the log hands out again)', async () => {
      put(1, seqs(30, 31));
      // A new segment whose new name a power loss took back: records 32 and 33, never durable.
      writeFileSync(join(dir, '0000000000000007.spare'), Buffer.concat(seqs(32, 33)));
      const log = await SegmentLog.open({ dir, spareSegments: 2 });
      expect(log.segmentFiles.spare).toBe(0);
      expect(files()).toEqual([segmentFileName(1)]);
      expect(log.lastSeq).toBe(31);
      await log.close();
    });

    it('ends the log in a torn sealed segment, cut back to its records, when the last segment holds only older records', async () => {
      // A power loss before the roll's record was on disk: record 24 torn in segment 1, a whole 25
      // after the tear and older records after that; segment 2 (a reused file) holds older records only.
      const torn = record(24).subarray(0, 60);
      put(1, seqs(21, 23), [torn], seqs(25, 25), seqs(2, 3));
      put(2, seqs(5, 8));
      const log = await SegmentLog.open({ dir, spareSegments: 2 });
      expect(log.lastSeq).toBe(23);
      expect(await readAll(log)).toEqual([21, 22, 23]);
      // Cut back, so that no file holds records newer than its own (the old 25 is gone).
      expect(statSync(join(dir, segmentFileName(1))).size).toBe(3 * record(1).length);
      expect(statSync(join(dir, segmentFileName(2))).size).toBe(0);
      // The log goes on with a new 24 and 25 in the empty last segment; a later open finds those.
      const again = [record(24, 300), record(25, 300)];
      expect(log.append([again[0]!])[0]).toMatchObject({ segment: 2, position: 0 });
      log.append([again[1]!]);
      await log.sync();
      await log.close();
      const reopened = await SegmentLog.open({ dir, spareSegments: 2 });
      expect(await readAll(reopened)).toEqual([21, 22, 23, 24, 25]);
      const { records } = await reopened.readChunk({ segment: 2, position: 0 }, 1 << 20);
      expect(records.map((r) => r.record)).toEqual(again);
      await reopened.close();
    });

    it('pads a synchronous append into a reused file with zeros to the next 4 KiB, so that no page is read from disk to write part of it', async () => {
      const log = await SegmentLog.open({ dir, segmentBytes: 64 * 1024, spareSegments: 1, directWriteMinBytes: 1 << 20 });
      let seq = 1;
      const fill = (segment: number): void => {
        while (log.end.segment === segment) {
          log.append([record(seq++, 1000)]);
        }
      };
      fill(1);
      await log.sync();
      await log.deleteThrough(seq - 2);
      expect(log.segmentFiles.spare).toBe(1);
      fill(2);
      // The record that rolled into segment 3, the spare's file: zeros after it to the 4 KiB boundary,
      // the older records past that.
      const first = (await log.readChunk({ segment: 3, position: 0 }, 1)).records[0]!;
      expect(first.seq).toBe(seq - 1);
      const file = readFileSync(join(dir, segmentFileName(3)));
      expect(log.segmentFiles).toEqual({ reused: 1, created: 2, spare: 0 });
      expect(file.subarray(first.length, 4096).every((b) => b === 0)).toBe(true);
      expect(file.subarray(4096, 8192).some((b) => b !== 0)).toBe(true);
      // A new file (segment 2) is not padded: nothing there to read.
      const second = (await log.readChunk({ segment: 2, position: 0 }, 1 << 20)).records;
      const secondEnd = second[second.length - 1]!.position + second[second.length - 1]!.length;
      expect(secondEnd % 4096).not.toBe(0);
      expect(statSync(join(dir, segmentFileName(2))).size).toBe(secondEnd);
      await log.close();
      const reopened = await SegmentLog.open({ dir, segmentBytes: 64 * 1024, spareSegments: 1, directWriteMinBytes: 1 << 20 });
      expect(reopened.lastSeq).toBe(seq - 1);
      await reopened.close();
    });

    it.each([-1, 1.5, Number.NaN])('refuses spareSegments %p, and segmentBytes too', async (bad) => {
      await expect(SegmentLog.open({ dir, spareSegments: bad })).rejects.toThrow(/spareSegments must be a whole number/);
      await expect(SegmentLog.open({ dir, segmentBytes: bad })).rejects.toThrow(/segmentBytes must be a whole number/);
      await expect(SegmentLog.open({ dir, segmentBytes: 0 })).rejects.toThrow(RangeError);
      expect(files()).toEqual([]);
    });
  });
});
