import {
  CorruptRecordError,
  RECORD_HEADER_BYTES,
  RecordKind,
  decodeRecord,
  decodeWriteRecordParts,
  encodeCheckpointRecord,
  encodeRestartRecord,
  encodeSyncRecord,
  encodeRecordBatch,
  encodeWriteRecord,
  recordSeq,
  resequenceRecord,
  splitRecordBatch,
} from './index';
import { crc32c } from '@node-rs/crc32';
import { xxh64 } from '@node-rs/xxhash';

/** Reseals bytes changed by hand, as a writer of `version` would (2: XXH64's low 32 bits; 1: CRC-32C). */
function reseal(record: Buffer, version: 1 | 2 = 2): Buffer {
  record.writeUInt8(version, 12);
  const body = record.subarray(8);
  record.writeUInt32LE(version === 2 ? Number(xxh64(body) & 0xffff_ffffn) : crc32c(body), 4);
  return record;
}

describe('record codec', () => {
  const write = { seq: 42, volumeIndex: 3, offset: 1_000_000_007, capturedAtMicros: 1_700_000_000_123_456, flags: 1, data: Buffer.from('hello, journal') };

  it('round-trips a write record', () => {
    const decoded = decodeRecord(encodeWriteRecord(write));
    expect(decoded).toEqual({ kind: RecordKind.Write, ...write });
  });

  it('encodes in place into reserved headroom: the same bytes, sharing the payload memory', () => {
    const backing = Buffer.alloc(RECORD_HEADER_BYTES + write.data.length, 0xee);
    const data = backing.subarray(RECORD_HEADER_BYTES);
    write.data.copy(data);
    const record = encodeWriteRecord({ ...write, data }, { inPlace: true });
    expect(record).toEqual(encodeWriteRecord(write));
    expect(record.buffer).toBe(backing.buffer);
    expect(record.byteOffset).toBe(backing.byteOffset);
    // A buffer of its own (not a slice of the shared pool) starts at byte 0: there is nothing in front of it.
    expect(() => encodeWriteRecord({ ...write, data: Buffer.alloc(16) }, { inPlace: true })).toThrow(RangeError);
  });

  it('carries 64-bit fields up to 2^53 - 1 exactly, and refuses what a number cannot hold', () => {
    const largest = { ...write, seq: Number.MAX_SAFE_INTEGER, offset: 2 ** 32 + 5, capturedAtMicros: 2 ** 52 + 3 };
    const record = encodeWriteRecord(largest);
    expect(decodeRecord(record)).toEqual({ kind: RecordKind.Write, ...largest });
    expect(recordSeq(record)).toBe(Number.MAX_SAFE_INTEGER);
    expect(record.readBigUInt64LE(16)).toBe(BigInt(Number.MAX_SAFE_INTEGER));
    expect(record.readBigUInt64LE(32)).toBe(2n ** 32n + 5n);
    for (const seq of [-1, 1.5, 2 ** 53, Number.NaN]) {
      expect(() => encodeWriteRecord({ ...write, seq })).toThrow(RangeError);
    }
    expect(() => resequenceRecord(record, -1)).toThrow(RangeError);
    // 2^53 written by something else, checksum and all: refused, not rounded.
    const past = Buffer.from(record);
    past.writeBigUInt64LE(2n ** 53n, 16);
    reseal(past);
    expect(() => decodeRecord(past)).toThrow(CorruptRecordError);
    expect(() => recordSeq(past)).toThrow(CorruptRecordError);
  });

  it('writes version 2 (XXH64) and still reads version 1 (CRC-32C), and refuses other versions', () => {
    const record = encodeWriteRecord(write);
    expect(record.readUInt8(12)).toBe(2);
    expect(Buffer.from(record)).toEqual(reseal(Buffer.from(record)));
    // A journal written before version 2: the same fields under a CRC-32C.
    const old = reseal(Buffer.from(record), 1);
    expect(old.readUInt32LE(4)).not.toBe(record.readUInt32LE(4));
    expect(decodeRecord(old)).toEqual({ kind: RecordKind.Write, ...write });
    // Each version is checked with its own checksum, never the other's.
    const misread = Buffer.from(old);
    misread.writeUInt8(2, 12);
    misread.writeUInt32LE(crc32c(misread.subarray(8)), 4);
    expect(() => decodeRecord(misread)).toThrow(CorruptRecordError);
    const damaged = Buffer.from(old);
    damaged[RECORD_HEADER_BYTES] = damaged[RECORD_HEADER_BYTES]! ^ 1;
    expect(() => decodeRecord(damaged)).toThrow(CorruptRecordError);
    // Renumbering an old record seals it as version 2.
    const renumbered = resequenceRecord(old, 99);
    expect(renumbered.readUInt8(12)).toBe(2);
    expect(decodeRecord(renumbered)).toEqual({ kind: RecordKind.Write, ...write, seq: 99 });
    for (const version of [0, 3] as const) {
      const future = Buffer.from(record);
      future.writeUInt8(version, 12);
      future.writeUInt32LE(Number(xxh64(future.subarray(8)) & 0xffff_ffffn), 4);
      expect(() => decodeRecord(future)).toThrow(/unsupported record version/);
    }
  });

  it('verifies a write read into two buffers as it verifies a whole one, in either version, and refuses what is not one', () => {
    const payload = Buffer.alloc(70_000);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 31) & 0xff;
    const big = { ...write, data: payload };
    for (const version of [2, 1] as const) {
      const record = reseal(encodeWriteRecord(big), version);
      const header = Buffer.from(record.subarray(0, RECORD_HEADER_BYTES));
      const body = Buffer.from(record.subarray(RECORD_HEADER_BYTES));
      const decoded = decodeWriteRecordParts(header, body);
      expect(decoded).toEqual({ kind: RecordKind.Write, ...big });
      // The payload is the caller's buffer, not a copy.
      expect(decoded.data).toBe(body);
      // Any flipped bit, in either part, is corruption.
      for (const at of [4, 9, 16, 33, 47]) {
        const damaged = Buffer.from(header);
        damaged[at] = damaged[at]! ^ 0x04;
        expect(() => decodeWriteRecordParts(damaged, body)).toThrow(CorruptRecordError);
      }
      for (const at of [0, 1, 35_000, body.length - 1]) {
        const damaged = Buffer.from(body);
        damaged[at] = damaged[at]! ^ 0x80;
        expect(() => decodeWriteRecordParts(header, damaged)).toThrow(CorruptRecordError);
      }
      // A payload one byte short or long does not match the header's lengths.
      expect(() => decodeWriteRecordParts(header, body.subarray(1))).toThrow(/does not match/);
      expect(() => decodeWriteRecordParts(header, Buffer.concat([body, Buffer.alloc(1)]))).toThrow(/does not match/);
    }
    const marker = encodeCheckpointRecord({ seq: 7, capturedAtMicros: 5, marker: { id: 'a', kind: 'automatic', name: null, vmId: null } });
    expect(() => decodeWriteRecordParts(marker.subarray(0, RECORD_HEADER_BYTES), marker.subarray(RECORD_HEADER_BYTES))).toThrow(/where a write was expected/);
    expect(() => decodeWriteRecordParts(Buffer.alloc(47), Buffer.alloc(0))).toThrow(RangeError);
  });

  it('round-trips a checkpoint marker', () => {
    const marker = { id: '0b6f8a4e-1f7d-4c1a-9a51-3f0f7f3b9c11', kind: 'tagged' as const, name: 'before upgrade', vmId: null };
    const decoded = decodeRecord(encodeCheckpointRecord({ seq: 7, capturedAtMicros: 5, marker }));
    expect(decoded).toEqual({ kind: RecordKind.Checkpoint, seq: 7, capturedAtMicros: 5, marker });
  });

  it('round-trips a restart, and refuses one whose body has the wrong shape', () => {
    const restart = { resyncId: 'r-1', voidFrom: 12, reason: 'the journal lacks seqs from 12', member: null };
    expect(decodeRecord(encodeRestartRecord({ seq: 900, capturedAtMicros: 5, restart }))).toEqual({ kind: RecordKind.Restart, seq: 900, capturedAtMicros: 5, restart });
    const onHost = { ...restart, member: 'host-b' };
    expect(decodeRecord(encodeRestartRecord({ seq: 901, capturedAtMicros: 6, restart: onHost }))).toMatchObject({ restart: onHost });
    for (const wrong of [{ ...restart, voidFrom: -1 }, { ...restart, voidFrom: 1.5 }, { ...restart, resyncId: 7 }, { ...restart, member: undefined }]) {
      expect(() => decodeRecord(encodeRestartRecord({ seq: 900, capturedAtMicros: 5, restart: wrong as unknown as typeof restart }))).toThrow(/restart body has the wrong shape/);
    }
  });

  it('round-trips a sync, and refuses one without a reason', () => {
    const sync = { reason: 'forced resync r-1', member: null };
    expect(decodeRecord(encodeSyncRecord({ seq: 31, capturedAtMicros: 9, sync }))).toEqual({ kind: RecordKind.Sync, seq: 31, capturedAtMicros: 9, sync });
    expect(decodeRecord(encodeSyncRecord({ seq: 31, capturedAtMicros: 9, sync: { ...sync, member: 'host-b' } }))).toMatchObject({ sync: { member: 'host-b' } });
    for (const wrong of [{ member: null }, { reason: 'x' }, { reason: 'x', member: 3 }]) {
      expect(() => decodeRecord(encodeSyncRecord({ seq: 31, capturedAtMicros: 9, sync: wrong as unknown as typeof sync }))).toThrow(/sync body has the wrong shape/);
    }
  });

  it('reports any flipped bit as corrupt, never as data', () => {
    const record = encodeWriteRecord(write);
    for (let byte = 4; byte < record.length; byte++) {
      const damaged = Buffer.from(record);
      damaged[byte] = damaged[byte]! ^ 0x10;
      expect(() => decodeRecord(damaged)).toThrow(CorruptRecordError);
    }
  });

  it('splits a batch into the records it was made of, and rejects a truncated batch', () => {
    const records = [encodeWriteRecord(write), encodeWriteRecord({ ...write, seq: 43, data: Buffer.alloc(0) })];
    const batch = encodeRecordBatch(records);
    expect(splitRecordBatch(batch).map((r) => Buffer.from(r))).toEqual(records);
    expect(() => splitRecordBatch(batch.subarray(0, batch.length - 1))).toThrow(CorruptRecordError);
  });
});
