import { open, rename, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Logger } from '@nestjs/common';
import { crc32c } from '@node-rs/crc32';

/**
 * Bytes of a volume one bit of the dirty map stands for: one resync chunk, so a dirty region is synced
 * with one record. A 2 TiB volume needs 256 KiB of map.
 */
export const DIRTY_REGION_BYTES = 1024 * 1024;

const MAGIC = 0x4d444443; // "CDDM"
const PAGE_BYTES = 4096;
const HEADER_BYTES = 16;
const ENTRY_BYTES = 10;
/** Volumes one map describes: as many entries as fit in its first page. */
export const MAX_DIRTY_MAP_VOLUMES = Math.floor((PAGE_BYTES - HEADER_BYTES) / ENTRY_BYTES);

export interface DirtyMapVolume {
  readonly index: number;
  readonly sizeBytes: number;
}

/** A dirty region: `length` bytes at `offset` of the volume with index `volumeIndex`. */
export interface DirtyRegion {
  readonly key: number;
  readonly volumeIndex: number;
  readonly offset: number;
  readonly length: number;
}

interface Layout {
  readonly volumeIndex: number;
  readonly regions: number;
  readonly firstBit: number;
  readonly sizeBytes: number;
}

/**
 * The dirty-region map of one VPG's capture (`dirty.map`): one bit per DIRTY_REGION_BYTES of each
 * volume, set while the protected volume may hold bytes the replication stream does not. That is the
 * case for every write taken while the splitter log cannot take it (degraded mode, see VpgCapture):
 * such a write goes to the volume only, and a later sync reads its region back and captures it.
 *
 * Why a file of its own, written out in full: the map is what a capture falls back on when the disk
 * under the log is full, so setting a bit must not need a new block. Every block of the file exists
 * from the open on, and a bit is set by writing the page it lies in over itself, then fdatasync. A bit
 * is durable before the first write to its region reaches the volume (`mark`), so after a crash of the
 * process or the host the map still names every region that may differ. Clearing goes the other way:
 * a bit is cleared in memory once the region's chunk is acknowledged by the bus, and reaches the disk
 * with the next page written (`persist`); a crash before that costs one more sync of the region.
 *
 * On disk, little-endian: page 0 is the header, the bits start at page 1.
 *
 *   off size field
 *    0   4   magic        0x4d444443 ("CDDM")
 *    4   4   crc32c       of bytes [8, 16 + 10 * count)
 *    8   4   regionBytes  DIRTY_REGION_BYTES, so a build with other regions refuses the file
 *   12   2   count        volumes described
 *   14   2   reserved
 *   16   …   `count` entries of (volume index u16, regions u32, first bit u32)
 *
 * Torn writes: a page is written only after the previous write of it was made durable, and the bits
 * it changes are ones no write has relied on yet, so a torn page loses nothing a volume holds.
 */
export class DirtyMap {
  /** Set bits, in memory: what the file holds plus what is being written to it. */
  private readonly bits: Uint8Array;
  private count = 0;
  /**
   * Bits set in memory that are not durable yet, each with the number of the mark that set it (a bit
   * cleared and set again during a write is a new mark), and the pages (set or cleared) to write.
   */
  private readonly pendingKeys = new Map<number, number>();
  private marks = 0;
  private changedPages = new Set<number>();
  /** The write of changed pages running now, and the one queued behind it that new callers share. */
  private writing: Promise<void> | undefined;
  private queued: Promise<void> | undefined;
  /** Keys captured by the sync (see `captured`), not marked again since: their bits may be cleared. */
  private readonly capturedKeys = new Set<number>();

  private constructor(
    private readonly file: FileHandle,
    private readonly layout: ReadonlyMap<number, Layout>,
    bits: Uint8Array,
  ) {
    this.bits = bits;
    for (const byte of bits) {
      this.count += popcount(byte);
    }
  }

  /**
   * Opens the map for these volumes. Bits of volumes it described before are kept (a volume that grew
   * gets clear bits for its new regions; one the VPG no longer has is dropped). A file that cannot be
   * read is taken to be damage from outside: every region of every volume is then dirty, the safe
   * reading. When the layout changes, or the file is new or damaged, it is written out again in full
   * (a temporary file renamed over it), so that its blocks exist before any bit is set.
   */
  static async open(path: string, volumes: readonly DirtyMapVolume[]): Promise<DirtyMap> {
    if (volumes.length > MAX_DIRTY_MAP_VOLUMES) {
      throw new RangeError(`a dirty-region map describes at most ${MAX_DIRTY_MAP_VOLUMES} volumes; this capture has ${volumes.length}`);
    }
    const layout = layoutOf(volumes);
    const header = encodeHeader(layout);
    const totalBits = [...layout.values()].reduce((sum, v) => sum + v.regions, 0);
    const bits = new Uint8Array(pagesFor(totalBits) * PAGE_BYTES);
    const logger = new Logger('dirty-map');
    let existing: Buffer | undefined;
    try {
      const handle = await open(path, 'r');
      try {
        existing = await handle.readFile();
      } finally {
        await handle.close();
      }
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw err;
      }
    }
    let rewrite = existing === undefined;
    if (existing !== undefined) {
      const old = decodeHeader(existing);
      if (!old) {
        logger.error(`${path} is not readable; taking every region of every volume as dirty`);
        for (const v of layout.values()) {
          setRange(bits, v.firstBit, v.regions);
        }
        rewrite = true;
      } else {
        for (const previous of old) {
          const now = layout.get(previous.volumeIndex);
          if (!now) {
            continue;
          }
          const regions = Math.min(now.regions, previous.regions);
          for (let r = 0; r < regions; r++) {
            if (getBit(existing, PAGE_BYTES * 8 + previous.firstBit + r)) {
              setBit(bits, now.firstBit + r);
            }
          }
        }
        rewrite = !existing.subarray(0, HEADER_BYTES + ENTRY_BYTES * layout.size).equals(header.subarray(0, HEADER_BYTES + ENTRY_BYTES * layout.size)) || existing.length !== PAGE_BYTES + bits.length;
      }
    }
    if (rewrite) {
      await writeWhole(path, Buffer.concat([header, Buffer.from(bits.buffer, bits.byteOffset, bits.byteLength)]));
    }
    const file = await open(path, 'r+');
    return new DirtyMap(file, layout, bits);
  }

  /** How many regions are dirty (in memory: set bits, durable or on their way). */
  get dirtyRegions(): number {
    return this.count;
  }

  /**
   * Sets the bits of [offset, offset + length) of the volume. Undefined when they are all set and
   * durable already (the common case once a region is dirty); otherwise a promise that resolves once
   * they are durable, which the write to the volume must wait for. Rejects if the map cannot be
   * written; the bits stay set in memory and go to the disk with the next write.
   */
  mark(volumeIndex: number, offset: number, length: number): Promise<void> | undefined {
    const v = this.volume(volumeIndex);
    let wait = false;
    for (let key = v.firstBit + Math.floor(offset / DIRTY_REGION_BYTES), last = v.firstBit + Math.floor((offset + Math.max(length, 1) - 1) / DIRTY_REGION_BYTES); key <= last; key++) {
      // Written to again since the sync captured it: that capture no longer covers the region.
      this.capturedKeys.delete(key);
      if (!getBit(this.bits, key)) {
        setBit(this.bits, key);
        this.count++;
        this.pendingKeys.set(key, ++this.marks);
        this.changedPages.add(pageOf(key));
        wait = true;
      } else if (this.pendingKeys.has(key)) {
        wait = true;
      }
    }
    return wait ? this.persist() : undefined;
  }

  /** Whether any bit of [offset, offset + length) of the volume is set. */
  intersects(volumeIndex: number, offset: number, length: number): boolean {
    const v = this.layout.get(volumeIndex);
    if (!v || length <= 0) {
      return false;
    }
    const first = Math.floor(offset / DIRTY_REGION_BYTES);
    const last = Math.min(v.regions - 1, Math.floor((offset + length - 1) / DIRTY_REGION_BYTES));
    for (let r = first; r <= last; r++) {
      if (getBit(this.bits, v.firstBit + r)) {
        return true;
      }
    }
    return false;
  }

  /** The dirty regions now, in volume and offset order. */
  regions(): DirtyRegion[] {
    const out: DirtyRegion[] = [];
    for (const v of this.layout.values()) {
      for (let r = 0; r < v.regions; r++) {
        const key = v.firstBit + r;
        if (getBit(this.bits, key)) {
          const offset = r * DIRTY_REGION_BYTES;
          out.push({ key, volumeIndex: v.volumeIndex, offset, length: Math.min(DIRTY_REGION_BYTES, v.sizeBytes - offset) });
        }
      }
    }
    return out;
  }

  isDirty(key: number): boolean {
    return getBit(this.bits, key);
  }

  /** The sync read this region back and captured it: its bit may be cleared once that chunk is shipped, unless marked again. */
  captured(key: number): void {
    this.capturedKeys.add(key);
  }

  /**
   * The chunk captured for this region is acknowledged by the bus: its bit is cleared in memory, if
   * no write marked the region since the capture. Durable with the next `persist`.
   */
  shipped(key: number): void {
    if (!this.capturedKeys.delete(key) || !getBit(this.bits, key)) {
      return;
    }
    clearBit(this.bits, key);
    this.count--;
    this.changedPages.add(pageOf(key));
  }

  /** Writes every changed page and makes it durable; calls made during a write share the next one. */
  persist(): Promise<void> {
    if (this.queued) {
      return this.queued;
    }
    if (!this.writing) {
      this.writing = this.writePages().finally(() => (this.writing = undefined));
      return this.writing;
    }
    const queued = this.writing
      .catch(() => undefined)
      .then(() => {
        this.queued = undefined;
        return this.persist();
      });
    this.queued = queued;
    return queued;
  }

  async close(): Promise<void> {
    try {
      await this.persist();
    } finally {
      await this.file.close();
    }
  }

  private async writePages(): Promise<void> {
    const pages = [...this.changedPages].sort((a, b) => a - b);
    if (pages.length === 0) {
      return;
    }
    // Every pending bit lies in a changed page, so these are durable once the pages are.
    const keys = [...this.pendingKeys];
    this.changedPages = new Set();
    try {
      for (const page of pages) {
        // A copy: the bits may change while the write is on the thread pool (a bit set after its page
        // was copied changes the page again, and waits for the next write).
        const bytes = Buffer.from(this.bits.subarray(page * PAGE_BYTES, (page + 1) * PAGE_BYTES));
        await this.file.write(bytes, 0, bytes.length, PAGE_BYTES + page * PAGE_BYTES);
      }
      await this.file.datasync();
    } catch (err) {
      // Not durable: written again with the next persist.
      for (const page of pages) {
        this.changedPages.add(page);
      }
      throw err;
    }
    for (const [key, mark] of keys) {
      if (this.pendingKeys.get(key) === mark) {
        this.pendingKeys.delete(key);
      }
    }
  }

  private volume(volumeIndex: number): Layout {
    const v = this.layout.get(volumeIndex);
    if (!v) {
      throw new RangeError(`volume ${volumeIndex} is not in the dirty-region map`);
    }
    return v;
  }
}

function layoutOf(volumes: readonly DirtyMapVolume[]): Map<number, Layout> {
  const layout = new Map<number, Layout>();
  let firstBit = 0;
  for (const v of [...volumes].sort((a, b) => a.index - b.index)) {
    const regions = Math.ceil(v.sizeBytes / DIRTY_REGION_BYTES);
    layout.set(v.index, { volumeIndex: v.index, regions, firstBit, sizeBytes: v.sizeBytes });
    firstBit += regions;
  }
  return layout;
}

function encodeHeader(layout: ReadonlyMap<number, Layout>): Buffer {
  const header = Buffer.alloc(PAGE_BYTES);
  header.writeUInt32LE(MAGIC, 0);
  header.writeUInt32LE(DIRTY_REGION_BYTES, 8);
  header.writeUInt16LE(layout.size, 12);
  let at = HEADER_BYTES;
  for (const v of layout.values()) {
    header.writeUInt16LE(v.volumeIndex, at);
    header.writeUInt32LE(v.regions, at + 2);
    header.writeUInt32LE(v.firstBit, at + 6);
    at += ENTRY_BYTES;
  }
  header.writeUInt32LE(crc32c(header.subarray(8, at)), 4);
  return header;
}

/** The volumes a map file describes, or undefined if its header is not whole and valid. */
function decodeHeader(file: Buffer): { volumeIndex: number; regions: number; firstBit: number }[] | undefined {
  if (file.length < PAGE_BYTES || file.readUInt32LE(0) !== MAGIC || file.readUInt32LE(8) !== DIRTY_REGION_BYTES) {
    return undefined;
  }
  const count = file.readUInt16LE(12);
  if (count > MAX_DIRTY_MAP_VOLUMES) {
    return undefined;
  }
  const end = HEADER_BYTES + ENTRY_BYTES * count;
  if (crc32c(file.subarray(8, end)) !== file.readUInt32LE(4)) {
    return undefined;
  }
  const entries = [];
  for (let at = HEADER_BYTES; at < end; at += ENTRY_BYTES) {
    const entry = { volumeIndex: file.readUInt16LE(at), regions: file.readUInt32LE(at + 2), firstBit: file.readUInt32LE(at + 6) };
    if (PAGE_BYTES + Math.ceil((entry.firstBit + entry.regions) / 8) > file.length) {
      return undefined;
    }
    entries.push(entry);
  }
  return entries;
}

async function writeWhole(path: string, contents: Buffer): Promise<void> {
  const tmp = `${path}.tmp`;
  const handle = await open(tmp, 'w');
  try {
    await handle.write(contents, 0, contents.length, 0);
    await handle.datasync();
  } finally {
    await handle.close();
  }
  await rename(tmp, path);
  const dir = await open(dirname(path), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

function pagesFor(bits: number): number {
  return Math.max(1, Math.ceil(bits / (PAGE_BYTES * 8)));
}

function pageOf(key: number): number {
  return Math.floor(key / (PAGE_BYTES * 8));
}

function getBit(bytes: Uint8Array, bit: number): boolean {
  return ((bytes[bit >> 3] ?? 0) & (1 << (bit & 7))) !== 0;
}

function setBit(bytes: Uint8Array, bit: number): void {
  bytes[bit >> 3] = (bytes[bit >> 3] ?? 0) | (1 << (bit & 7));
}

function clearBit(bytes: Uint8Array, bit: number): void {
  bytes[bit >> 3] = (bytes[bit >> 3] ?? 0) & ~(1 << (bit & 7));
}

function setRange(bytes: Uint8Array, from: number, count: number): void {
  for (let bit = from; bit < from + count; bit++) {
    setBit(bytes, bit);
  }
}

function popcount(byte: number): number {
  let n = 0;
  for (let b = byte; b !== 0; b &= b - 1) {
    n++;
  }
  return n;
}
