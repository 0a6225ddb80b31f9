import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { type DirtyMap } from './dirty-map';
import { RESYNC_MAX_UNSHIPPED_BYTES } from './forced-resync';
import { type ProtectedVolume } from './protected-volume';
import { UnshippedChunks, type ShippingProgress } from './unshipped-chunks';

/** What the sync of dirty regions needs from the VPG's capture. */
export interface DirtySyncHost extends ShippingProgress {
  readonly volumes: ReadonlyMap<number, ProtectedVolume>;
  /** As ResyncHost.captureChunk: undefined while writes are on their way to the volume, or while tracking. */
  captureChunk(volume: ProtectedVolume, offset: number, length: number): number | undefined;
  /** Settles when the writes on their way to the volumes are there; undefined when none are. */
  applying(): Promise<void> | undefined;
  /** Resolves when a coordinated checkpoint's hold ends; undefined when none holds. */
  heldBarrier(): Promise<void> | undefined;
  waitShipped(seq: number): Promise<void>;
  /** Whether the capture tracks writes again (the log refused one): the sync gives up until it stops. */
  tracking(): boolean;
  /** Whether the capture is closing: the pass stops where it is. */
  closing(): boolean;
  /** Resolves when the capture starts tracking again (or is closing). */
  interrupted(): Promise<void>;
}

export type DirtySyncOutcome = 'complete' | 'interrupted';

/**
 * One pass of the sync that follows degraded mode: each region the dirty map holds is read back from
 * its volume and captured as a write record, between the client writes that keep arriving (the same
 * way a forced resync captures its chunks, so each chunk holds the volume as it is at its seq). A
 * region's bit is cleared once its chunk is acknowledged by the bus, unless a write marked the region
 * again meanwhile. The pass ends 'complete' when the map is empty and durable, or 'interrupted' when
 * the log refuses an append again (the capture tracks writes once more) or the capture closes; the
 * bits left say what the next pass has to do.
 */
export class DirtySync {
  private total = 0;
  private done = 0;
  readonly startedAt = new Date();

  constructor(
    private readonly map: DirtyMap,
    private readonly host: DirtySyncHost,
  ) {}

  /** Regions this pass set out to sync, and how many of them are captured and shipped. */
  progress(): { readonly regionsTotal: number; readonly regionsDone: number } {
    return { regionsTotal: this.total, regionsDone: this.done };
  }

  async run(): Promise<DirtySyncOutcome> {
    const regions = this.map.regions();
    this.total = regions.length;
    /** Chunks captured, not yet acknowledged by the bus, with the region each holds. */
    const pending = new UnshippedChunks<{ readonly key: number; readonly seq: number; readonly bytes: number }>(this.host);
    const settle = (): void => {
      const settled = pending.settle();
      // After a cut of the log the chunks not acknowledged are given up: their bits stay, for the next pass.
      for (const chunk of settled === 'cut' ? [] : settled) {
        this.map.shipped(chunk.key);
        this.done++;
      }
    };
    const interrupted = this.host.interrupted();
    let i = 0;
    while (i < regions.length) {
      if (this.host.tracking() || this.host.closing()) {
        return 'interrupted';
      }
      const region = regions[i] as (typeof regions)[number];
      const volume = this.host.volumes.get(region.volumeIndex);
      if (!volume || !this.map.isDirty(region.key)) {
        i++;
        continue;
      }
      const held = this.host.heldBarrier();
      if (held) {
        await Promise.race([held, interrupted]);
        continue;
      }
      const seq = this.host.captureChunk(volume, region.offset, region.length);
      if (seq === undefined) {
        if (this.host.tracking()) {
          return 'interrupted';
        }
        // While it waits (for room in the log, say), the chunks already captured are acknowledged:
        // settled as they are, so the progress shown is true.
        const oldest = pending.oldest;
        await Promise.race([this.host.applying(), interrupted, ...(oldest ? [this.host.waitShipped(oldest.seq)] : [])]);
        settle();
        continue;
      }
      this.map.captured(region.key);
      pending.push({ key: region.key, seq, bytes: region.length });
      i++;
      settle();
      for (let oldest = pending.oldest; oldest && pending.bytes > RESYNC_MAX_UNSHIPPED_BYTES && !this.host.tracking() && !this.host.closing(); oldest = pending.oldest) {
        await Promise.race([this.host.waitShipped(oldest.seq), interrupted]);
        settle();
      }
      // Client writes and commands run between chunks.
      await yieldToEventLoop();
    }
    const last = pending.newest;
    if (last) {
      await Promise.race([this.host.waitShipped(last.seq), interrupted]);
      settle();
    }
    await this.map.persist();
    return this.map.dirtyRegions === 0 && !this.host.tracking() ? 'complete' : 'interrupted';
  }
}
