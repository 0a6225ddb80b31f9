import { type BlockDevice, type BlockExtent, type DeviceCapabilities } from './block-device';
import { NBD_STATE_ZERO } from './protocol';

/** A block status answer covers at most this much, so a query over a large device stays cheap. */
const STATUS_SCAN_BYTES = 64 * 1024 * 1024;

export interface MemoryBlockDeviceOptions {
  readonly size: number;
  readonly blockSize?: 512 | 4096;
  readonly readOnly?: boolean;
  /** Default: trim, write zeroes and multi-conn (one buffer shared by every connection). */
  readonly capabilities?: DeviceCapabilities;
}

/**
 * A device held in one buffer: nothing is durable, so it has no flush to offer. For tests, and for
 * scratch exports that must vanish with the process.
 */
export class MemoryBlockDevice implements BlockDevice {
  readonly size: number;
  readonly blockSize: 512 | 4096;
  readonly readOnly: boolean;
  readonly capabilities: DeviceCapabilities;
  readonly bytes: Buffer;

  constructor(options: MemoryBlockDeviceOptions) {
    this.size = options.size;
    this.blockSize = options.blockSize ?? 512;
    this.readOnly = options.readOnly ?? false;
    this.capabilities = options.capabilities ?? { trim: true, writeZeroes: true, multiConn: true };
    this.bytes = Buffer.alloc(options.size);
  }

  read(offset: number, length: number): Promise<Buffer> {
    // A copy: the reply may still be queued on the socket when a later write changes these bytes.
    return Promise.resolve(Buffer.from(this.bytes.subarray(offset, offset + length)));
  }

  write(offset: number, data: Buffer, _fua: boolean): Promise<void> {
    data.copy(this.bytes, offset);
    return Promise.resolve();
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  trim(offset: number, length: number): Promise<void> {
    this.bytes.fill(0, offset, offset + length);
    return Promise.resolve();
  }

  writeZeroes(offset: number, length: number, _fua: boolean, _fast: boolean): Promise<void> {
    this.bytes.fill(0, offset, offset + length);
    return Promise.resolve();
  }

  /** Blocks of zeros are reported as such (never as holes: the buffer is all allocated). */
  blockStatus(offset: number, length: number): Promise<readonly BlockExtent[]> {
    const end = Math.min(offset + length, offset + STATUS_SCAN_BYTES);
    const extents: BlockExtent[] = [];
    for (let at = offset; at < end; ) {
      const blockEnd = Math.min(at + this.blockSize, this.size);
      const flags = isZero(this.bytes.subarray(at, blockEnd)) ? NBD_STATE_ZERO : 0;
      const last = extents[extents.length - 1];
      if (last && last.flags === flags) {
        extents[extents.length - 1] = { length: last.length + (blockEnd - at), flags };
      } else {
        extents.push({ length: blockEnd - at, flags });
      }
      at = blockEnd;
    }
    return Promise.resolve(extents);
  }
}

function isZero(bytes: Buffer): boolean {
  for (const byte of bytes) {
    if (byte !== 0) {
      return false;
    }
  }
  return true;
}
