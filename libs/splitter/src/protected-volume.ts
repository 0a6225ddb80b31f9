import { closeSync, constants, fdatasync as fdatasyncCb, ftruncateSync, fstatSync, openSync, read as readCb, readSync, write as writeCb, writeSync, writev as writevCb, writevSync } from 'node:fs';
import { type Volume } from '@cdp/domain';
import { adviseRandomAccess, type FileRange, type FileRun, fileRuns, nextDataRange } from '@cdp/native-file';

/** `fs.fdatasync` looked up at each call, so that tests can make one slow or fail. */
const fdatasync = (fd: number): Promise<void> => new Promise((resolve, reject) => fdatasyncCb(fd, (err) => (err ? reject(err) : resolve())));
const writeAt = (fd: number, data: Buffer, offset: number, length: number, position: number): Promise<number> =>
  new Promise((resolve, reject) => writeCb(fd, data, offset, length, position, (err, written) => (err ? reject(err) : resolve(written))));
const readAt = (fd: number, buf: Buffer, length: number, position: number): Promise<number> =>
  new Promise((resolve, reject) => readCb(fd, buf, 0, length, position, (err, got) => (err ? reject(err) : resolve(got))));
const writevAt = (fd: number, buffers: readonly Buffer[], position: number): Promise<number> =>
  new Promise((resolve, reject) => writevCb(fd, buffers, position, (err, written) => (err ? reject(err) : resolve(written))));

/**
 * A protected volume's local copy: a (sparse) file of the volume's size. Writes are positioned writes
 * into the page cache, synchronous or on libuv's thread pool (`writeVectorAsync`), issued by the VPG's
 * capture so that writes to overlapping bytes land in seq order (disjoint ones may be in flight
 * together); `sync()` makes them durable.
 *
 * Unlike the splitter log and the journal, the volume writes through the page cache even when large:
 * its pages are reused (a volume has a fixed size), which keeps the copy cheap, and the write is
 * acknowledged once the page cache has it, as a disk acknowledges once its cache has it. Measured with
 * 1 MiB sequential writes (the all-in-one, fio QD4, 20 s, alternated): 220 and 243 MB/s buffered
 * against 186 and 214 MB/s with O_DIRECT, at the same CPU per byte.
 *
 * The page cache must hold the volume in small folios, or every later 4 KiB write costs the kernel a
 * walk over a large one (docs/architecture.md, "Large folios in the volume's page cache"): so no
 * write call spans more than 64 KiB of the file (large batches are cut, and their pieces go to the
 * thread pool side by side), and readahead is off for the file (`@cdp/native-file`).
 */
export class ProtectedVolume {
  private dirty = false;
  /** fdatasync calls in flight. */
  private readonly syncing = new Set<Promise<void>>();

  private constructor(
    readonly volume: Volume,
    private readonly fd: number,
    /** Null when the kernel's readahead is off for this file (see `@cdp/native-file`), else why it is not. */
    readonly readaheadOn: string | null,
  ) {}

  static open(volume: Volume, path: string): ProtectedVolume {
    const fd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o600);
    const size = fstatSync(fd).size;
    if (size === 0) {
      ftruncateSync(fd, volume.sizeBytes);
    } else if (size !== volume.sizeBytes) {
      closeSync(fd);
      throw new Error(`volume file ${path} is ${size} bytes but volume ${volume.name} is ${volume.sizeBytes}`);
    }
    return new ProtectedVolume(volume, fd, adviseRandomAccess(fd));
  }

  write(offset: number, data: Buffer): void {
    if (data.length > PIECE_BYTES) {
      this.writeVector(offset, [data]);
      return;
    }
    let done = 0;
    while (done < data.length) {
      done += writeSync(this.fd, data, done, data.length - done, offset + done);
    }
    this.dirty = true;
  }

  /** Writes `buffers` back to back from `offset`: one vectored write for each 64 KiB window of the file they cover. */
  writeVector(offset: number, buffers: readonly Buffer[]): void {
    for (const piece of pieces(offset, buffers)) {
      let pending = piece.buffers;
      let at = piece.offset;
      while (pending.length > 0) {
        const written = writevSync(this.fd, pending, at);
        at += written;
        pending = dropWritten(pending, written);
      }
    }
    this.dirty = true;
  }

  /**
   * As `writeVector`, on the thread pool, the windows side by side. The caller never has two in flight
   * over the same bytes.
   * Dirty before it starts and again once it is in: a `sync()` that began while it ran may not cover it.
   */
  async writeVectorAsync(offset: number, buffers: readonly Buffer[]): Promise<void> {
    this.dirty = true;
    // Every piece settles before this does, failed or not: the caller orders overlapping writes by
    // this promise, and a piece still in flight after it rejected could land over a later write.
    const settled = await Promise.allSettled(
      pieces(offset, buffers).map(async (piece) => {
        let pending = piece.buffers;
        let at = piece.offset;
        while (pending.length > 0) {
          const only = pending.length === 1 ? pending[0] : undefined;
          const written = only ? await writeAt(this.fd, only, 0, only.length, at) : await writevAt(this.fd, pending, at);
          at += written;
          pending = dropWritten(pending, written);
        }
      }),
    );
    const failed = settled.find((result): result is PromiseRejectedResult => result.status === 'rejected');
    if (failed) {
      throw failed.reason;
    }
    this.dirty = true;
  }

  read(offset: number, length: number): Buffer {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const got = readSync(this.fd, buf, done, length - done, offset + done);
      if (got === 0) {
        break;
      }
      done += got;
    }
    return buf;
  }

  /**
   * The parts of [offset, end) that are not all zeros now, in order: windows of PIECE_BYTES of the
   * file (cut at `offset` and `end`), neighbours merged. The file system's holes are skipped without
   * being read (lseek's SEEK_DATA, see `@cdp/native-file`); the rest is read a ZERO_SCAN_BYTES chunk at a
   * time, on the thread pool, and looked at. A write that lands while the scan runs may or may not be
   * seen: the caller treats it as concurrent with the scan.
   */
  async *nonZeroRuns(offset: number, end: number): AsyncGenerator<FileRange> {
    let run: { start: number; end: number } | undefined;
    let buf: Buffer | undefined;
    for (let scanned = offset, data = nextDataRange(this.fd, offset, end); data; data = nextDataRange(this.fd, scanned, end)) {
      // Whole windows are looked at (the hole before the data in its first window reads as zeros), so
      // two data ranges in one window are looked at once.
      const stop = Math.min(end, windowEnd(data.end));
      for (let at = Math.max(scanned, windowStart(data.start)); at < stop; ) {
        const chunkEnd = Math.min(stop, windowStart(at) + ZERO_SCAN_BYTES);
        buf ??= Buffer.allocUnsafe(ZERO_SCAN_BYTES);
        const length = chunkEnd - at;
        let got = 0;
        while (got < length) {
          const n = await readAt(this.fd, buf.subarray(got), length - got, at + got);
          if (n === 0) {
            // Past the end of the file (never, for a volume of its size): zeros.
            buf.fill(0, got, length);
            break;
          }
          got += n;
        }
        for (let piece = at; piece < chunkEnd; ) {
          const pieceEnd = Math.min(chunkEnd, windowStart(piece) + PIECE_BYTES);
          if (!isZero(buf.subarray(piece - at, pieceEnd - at))) {
            if (run && run.end === piece) {
              run.end = pieceEnd;
            } else {
              if (run) {
                yield run;
              }
              run = { start: piece, end: pieceEnd };
            }
          }
          piece = pieceEnd;
        }
        at = chunkEnd;
      }
      scanned = stop;
    }
    if (run) {
      yield run;
    }
  }

  /**
   * [offset, end) of the volume file as runs of data and holes, at most `limit` of them (see
   * `fileRuns`). A hole is a stretch no write ever reached (zeroing skips what is zero already, and a
   * discard punches nothing), so it reads as zeros; synchronous, a few lseek calls.
   */
  runs(offset: number, end: number, limit: number): FileRun[] {
    return fileRuns(this.fd, offset, end, limit);
  }

  /**
   * Everything written before the call is durable once this resolves. Flushes come in bursts (fio
   * sends several per 32 writes), and the syncs of a burst overlap: one that finds nothing written
   * since the last began still waits for every sync in flight, since those are what make its writes
   * durable; and each waits for those begun before it, since on Linux only one of two fdatasync calls
   * on a descriptor may report a writeback error.
   */
  async sync(): Promise<void> {
    const earlier = [...this.syncing];
    if (!this.dirty) {
      await Promise.all(earlier);
      return;
    }
    this.dirty = false;
    const own = fdatasync(this.fd).catch((err: unknown) => {
      this.dirty = true;
      throw err;
    });
    this.syncing.add(own);
    const forget = (): boolean => this.syncing.delete(own);
    own.then(forget, forget);
    await Promise.all([own, ...earlier]);
  }

  close(): void {
    closeSync(this.fd);
  }
}

/**
 * The most one write call puts into the volume. The kernel sizes a page-cache folio by the write that
 * creates it; ext4 then walks every block of a folio on each write into it. Measured with a 2 GiB file
 * filled sequentially, then written at random in 4 KiB (C, Linux 6.18): 3.2 µs a random write after a
 * fill in 4 KiB writes, 5.1 after 64 KiB ones, 8.2 after 128 KiB, 24 after 1 MiB. The fill itself was
 * fastest in 64 to 256 KiB writes (940 to 1060 MB/s, 680 in 1 MiB ones).
 */
export const PIECE_BYTES = 64 * 1024;

/** How much of a volume `nonZeroRuns` reads at a time. */
const ZERO_SCAN_BYTES = 1024 * 1024;
const ZERO_PIECE = Buffer.alloc(PIECE_BYTES);

function windowStart(offset: number): number {
  return offset - (offset % PIECE_BYTES);
}

function windowEnd(offset: number): number {
  return windowStart(offset + PIECE_BYTES - 1);
}

function isZero(bytes: Buffer): boolean {
  return bytes.equals(ZERO_PIECE.subarray(0, bytes.length));
}

/** `buffers` (written back to back from `offset`) cut at every PIECE_BYTES boundary of the file. */
export function pieces(offset: number, buffers: readonly Buffer[]): { offset: number; buffers: Buffer[] }[] {
  const out: { offset: number; buffers: Buffer[] }[] = [];
  let at = offset;
  let current: Buffer[] = [];
  let currentAt = offset;
  for (const buffer of buffers) {
    let from = 0;
    while (from < buffer.length) {
      const boundary = (Math.floor(at / PIECE_BYTES) + 1) * PIECE_BYTES;
      const take = Math.min(buffer.length - from, boundary - at);
      current.push(from === 0 && take === buffer.length ? buffer : buffer.subarray(from, from + take));
      from += take;
      at += take;
      if (at === boundary) {
        out.push({ offset: currentAt, buffers: current });
        current = [];
        currentAt = at;
      }
    }
  }
  if (current.length > 0) {
    out.push({ offset: currentAt, buffers: current });
  }
  return out;
}

/** What is left of `buffers` after the first `written` bytes went in (writev may stop short). */
function dropWritten(buffers: readonly Buffer[], written: number): Buffer[] {
  let left = written;
  let i = 0;
  while (i < buffers.length && left >= (buffers[i] as Buffer).length) {
    left -= (buffers[i] as Buffer).length;
    i++;
  }
  const rest = buffers.slice(i);
  if (left > 0 && rest.length > 0) {
    rest[0] = (rest[0] as Buffer).subarray(left);
  }
  return rest;
}
