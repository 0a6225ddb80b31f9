import { closeSync, ftruncateSync, openSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, type TempDir } from '@cdp/testing';
import { adviseRandomAccess, fileRuns, nextDataRange } from './native-file';

const MiB = 1024 * 1024;

describe('native file calls', () => {
  let dir: TempDir;

  beforeEach(async () => {
    dir = await tempDir('native-file-');
  });

  afterEach(() => dir.cleanup());

  it('advises an open file and says why it could not for anything else, without throwing', () => {
    const fd = openSync(join(dir.path, 'file'), 'w+');
    expect(adviseRandomAccess(fd)).toBeNull();
    closeSync(fd);
    expect(adviseRandomAccess(fd)).toMatch(/POSIX_FADV_RANDOM\): Bad file descriptor/);
    expect(adviseRandomAccess(-1)).toMatch(/takes one file descriptor/);
  });

  it('finds the ranges of a sparse file that hold data, written or only in the page cache, and skips its holes', () => {
    const fd = openSync(join(dir.path, 'sparse'), 'w+');
    try {
      ftruncateSync(fd, 16 * MiB);
      writeSync(fd, Buffer.alloc(8192, 1), 0, 8192, 3 * MiB);
      writeSync(fd, Buffer.alloc(MiB, 2), 0, MiB, 10 * MiB);
      const ranges = [];
      for (let range = nextDataRange(fd, 0, 16 * MiB); range; range = nextDataRange(fd, range.end, 16 * MiB)) {
        ranges.push(range);
      }
      // File systems track data in blocks (4 KiB here); the ranges cover the writes and no more than their blocks.
      expect(ranges).toEqual([
        { start: 3 * MiB, end: 3 * MiB + 8192 },
        { start: 10 * MiB, end: 11 * MiB },
      ]);
      // Cut at the end asked for; nothing where only holes are left.
      expect(nextDataRange(fd, 3 * MiB + 4096, 10 * MiB + 512)).toEqual({ start: 3 * MiB + 4096, end: 3 * MiB + 8192 });
      expect(nextDataRange(fd, 10 * MiB, 10 * MiB + 512)).toEqual({ start: 10 * MiB, end: 10 * MiB + 512 });
      expect(nextDataRange(fd, 4 * MiB, 10 * MiB)).toBeNull();
      expect(nextDataRange(fd, 11 * MiB, 16 * MiB)).toBeNull();
      expect(nextDataRange(fd, 5 * MiB, 5 * MiB)).toBeNull();
    } finally {
      closeSync(fd);
    }
    // A descriptor lseek refuses: the whole range, for the caller's read to fail on with its own error.
    expect(nextDataRange(fd, 0, MiB)).toEqual({ start: 0, end: MiB });
  });

  it('cuts a range into runs of data and holes, at most as many as asked for', () => {
    const fd = openSync(join(dir.path, 'runs'), 'w+');
    try {
      ftruncateSync(fd, 16 * MiB);
      writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, MiB);
      writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 2 * MiB);
      expect(fileRuns(fd, 0, 16 * MiB, 100)).toEqual([
        { start: 0, end: MiB, data: false },
        { start: MiB, end: MiB + 4096, data: true },
        { start: MiB + 4096, end: 2 * MiB, data: false },
        { start: 2 * MiB, end: 2 * MiB + 4096, data: true },
        { start: 2 * MiB + 4096, end: 16 * MiB, data: false },
      ]);
      expect(fileRuns(fd, MiB + 2048, 2 * MiB + 1024, 100)).toEqual([
        { start: MiB + 2048, end: MiB + 4096, data: true },
        { start: MiB + 4096, end: 2 * MiB, data: false },
        { start: 2 * MiB, end: 2 * MiB + 1024, data: true },
      ]);
      expect(fileRuns(fd, 0, 16 * MiB, 3)).toEqual([
        { start: 0, end: MiB, data: false },
        { start: MiB, end: MiB + 4096, data: true },
        { start: MiB + 4096, end: 2 * MiB, data: false },
      ]);
      expect(fileRuns(fd, 0, 16 * MiB, 1)).toEqual([{ start: 0, end: MiB, data: false }]);
      expect(fileRuns(fd, 4 * MiB, 4 * MiB, 10)).toEqual([]);
    } finally {
      closeSync(fd);
    }
    // Where lseek cannot tell: all data.
    expect(fileRuns(fd, 0, MiB, 10)).toEqual([{ start: 0, end: MiB, data: true }]);
  });
});
