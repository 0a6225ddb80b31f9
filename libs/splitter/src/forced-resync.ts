import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import { Logger } from '@nestjs/common';
import { z } from 'zod';
import { DomainError, volumesOf, type Vpg } from '@cdp/domain';
import { type CheckpointGate } from './checkpoint-gate';
import { type ProtectedVolume } from './protected-volume';
import { UnshippedChunks, type ShippingProgress } from './unshipped-chunks';

/** Bytes of a volume read back and captured as one write record: one bus batch at the shipper's default size. */
export const RESYNC_CHUNK_BYTES = 1024 * 1024;
/**
 * Most resync bytes captured but not yet acknowledged by the bus. Half the shipper's in-memory window
 * (16 MiB), so the client writes captured beside the resync still ship from memory, and the resync
 * never runs further ahead of the link than this.
 */
export const RESYNC_MAX_UNSHIPPED_BYTES = 8 * 1024 * 1024;
/** Progress is made durable at least this often (in shipped bytes): a crash repeats at most this much. */
const SAVE_EVERY_BYTES = 32 * 1024 * 1024;

const PROGRESS_FILE = 'resync.json';

/** What an operator asked for (the `replication.resync` command). */
export interface ResyncRequest {
  readonly resyncId: string;
  /** null: every volume of the VPG. */
  readonly volumeIds: readonly string[] | null;
  readonly requestedAt: string;
  readonly reason: string;
}

/** A running resync, as the splitter's VPG status shows it. */
export interface ResyncStatus {
  readonly id: string;
  readonly volumes: readonly string[];
  readonly bytesDone: number;
  readonly bytesTotal: number;
  readonly startedAt: string;
  readonly reason: string;
  /** The last failure of the copy loop, if it stopped on one; the resync stays in progress. */
  readonly error: string | null;
}

/** What the resync needs from the VPG's capture. */
export interface ResyncHost extends ShippingProgress {
  readonly vpg: Vpg;
  /** The volumes this capture owns, by volume index. */
  readonly volumes: ReadonlyMap<number, ProtectedVolume>;
  /**
   * Reads [offset, offset + length) of the volume now and captures it as one write record; returns its
   * seq. Synchronous, after the writes queued before it are applied, so the record holds exactly what
   * the volume held at that seq. Undefined, capturing nothing, while writes before it are still on
   * their way to the volume (see `applying`): then wait for them and ask again.
   */
  captureChunk(volume: ProtectedVolume, offset: number, length: number): number | undefined;
  /** Settles when the writes on their way to the volumes (on the thread pool) are there; undefined when none are. */
  applying(): Promise<void> | undefined;
  /**
   * While a coordinated checkpoint holds this capture's writes: resolves when the hold ends. A chunk
   * captured during a hold would land inside that checkpoint, so the resync waits like a write.
   */
  heldBarrier(): Promise<void> | undefined;
  waitShipped(seq: number): Promise<void>;
  /** Held while the resync runs: no checkpoint is cut inside it. */
  readonly gate: CheckpointGate;
}

/** The resync's name among the holders of the checkpoint gate. */
const GATE_HOLDER = 'forced-resync';

/**
 * `resync.json` in the capture's directory, replaced atomically (temporary file, fdatasync, rename,
 * directory fsync) at the start, every SAVE_EVERY_BYTES shipped, and at completion:
 *
 * - `id`, `reason`, `requestedAt`, `startedAt`: the request;
 * - `volumes`: the volume ids to read back, in order;
 * - `next`: where reading resumes: `volume`, an index into `volumes`, and `offset`, bytes. Every chunk
 *   before it was captured and acknowledged by the bus (so also durable in the splitter log);
 * - `bytesDone`, `bytesTotal`: the progress shown in the status;
 * - `completedAt`: null while the resync runs. A completed file is kept so that the same command
 *   delivered again (the bus delivers at least once) is recognised and not run twice.
 */
const progressSchema = z.object({
  version: z.literal(1),
  id: z.string().min(1),
  reason: z.string(),
  requestedAt: z.string(),
  startedAt: z.string(),
  volumes: z.array(z.string().min(1)),
  next: z.object({ volume: z.number().int().min(0), offset: z.number().int().min(0) }),
  bytesDone: z.number().int().min(0),
  bytesTotal: z.number().int().min(0),
  completedAt: z.string().nullable(),
});
export type ResyncProgress = z.infer<typeof progressSchema>;
type Progress = ResyncProgress;

/**
 * An operator-forced resync of some or all of a VPG's volumes: each is read back in order, a chunk at
 * a time, and every chunk is captured as an ordinary write record with its own seq, between the client
 * writes that keep arriving. A chunk holds the volume as it is at its seq, so once the last chunk is
 * captured the recovery site's image at any later cut equals the protected volume, whatever it held
 * before (written outside the splitter, restored from a backup).
 *
 * Checkpoints: every checkpoint cut before the resync keeps its journal intact and stays valid. None
 * is cut while it runs, since a cut there would hold resynced and not yet resynced regions: it holds
 * the capture's checkpoint gate (see CheckpointGate) from start to completion.
 *
 * Progress is durable in `resync.json`; a resync interrupted by a crash or a stop is resumed at the
 * next open, which puts the capture back in the resyncing state before it takes any command.
 */
export class ForcedResync {
  private progress: Progress | undefined;
  private running = false;
  private loop: Promise<void> | undefined;
  private stopping = false;
  /** The running copy's way out: ended by stop(), and by restartAll() when a new copy replaces it. */
  private cancel: Cancel | undefined;
  private lastError: string | null = null;
  private readonly logger: Logger;

  private constructor(
    private readonly dir: string,
    private readonly host: ResyncHost,
    progress: Progress | undefined,
  ) {
    this.progress = progress;
    this.logger = new Logger(`resync ${host.vpg.name}`);
  }

  /**
   * Reads `resync.json`; a resync it shows unfinished is resumed (in the background, but the capture
   * is resyncing from this moment on, so no checkpoint can be cut inside it).
   */
  static async open(dir: string, host: ResyncHost): Promise<ForcedResync> {
    let progress: Progress | undefined;
    let text: string | undefined;
    try {
      text = await readFile(join(dir, PROGRESS_FILE), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw err;
      }
    }
    const resync = new ForcedResync(dir, host, undefined);
    if (text !== undefined) {
      const parsed = progressSchema.safeParse(parseJson(text));
      if (parsed.success) {
        progress = parsed.data;
      } else {
        // The file is replaced atomically, so this is damage from outside. It existed, so a resync may
        // have been running: the safe reading is a resync of every volume from the start.
        resync.logger.error(`${PROGRESS_FILE} is not readable (${parsed.error.message}); resyncing every volume from the start`);
        progress = resync.newProgress({ resyncId: 'recovered', volumeIds: null, requestedAt: new Date().toISOString(), reason: `${PROGRESS_FILE} was damaged` });
        resync.saveSync(progress);
      }
      resync.progress = progress;
      if (progress.completedAt === null) {
        resync.logger.warn(`resuming resync ${progress.id} at ${progress.bytesDone} of ${progress.bytesTotal} bytes`);
        resync.launch();
      }
    }
    return resync;
  }

  get inProgress(): boolean {
    return this.running;
  }

  status(): ResyncStatus | null {
    const p = this.progress;
    if (!this.running || !p) {
      return null;
    }
    return { id: p.id, volumes: p.volumes, bytesDone: p.bytesDone, bytesTotal: p.bytesTotal, startedAt: p.startedAt, reason: p.reason, error: this.lastError };
  }

  /**
   * Validates the request and starts the resync. The progress file is durable when this returns (it
   * is written synchronously, a small file, once per resync), so a command the bus then commits is
   * never lost to a crash. The same resync id again (a redelivered command) is ignored.
   */
  start(request: ResyncRequest): 'started' | 'duplicate' {
    if (this.progress?.id === request.resyncId) {
      return 'duplicate';
    }
    if (this.running) {
      throw new DomainError('conflict', `resync ${String(this.progress?.id)} of VPG ${this.host.vpg.name} is still running; request ${request.resyncId} refused`);
    }
    if (this.stopping) {
      throw new DomainError('failed-precondition', `the capture of VPG ${this.host.vpg.name} is closing`);
    }
    const progress = this.newProgress(request);
    this.saveSync(progress);
    this.progress = progress;
    this.logger.log(
      `resync ${progress.id} started (${request.reason || 'no reason given'}): ${progress.volumes.length} volume(s), ${progress.bytesTotal} bytes`,
    );
    this.launch();
    return 'started';
  }

  /**
   * Starts a resync of every volume from the start, replacing the one that runs, if any: for a restart
   * of the order (VpgCapture.replayFrom), whose stream holds nothing of the volumes before it, so a
   * copy begun before it counts for nothing. The progress file is durable when this returns, before
   * the restart goes into the log: a crash after that finds a resync to resume, never a restart
   * without one. The running copy stops where it is; the new one starts once it has, and never
   * before the caller's synchronous step is over, so the restart record goes in front of its chunks.
   */
  restartAll(request: Omit<ResyncRequest, 'volumeIds'>): void {
    if (this.stopping) {
      throw new DomainError('failed-precondition', `the capture of VPG ${this.host.vpg.name} is closing`);
    }
    const progress = this.newProgress({ ...request, volumeIds: null });
    this.saveSync(progress);
    const replaced = this.running ? this.progress?.id : undefined;
    this.progress = progress;
    this.logger.warn(
      `resync ${progress.id} started (${request.reason}): ${progress.volumes.length} volume(s), ${progress.bytesTotal} bytes` +
        (replaced === undefined ? '' : `; it replaces resync ${replaced}, which starts again from nothing`),
    );
    this.launch(true);
  }

  /** Stops the copy loop where it is; the progress file keeps the resync for the next open. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.cancel?.end();
    await this.loop;
  }

  private newProgress(request: ResyncRequest): Progress {
    const all = volumesOf(this.host.vpg);
    const requested = request.volumeIds === null ? all.map((v) => v.id) : [...new Set(request.volumeIds)];
    const unknown = requested.filter((id) => !all.some((v) => v.id === id));
    if (unknown.length > 0) {
      throw new DomainError('not-found', `volume(s) ${unknown.join(', ')} are not in VPG ${this.host.vpg.name}; nothing resynced`);
    }
    // A VPG spread over several hosts: each splitter resyncs the requested volumes it captures.
    const owned = [...this.host.volumes.values()];
    const volumes = requested.filter((id) => owned.some((v) => v.volume.id === id));
    const bytesTotal = volumes.reduce((sum, id) => sum + (owned.find((v) => v.volume.id === id)?.volume.sizeBytes ?? 0), 0);
    return {
      version: 1,
      id: request.resyncId,
      reason: request.reason,
      requestedAt: request.requestedAt,
      startedAt: new Date().toISOString(),
      volumes,
      next: { volume: 0, offset: 0 },
      bytesDone: 0,
      bytesTotal,
      completedAt: null,
    };
  }

  /**
   * Runs `this.progress`: at once (its first chunk is read before this returns), or, when it replaces
   * a copy that runs, once that one has stopped. `later`: not before the caller's synchronous step is
   * over (a restart's record must go into the log before the first chunk).
   */
  private launch(later = false): void {
    const replacing = this.running;
    this.running = true;
    this.host.gate.hold(GATE_HOLDER);
    this.lastError = null;
    const progress = this.progress as Progress;
    this.cancel?.end();
    const cancel = newCancel();
    this.cancel = cancel;
    const previous = replacing ? this.loop : later ? Promise.resolve() : undefined;
    const running = previous ? previous.then(() => (cancel.ended ? undefined : this.run(progress, cancel))) : this.run(progress, cancel);
    this.loop = running
      .catch((err: unknown) => {
        // The resync stays in progress (no checkpoint is cut over a half-done copy) and resync.json
        // keeps it for the next open; the status shows why it stopped.
        const error = err instanceof Error ? err.message : String(err);
        if (this.progress?.id === progress.id) {
          this.lastError = error;
        }
        this.logger.error(`resync ${progress.id} stopped: ${error}`);
      });
  }

  private async run(start: Progress, cancel: Cancel): Promise<void> {
    const byId = new Map([...this.host.volumes.values()].map((v) => [v.volume.id, v]));
    let next = { ...start.next };
    let bytesDone = start.bytesDone;
    /** Chunks captured, not yet acknowledged by the bus, with the position after each. */
    const pending = new UnshippedChunks<PendingChunk>(this.host);
    let savedAt = bytesDone;
    let shippedDone = bytesDone;
    let shippedNext = { ...next };

    const settle = (): void => {
      const settled = pending.settle();
      if (settled === 'cut') {
        // The chunks not acknowledged yet may be gone: read them again, from just after the last one
        // the bus acknowledged.
        next = { ...shippedNext };
        bytesDone = shippedDone;
        this.show({ ...start, next, bytesDone });
        return;
      }
      for (const chunk of settled) {
        shippedDone += chunk.bytes;
        shippedNext = chunk.after;
      }
    };

    // Until every chunk is read and acknowledged; a cut of the log (see settle) sends it back.
    for (;;) {
      while (next.volume < start.volumes.length) {
        if (cancel.ended) {
          return;
        }
        const volume = byId.get(start.volumes[next.volume] as string);
        const size = volume?.volume.sizeBytes ?? 0;
        if (!volume || next.offset >= size) {
          // A volume the definition no longer has is skipped; so is the end of each volume.
          next = { volume: next.volume + 1, offset: 0 };
          continue;
        }
        const held = this.host.heldBarrier();
        if (held) {
          await Promise.race([held, cancel.promise]);
          continue;
        }
        const length = Math.min(RESYNC_CHUNK_BYTES, size - next.offset);
        const seq = this.host.captureChunk(volume, next.offset, length);
        if (seq === undefined) {
          // While it waits (for room in the log, say), the chunks already captured are acknowledged.
          const oldest = pending.oldest;
          await Promise.race([this.host.applying(), cancel.promise, ...(oldest ? [this.host.waitShipped(oldest.seq)] : [])]);
          settle();
          continue;
        }
        next = { volume: next.volume, offset: next.offset + length };
        bytesDone += length;
        this.show({ ...start, next, bytesDone });
        pending.push({ seq, bytes: length, after: next });
        settle();
        for (let oldest = pending.oldest; oldest && pending.bytes > RESYNC_MAX_UNSHIPPED_BYTES && !cancel.ended; oldest = pending.oldest) {
          await this.untilShippedOrCancelled(oldest.seq, cancel);
          settle();
        }
        if (shippedDone - savedAt >= SAVE_EVERY_BYTES && !cancel.ended) {
          await this.save({ ...start, next: shippedNext, bytesDone: shippedDone });
          savedAt = shippedDone;
        }
        // Client writes and commands run between chunks.
        await yieldToEventLoop();
      }
      const last = pending.newest;
      if (last) {
        await this.untilShippedOrCancelled(last.seq, cancel);
      }
      if (cancel.ended) {
        return;
      }
      settle();
      if (next.volume >= start.volumes.length && pending.newest === undefined) {
        break;
      }
    }
    const done: Progress = { ...start, next, bytesDone, completedAt: new Date().toISOString() };
    if (!(await this.save(done))) {
      return;
    }
    this.progress = done;
    this.complete(done);
  }

  /** The copy's progress, for the status: only while it is the current one (restartAll may have replaced it). */
  private show(progress: Progress): void {
    if (this.progress?.id === progress.id) {
      this.progress = progress;
    }
  }

  /** The resync is over: checkpoints may be cut again (once nothing else holds the gate), the deferred ones first. */
  private complete(done: Progress): void {
    this.running = false;
    const released = this.host.gate.release(GATE_HOLDER);
    this.logger.log(
      `resync ${done.id} complete: ${done.bytesDone} bytes of ${done.volumes.length} volume(s); ` +
        (released ? `${released.inserted} deferred checkpoint(s) inserted, ${released.skipped} automatic one(s) skipped` : 'checkpoints stay paused: dirty regions are still to be synced'),
    );
  }

  private untilShippedOrCancelled(seq: number, cancel: Cancel): Promise<void> {
    return Promise.race([this.host.waitShipped(seq), cancel.promise]);
  }

  /**
   * Replaces the progress file, unless `progress` is no longer the current resync by the time it is
   * written (restartAll replaced it meanwhile): false then, and the file is left as restartAll wrote
   * it. The check and the rename are one synchronous step, and saveSync uses a temporary file of its
   * own, so a save of the replaced copy can never land over the new one.
   */
  private async save(progress: Progress): Promise<boolean> {
    const tmp = join(this.dir, `${PROGRESS_FILE}.tmp`);
    await writeFile(tmp, JSON.stringify(progress));
    const handle = await open(tmp, 'r+');
    try {
      await handle.datasync();
    } finally {
      await handle.close();
    }
    if (this.progress?.id !== progress.id) {
      return false;
    }
    renameSync(tmp, join(this.dir, PROGRESS_FILE));
    const dirHandle = await open(this.dir, 'r');
    try {
      await dirHandle.sync();
    } finally {
      await dirHandle.close();
    }
    return true;
  }

  private saveSync(progress: Progress): void {
    const tmp = join(this.dir, `${PROGRESS_FILE}.sync.tmp`);
    writeFileSync(tmp, JSON.stringify(progress));
    syncPath(tmp, 'r+');
    renameSync(tmp, join(this.dir, PROGRESS_FILE));
    syncPath(this.dir, 'r');
  }
}

interface Cancel {
  readonly promise: Promise<void>;
  readonly ended: boolean;
  end(): void;
}

function newCancel(): Cancel {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  const cancel = {
    promise,
    ended: false,
    end(): void {
      cancel.ended = true;
      resolve();
    },
  };
  return cancel;
}

interface PendingChunk {
  readonly seq: number;
  readonly bytes: number;
  /** Where reading resumes once this chunk is acknowledged. */
  readonly after: { readonly volume: number; readonly offset: number };
}

function syncPath(path: string, flags: string): void {
  const fd = openSync(path, flags);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/** For tests and tools: the progress file as it is on disk, or undefined. */
export function readResyncProgress(dir: string): ResyncProgress | undefined {
  try {
    return progressSchema.parse(JSON.parse(readFileSync(join(dir, PROGRESS_FILE), 'utf8')));
  } catch {
    return undefined;
  }
}
