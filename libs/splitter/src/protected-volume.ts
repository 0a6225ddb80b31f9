import { closeSync, constants, fdatasync as fdatasyncCb, ftruncateSync, fstatSync, openSync, readSync, write as writeCb, writeSync, writev as writevCb, writevSync } from 'node:fs';
import { promisify } from 'node:util';
import { type Volume } from '@cdp/domain';

const fdatasync = promisify(fdatasyncCb);
const writeAt = (fd: number, data: Buffer, offset: number, length: number, position: number): Promise<number> =>
  new Promise((resolve, reject) => writeCb(fd, data, offset, length, position, (err, written) => (err ? reject(err) : resolve(written))));
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
 */
export class ProtectedVolume {
  private dirty = false;

  private constructor(
    readonly volume: Volume,
    private readonly fd: number,
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
    return new ProtectedVolume(volume, fd);
  }

  write(offset: number, data: Buffer): void {
    let done = 0;
    while (done < data.length) {
      done += writeSync(this.fd, data, done, data.length - done, offset + done);
    }
    this.dirty = true;
  }

  /** Writes `buffers` back to back from `offset`, in one vectored write where the kernel takes it whole. */
  writeVector(offset: number, buffers: readonly Buffer[]): void {
    let pending = buffers.filter((b) => b.length > 0);
    let at = offset;
    while (pending.length > 0) {
      const written = writevSync(this.fd, pending, at);
      at += written;
      pending = dropWritten(pending, written);
    }
    this.dirty = true;
  }

  /**
   * As `writeVector`, on the thread pool. The caller never has two in flight over the same bytes.
   * Dirty before it starts and again once it is in: a `sync()` that began while it ran may not cover it.
   */
  async writeVectorAsync(offset: number, buffers: readonly Buffer[]): Promise<void> {
    this.dirty = true;
    let pending = buffers.filter((b) => b.length > 0);
    let at = offset;
    while (pending.length > 0) {
      const only = pending.length === 1 ? pending[0] : undefined;
      const written = only ? await writeAt(this.fd, only, 0, only.length, at) : await writevAt(this.fd, pending, at);
      at += written;
      pending = dropWritten(pending, written);
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

  async sync(): Promise<void> {
    if (!this.dirty) {
      return;
    }
    this.dirty = false;
    try {
      await fdatasync(this.fd);
    } catch (err) {
      this.dirty = true;
      throw err;
    }
  }

  close(): void {
    closeSync(this.fd);
  }
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
