import { DomainError } from './domain.error';
import { MAX_WRITE_BYTES, type Volume } from './vpg.model';

/**
 * One captured write. `seq` is the VPG's log sequence number: dense, strictly increasing, assigned once
 * at capture; it is the total order of the VPG across all of its volumes.
 */
export interface CapturedWrite {
  readonly seq: number;
  readonly volumeIndex: number;
  readonly offset: number;
  readonly data: Buffer;
  /** Capture time, microseconds since the Unix epoch. */
  readonly capturedAtMicros: number;
}

/**
 * Checks that [offset, offset + length) is a non-empty range inside the volume and not oversize:
 * at most `maxBytes`, MAX_WRITE_BYTES unless the write carries no payload (zeroing or discarding a
 * range, which may cover the whole volume).
 */
export function validateWriteRange(volume: Volume, offset: number, length: number, maxBytes = MAX_WRITE_BYTES): void {
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new DomainError('invalid-argument', `offset must be a non-negative integer, got ${String(offset)}`);
  }
  if (!Number.isSafeInteger(length) || length <= 0) {
    throw new DomainError('invalid-argument', `length must be a positive integer, got ${String(length)}`);
  }
  if (length > maxBytes) {
    throw new DomainError('out-of-range', `write of ${length} bytes exceeds the maximum of ${maxBytes} bytes`);
  }
  if (offset + length > volume.sizeBytes) {
    throw new DomainError(
      'out-of-range',
      `write [${offset}, ${offset + length}) is past the end of volume ${volume.name} (${volume.sizeBytes} bytes)`,
      { volumeId: volume.id, sizeBytes: volume.sizeBytes },
    );
  }
}
