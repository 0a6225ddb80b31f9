import { CorruptRecordError, peekRecordLength } from './record.codec';

/**
 * A bus message carries a batch of records of one VPG (the message key is the VPG id), never one
 * message per write. Layout: magic u32 0x42504443 ("CDPB"), count u32, then `count` records back to
 * back, each self-delimiting and checksummed (see record.codec.ts).
 */
export const BATCH_MAGIC = 0x42504443;
export const BATCH_HEADER_BYTES = 8;

export function encodeRecordBatch(records: readonly Buffer[]): Buffer {
  const header = Buffer.allocUnsafe(BATCH_HEADER_BYTES);
  header.writeUInt32LE(BATCH_MAGIC, 0);
  header.writeUInt32LE(records.length, 4);
  return Buffer.concat([header, ...records]);
}

/**
 * A batch of the one record `record`, framed around it without copying it: the caller promises that
 * the BATCH_HEADER_BYTES in front of the record in its ArrayBuffer are its own to overwrite (headroom
 * reserved when the payload was received). For large writes, which travel one per batch, this saves
 * copying every byte once more, and the allocation that kept the collector busy.
 */
export function encodeSingleRecordBatchInPlace(record: Buffer): Buffer {
  if (record.byteOffset < BATCH_HEADER_BYTES) {
    throw new RangeError(`no room for a batch header in front of the record (byteOffset ${record.byteOffset})`);
  }
  const batch = Buffer.from(record.buffer, record.byteOffset - BATCH_HEADER_BYTES, BATCH_HEADER_BYTES + record.length);
  batch.writeUInt32LE(BATCH_MAGIC, 0);
  batch.writeUInt32LE(1, 4);
  return batch;
}

/** Splits a batch into record views (no copy). Each record's checksum is left for the consumer to verify. */
export function splitRecordBatch(batch: Buffer): Buffer[] {
  if (batch.length < BATCH_HEADER_BYTES || batch.readUInt32LE(0) !== BATCH_MAGIC) {
    throw new CorruptRecordError('message is not a record batch');
  }
  const count = batch.readUInt32LE(4);
  const records: Buffer[] = [];
  let pos = BATCH_HEADER_BYTES;
  for (let i = 0; i < count; i++) {
    const length = peekRecordLength(batch, pos);
    if (length === undefined || pos + length > batch.length) {
      throw new CorruptRecordError(`record batch truncated at record ${i} of ${count}`);
    }
    records.push(batch.subarray(pos, pos + length));
    pos += length;
  }
  if (pos !== batch.length) {
    throw new CorruptRecordError(`record batch has ${batch.length - pos} trailing bytes`);
  }
  return records;
}
