import { constants, openSync, write as writeCb } from 'node:fs';

/**
 * Writes that bypass the page cache (O_DIRECT), for the large appends of a log (the splitter's, the
 * journal's).
 *
 * Why: on the virtual machines this runs on, a buffered write that lands in a page the page cache has
 * not used before costs about 1 CPU-second per GB (the copy into a freshly allocated page: first pass
 * over a file 552 MB/s at 100% of a core; the same file again, its pages cached, 3.1 GB/s), and a log
 * or a journal only ever writes new pages. A direct write from memory that is reused costs a copy into
 * that memory (tens of GB/s) and almost no CPU in the kernel (fio: 920 MB/s at 8% of a core).
 *
 * O_DIRECT asks for the memory address, the file position and the length to be multiples of the
 * device's logical block size. DIRECT_IO_ALIGNMENT (4096) satisfies both 512-byte and 4 KiB sectors.
 * Node's Buffers are not aligned (malloc puts them 16 bytes past a page), so the bytes are copied into
 * staging memory that is: a WebAssembly.Memory, which V8 maps at a page boundary. Should a file
 * system or a device refuse (EINVAL: tmpfs, some network file systems, larger sectors), the caller
 * falls back to buffered writes, which are always correct.
 */
export const DIRECT_IO_ALIGNMENT = 4096;

/** Bytes of staging memory per direct write: a larger write is made in chunks of this size. */
export const DIRECT_CHUNK_BYTES = 2 * 1024 * 1024;

const WASM_PAGE_BYTES = 64 * 1024;
// The one WebAssembly API used, typed here: the project's lib settings leave out the DOM types.
const { Memory } = (globalThis as unknown as { WebAssembly: { Memory: new (descriptor: { initial: number }) => { buffer: ArrayBuffer } } }).WebAssembly;
const POOL_LIMIT = 8;
const pool: Buffer[] = [];

export const alignDown = (n: number): number => n - (n % DIRECT_IO_ALIGNMENT);
export const alignUp = (n: number): number => alignDown(n + DIRECT_IO_ALIGNMENT - 1);

/** Direct writes cannot be made here (no aligned memory to stage them in). */
class DirectIoUnavailable extends Error {
  override readonly name = 'DirectIoUnavailable';
}

/** Page-aligned staging memory of DIRECT_CHUNK_BYTES, reused across writes (see the module comment). */
function takeStaging(): Buffer {
  const reused = pool.pop();
  if (reused) {
    return reused;
  }
  try {
    return Buffer.from(new Memory({ initial: DIRECT_CHUNK_BYTES / WASM_PAGE_BYTES }).buffer);
  } catch (err) {
    // V8 reserves address space generously for it: a process under a tight `ulimit -v` may get none.
    throw new DirectIoUnavailable('no page-aligned staging memory for direct writes', { cause: err });
  }
}

function giveBack(staging: Buffer): void {
  if (pool.length < POOL_LIMIT) {
    pool.push(staging);
  }
}

/** Opens `path` for direct writes; undefined where the file system does not support O_DIRECT. */
export function openDirect(path: string): number | undefined {
  try {
    return openSync(path, constants.O_WRONLY | constants.O_DIRECT);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EINVAL') {
      return undefined;
    }
    throw err;
  }
}

/**
 * True for the error a direct write gets when the file system or device will not take it as aligned,
 * or when there is no aligned memory to stage it in: nothing was written, and a buffered write will do.
 */
export function isDirectIoRefusal(err: unknown): boolean {
  return err instanceof DirectIoUnavailable || (err as NodeJS.ErrnoException | undefined)?.code === 'EINVAL';
}

const writeAt = (fd: number, data: Buffer, length: number, position: number): Promise<number> =>
  new Promise((resolve, reject) => writeCb(fd, data, 0, length, position, (err, written) => (err ? reject(err) : resolve(written))));

/**
 * Writes `head` then `buffers` back to back at `position` with O_DIRECT, on libuv's thread pool.
 * `position` must be aligned; `head` is what the file already holds (or must hold) between `position`
 * and where `buffers` start, so that the first block can be written whole. The last block is padded
 * with zeros: the file may end up to DIRECT_IO_ALIGNMENT - 1 bytes past the data, and the next write
 * overwrites that padding (its head then being those same bytes).
 *
 * The buffers must not change until the promise settles. Rejects with the write's error; a refusal
 * (isDirectIoRefusal) can only come from the first chunk, before anything was written.
 */
export async function writeDirect(fd: number, position: number, head: Buffer, buffers: readonly Buffer[]): Promise<void> {
  if (position % DIRECT_IO_ALIGNMENT !== 0 || head.length >= DIRECT_IO_ALIGNMENT) {
    throw new RangeError(`direct write at ${position} with a head of ${head.length} bytes is not aligned`);
  }
  const staging = takeStaging();
  try {
    let at = position;
    let fill = head.copy(staging, 0);
    const flush = async (length: number): Promise<void> => {
      let done = 0;
      while (done < length) {
        // Aligned short writes are possible in principle (a signal); the rest is still aligned.
        const written = await writeAt(fd, done === 0 ? staging : staging.subarray(done), length - done, at + done);
        if (written === 0 || written % DIRECT_IO_ALIGNMENT !== 0) {
          throw new Error(`direct write of ${length - done} bytes at ${at + done} wrote ${written}`);
        }
        done += written;
      }
      at += length;
    };
    for (const buffer of buffers) {
      let from = 0;
      while (from < buffer.length) {
        const taken = buffer.copy(staging, fill, from, Math.min(buffer.length, from + (DIRECT_CHUNK_BYTES - fill)));
        from += taken;
        fill += taken;
        if (fill === DIRECT_CHUNK_BYTES) {
          await flush(fill);
          fill = 0;
        }
      }
    }
    if (fill > 0) {
      const padded = alignUp(fill);
      staging.fill(0, fill, padded);
      await flush(padded);
    }
  } finally {
    giveBack(staging);
  }
}
