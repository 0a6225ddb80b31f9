import type * as fs from 'node:fs';
import { closeSync, openSync, readSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Volume } from '@cdp/domain';
import { itWithTools, randomBuffer, runToolOk, seededRandom, tempDir, waitFor, type TempDir } from '@cdp/testing';
import { PIECE_BYTES, ProtectedVolume, pieces } from './protected-volume';

const MiB = 1024 * 1024;
const volume: Volume = { id: '0a1b2c3d-0000-4000-8000-000000000211', name: 'disk', index: 0, sizeBytes: 8 * MiB, blockSize: 512 };

describe('pieces', () => {
  it('cuts a run of buffers at every 64 KiB boundary of the file, in order, losing and adding nothing', () => {
    const random = seededRandom(7);
    const source = randomBuffer(random, 2 * MiB);
    const slice = (): Buffer => {
      const from = Math.floor(random() * MiB);
      return source.subarray(from, from + Math.floor(random() * 300_000));
    };
    for (let round = 0; round < 200; round++) {
      const offset = Math.floor(random() * 4 * MiB);
      const buffers = Array.from({ length: 1 + Math.floor(random() * 6) }, slice);
      const cut = pieces(offset, buffers);
      let at = offset;
      for (const piece of cut) {
        const length = piece.buffers.reduce((sum, b) => sum + b.length, 0);
        expect(piece.offset).toBe(at);
        expect(length).toBeGreaterThan(0);
        // Within one aligned window of the file.
        expect(Math.floor(piece.offset / PIECE_BYTES)).toBe(Math.floor((piece.offset + length - 1) / PIECE_BYTES));
        at += length;
      }
      expect(Buffer.concat(cut.flatMap((p) => p.buffers)).equals(Buffer.concat(buffers))).toBe(true);
      // As few pieces as the windows allow.
      const total = at - offset;
      expect(cut.length).toBe(total === 0 ? 0 : Math.floor((offset + total - 1) / PIECE_BYTES) - Math.floor(offset / PIECE_BYTES) + 1);
    }
  });
});

describe('ProtectedVolume', () => {
  let dir: TempDir;
  let opened: ProtectedVolume | undefined;

  beforeEach(async () => {
    dir = await tempDir('protected-volume-');
  });

  afterEach(async () => {
    opened?.close();
    opened = undefined;
    await dir.cleanup();
  });

  it('writes large and unaligned runs, synchronously and on the thread pool, byte for byte', async () => {
    const random = seededRandom(11);
    const file = join(dir.path, '0.img');
    opened = ProtectedVolume.open(volume, file);
    const expected = Buffer.alloc(volume.sizeBytes);
    for (let round = 0; round < 30; round++) {
      const buffers = Array.from({ length: 1 + Math.floor(random() * 4) }, () => randomBuffer(random, 1 + Math.floor(random() * 400_000)));
      const length = buffers.reduce((sum, b) => sum + b.length, 0);
      const offset = Math.floor(random() * (volume.sizeBytes - length));
      const how = round % 3;
      if (how === 0) {
        opened.write(offset, Buffer.concat(buffers));
      } else if (how === 1) {
        opened.writeVector(offset, buffers);
      } else {
        await opened.writeVectorAsync(offset, buffers);
      }
      Buffer.concat(buffers).copy(expected, offset);
    }
    expect(opened.read(0, volume.sizeBytes).equals(expected)).toBe(true);
  });

  it('finds the parts of a range that are not zero, in 64 KiB windows of the file, holes and written zeros alike', async () => {
    const random = seededRandom(5);
    opened = ProtectedVolume.open(volume, join(dir.path, '0.img'));
    const expected = Buffer.alloc(volume.sizeBytes);
    // Two writes in one window (a hole between them), a write across a window boundary, zeros written
    // over a whole window (data to the file system, zero to the scan), then random ones.
    const writes: [number, Buffer][] = [
      [64 * 1024 + 100, Buffer.alloc(10, 1)],
      [64 * 1024 + 40_000, Buffer.alloc(10, 2)],
      [3 * 64 * 1024 - 5, Buffer.alloc(10, 3)],
      [5 * 64 * 1024, Buffer.alloc(64 * 1024)],
    ];
    for (let i = 0; i < 40; i++) {
      const length = 1 + Math.floor(random() * (random() < 0.8 ? 5000 : 300_000));
      const zero = random() < 0.3;
      writes.push([MiB + Math.floor(random() * (volume.sizeBytes - MiB - length)), zero ? Buffer.alloc(length) : randomBuffer(random, length)]);
    }
    for (const [offset, data] of writes) {
      opened.write(offset, data);
      data.copy(expected, offset);
    }
    const reference = (offset: number, end: number): { start: number; end: number }[] => {
      const runs: { start: number; end: number }[] = [];
      for (let at = offset; at < end; ) {
        const next = Math.min(end, (Math.floor(at / PIECE_BYTES) + 1) * PIECE_BYTES);
        if (!expected.subarray(at, next).every((b) => b === 0)) {
          const last = runs[runs.length - 1];
          if (last && last.end === at) {
            last.end = next;
          } else {
            runs.push({ start: at, end: next });
          }
        }
        at = next;
      }
      return runs;
    };
    const scan = async (offset: number, end: number): Promise<{ start: number; end: number }[]> => {
      const runs = [];
      for await (const run of (opened as ProtectedVolume).nonZeroRuns(offset, end)) {
        runs.push({ ...run });
      }
      return runs;
    };
    // Windows 1 to 3 hold data (neighbours: one run), window 5 only zeros.
    expect(await scan(0, MiB)).toEqual([{ start: 64 * 1024, end: 4 * 64 * 1024 }]);
    expect(await scan(64 * 1024 + 200, 64 * 1024 + 40_005)).toEqual([{ start: 64 * 1024 + 200, end: 64 * 1024 + 40_005 }]);
    expect(await scan(0, volume.sizeBytes)).toEqual(reference(0, volume.sizeBytes));
    for (let round = 0; round < 50; round++) {
      const offset = Math.floor(random() * volume.sizeBytes);
      const end = offset + 1 + Math.floor(random() * (volume.sizeBytes - offset));
      expect(await scan(offset, end)).toEqual(reference(offset, end));
    }
  });

  it('settles a write cut in pieces only once every piece has, when one of them fails', async () => {
    opened = ProtectedVolume.open(volume, join(dir.path, '0.img'));
    // The module object the volume calls into (an `import * as` would be a copy of it).
    const realFs = jest.requireActual<typeof fs>('node:fs');
    const held: (() => void)[] = [];
    let calls = 0;
    const spy = jest.spyOn(realFs, 'write').mockImplementation(((...args: unknown[]) => {
      const callback = args[args.length - 1] as (err: NodeJS.ErrnoException | null, written?: number) => void;
      calls++;
      if (calls === 1) {
        process.nextTick(() => callback(Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28 })));
      } else {
        held.push(() => callback(null, args[3] as number));
      }
    }) as never);
    try {
      let outcome: unknown = 'pending';
      const write = opened.writeVectorAsync(0, [Buffer.alloc(4 * PIECE_BYTES, 1)]).then(
        () => (outcome = 'written'),
        (err: unknown) => (outcome = err),
      );
      await waitFor(() => held.length === 3, { timeoutMs: 5_000, message: 'the other three pieces were never issued' });
      // The first piece's failure has been delivered (a tick after its call, before the others were
      // issued); one turn of the event loop runs every continuation it could have started.
      await new Promise((resolve) => setImmediate(resolve));
      expect(outcome).toBe('pending');
      for (const release of held) {
        release();
      }
      await write;
      expect((outcome as NodeJS.ErrnoException).code).toBe('ENOSPC');
    } finally {
      spy.mockRestore();
    }
  });

  describe('sync', () => {
    // The module object the volume calls into (an `import * as` would be a copy of it).
    const realFs = jest.requireActual<typeof fs>('node:fs');
    const realFdatasync = realFs.fdatasync;
    afterEach(() => jest.restoreAllMocks());

    /** The next fdatasync is done by the kernel at once, and its result delivered only on `release` (with an error, or none). */
    function holdNextFdatasync(): { release: (err?: NodeJS.ErrnoException) => void } {
      let release!: (err?: NodeJS.ErrnoException) => void;
      const released = new Promise<NodeJS.ErrnoException | undefined>((resolve) => (release = resolve));
      jest.spyOn(realFs, 'fdatasync').mockImplementationOnce(((fd: number, callback: (err: NodeJS.ErrnoException | null) => void) =>
        realFdatasync(fd, (err) => void released.then((failure) => callback(failure ?? err)))) as typeof fs.fdatasync);
      return { release };
    }

    /** Whether `promise` has settled once every callback the event loop could run has run. */
    async function settledYet(promise: Promise<unknown>): Promise<boolean> {
      let settled = false;
      promise.then(
        () => (settled = true),
        () => (settled = true),
      );
      await new Promise((resolve) => setImmediate(resolve));
      return settled;
    }

    it('with nothing written since the last sync began, waits for that one to finish rather than return at once', async () => {
      opened = ProtectedVolume.open(volume, join(dir.path, '0.img'));
      opened.write(0, Buffer.alloc(4096, 1));
      const held = holdNextFdatasync();
      const first = opened.sync();
      // A second flush of the same writes: the first sync is what makes them durable.
      const second = opened.sync();
      expect(await settledYet(second)).toBe(false);
      held.release();
      await first;
      await second;
    });

    it('fails a sync that overlapped a failed one, whether it had writes of its own or not', async () => {
      opened = ProtectedVolume.open(volume, join(dir.path, '0.img'));
      opened.write(0, Buffer.alloc(4096, 1));
      const held = holdNextFdatasync();
      const failing = opened.sync();
      const covered = opened.sync();
      opened.write(4096, Buffer.alloc(4096, 2));
      const beside = opened.sync();
      held.release(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO', errno: -5 }));
      await expect(failing).rejects.toThrow('EIO');
      await expect(covered).rejects.toThrow('EIO');
      await expect(beside).rejects.toThrow('EIO');
      // The failed sync's writes are dirty again: the next sync tries them once more.
      await opened.sync();
    });
  });

  itWithTools(['dd', 'fincore'], 'turns the kernel readahead off for its file, so a read caches only what it read', async () => {
    const file = join(dir.path, '0.img');
    writeFileSync(file, randomBuffer(seededRandom(3), volume.sizeBytes));
    const cachedAfterReadingFirstBlock = async (read: () => void): Promise<number> => {
      // Clean pages out of the page cache (dd's nocache is posix_fadvise POSIX_FADV_DONTNEED).
      await runToolOk('dd', [`if=${file}`, 'iflag=nocache', 'count=0']);
      read();
      const { stdout } = await runToolOk('fincore', ['--bytes', '--noheadings', '--output', 'RES', file]);
      return Number(stdout.trim());
    };
    // The control: a plain descriptor of the same file gets the kernel's readahead.
    const fd = openSync(file, 'r');
    try {
      const plain = await cachedAfterReadingFirstBlock(() => readSync(fd, Buffer.alloc(4096), 0, 4096, 0));
      if (plain <= 4096) {
        throw new Error(`the file system under ${dir.path} did no readahead for a plain read (${plain} bytes cached), so this test cannot tell anything`);
      }
    } finally {
      closeSync(fd);
    }
    opened = ProtectedVolume.open(volume, file);
    expect(opened.readaheadOn).toBeNull();
    expect(await cachedAfterReadingFirstBlock(() => opened?.read(0, 4096))).toBe(4096);
  });
});
