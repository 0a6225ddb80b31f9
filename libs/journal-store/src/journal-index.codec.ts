import { RECORD_HEADER_BYTES } from '@cdp/contracts';

/**
 * The packed part of the journal index (table journal_extents, see the migration
 * CompactJournalIndex). A committed batch is one contiguous run of records in one segment file; its
 * writes are grouped by (volume, region), and each group becomes one row whose `entries` column is
 * the group's writes, in seq order, packed as unsigned LEB128 varints, four per write:
 *
 *   seqGap     seq - previous seq - 1              (previous = the row's first_seq - 1)
 *   posGap     record position - previous end      (previous end = the row's position; a record's
 *                                                   end is position + RECORD_HEADER_BYTES + length)
 *   length     sectors * 2 + 1 for a sector write, bytes * 2 otherwise
 *   offset     zigzag(offset - previous write end), in sectors for a sector write, else in bytes
 *              (previous write end = the region's first byte)
 *
 * A sector write is one whose offset and length, and the previous write end, are multiples of 512
 * bytes: nearly every write, and a quarter shorter packed.
 *
 * A compacted row (see JournalCompactor) holds the writes of many consecutive batches of its region,
 * which may lie in several segments. Where the next write is in a later segment, an escape comes
 * first, four varints that no write can be (a write's length field is never 0):
 *
 *   0, segment - previous segment, 0, the next batch's position in that segment
 *
 * after which the previous end is that position. A row of one batch never needs one. A write of a batch that fills its group is
 * 1 + 1 + 1..4 + 1 bytes, a random write in a 64 MiB region about ten, so Postgres holds a few bytes
 * per write plus one row per (batch, volume, region) instead of a row per write. A write that
 * crosses a region boundary is listed in every region it touches (the reader clips it), so a region's
 * rows alone answer any read inside it; its "home" row is the region of its first byte.
 */
export const REGION_SHIFT = 26;
/** 64 MiB: the unit a point-in-time view loads from the index. */
export const REGION_BYTES = 2 ** REGION_SHIFT;
const SECTOR_BYTES = 512;

/** One journaled write as the index knows it. `position` is where its record starts in `segment`. */
export interface IndexedWrite {
  readonly seq: number;
  readonly volumeIndex: number;
  readonly offset: number;
  readonly length: number;
  readonly segment: number;
  readonly position: number;
}

/** One journal_extents row. */
export interface ExtentRow {
  readonly volumeIndex: number;
  readonly region: number;
  /**
   * The batch's first seq (of any record kind): the row's key within its (volume, region). A
   * compacted row has its first batch's.
   */
  readonly firstSeq: number;
  /** Seq of the row's last write. */
  readonly lastSeq: number;
  /** Where the (first) batch starts: the segment and position the entries are relative to. */
  readonly segment: number;
  readonly position: number;
  readonly entries: Buffer;
}

export class JournalIndexError extends Error {
  override readonly name = 'JournalIndexError';
  readonly retriable = false;
}

export function regionOf(offset: number): number {
  return Math.floor(offset / REGION_BYTES);
}

/**
 * Packs a batch's writes (in seq order, all in the batch's segment, at or after `batch.position`)
 * into its extent rows, ordered by (volume, region).
 */
export function packBatch(batch: { readonly firstSeq: number; readonly segment: number; readonly position: number }, writes: readonly IndexedWrite[]): ExtentRow[] {
  const groups = new Map<string, { volumeIndex: number; region: number; writes: IndexedWrite[] }>();
  for (const write of writes) {
    if (write.segment !== batch.segment || write.position < batch.position || write.seq < batch.firstSeq || write.length <= 0) {
      throw new JournalIndexError(`write seq ${write.seq} does not belong to the batch starting at seq ${batch.firstSeq}`);
    }
    const last = regionOf(write.offset + write.length - 1);
    for (let region = regionOf(write.offset); region <= last; region++) {
      const key = `${write.volumeIndex}:${region}`;
      let group = groups.get(key);
      if (!group) {
        group = { volumeIndex: write.volumeIndex, region, writes: [] };
        groups.set(key, group);
      }
      group.writes.push(write);
    }
  }
  const rows: ExtentRow[] = [];
  for (const group of groups.values()) {
    rows.push(packRow({ volumeIndex: group.volumeIndex, region: group.region, firstSeq: batch.firstSeq, segment: batch.segment, position: batch.position }, group.writes));
  }
  return rows.sort((a, b) => a.volumeIndex - b.volumeIndex || a.region - b.region);
}

/**
 * Packs writes of one (volume, region) into a row with the given key and base: seqs above
 * `firstSeq - 1` in increasing order, segments never going back, positions increasing within a
 * segment (log order), the first at or after `position` if it is in `segment`. Throws otherwise.
 */
export function packRow(base: Omit<ExtentRow, 'lastSeq' | 'entries'>, writes: readonly IndexedWrite[]): ExtentRow {
  const out = new VarintWriter(writes.length * 9);
  let prevSeq = base.firstSeq - 1;
  let segment = base.segment;
  let prevEnd = base.position;
  let prevWriteEnd = base.region * REGION_BYTES;
  for (const write of writes) {
    if (write.seq <= prevSeq || write.segment < segment || (write.segment === segment && write.position < prevEnd)) {
      throw new JournalIndexError(`writes of the row starting at seq ${base.firstSeq} are not in seq and log order (seq ${write.seq})`);
    }
    if (write.segment !== segment) {
      out.unsigned(0);
      out.unsigned(write.segment - segment);
      out.unsigned(0);
      out.unsigned(write.position);
      segment = write.segment;
      prevEnd = write.position;
    }
    const sectors = write.offset % SECTOR_BYTES === 0 && write.length % SECTOR_BYTES === 0 && prevWriteEnd % SECTOR_BYTES === 0;
    const unit = sectors ? SECTOR_BYTES : 1;
    out.unsigned(write.seq - prevSeq - 1);
    out.unsigned(write.position - prevEnd);
    out.unsigned((write.length / unit) * 2 + (sectors ? 1 : 0));
    out.unsigned(zigzag((write.offset - prevWriteEnd) / unit));
    prevSeq = write.seq;
    prevEnd = write.position + RECORD_HEADER_BYTES + write.length;
    prevWriteEnd = write.offset + write.length;
  }
  return { ...base, lastSeq: prevSeq, entries: out.finish() };
}

/**
 * One row holding the writes of consecutive rows of one (volume, region), given in first_seq order:
 * keyed and based as the first of them.
 */
export function mergeRows(rows: readonly Omit<ExtentRow, 'lastSeq'>[]): ExtentRow {
  const first = rows[0];
  if (!first) {
    throw new JournalIndexError('no rows to merge');
  }
  const writes = new RegionWrites(rows.reduce((n, row) => n + maxWrites(row), 0));
  for (const row of rows) {
    if (row.volumeIndex !== first.volumeIndex || row.region !== first.region) {
      throw new JournalIndexError(`rows of (volume ${row.volumeIndex}, region ${row.region}) and (volume ${first.volumeIndex}, region ${first.region}) cannot be merged`);
    }
    writes.addRow(row, Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY);
  }
  return packRow(
    { volumeIndex: first.volumeIndex, region: first.region, firstSeq: first.firstSeq, segment: first.segment, position: first.position },
    Array.from({ length: writes.count }, (_, i) => writes.write(i, first.volumeIndex)),
  );
}

/** The writes of one extent row, in seq order. Damaged entries throw JournalIndexError. */
export function unpackRow(row: Omit<ExtentRow, 'lastSeq'>): IndexedWrite[] {
  const writes = new RegionWrites(maxWrites(row));
  writes.addRow(row, Number.NEGATIVE_INFINITY, Number.POSITIVE_INFINITY);
  return Array.from({ length: writes.count }, (_, i) => writes.write(i, row.volumeIndex));
}

/**
 * The writes of many rows of one region, column by column, in the order added: what a point-in-time
 * view keeps per loaded region (a few numbers per write, no object per write).
 */
export class RegionWrites {
  count = 0;
  seq: Float64Array;
  offset: Float64Array;
  length: Float64Array;
  position: Float64Array;
  segment: Int32Array;

  /**
   * `capacity`: the writes expected, so that merging a few small rows (the compactor, many times a
   * round) does not allocate and zero columns for a thousand; they grow as needed either way.
   */
  constructor(capacity = 1024) {
    const size = Math.max(1, capacity);
    this.seq = new Float64Array(size);
    this.offset = new Float64Array(size);
    this.length = new Float64Array(size);
    this.position = new Float64Array(size);
    this.segment = new Int32Array(size);
  }

  /** Appends the row's writes with seq in (afterSeq, uptoSeq]. Damaged entries throw JournalIndexError. */
  addRow(row: Omit<ExtentRow, 'lastSeq'>, afterSeq: number, uptoSeq: number): void {
    this.reserve(this.count + maxWrites(row));
    const input = new VarintReader(row.entries);
    let prevSeq = row.firstSeq - 1;
    let segment = row.segment;
    let prevEnd = row.position;
    let prevWriteEnd = row.region * REGION_BYTES;
    while (!input.done) {
      const seqGap = input.unsigned();
      const posGap = input.unsigned();
      const lengthField = input.unsigned();
      const offsetField = input.unsigned();
      if (lengthField === 0) {
        // An escape: the next writes are in a later segment (see the file comment).
        if (seqGap !== 0 || posGap === 0 || !Number.isSafeInteger(segment + posGap)) {
          throw new JournalIndexError(`journal index row at seq ${row.firstSeq} is damaged (a segment change of ${posGap} after seq ${prevSeq})`);
        }
        segment += posGap;
        prevEnd = offsetField;
        continue;
      }
      const seq = prevSeq + 1 + seqGap;
      const position = prevEnd + posGap;
      const unit = lengthField % 2 === 1 ? SECTOR_BYTES : 1;
      const length = Math.floor(lengthField / 2) * unit;
      const offset = prevWriteEnd + unzigzag(offsetField) * unit;
      if (offset < 0 || length <= 0 || !Number.isSafeInteger(offset + length)) {
        throw new JournalIndexError(`journal index entry for seq ${seq} is damaged (offset ${offset}, length ${length})`);
      }
      if (seq > afterSeq && seq <= uptoSeq) {
        const i = this.count++;
        this.seq[i] = seq;
        this.offset[i] = offset;
        this.length[i] = length;
        this.position[i] = position;
        this.segment[i] = segment;
      }
      prevSeq = seq;
      prevEnd = position + RECORD_HEADER_BYTES + length;
      prevWriteEnd = offset + length;
    }
  }

  /**
   * Keeps only the writes `keep` marks (by index), in their order, in columns of exactly their size,
   * so that what is dropped is given back, not just hidden.
   */
  retain(keep: Uint8Array): void {
    let n = 0;
    for (let i = 0; i < this.count; i++) {
      if (keep[i] === 1) {
        this.seq[n] = this.seq[i] as number;
        this.offset[n] = this.offset[i] as number;
        this.length[n] = this.length[i] as number;
        this.position[n] = this.position[i] as number;
        this.segment[n] = this.segment[i] as number;
        n++;
      }
    }
    this.count = n;
    const size = Math.max(1, n);
    this.seq = this.seq.slice(0, size);
    this.offset = this.offset.slice(0, size);
    this.length = this.length.slice(0, size);
    this.position = this.position.slice(0, size);
    this.segment = this.segment.slice(0, size);
  }

  write(i: number, volumeIndex: number): IndexedWrite {
    return {
      seq: this.seq[i] as number,
      volumeIndex,
      offset: this.offset[i] as number,
      length: this.length[i] as number,
      segment: this.segment[i] as number,
      position: this.position[i] as number,
    };
  }

  private reserve(capacity: number): void {
    if (capacity <= this.seq.length) {
      return;
    }
    const size = Math.max(capacity, this.seq.length * 2);
    const grow = <A extends Float64Array | Int32Array>(from: A, to: A): A => {
      to.set(from.subarray(0, this.count));
      return to;
    };
    this.seq = grow(this.seq, new Float64Array(size));
    this.offset = grow(this.offset, new Float64Array(size));
    this.length = grow(this.length, new Float64Array(size));
    this.position = grow(this.position, new Float64Array(size));
    this.segment = grow(this.segment, new Int32Array(size));
  }
}

/** Repacks a row keeping only its writes with seq > `afterSeq` (promotion trims the row that straddles it). */
export function trimRow(row: ExtentRow, afterSeq: number): ExtentRow | undefined {
  const kept = unpackRow(row).filter((w) => w.seq > afterSeq);
  if (kept.length === 0) {
    return undefined;
  }
  return packRow(row, kept);
}

/** At most this many writes are packed in the row: every packed write takes at least four bytes. */
function maxWrites(row: Pick<ExtentRow, 'entries'>): number {
  return Math.ceil(row.entries.length / 4);
}

function zigzag(n: number): number {
  return n >= 0 ? n * 2 : -n * 2 - 1;
}

function unzigzag(n: number): number {
  return n % 2 === 0 ? n / 2 : -(n + 1) / 2;
}

/** LEB128 over safe integers; arithmetic rather than bit operators, which stop at 32 bits. */
class VarintWriter {
  private buf: Buffer;
  private length = 0;

  constructor(capacity: number) {
    this.buf = Buffer.allocUnsafe(Math.max(16, capacity));
  }

  unsigned(value: number): void {
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new JournalIndexError(`cannot pack ${value} into the journal index`);
    }
    if (this.length + 8 > this.buf.length) {
      const grown = Buffer.allocUnsafe(this.buf.length * 2);
      this.buf.copy(grown, 0, 0, this.length);
      this.buf = grown;
    }
    let v = value;
    while (v >= 0x80) {
      this.buf[this.length++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.buf[this.length++] = v;
  }

  finish(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.length));
  }
}

class VarintReader {
  private pos = 0;

  constructor(private readonly buf: Buffer) {}

  get done(): boolean {
    return this.pos >= this.buf.length;
  }

  unsigned(): number {
    let value = 0;
    let scale = 1;
    for (;;) {
      if (this.pos >= this.buf.length || scale > 2 ** 49) {
        throw new JournalIndexError('journal index entries are cut short or damaged');
      }
      const byte = this.buf[this.pos++] as number;
      value += (byte & 0x7f) * scale;
      if (byte < 0x80) {
        return value;
      }
      scale *= 0x80;
    }
  }
}
