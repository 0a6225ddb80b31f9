import { constants } from 'node:fs';
import { open, rm, type FileHandle } from 'node:fs/promises';
import { type BlockDevice, type BlockExtent, type DeviceCapabilities, NBD_STATE_HOLE, NBD_STATE_ZERO } from '@cdp/nbd';
import { type PitView } from '@cdp/journal-store';
import { type FileRun, fileRuns } from '@cdp/native-file';

/** Overlay bookkeeping is kept per 1 MiB region, so a large, mostly untouched volume costs nothing. */
const REGION_BYTES = 1024 * 1024;
// Never written to: what zeroing writes over blocks the overlay took.
const ZEROES = Buffer.alloc(REGION_BYTES);
/** The most runs one block status answer carries; the client asks again for the rest. */
const STATUS_RUNS = 1024;

/**
 * A point-in-time view of a volume as an NBD block device. Read-only, or writable through a scratch
 * overlay: a sparse file that takes every write, with a bitmap of the blocks written. Reads take
 * written blocks from the overlay and everything else from the view. The journal and the replica are
 * never written, so a test failover can use the volume while replication goes on; the overlay is
 * deleted when the export closes.
 *
 * The overlay is not durable (nothing asks it to be: a test failover's writes are thrown away), so the
 * device advertises no flush; it is shared by every connection to the export and has no cache, so
 * several connections see one state.
 */
export class PitExportDevice implements BlockDevice {
  readonly size: number;
  readonly blockSize: 512 | 4096;
  readonly readOnly: boolean;
  readonly capabilities: DeviceCapabilities;
  private readonly written = new Map<number, Uint8Array>();

  private constructor(
    private readonly view: PitView,
    blockSize: 512 | 4096,
    private readonly overlay: { readonly path: string; readonly handle: FileHandle } | undefined,
  ) {
    this.size = view.sizeBytes;
    this.blockSize = blockSize;
    this.readOnly = overlay === undefined;
    this.capabilities = overlay ? { writeZeroes: true, trim: true, multiConn: true } : { multiConn: true };
  }

  /** `overlayPath` makes the device writable; the file is created (it must not exist) and removed on close. */
  static async open(view: PitView, blockSize: 512 | 4096, overlayPath?: string): Promise<PitExportDevice> {
    if (!overlayPath) {
      return new PitExportDevice(view, blockSize, undefined);
    }
    const handle = await open(overlayPath, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600);
    await handle.truncate(view.sizeBytes);
    return new PitExportDevice(view, blockSize, { path: overlayPath, handle });
  }

  get overlayBytes(): number {
    let blocks = 0;
    for (const bits of this.written.values()) {
      for (const byte of bits) {
        blocks += popcount(byte);
      }
    }
    return blocks * this.blockSize;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const buf = await this.view.read(offset, length);
    if (this.overlay) {
      for (const { from, bytes } of this.writtenRuns(offset, length)) {
        await this.overlay.handle.read(buf, from - offset, bytes, from);
      }
    }
    return buf;
  }

  /** The view lends the buffers of its reads out of a small pool: each goes back once its reply is sent. */
  release(data: Buffer): void {
    this.view.release(data);
  }

  async write(offset: number, data: Buffer): Promise<void> {
    const overlay = this.writable();
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await overlay.handle.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
    this.mark(offset, data.length);
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  /**
   * Blocks the overlay never took are holes in its file (it starts as one), which read as zeros: they
   * are only marked. Blocks it took are written over with zeros. A guest's discard of its free space
   * or a `mkfs` zeroing its tables costs the overlay's bitmap, not the bytes.
   */
  async writeZeroes(offset: number, length: number): Promise<void> {
    const overlay = this.writable();
    for (const { from, bytes } of this.writtenRuns(offset, length)) {
      for (let at = from; at < from + bytes; at += ZEROES.length) {
        const chunk = Math.min(ZEROES.length, from + bytes - at);
        let done = 0;
        while (done < chunk) {
          done += (await overlay.handle.write(ZEROES, done, chunk - done, at + done)).bytesWritten;
        }
      }
    }
    this.mark(offset, length);
  }

  /**
   * Allocation for NBD's block status: the view's (journal writes and the replica's data; holes read
   * as zeros) wherever the overlay took nothing, and the overlay file's own data and holes where it
   * did (a block only zeroed there is a hole of the file). Stops early where the view's answer does
   * (before a 64 MiB region with journal writes it has not looked at) or after STATUS_RUNS runs: the
   * client asks again from there.
   */
  async blockStatus(offset: number, length: number): Promise<readonly BlockExtent[]> {
    const end = offset + length;
    const runs: FileRun[] = [];
    let at = offset;
    // Appends the view's runs of [at, stop); false when they end early (the answer ends there).
    const fromView = async (stop: number): Promise<boolean> => {
      const view = await this.view.allocation(at, stop - at, STATUS_RUNS - runs.length);
      runs.push(...view);
      at = view[view.length - 1]?.end ?? at;
      return at === stop && runs.length < STATUS_RUNS;
    };
    for (const { from, bytes } of this.writtenRuns(offset, length)) {
      if (from > at && !(await fromView(from))) {
        return extentsOf(runs);
      }
      const overlay = fileRuns((this.overlay as { readonly handle: FileHandle }).handle.fd, from, from + bytes, STATUS_RUNS - runs.length);
      runs.push(...overlay);
      at = overlay[overlay.length - 1]?.end ?? at;
      if (at < from + bytes || runs.length >= STATUS_RUNS) {
        return extentsOf(runs);
      }
    }
    if (at < end) {
      await fromView(end);
    }
    return extentsOf(runs);
  }

  /** Trimmed blocks read as zeros: allowed (trimmed data is unspecified) and predictable. */
  trim(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length);
  }

  /** Closes the view and deletes the overlay. */
  async close(): Promise<void> {
    await this.view.close();
    if (this.overlay) {
      await this.overlay.handle.close().catch(() => undefined);
      await rm(this.overlay.path, { force: true });
    }
  }

  /** The runs of blocks of [offset, offset + length) that the overlay took, as byte ranges, in order. */
  private *writtenRuns(offset: number, length: number): Generator<{ readonly from: number; readonly bytes: number }> {
    if (this.written.size === 0) {
      return;
    }
    let block = Math.floor(offset / this.blockSize);
    const end = (offset + length) / this.blockSize;
    while (block < end) {
      if (!this.isWritten(block)) {
        block++;
        continue;
      }
      let runEnd = block + 1;
      while (runEnd < end && this.isWritten(runEnd)) {
        runEnd++;
      }
      // Cut at the range's ends (the NBD server passes whole blocks only; other callers need not).
      const from = Math.max(block * this.blockSize, offset);
      yield { from, bytes: Math.min(runEnd * this.blockSize, offset + length) - from };
      block = runEnd;
    }
  }

  private writable(): { readonly path: string; readonly handle: FileHandle } {
    if (!this.overlay) {
      throw new Error('the export is read-only');
    }
    return this.overlay;
  }

  private mark(offset: number, length: number): void {
    const blocksPerRegion = REGION_BYTES / this.blockSize;
    // The NBD server only passes whole blocks (or a tail ending at the volume's end).
    const last = Math.ceil((offset + length) / this.blockSize);
    for (let block = Math.floor(offset / this.blockSize); block < last; block++) {
      const region = Math.floor(block / blocksPerRegion);
      let bits = this.written.get(region);
      if (!bits) {
        bits = new Uint8Array(blocksPerRegion / 8);
        this.written.set(region, bits);
      }
      const index = block % blocksPerRegion;
      bits[index >> 3] = (bits[index >> 3] ?? 0) | (1 << (index & 7));
    }
  }

  private isWritten(block: number): boolean {
    const blocksPerRegion = REGION_BYTES / this.blockSize;
    const bits = this.written.get(Math.floor(block / blocksPerRegion));
    if (!bits) {
      return false;
    }
    const index = block % blocksPerRegion;
    return ((bits[index >> 3] ?? 0) & (1 << (index & 7))) !== 0;
  }
}

function extentsOf(runs: readonly FileRun[]): BlockExtent[] {
  return runs.map(({ start, end, data }) => ({ length: end - start, flags: data ? 0 : NBD_STATE_HOLE | NBD_STATE_ZERO }));
}

function popcount(byte: number): number {
  let n = byte;
  let count = 0;
  while (n !== 0) {
    n &= n - 1;
    count++;
  }
  return count;
}
