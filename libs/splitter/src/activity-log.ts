import { readFileSync } from 'node:fs';
import { open, readFile, rename } from 'node:fs/promises';
import { dirname } from 'node:path';

/**
 * The activity log, after DRBD's: the set of volume regions that may hold writes not yet durable on
 * both the protected volume and the splitter log. A region enters it (durably) before its first write
 * is applied, and leaves it only when a completed flush covers every write it took. After a power
 * loss the page cache is gone and the kernel may have written back volume pages whose log records were
 * lost (or the other way round); only regions in this log can differ, so re-reading them from the
 * volume and shipping them brings both sites back to agreement without a full copy.
 *
 * File format (JSON, replaced atomically: write a temporary file, fdatasync, rename, fsync the
 * directory): { "version": 1, "bootId": string, "regionBytes": number, "regions": [[volumeIndex, regionIndex], …] }
 */
export const REGION_BYTES = 4 * 1024 * 1024;
/** Region keys pack (volume index, region index) into one safe integer: volume < 2^16, region < 2^24. */
const VOLUME_FACTOR = 2 ** 24;

export interface ActivityRecord {
  readonly version: 1;
  readonly bootId: string;
  readonly regionBytes: number;
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
  private persisting: Promise<void> = Promise.resolve();
  private writes = 0;

  private constructor(
    private readonly path: string,
    private readonly bootId: string,
    readonly capacity: number,
  ) {}

  /**
   * Opens the log for this boot. `previous` is what the file held (undefined for a new VPG): after an
   * unclean shutdown its regions are the ones that may differ between volume and log. They stay active
   * until a flush covers them.
   */
  static async open(path: string, bootId: string, capacity: number): Promise<{ log: ActivityLog; previous: ActivityRecord | undefined }> {
    let previous: ActivityRecord | undefined;
    try {
      previous = JSON.parse(await readFile(path, 'utf8')) as ActivityRecord;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new Error(`activity log ${path} is unreadable; the VPG needs a full resync: ${(err as Error).message}`);
      }
    }
    if (previous && previous.regionBytes !== REGION_BYTES) {
      throw new Error(`activity log ${path} uses ${previous.regionBytes}-byte regions, this build ${REGION_BYTES}`);
    }
    const log = new ActivityLog(path, bootId, capacity);
    for (const [volume, region] of previous?.regions ?? []) {
      log.active.set(volume * VOLUME_FACTOR + region, -1);
    }
    // Not saved yet: the file keeps the previous boot's id until the owner has finished recovering
    // (save()), so a crash during the recovery is recognised again at the next start.
    return { log, previous };
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
   * is not enough it asks for a flush first.
   */
  async activate(keys: readonly number[], epoch: number, cleanBefore: () => number, flush: () => Promise<void>): Promise<void> {
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
    await this.persist();
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

  /** Records the current set (and this boot's id) durably. */
  save(): Promise<void> {
    return this.persist();
  }

  /** Writes are serialised; each persists the set as it is when it starts, which includes its caller's. */
  private persist(): Promise<void> {
    const run = this.persisting.then(() => this.write());
    this.persisting = run.catch(() => undefined);
    return run;
  }

  private async write(): Promise<void> {
    const record: ActivityRecord = {
      version: 1,
      bootId: this.bootId,
      regionBytes: REGION_BYTES,
      regions: [...this.active.keys()].map((key) => {
        const r = regionOf(key);
        return [r.volumeIndex, r.regionIndex] as const;
      }),
    };
    const tmp = `${this.path}.tmp`;
    const file = await open(tmp, 'w', 0o600);
    try {
      await file.writeFile(JSON.stringify(record));
      await file.datasync();
    } finally {
      await file.close();
    }
    await rename(tmp, this.path);
    const dir = await open(dirname(this.path), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
    this.writes++;
  }
}
