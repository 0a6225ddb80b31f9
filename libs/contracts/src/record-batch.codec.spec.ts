import { BATCH_HEADER_BYTES, encodeRecordBatch, encodeSingleRecordBatchInPlace, splitRecordBatch } from './record-batch.codec';
import { RECORD_HEADER_BYTES, decodeRecord, encodeWriteRecord } from './record.codec';

describe('record batches', () => {
  const write = { seq: 9, volumeIndex: 1, offset: 4096, capturedAtMicros: 5, flags: 0 };

  it('a batch of one record framed in its headroom is the same batch as a copied one, and shares its memory', () => {
    const payload = Buffer.alloc(BATCH_HEADER_BYTES + RECORD_HEADER_BYTES + 1000, 0x5a).subarray(BATCH_HEADER_BYTES + RECORD_HEADER_BYTES);
    const record = encodeWriteRecord({ ...write, data: payload }, { inPlace: true });
    const batch = encodeSingleRecordBatchInPlace(record);
    expect(batch.equals(encodeRecordBatch([Buffer.from(record)]))).toBe(true);
    expect(batch.buffer).toBe(payload.buffer);
    const [only, ...rest] = splitRecordBatch(batch);
    expect(rest).toHaveLength(0);
    expect(decodeRecord(only!).seq).toBe(9);
    expect(only!.equals(record)).toBe(true);
  });

  it('refuses to frame a batch in front of a record with no room for its header', () => {
    // A record at the very start of its memory (Buffer.alloc gives each its own).
    const record = Buffer.alloc(RECORD_HEADER_BYTES + 100);
    encodeWriteRecord({ ...write, data: Buffer.alloc(100) }).copy(record);
    expect(() => encodeSingleRecordBatchInPlace(record)).toThrow(RangeError);
  });
});
