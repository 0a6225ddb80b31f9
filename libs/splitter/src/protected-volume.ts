import { closeSync, constants, fdatasync as fdatasyncCb, ftruncateSync, fstatSync, openSync, readSync, writeSync, writevSync } from 'node:fs';
import { promisify } from 'node:util';
import { type Volume } from '@cdp/domain';

const fdatasync = promisify(fdatasyncCb);

/**
 * A protected volume's local copy: a (sparse) file of the volume's size. Writes are synchronous
 * positioned writes into the page cache, issued in seq order by the VPG's capture, so the file always
 * holds a prefix of the VPG's write order; `sync()` makes them durable.
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
      let written = writevSync(this.fd, pending, at);
      at += written;
      // writev may stop short: drop what went in and go on from there.
      while (written > 0 && pending.length > 0) {
        const head = pending[0] as Buffer;
        if (written >= head.length) {
          written -= head.length;
          pending = pending.slice(1);
        } else {
          pending = [head.subarray(written), ...pending.slice(1)];
          written = 0;
        }
      }
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
