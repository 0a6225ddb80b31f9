import { readFileSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { crc32c } from '@node-rs/crc32';

/**
 * The activity log, after DRBD's: the set of volume regions that may hold writes not yet durable on
 * both the protected volume and the splitter log. A region enters it (durably) before its first write
 * is applied, and leaves it only when a completed flush covers every write it took. After a power
 * loss the page cache is gone and the kernel may have written back volume pages whose log records were
 * lost (or the other way round); only regions in this log can differ, so re-reading them from the
 * volume and shipping them brings both sites back to agreement without a full copy.
 *
 * On disk: two slots of SLOT_BYTES each, written alternately in place, one fdatasync per update (a
 * torn write can only damage the slot being written; the other still holds the previous state).
 * A slot, little-endian:
 *
 *   off size field
 *    0   4   magic        0x4c414443 ("CDAL")
 *    4   4   crc32c       of bytes [8, 24 + bootIdLength + 6 * count)
 *    8   8   generation   increases by one per update; the valid slot with the highest one wins
 *   16   4   regionBytes  REGION_BYTES, so a build with other regions refuses the file
 *   20   2   count        regions listed
 *   22   2   bootIdLength
 *   24   …   bootId (UTF-8), then `count` entries of (volume index u16, region index u32)
 */
export const REGION_BYTES = 4 * 1024 * 1024;
/** Region keys pack (volume index, region index) into one safe integer: volume < 2^16, region < 2^24. */
const VOLUME_FACTOR = 2 ** 24;
const MAGIC = 0x4c414443;
const HEADER_BYTES = 24;
const MAX_BOOT_ID_BYTES = 64;
/** Enough for 4096 regions (16 GiB of hot area). */
export const MAX_ACTIVITY_LOG_REGIONS = 4096;
const SLOT_BYTES = HEADER_BYTES + MAX_BOOT_ID_BYTES + 6 * MAX_ACTIVITY_LOG_REGIONS + 4096 - ((HEADER_BYTES + MAX_BOOT_ID_BYTES + 6 * MAX_ACTIVITY_LOG_REGIONS) % 4096);

export interface ActivityRecord {
  readonly bootId: string;
  readonly regions: readonly (readonly [number, number])[];
}

export interface Region {
  readonly volumeIndex: number;
  readonly regionIndex: number;
}

export function regionKeys(volumeIndex: number, offset: number, length: number): number[] {
  const first = Math.floor(offset / REGION_BYTES);
  const last = Math.floor((offset + length - 1) / REGION_BYTES);
  const keys: number[] = [];
  for (let region = first; region <= last; region++) {
    keys.push(volumeIndex * VOLUME_FACTOR + region);
  }
  return keys;
}

/**
 * The regions a sequential stream will write next: when the region before `keys` is active (the
 * stream came from there), the `count` after them, within the volume. Otherwise none: a random write
 * says nothing about its neighbours.
 */
export function regionsAhead(keys: readonly number[], volumeBytes: number, isActive: (key: number) => boolean, count: number): number[] {
  const first = keys[0];
  const last = keys[keys.length - 1];
  if (first === undefined || last === undefined || first % VOLUME_FACTOR === 0 || !isActive(first - 1)) {
    return [];
  }
  const regions = Math.ceil(volumeBytes / REGION_BYTES);
  const ahead: number[] = [];
  for (let key = last + 1; ahead.length < count && (key % VOLUME_FACTOR) < regions; key++) {
    ahead.push(key);
  }
  return ahead;
}

function regionOf(key: number): Region {
  return { volumeIndex: Math.floor(key / VOLUME_FACTOR), regionIndex: key % VOLUME_FACTOR };
}

/** The kernel's id of this boot: it changes when the machine restarts, and only then. */
export function currentBootId(): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return undefined;
  }
}

export class ActivityLog {
  /** Region key -> flush epoch of its latest write. Map order is least recently written first. */
  private readonly active = new Map<number, number>();
  private generation: bigint;
  /** The update being written, and the one queued behind it that every new caller shares. */
  private writing: Promise<void> | undefined;
  private queued: Promise<void> | undefined;
  private writes = 0;

  private constructor(
    private readonly file: FileHandle,
    private readonly bootId: string,
    readonly capacity: number,
    generation: bigint,
  ) {
    this.generation = generation;
  }

  /**
   * Opens the log for this boot. `previous` is what the file held (undefined for a new VPG): after an
   * unclean shutdown its regions are the ones that may differ between volume and log. They stay active
   * until a flush covers them.
   */
  static async open(path: string, bootId: string, capacity: number): Promise<{ log: ActivityLog; previous: ActivityRecord | undefined }> {
    if (!Number.isInteger(capacity) || capacity < 1 || capacity > MAX_ACTIVITY_LOG_REGIONS) {
      throw new Error(`activity log capacity must be 1 to ${MAX_ACTIVITY_LOG_REGIONS} regions, got ${capacity}`);
    }
    const file = await open(path, 'a+');
    await file.close();
    const handle = await open(path, 'r+');
    try {
      const { record, generation } = await readNewestSlot(handle, path);
      const log = new ActivityLog(handle, bootId.slice(0, MAX_BOOT_ID_BYTES), capacity, generation);
      for (const [volume, region] of record?.regions ?? []) {
        log.active.set(volume * VOLUME_FACTOR + region, -1);
      }
      // Not saved yet: the file keeps the previous boot's id until the owner has finished recovering
      // (save()), so a crash during the recovery is recognised again at the next start.
      return { log, previous: record };
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  get persistedWrites(): number {
    return this.writes;
  }

  regions(): Region[] {
    return [...this.active.keys()].map(regionOf);
  }

  /**
   * Marks the regions as written in `epoch` if all of them are active, and returns true; returns false
   * (changing nothing) if any is not, and the caller must `activate` them first. Synchronous, so a
   * caller that applies its write right after a true answer cannot be overtaken by an eviction.
   */
  touch(keys: readonly number[], epoch: number): boolean {
    if (!keys.every((key) => this.active.has(key))) {
      return false;
    }
    for (const key of keys) {
      this.active.delete(key);
      this.active.set(key, epoch);
    }
    return true;
  }

  /**
   * Adds regions and makes the log durable. To stay within capacity it evicts the least recently
   * written regions whose writes are all covered by a completed flush (epoch < cleanBefore()); if that
   * is not enough it asks for a flush first. Concurrent callers share one write of the file.
   */
  async activate(keys: readonly number[], epoch: number, cleanBefore: () => number, flush: () => Promise<void>, ahead: readonly number[] = []): Promise<void> {
    const missing = keys.filter((key) => !this.active.has(key));
    if (missing.length === 0) {
      return;
    }
    if (this.active.size + missing.length > this.capacity && !this.evict(this.active.size + missing.length - this.capacity, cleanBefore())) {
      await flush();
      this.evict(this.active.size + missing.length - this.capacity, cleanBefore());
    }
    for (const key of missing) {
      this.active.set(key, epoch);
    }
    // Regions the caller expects to write next, in the same update while there is room: one update of
    // the file (an fdatasync) then covers several regions of a sequential stream, not one each.
    for (const key of ahead) {
      if (this.active.size >= this.capacity) {
        break;
      }
      if (!this.active.has(key)) {
        this.active.set(key, epoch);
      }
    }
    await this.persist();
  }

  /** Whether the region is in the log. */
  has(key: number): boolean {
    return this.active.has(key);
  }

  /** Records the current set (and this boot's id) durably. */
  save(): Promise<void> {
    return this.persist();
  }

  async close(): Promise<void> {
    await this.queued?.catch(() => undefined);
    await this.writing?.catch(() => undefined);
    await this.file.close();
  }

  private evict(count: number, cleanBefore: number): boolean {
    let evicted = 0;
    for (const [key, epoch] of this.active) {
      if (evicted >= count) {
        break;
      }
      if (epoch < cleanBefore) {
        this.active.delete(key);
        evicted++;
      }
    }
    return evicted >= count;
  }

  /**
   * Group commit: while one update is being written, every caller shares the next one, which starts
   * when the current one is done and records the set as it is then (so it includes all of them).
   */
  private persist(): Promise<void> {
    if (this.queued) {
      return this.queued;
    }
    const previous = this.writing ?? Promise.resolve();
    const next = previous
      .catch(() => undefined)
      .then(() => {
        this.queued = undefined;
        this.writing = next;
        return this.write();
      })
      .finally(() => {
        if (this.writing === next) {
          this.writing = undefined;
        }
      });
    this.queued = next;
    return next;
  }

  private async write(): Promise<void> {
    const regions = [...this.active.keys()].map(regionOf);
    const bootId = Buffer.from(this.bootId, 'utf8');
    const length = HEADER_BYTES + bootId.length + 6 * regions.length;
    const slot = Buffer.alloc(length);
    const generation = this.generation + 1n;
    slot.writeUInt32LE(MAGIC, 0);
    slot.writeBigUInt64LE(generation, 8);
    slot.writeUInt32LE(REGION_BYTES, 16);
    slot.writeUInt16LE(regions.length, 20);
    slot.writeUInt16LE(bootId.length, 22);
    bootId.copy(slot, HEADER_BYTES);
    let at = HEADER_BYTES + bootId.length;
    for (const region of regions) {
      slot.writeUInt16LE(region.volumeIndex, at);
      slot.writeUInt32LE(region.regionIndex, at + 2);
      at += 6;
    }
    slot.writeUInt32LE(crc32c(slot.subarray(8)), 4);
    await this.file.write(slot, 0, slot.length, Number(generation % 2n) * SLOT_BYTES);
    await this.file.datasync();
    this.generation = generation;
    this.writes++;
  }
}

async function readNewestSlot(handle: FileHandle, path: string): Promise<{ record: ActivityRecord | undefined; generation: bigint }> {
  let best: { record: ActivityRecord; generation: bigint } | undefined;
  let damaged = 0;
  for (let slot = 0; slot < 2; slot++) {
    const buf = Buffer.alloc(SLOT_BYTES);
    const { bytesRead } = await handle.read(buf, 0, SLOT_BYTES, slot * SLOT_BYTES);
    if (bytesRead < HEADER_BYTES || buf.readUInt32LE(0) !== MAGIC) {
      continue;
    }
    const count = buf.readUInt16LE(20);
    const bootIdLength = buf.readUInt16LE(22);
    const end = HEADER_BYTES + bootIdLength + 6 * count;
    if (end > bytesRead || crc32c(buf.subarray(8, end)) !== buf.readUInt32LE(4)) {
      damaged++;
      continue;
    }
    if (buf.readUInt32LE(16) !== REGION_BYTES) {
      throw new Error(`activity log ${path} uses ${buf.readUInt32LE(16)}-byte regions, this build ${REGION_BYTES}`);
    }
    const generation = buf.readBigUInt64LE(8);
    const regions: (readonly [number, number])[] = [];
    for (let at = HEADER_BYTES + bootIdLength; at < end; at += 6) {
      regions.push([buf.readUInt16LE(at), buf.readUInt32LE(at + 2)]);
    }
    if (!best || generation > best.generation) {
      best = { record: { bootId: buf.toString('utf8', HEADER_BYTES, HEADER_BYTES + bootIdLength), regions }, generation };
    }
  }
  if (!best && damaged > 0) {
    // Both slots damaged: nothing says which regions may differ. Refuse rather than guess.
    throw new Error(`activity log ${path} is damaged in both slots; the VPG needs a full resync`);
  }
  return { record: best?.record, generation: best?.generation ?? 0n };
}
