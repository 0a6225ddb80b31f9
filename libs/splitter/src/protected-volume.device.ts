import { BATCH_HEADER_BYTES, RECORD_HEADER_BYTES } from '@cdp/contracts';
import { DomainError } from '@cdp/domain';
import { type BlockDevice, type BlockExtent, type DeviceCapabilities, NBD_EINVAL, NBD_ENOSPC, NBD_ENOTSUP, NBD_STATE_HOLE, NBD_STATE_ZERO, NbdError } from '@cdp/nbd';
import { type ProtectedVolume } from './protected-volume';
import { type VpgCapture } from './vpg-capture';

/**
 * One protected volume as an NBD export. Every write goes through the VPG's capture exactly as the
 * HTTP write path does (seq, splitter log, volume, then the acknowledgement), so a disk used over NBD
 * is protected the same way, and FLUSH/FUA keep the capture's contract: durable locally and
 * acknowledged by the bus.
 *
 * Multi-conn holds because all state lives in the capture, which every connection to this volume
 * shares (the server keeps no cache), and `VpgCapture.flush` syncs the log and every volume of the VPG
 * and waits for the bus through the VPG's last seq: a flush on one connection covers every write any
 * connection had completed.
 */
export class ProtectedVolumeDevice implements BlockDevice {
  readonly size: number;
  readonly blockSize: 512 | 4096;
  readonly readOnly = false;
  readonly capabilities: DeviceCapabilities = { flush: true, trim: true, writeZeroes: true, fastZero: true, multiConn: true };
  /**
   * The server leaves room in front of each payload for the record header and a bus batch header: the
   * capture frames the record, and the shipper a batch of a large write alone, without copying it.
   */
  readonly writeHeadroom = RECORD_HEADER_BYTES + BATCH_HEADER_BYTES;
  private readonly writeOptions = { headroom: this.writeHeadroom };
  private readonly volume: ProtectedVolume;

  constructor(
    private readonly capture: VpgCapture,
    private readonly volumeId: string,
  ) {
    this.volume = capture.volumeById(volumeId);
    this.size = this.volume.volume.sizeBytes;
    this.blockSize = this.volume.volume.blockSize;
  }

  read(offset: number, length: number): Promise<Buffer> {
    // Synchronous, from the page cache; a fresh buffer each time, so later writes cannot change a
    // reply still queued on the socket.
    return Promise.resolve(this.volume.read(offset, length));
  }

  /** Large payloads are received into the splitter's payload ring when it has room (see VpgCapture.allocatePayload). */
  allocateWrite(length: number): Buffer | undefined {
    return this.capture.allocatePayload(length, this.writeHeadroom);
  }

  discardWrite(data: Buffer): void {
    this.capture.discardPayload(data);
  }

  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    // A promise chain, not an async function: this runs for every write (see VpgCapture.write).
    return this.capture.write(this.volumeId, offset, data, fua, this.writeOptions).then(acknowledged, asNbdError);
  }

  flush(): Promise<void> {
    return this.capture.flush();
  }

  /** Changes nothing, on either site: see `VpgCapture.discard`. */
  trim(offset: number, length: number): Promise<void> {
    return new Promise<void>((resolve) => {
      this.capture.discard(this.volumeId, offset, length);
      resolve();
    }).catch(asNbdError);
  }

  /**
   * Captured as writes of zeros where the volume is not zero already: see `VpgCapture.writeZeroes`.
   * Asked to be fast, it is refused (NBD_ENOTSUP) unless the range is all holes: zeroing data costs
   * what writing it does (it is captured, shipped and journaled as writes of zeros), while a range of
   * holes takes no more than the lseek calls that found them.
   */
  writeZeroes(offset: number, length: number, fua: boolean, fast: boolean): Promise<void> {
    return new Promise<void>((resolve) => {
      if (fast && !this.allHoles(offset, length)) {
        throw new NbdError(NBD_ENOTSUP, 'the range holds data: zeroing it would cost as much as writing it');
      }
      resolve();
    })
      .then(() => this.capture.writeZeroes(this.volumeId, offset, length, fua))
      .catch(asNbdError);
  }

  /** The volume file's holes read as zeros; everything else is reported allocated, of unknown content. */
  blockStatus(offset: number, length: number): Promise<readonly BlockExtent[]> {
    return new Promise<readonly BlockExtent[]>((resolve) => {
      const runs = this.capture.allocation(this.volumeId, offset, length, STATUS_RUNS);
      resolve(runs.map(({ start, end, data }) => ({ length: end - start, flags: data ? 0 : NBD_STATE_HOLE | NBD_STATE_ZERO })));
    }).catch(asNbdError);
  }

  private allHoles(offset: number, length: number): boolean {
    const end = offset + length;
    for (let at = offset; at < end; ) {
      const runs = this.capture.allocation(this.volumeId, at, end - at, STATUS_RUNS);
      if (runs.some((run) => run.data)) {
        return false;
      }
      at = (runs[runs.length - 1] as { end: number }).end;
    }
    return true;
  }
}

/** The most runs one block status answer looks up (a few µs of lseek each); the client asks again for the rest. */
const STATUS_RUNS = 1024;

function acknowledged(): void {
  // The seq is the capture's business; NBD acknowledges with no data.
}

/** Domain errors become the NBD errors the spec names; anything else is an I/O error (NBD_EIO). */
function asNbdError(err: unknown): never {
  if (err instanceof DomainError) {
    switch (err.code) {
      case 'out-of-range':
        // The server checks bounds before calling; this is the spec's answer should one slip by.
        throw new NbdError(NBD_ENOSPC, err.message, { cause: err });
      case 'invalid-argument':
        throw new NbdError(NBD_EINVAL, err.message, { cause: err });
      case 'not-found':
      case 'already-exists':
      case 'conflict':
      case 'failed-precondition':
        break;
    }
  }
  throw err;
}
