import { crc32c } from '@node-rs/crc32';
import { Xxh64, xxh64 } from '@node-rs/xxhash';

/**
 * The replication record: one captured write or one checkpoint marker. The same bytes travel from the
 * splitter's log, over the bus, into journal segment files, so the checksum computed at capture is
 * verified at every hop and again at recovery, and never recomputed in between (except by
 * resequenceRecord, for a VPG on several hosts: see there).
 *
 * Layout (little-endian), header is RECORD_HEADER_BYTES long:
 *
 *   off size field
 *    0   4   magic       0x52504443 ("CDPR" read as bytes C D P R), lets a reader find record starts
 *    4   4   checksum    of bytes [8, totalLength), header rest + body: the low 32 bits of XXH64
 *                         (seed 0) in version 2; the Castagnoli CRC (CRC-32C) in version 1
 *    8   4   totalLength header + body, in bytes
 *   12   1   version     RECORD_VERSION when written; 1 is still read
 *   13   1   kind        1 = write, 2 = checkpoint marker, 3 = restart (see RestartBody), 4 = sync
 *                         (see SyncBody)
 *   14   2   volume      write: the volume's index in its VPG; the others: 0
 *   16   8   seq         the record's seq. Writes and markers share one dense sequence per VPG, so
 *                         gaps, duplicates and progress are all judged on one number. A marker's
 *                         seq is its checkpoint's cut: every write with a smaller seq is inside.
 *   24   8   capturedAt  microseconds since the Unix epoch, splitter clock
 *   32   8   offset      write: byte offset in the volume; marker: 0
 *   40   4   bodyLength  write: payload length; the others: JSON length
 *   44   4   flags       bit 0: FUA was requested; the rest are zero
 *   48   …   body        write: payload bytes; marker: UTF-8 JSON of CheckpointMarkerBody; restart:
 *                         UTF-8 JSON of RestartBody; sync: UTF-8 JSON of SyncBody
 */
export const RECORD_MAGIC = 0x52504443;
/**
 * Version 2 changed only the checksum, from CRC-32C to XXH64's low 32 bits: every byte of every record
 * is checksummed at capture, again at each hop, and again on every read at recovery, and on these
 * machines XXH64 runs at about 18 GB/s against CRC-32C's 6 (@node-rs/xxhash and @node-rs/crc32, 1 MiB
 * buffers). A point-in-time export spent more of its time on CRC-32C than on anything else but the
 * socket. Both catch random corruption with the same odds (a 32-bit check); CRC-32C also guarantees to
 * catch any burst of up to 32 bits, which matters little for the sector-sized damage a disk does. Btrfs
 * offers XXH64 as its data checksum for the same reason. Records of version 1 are still verified.
 */
export const RECORD_VERSION = 2;
const RECORD_VERSION_CRC32C = 1;
export const RECORD_HEADER_BYTES = 48;
export const RECORD_FLAG_FUA = 1;

export const enum RecordKind {
  Write = 1,
  Checkpoint = 2,
  Restart = 3,
  Sync = 4,
}

/**
 * A sync begins: the records after it read regions of the volumes back (a forced resync, the sync of
 * dirty regions after degraded mode, the active regions after a host crash), so until the first
 * checkpoint after it the order passes through states the volumes were never in. The journal keeps
 * such stretches and recovers no point in time inside one (checkpoints cannot fall there: the
 * splitter's checkpoint gate). A restart begins such a stretch too.
 */
export interface SyncBody {
  readonly reason: string;
  /** The member (host) whose order it is in, in a VPG with several; null with one. */
  readonly member: string | null;
}

/**
 * A restart of the VPG's order (a member's, in a VPG with several): the splitter could not ship the
 * seqs the journal lacks (its log no longer holds them), so it declares every seq before this one that
 * the journal does not have void, and captures a full resync of its volumes right after it. The journal
 * takes it in place of the missing seqs and goes on from it; no checkpoint is cut from it until the
 * resync is complete (the splitter's checkpoint gate), so none can describe the void stretch.
 */
export interface RestartBody {
  /** The resync that follows, by its id (the splitter's `resync.json`). */
  readonly resyncId: string;
  /** The first seq the journal asked for and the splitter no longer held. */
  readonly voidFrom: number;
  readonly reason: string;
  /** The member (host) whose order restarts, in a VPG with several; null with one. */
  readonly member: string | null;
}

export interface CheckpointMarkerBody {
  readonly id: string;
  readonly kind: 'automatic' | 'tagged' | 'application-consistent';
  readonly name: string | null;
  readonly vmId: string | null;
  /**
   * Set on the markers of a VPG with several members (hosts): this member's end of coordinated
   * checkpoint `epoch`. `void` when the member could not take part in a consistent cut (it was not
   * holding writes for it from prepare to cut); the checkpoint is then not recorded. See
   * docs/architecture.md, "Coordinated checkpoints".
   */
  readonly barrier?: BarrierMark;
}

export interface BarrierMark {
  readonly epoch: number;
  readonly member: string;
  readonly void: boolean;
}

export interface WriteRecord {
  readonly kind: RecordKind.Write;
  readonly seq: number;
  readonly volumeIndex: number;
  readonly offset: number;
  readonly capturedAtMicros: number;
  readonly flags: number;
  readonly data: Buffer;
}

export interface CheckpointRecord {
  readonly kind: RecordKind.Checkpoint;
  /** The marker's own seq, which is the checkpoint's cut: every write with a smaller seq is inside. */
  readonly seq: number;
  readonly capturedAtMicros: number;
  readonly marker: CheckpointMarkerBody;
}

export interface RestartRecord {
  readonly kind: RecordKind.Restart;
  /** The seq the order restarts at; every seq before it the journal lacks is void. */
  readonly seq: number;
  readonly capturedAtMicros: number;
  readonly restart: RestartBody;
}

export interface SyncRecord {
  readonly kind: RecordKind.Sync;
  readonly seq: number;
  readonly capturedAtMicros: number;
  readonly sync: SyncBody;
}

export type DecodedRecord = WriteRecord | CheckpointRecord | RestartRecord | SyncRecord;

export class CorruptRecordError extends Error {
  override readonly name = 'CorruptRecordError';
  readonly retriable = false;
  constructor(message: string) {
    super(message);
  }
}

function writeHeader(
  buf: Buffer,
  kind: RecordKind,
  volume: number,
  seq: number,
  capturedAtMicros: number,
  offset: number,
  bodyLength: number,
  flags: number,
): void {
  buf.writeUInt32LE(RECORD_MAGIC, 0);
  buf.writeUInt32LE(buf.length, 8);
  buf.writeUInt8(kind, 13);
  buf.writeUInt16LE(volume, 14);
  writeUInt64(buf, seq, 16);
  writeUInt64(buf, capturedAtMicros, 24);
  writeUInt64(buf, offset, 32);
  buf.writeUInt32LE(bodyLength, 40);
  buf.writeUInt32LE(flags, 44);
}

const TWO_32 = 2 ** 32;
/** The high word of the largest safe integer (2^53 - 1). */
const MAX_SAFE_HIGH_WORD = 0x1f_ffff;

/**
 * A 64-bit field written as two 32-bit words. Every record's header has three, written at capture and
 * read at each hop: through BigInt, each was a heap allocation per field per record, several per
 * captured write on the splitter's event loop. Values are non-negative safe integers; anything else
 * is refused, as the BigInt conversion refused fractions and negatives.
 */
function writeUInt64(buf: Buffer, value: number, at: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`a record field must be a non-negative safe integer, not ${value}`);
  }
  buf.writeUInt32LE(value >>> 0, at);
  buf.writeUInt32LE(Math.floor(value / TWO_32), at + 4);
}

/** A 64-bit field as a number; one past 2^53 cannot be represented exactly and is refused as corrupt. */
function readUInt64(buf: Buffer, at: number): number {
  const high = buf.readUInt32LE(at + 4);
  if (high > MAX_SAFE_HIGH_WORD) {
    throw new CorruptRecordError(`the 64-bit field at byte ${at} of a record is past 2^53`);
  }
  return high * TWO_32 + buf.readUInt32LE(at);
}

/** Stamps the current version and its checksum over everything after the checksum field. */
function seal(buf: Buffer): Buffer {
  buf.writeUInt8(RECORD_VERSION, 12);
  buf.writeUInt32LE(checksum(buf.subarray(8)), 4);
  return buf;
}

/** XXH64's low 32 bits; the one BigInt is the binding's, one per record, not per field. */
function checksum(bytes: Buffer): number {
  return Number(BigInt.asUintN(32, xxh64(bytes)));
}

/**
 * Encodes a write record. With `inPlace`, the caller promises that the RECORD_HEADER_BYTES in front of
 * `data` in its ArrayBuffer are its own to overwrite (reserved headroom): the header is written there
 * and the record shares the payload's memory instead of copying it.
 */
export function encodeWriteRecord(write: Omit<WriteRecord, 'kind'>, options: { readonly inPlace?: boolean } = {}): Buffer {
  const { data } = write;
  let buf: Buffer;
  if (options.inPlace) {
    if (data.byteOffset < RECORD_HEADER_BYTES) {
      throw new RangeError(`no room for a record header in front of the payload (byteOffset ${data.byteOffset})`);
    }
    buf = Buffer.from(data.buffer, data.byteOffset - RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + data.length);
  } else {
    buf = Buffer.allocUnsafe(RECORD_HEADER_BYTES + data.length);
    data.copy(buf, RECORD_HEADER_BYTES);
  }
  writeHeader(buf, RecordKind.Write, write.volumeIndex, write.seq, write.capturedAtMicros, write.offset, data.length, write.flags);
  return seal(buf);
}

export function encodeCheckpointRecord(record: Omit<CheckpointRecord, 'kind'>): Buffer {
  return encodeJsonRecord(RecordKind.Checkpoint, record.seq, record.capturedAtMicros, record.marker);
}

export function encodeRestartRecord(record: Omit<RestartRecord, 'kind'>): Buffer {
  return encodeJsonRecord(RecordKind.Restart, record.seq, record.capturedAtMicros, record.restart);
}

export function encodeSyncRecord(record: Omit<SyncRecord, 'kind'>): Buffer {
  return encodeJsonRecord(RecordKind.Sync, record.seq, record.capturedAtMicros, record.sync);
}

function encodeJsonRecord(kind: RecordKind, seq: number, capturedAtMicros: number, value: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(value), 'utf8');
  const buf = Buffer.allocUnsafe(RECORD_HEADER_BYTES + body.length);
  writeHeader(buf, kind, 0, seq, capturedAtMicros, 0, body.length, 0);
  body.copy(buf, RECORD_HEADER_BYTES);
  return seal(buf);
}

/**
 * Length of the record that starts at `pos`, or undefined when fewer than a header's bytes remain.
 * Throws CorruptRecordError when the header cannot be a record's.
 */
export function peekRecordLength(buf: Buffer, pos = 0): number | undefined {
  if (buf.length - pos < RECORD_HEADER_BYTES) {
    return undefined;
  }
  if (buf.readUInt32LE(pos) !== RECORD_MAGIC) {
    throw new CorruptRecordError(`no record magic at byte ${pos}`);
  }
  const total = buf.readUInt32LE(pos + 8);
  const bodyLength = buf.readUInt32LE(pos + 40);
  if (total !== RECORD_HEADER_BYTES + bodyLength) {
    throw new CorruptRecordError(`record at byte ${pos} has inconsistent lengths (${total} vs body ${bodyLength})`);
  }
  return total;
}

/** Verifies magic, lengths, version and checksum of one whole record. */
export function verifyRecord(record: Buffer): void {
  const total = peekRecordLength(record, 0);
  if (total !== record.length) {
    throw new CorruptRecordError(`record length ${String(total)} does not match its ${record.length} bytes`);
  }
  verifyChecksum(record, record.subarray(8), undefined);
}

/** Header fields without copying the body; `data`/`marker` are views into `record`. Verifies first. */
export function decodeRecord(record: Buffer): DecodedRecord {
  verifyRecord(record);
  const kind = record.readUInt8(13);
  const body = record.subarray(RECORD_HEADER_BYTES);
  if (kind === (RecordKind.Write as number)) {
    return writeOf(record, body);
  }
  if (kind === (RecordKind.Checkpoint as number)) {
    const marker = parseBody(body, 'checkpoint marker');
    if (!isMarkerBody(marker)) {
      throw new CorruptRecordError('checkpoint marker body has the wrong shape');
    }
    return { kind: RecordKind.Checkpoint, seq: readUInt64(record, 16), capturedAtMicros: readUInt64(record, 24), marker };
  }
  if (kind === (RecordKind.Restart as number)) {
    const restart = parseBody(body, 'restart');
    if (!isRestartBody(restart)) {
      throw new CorruptRecordError('restart body has the wrong shape');
    }
    return { kind: RecordKind.Restart, seq: readUInt64(record, 16), capturedAtMicros: readUInt64(record, 24), restart };
  }
  if (kind === (RecordKind.Sync as number)) {
    const sync = parseBody(body, 'sync');
    if (!isSyncBody(sync)) {
      throw new CorruptRecordError('sync body has the wrong shape');
    }
    return { kind: RecordKind.Sync, seq: readUInt64(record, 16), capturedAtMicros: readUInt64(record, 24), sync };
  }
  throw new CorruptRecordError(`unknown record kind ${kind}`);
}

/**
 * A write record read into two buffers, its header and its payload, for a reader that scatters
 * payloads straight to where they are wanted instead of copying them out of a whole record: verified
 * as decodeRecord verifies one (magic, lengths, version, the checksum over header and payload), and
 * refused unless it is a write. `data` is `payload` itself.
 */
export function decodeWriteRecordParts(header: Buffer, payload: Buffer): WriteRecord {
  if (header.length !== RECORD_HEADER_BYTES) {
    throw new RangeError(`a record header is ${RECORD_HEADER_BYTES} bytes, not ${header.length}`);
  }
  const total = peekRecordLength(header, 0);
  if (total !== RECORD_HEADER_BYTES + payload.length) {
    throw new CorruptRecordError(`record length ${String(total)} does not match its header and ${payload.length} payload bytes`);
  }
  verifyChecksum(header, header.subarray(8), payload);
  const kind = header.readUInt8(13);
  if (kind !== (RecordKind.Write as number)) {
    throw new CorruptRecordError(`record of kind ${kind} where a write was expected`);
  }
  return writeOf(header, payload);
}

/** A write record's fields from its (verified) header, its payload being `data`. */
function writeOf(header: Buffer, data: Buffer): WriteRecord {
  return {
    kind: RecordKind.Write,
    seq: readUInt64(header, 16),
    volumeIndex: header.readUInt16LE(14),
    offset: readUInt64(header, 32),
    capturedAtMicros: readUInt64(header, 24),
    flags: header.readUInt32LE(44),
    data,
  };
}

/** One hasher, reset for each record split in two: the binding's object costs more to make than to reset. */
const partsHasher = new Xxh64();

/**
 * Checks the version in `header` and the checksum stored there against `covered` (the record from
 * byte 8 on, or the header's part of it) followed by `rest`, when the payload lies elsewhere.
 */
function verifyChecksum(header: Buffer, covered: Buffer, rest: Buffer | undefined): void {
  const version = header.readUInt8(12);
  if (version !== RECORD_VERSION && version !== RECORD_VERSION_CRC32C) {
    throw new CorruptRecordError(`unsupported record version ${version}`);
  }
  const expected = header.readUInt32LE(4);
  let actual: number;
  if (version === RECORD_VERSION_CRC32C) {
    actual = rest ? crc32c(rest, crc32c(covered)) : crc32c(covered);
  } else if (rest) {
    partsHasher.reset();
    actual = Number(BigInt.asUintN(32, partsHasher.update(covered).update(rest).digest()));
  } else {
    actual = checksum(covered);
  }
  if (expected !== actual) {
    throw new CorruptRecordError(`record checksum mismatch (stored ${expected.toString(16)}, computed ${actual.toString(16)})`);
  }
}

function parseBody(body: Buffer, what: string): unknown {
  try {
    return JSON.parse(body.toString('utf8'));
  } catch {
    throw new CorruptRecordError(`${what} body is not JSON`);
  }
}

function isSyncBody(value: unknown): value is SyncBody {
  if (typeof value !== 'object' || value === null) {
    return false;
  }
  const v = value as Record<string, unknown>;
  return typeof v['reason'] === 'string' && (v['member'] === null || typeof v['member'] === 'string');
}

function isRestartBody(value: unknown): value is RestartBody {
  if (typeof value !== 'object' || value === null) {
    return false;
  }
  const v = value as Record<string, unknown>;
  return (
    typeof v['resyncId'] === 'string' &&
    Number.isSafeInteger(v['voidFrom']) &&
    (v['voidFrom'] as number) >= 0 &&
    typeof v['reason'] === 'string' &&
    (v['member'] === null || typeof v['member'] === 'string')
  );
}

function isMarkerBody(value: unknown): value is CheckpointMarkerBody {
  if (typeof value !== 'object' || value === null) {
    return false;
  }
  const v = value as Record<string, unknown>;
  return (
    typeof v['id'] === 'string' &&
    (v['kind'] === 'automatic' || v['kind'] === 'tagged' || v['kind'] === 'application-consistent') &&
    (v['name'] === null || typeof v['name'] === 'string') &&
    (v['vmId'] === null || typeof v['vmId'] === 'string') &&
    (v['barrier'] === undefined || isBarrierMark(v['barrier']))
  );
}

function isBarrierMark(value: unknown): value is BarrierMark {
  if (typeof value !== 'object' || value === null) {
    return false;
  }
  const v = value as Record<string, unknown>;
  return Number.isSafeInteger(v['epoch']) && typeof v['member'] === 'string' && typeof v['void'] === 'boolean';
}

/**
 * The same record with another seq, sealed with a new checksum (of the current version: a version-1
 * record comes out as version 2). For the journal writer's merge of a
 * multi-member VPG's streams into one journal order (each member numbers its own records): `record`
 * must have been verified, and the new checksum is computed in the same synchronous step, so the bytes
 * are never unprotected while anything else runs. The original is not modified (its memory may still
 * be the splitter's, on the in-process bus).
 */
export function resequenceRecord(record: Buffer, seq: number): Buffer {
  const copy = Buffer.allocUnsafe(record.length);
  record.copy(copy);
  writeUInt64(copy, seq, 16);
  return seal(copy);
}

/** Reads the seq (or cut) field without verifying: for locating records in an already verified log. */
export function recordSeq(record: Buffer): number {
  return readUInt64(record, 16);
}

export function recordKind(record: Buffer): RecordKind {
  return record.readUInt8(13) as RecordKind;
}
