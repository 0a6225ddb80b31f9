import { randomUUID } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, open, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Logger } from '@nestjs/common';
import { type BusProducer } from '@cdp/bus';
import {
  BATCH_HEADER_BYTES,
  RECORD_FLAG_FUA,
  RECORD_HEADER_BYTES,
  RecordKind,
  decodeRecord,
  encodeCheckpointRecord,
  encodeRestartRecord,
  encodeSyncRecord,
  encodeWriteRecord,
  type BarrierMark,
  type CheckpointMarkerBody,
} from '@cdp/contracts';
import { DomainError, hostOf, validateWriteRange, volumesOf, type Vpg } from '@cdp/domain';
import { type FileRun } from '@cdp/native-file';
import { SegmentLog } from '@cdp/segment-log';
import { ActivityLog, REGION_BYTES, currentBootId, regionKeys, regionsAhead } from './activity-log';
import { CheckpointGate } from './checkpoint-gate';
import { DIRTY_REGION_BYTES, DirtyMap } from './dirty-map';
import { DirtySync } from './dirty-sync';
import { ForcedResync, RESYNC_CHUNK_BYTES, type ResyncRequest, type ResyncStatus } from './forced-resync';
import { LogShipper, type ShipperOptions } from './log-shipper';
import { type PayloadLease, type PayloadRing } from './payload-ring';
import { ProtectedVolume } from './protected-volume';
import { SeqCeiling } from './seq-ceiling';

export interface CaptureStatus {
  readonly vpgId: string;
  readonly lastSeq: number;
  readonly shippedSeq: number;
  readonly confirmedSeq: number;
  readonly logFirstSeq: number | null;
  readonly activeRegions: number;
  readonly shipError: string | null;
  /** Whether the log writes its large batches past the page cache ('refused': the file system would not, so they go through it). */
  readonly logDirectWrites: 'off' | 'on' | 'refused';
  /**
   * Whether the kernel's readahead is off for the volume files, as it should be ('on': the file-advice
   * addon is not built, or the file system refused the advice; the capture logs why at start).
   */
  readonly volumeReadahead: 'off' | 'on';
  /** The log's new segments since this start: how many reused a spare file and how many needed a new one; spares waiting. */
  readonly logSegmentFiles: { readonly reused: number; readonly created: number; readonly spare: number };
  /**
   * How long inserting a checkpoint held up this VPG's writes, in microseconds, over the most recent
   * checkpoints: nothing else runs on the capture while a marker is placed, so this is the stall each
   * checkpoint adds to write latency.
   */
  readonly checkpointStall: { readonly count: number; readonly p50Micros: number | null; readonly p99Micros: number | null; readonly maxMicros: number | null };
  /** The coordinated checkpoint this member holds new writes for, if any (a VPG with several members). */
  readonly barrier: { readonly epoch: number; readonly checkpointId: string; readonly heldForMicros: number } | null;
  /** The operator-forced resync running now, if any. */
  readonly resync: ResyncStatus | null;
  /**
   * Writes that are in the log (and so in the replication stream) but not on their volume, because
   * the volume's write failed (a full disk): retried, oldest first, before any new write is taken.
   * Null when there are none.
   */
  readonly volumeBehind: { readonly writes: number; readonly bytes: number; readonly since: string; readonly error: string } | null;
  /**
   * Degraded mode: since when the splitter log takes no writes (it reached its size limit, or an
   * append failed: a full disk), why, and the writes taken since. Each went to its volume only, after
   * its regions were marked in the dirty map; the client was not told anything was wrong. Null while
   * the log takes writes.
   */
  readonly tracking: { readonly since: string; readonly reason: string; readonly writes: number; readonly bytes: number } | null;
  /**
   * Regions the protected volume may hold differently from the replication stream (written while
   * tracking), since when, and the sync that reads them back into the stream once the log takes writes
   * again. No checkpoint is cut while there are any. Null when there are none.
   */
  readonly dirtyRegions: {
    readonly regions: number;
    readonly since: string;
    readonly sync: { readonly regionsTotal: number; readonly regionsDone: number; readonly startedAt: string } | null;
    /** Why the last sync pass stopped, if it stopped on an error (it is tried again). */
    readonly error: string | null;
  } | null;
  /**
   * Flushes that completed durable on this site only, because the bus had not acknowledged their
   * writes within `flushLinkWaitMs` (the link is down): since when, and how many; null once a flush
   * is acknowledged by the bus again.
   */
  readonly localFlushes: { readonly since: string; readonly count: number } | null;
  /**
   * Zeroing requests (NBD WRITE_ZEROES) since this start: how many, the bytes they asked to zero, and
   * the bytes captured as writes of zeros (the parts that were not zero already; see `writeZeroes`).
   */
  readonly zeroing: { readonly requests: number; readonly bytes: number; readonly capturedBytes: number };
  /** Discards (NBD TRIM) since this start: how many and how many bytes. They change nothing (see `discard`). */
  readonly discards: { readonly requests: number; readonly bytes: number };
}

/**
 * A write refused because earlier writes have not reached their volume yet (see VpgCapture): `code` is
 * the file system's error the last retry got (ENOSPC for a full disk), which an NBD client receives.
 */
export class VolumeBehindError extends Error {
  override readonly name = 'VolumeBehindError';

  constructor(
    message: string,
    readonly code: string | undefined,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/**
 * A batch carrying at least this many payload bytes goes to the log and the volumes on libuv's thread
 * pool rather than in system calls on the event loop. Copying a megabyte into the page cache takes the
 * better part of a millisecond, far more when the kernel throttles dirty pages, and nothing else in
 * the process runs meanwhile (other VPGs, NBD reads, in the all-in-one the journal writer): measured
 * with 1 MiB writes, 45% of the event loop went to those two system calls. Smaller batches stay
 * synchronous: for them the thread-pool round trip costs more than the write.
 */
const ASYNC_BATCH_BYTES = 256 * 1024;
/** The largest write of zeros `writeZeroes` captures: bounded records, and one shared buffer for all of them. */
export const ZERO_WRITE_BYTES = 1024 * 1024;
// Never written to: every write of zeros is a view of it, and the capture copies what it logs.
const ZEROES = Buffer.alloc(ZERO_WRITE_BYTES);

/**
 * Segments of the log kept as spare files once the journal has them, each reused for a later segment:
 * appends then overwrite blocks the file already has, and the log's fdatasync is little more than a
 * cache flush (docs/architecture.md, "Reusing the log's segment files"). Two of 64 MiB per VPG cover
 * the log's turnover between two confirmations from the journal under sustained large writes.
 */
const LOG_SPARE_SEGMENTS = 2;
/** The splitter log's segment size unless the options say otherwise. */
const DEFAULT_LOG_SEGMENT_BYTES = 64 * 1024 * 1024;
/** In the capture's directory; see seq-ceiling.ts. */
const SEQ_CEILING_FILE = 'seq-ceiling';

/**
 * Smaller payloads are allocated per write, not taken from the payload ring. Those are what random
 * writes are made of: they die young (a batch of them is copied into one bus message), they never
 * caused the collector trouble, and a ring cycled through at that rate would only trade warm memory
 * for cold.
 */
const RING_MIN_PAYLOAD_BYTES = 64 * 1024;

/** Checkpoint stalls kept for the status percentiles: the most recent ones, a bounded ring. */
const STALL_SAMPLES = 4096;

/**
 * Degraded mode. While tracking, the capture looks this often at whether the log could take writes
 * again; after a failed append (no size to watch) it simply tries, and each try that fails again
 * doubles the pause, up to the longest. A failed try costs nothing visible: the batch it was is
 * tracked like the others.
 */
const TRACKING_PROBE_FIRST_MS = 1_000;
const TRACKING_PROBE_MAX_MS = 60_000;
/** A log that reached its size limit takes writes again once it is down to this share of it. */
const LOG_LIMIT_RESUME_SHARE = 0.5;
/** Pause before a sync of dirty regions that stopped on an error is tried again. */
const DIRTY_SYNC_RETRY_MS = 5_000;
/** The gate's holder name for dirty regions (tracking, and the sync after it). */
const GATE_DIRTY = 'dirty-regions';
const DEFAULT_FLUSH_LINK_WAIT_MS = 10_000;

/** First and longest pause between retries of writes that did not reach their volume. */
const CATCH_UP_RETRY_FIRST_MS = 100;
const CATCH_UP_RETRY_MAX_MS = 5_000;

export interface CaptureOptions {
  readonly shipper?: ShipperOptions;
  /** The id of this boot; read from the kernel when not given (tests simulate a reboot with it). */
  readonly bootId?: string;
  /** Most regions in the activity log, i.e. the bound on a resync after a power loss. Default 1024 (4 GiB). */
  readonly activityLogRegions?: number;
  /**
   * The member (host) this capture is for: only the volumes of the VPG's VMs on that host are captured,
   * into this member's own sequence. Unset: every volume of the VPG (a VPG with one member).
   */
  readonly member?: string;
  /** How far the seq ceiling is raised at a time (see seq-ceiling.ts); tests make it small. */
  readonly seqCeilingStep?: number;
  /** Memory to receive NBD write payloads into (see allocatePayload); none: each write allocates its own. */
  readonly payloads?: PayloadRing;
  /** The size at which the log starts a new segment; default 64 MiB (tests make rolls and reuse frequent with small ones). */
  readonly logSegmentBytes?: number;
  /**
   * How long a flush waits for the bus to acknowledge its writes before it completes with local
   * durability only (the link is down; the writes stay in the log and ship when it is back). Default
   * 10 s: a bus that takes longer than that is not there, and a VM whose flush never completes stops.
   * null: a flush waits for the bus however long that takes.
   */
  readonly flushLinkWaitMs?: number | null;
  /**
   * Most bytes the splitter log may hold (records the journal has not confirmed yet); beyond it the
   * capture goes into degraded mode and tracks dirty regions instead. Undefined: no limit but the disk.
   */
  readonly logLimitBytes?: number;
}

/** How the previous run of this VPG's capture ended, as found at open. */
export type PreviousEnd = 'none' | 'clean' | 'process-crash' | 'host-crash';

const CLEAN_MARKER = 'clean-shutdown';
/**
 * 1024 regions of 4 MiB: a 4 GiB hot area per VPG, near DRBD's default (1237 extents). A workload
 * whose hot set fits never writes the activity log once warm; one that does not pays an
 * activity-log write (and sometimes a flush) for each region it brings in.
 */
const DEFAULT_ACTIVITY_LOG_REGIONS = 1024;
/**
 * Regions activated ahead of a sequential stream with each update of the activity log. One region
 * (4 MiB) per update made a stream of 1 MiB writes wait for an fdatasync every fourth write (37 a
 * second at 177 MB/s, as many as the splitter log's own). The cost is a wider resync after a host
 * crash, within the log's capacity as always.
 */
const ACTIVITY_AHEAD_REGIONS = 7;

export function nowMicros(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/**
 * Capture for one VPG: assigns each write its seq, appends it to the splitter log, applies it to the
 * protected volume, and acknowledges. That is the contract of a disk with a write cache:
 *
 * - a write is acknowledged once it is in the log and applied locally; writes to overlapping bytes are
 *   applied in seq order;
 * - `flush()` (and a FUA write) completes only when everything acknowledged before it is durable in
 *   the log and on the volume (fdatasync) and the bus has acknowledged it.
 *
 * Seqs are assigned, and places in the log reserved, synchronously, so the log holds one VPG's writes in
 * exactly seq order. Small batches then go to log and volume synchronously too; a large one (see
 * ASYNC_BATCH_BYTES) on the thread pool, and every batch after it goes there too until none is in
 * flight. Batches in flight that write disjoint bytes go to the volumes side by side; one that
 * overlaps an earlier one waits for it, so overlapping writes land in seq order. The log is a
 * write-ahead log either way: a batch's volume writes start only once its records are in the log.
 * Records stay in the log until the journal reports them durable and indexed, and only durable
 * records are shipped.
 *
 * Crashes, told apart at open: after a process crash (same boot), every record still in the log is
 * applied to the volumes again (redo), so a crash between the two writes cannot leave the volume behind
 * the stream. After a host crash (the boot id changed), redo as well, then every region of the activity
 * log is read back from the volume and captured as writes: those are the only regions where volume and
 * log can disagree, and after the resync both sites hold the volume as it is. The resync happens before
 * any command is taken, so no checkpoint falls inside it.
 *
 * Degraded mode, when the log cannot take writes (it holds `logLimitBytes`, or an append failed: a full
 * disk; in both cases the recovery site is not taking what the log holds fast enough, or at all): the
 * VM's writes are not refused. Each goes to its volume only, taking no seq, once the regions it writes
 * are durable in the dirty map (dirty-map.ts); a batch whose append failed is taken that way too, its
 * seqs handed out again. FLUSH then makes writes durable on this site only: the stream cannot have
 * them. No checkpoint is cut from the first such write until the dirty regions are synced (the
 * checkpoint gate): once the log takes writes again, each dirty region is read back from its volume
 * and captured as a write (dirty-sync.ts), beside the client writes that are logged again. The same
 * sync runs at open when the map has bits set (a crash while tracking), and the redo then leaves the
 * dirty regions alone: there the volume is newer than the log.
 */
export class VpgCapture {
  private nextSeq: number;
  private confirmed = 0;
  /** Flush epochs: writes are tagged with `epoch`; every write tagged below `flushedEpoch` is durable. */
  private epoch = 0;
  private flushedEpoch = 0;
  /** Writes captured in this event-loop turn, not yet in the log or on the volume (see `capture`). */
  private batch: CaptureBatch | undefined;
  /**
   * The batches going to the volumes on the thread pool (see `drain`), with the byte ranges they write;
   * each waits for those before it that write where it does. Each settles without rejecting.
   */
  private readonly inFlight = new Set<{ readonly ranges: readonly WriteRange[]; readonly done: Promise<void> }>();
  private readonly stalls = new Float64Array(STALL_SAMPLES);
  private stallCount = 0;
  /** The coordinated checkpoint being held for (see prepareBarrier); new writes wait while it is set. */
  private barrier: HeldBarrier | undefined;
  /** The newest epoch this capture has put a barrier marker (cut or void) in its order for. */
  private concludedEpoch = 0;
  /** Payload buffers handed out by allocatePayload and not yet passed to write or discardPayload. */
  private readonly lent = new WeakMap<Buffer, PayloadLease>();
  /** Logged writes whose volume write failed, oldest first (see fallBehind); undefined when none. */
  private behind: Behind | undefined;
  /** The cut of the log after a failed append, while it runs (see recoverLog). */
  private logRecovery: Promise<void> | undefined;
  /** How many times the log was cut back (recoverLog): seqs handed out before a cut may belong to other records after it. */
  private logCuts = 0;
  /** Set by close(): the retries of writes behind their volume stop (the volumes are closing). */
  private closing = false;
  /** Degraded mode (see the class comment): since when, why, and what was tracked; undefined while the log takes writes. */
  private tracking: { readonly since: Date; readonly reason: string; writes: number; bytes: number } | undefined;
  /** Resolves when tracking starts; replaced each time. */
  private trackingBegan = deferred();
  /** Resolves when tracking ends; replaced each time. */
  private trackingEnded = deferred();
  /** Resolves when the capture closes. */
  private readonly closed = deferred();
  /** Resolves when the journal next confirms records (the log may have shrunk); replaced each time. */
  private confirmedSignal = deferred();
  private probeTimer: NodeJS.Timeout | undefined;
  private probeDelayMs = TRACKING_PROBE_FIRST_MS;
  private trackingEndedAt = -Infinity;
  /** Since when dirty regions exist (tracking, then their sync); undefined when the map is empty. */
  private dirtySince: Date | undefined;
  private syncLoop: Promise<void> | undefined;
  private syncPass: DirtySync | undefined;
  private syncError: string | undefined;
  /** Flushes completed locally only since the link went down (see flush); undefined while the bus acknowledges them. */
  private localFlushes: { readonly since: Date; count: number } | undefined;
  private readonly zeroing = { requests: 0, bytes: 0, capturedBytes: 0 };
  private readonly discards = { requests: 0, bytes: 0 };
  /** No checkpoint while a forced resync runs or dirty regions exist (see CheckpointGate). */
  private readonly gate = new CheckpointGate(
    (marker) => {
      this.insertCheckpoint(marker);
    },
    {
      // A sync record goes in front of the stretch's first chunk (see appendSync), not here: the log
      // may not be taking records now (degraded mode holds the gate from its first tracked write).
      began: () => {
        this.syncPending = true;
      },
      ended: () => {
        this.syncPending = false;
      },
    },
  );
  /** The gate is held and no sync record marks the stretch yet (see appendSync). */
  private syncPending = false;
  private readonly logger: Logger;

  private constructor(
    readonly vpg: Vpg,
    private readonly dir: string,
    private readonly log: SegmentLog,
    private readonly volumes: ReadonlyMap<number, ProtectedVolume>,
    private readonly shipper: LogShipper,
    private readonly activity: ActivityLog,
    private readonly dirty: DirtyMap,
    readonly previousEnd: PreviousEnd,
    private readonly payloads: PayloadRing | undefined,
    private readonly logLimitBytes: number | undefined,
    private readonly flushLinkWaitMs: number | null,
  ) {
    this.nextSeq = (log.lastSeq ?? 0) + 1;
    this.logger = new Logger(`capture ${vpg.name}`);
  }

  /** The next seq, handed out: always below the durable seq ceiling (see seq-ceiling.ts). */
  private takeSeq(): number {
    const seq = this.nextSeq++;
    this.ceiling.check(seq);
    return seq;
  }

  static async open(vpg: Vpg, dir: string, producer: BusProducer, options: CaptureOptions = {}): Promise<VpgCapture> {
    const linkWait = options.flushLinkWaitMs === undefined ? DEFAULT_FLUSH_LINK_WAIT_MS : options.flushLinkWaitMs;
    if (linkWait !== null && !(Number.isInteger(linkWait) && linkWait > 0)) {
      throw new RangeError(`flushLinkWaitMs must be a whole number of milliseconds above 0, not ${linkWait}`);
    }
    const limit = options.logLimitBytes;
    // Room for the log to shrink to half its limit while whole segments are deleted, and for resync
    // chunks to fit beside the client writes.
    const minLimit = 4 * Math.max(options.logSegmentBytes ?? DEFAULT_LOG_SEGMENT_BYTES, RESYNC_CHUNK_BYTES);
    if (limit !== undefined && !(Number.isInteger(limit) && limit >= minLimit)) {
      throw new RangeError(`logLimitBytes must be a whole number of bytes, at least ${minLimit} (four segments), not ${limit}`);
    }
    await mkdir(join(dir, 'volumes'), { recursive: true });
    // Read before the log is opened (which creates it): a capture whose ceiling exists but whose log
    // has no segment file lost its log (see seq-ceiling.ts).
    const ceilingPath = join(dir, SEQ_CEILING_FILE);
    const knownCeiling = SeqCeiling.open(ceilingPath, options.seqCeilingStep);
    const logLost = knownCeiling !== undefined && !hasSegmentFiles(join(dir, 'log'));
    // The large batches bypass the page cache (see direct-io.ts in segment-log): the log only ever
    // writes new pages, the costliest kind on a virtual machine.
    const log = await SegmentLog.open({
      dir: join(dir, 'log'),
      tail: 'scan',
      directWriteMinBytes: ASYNC_BATCH_BYTES,
      spareSegments: LOG_SPARE_SEGMENTS,
      segmentBytes: options.logSegmentBytes,
    });
    const volumes = new Map<number, ProtectedVolume>();
    const local = options.member === undefined ? vpg : { vms: vpg.vms.filter((vm) => hostOf(vm) === options.member) };
    for (const volume of volumesOf(local)) {
      volumes.set(volume.index, ProtectedVolume.open(volume, join(dir, 'volumes', `${volume.index}.img`)));
    }
    const dirty = await DirtyMap.open(
      join(dir, 'dirty.map'),
      [...volumes.values()].map((v) => ({ index: v.volume.index, sizeBytes: v.volume.sizeBytes })),
    );
    const bootId = options.bootId ?? currentBootId();
    const { log: activity, previous } = await ActivityLog.open(
      join(dir, 'activity.log'),
      bootId ?? 'unknown',
      options.activityLogRegions ?? DEFAULT_ACTIVITY_LOG_REGIONS,
    );
    const cleanMarker = join(dir, CLEAN_MARKER);
    let previousEnd: PreviousEnd;
    if (existsSync(cleanMarker)) {
      previousEnd = 'clean';
      await rm(cleanMarker);
      await syncDir(dir);
    } else if (log.lastSeq === undefined && !previous) {
      previousEnd = 'none';
    } else {
      // Without a boot id to compare, assume the worst: a host crash costs a bounded resync, a missed
      // one costs correctness.
      previousEnd = previous && bootId !== undefined && previous.bootId === bootId ? 'process-crash' : 'host-crash';
    }
    const shipper = new LogShipper(vpg.id, log, producer, options.shipper);
    const capture = new VpgCapture(vpg, dir, log, volumes, shipper, activity, dirty, previousEnd, options.payloads, limit, linkWait);
    capture.member = options.member ?? null;
    if (logLost) {
      // Above every seq this VPG ever used: the journal may hold any of them.
      capture.nextSeq = knownCeiling.value;
    }
    capture.ceiling = knownCeiling ?? SeqCeiling.create(ceilingPath, capture.nextSeq, options.seqCeilingStep);
    // With the log lost there is nothing to redo, and the full resync below covers the active regions.
    if (!logLost && (previousEnd === 'process-crash' || previousEnd === 'host-crash')) {
      await capture.redo();
    }
    if (!logLost && previousEnd === 'host-crash') {
      await capture.resyncActiveRegions();
    }
    const readahead = [...volumes.values()].find((v) => v.readaheadOn !== null)?.readaheadOn;
    if (readahead) {
      capture.logger.warn(`readahead stays on for the volume files, so random writes after a sequential read cost more: ${readahead}`);
    }
    await activity.save();
    capture.shipper.start();
    await capture.openForcedResync();
    if (logLost) {
      capture.logger.error(`the splitter log is missing (deleted or moved aside), while its seq ceiling ${knownCeiling.value} is not: restarting the order above every seq used`);
      capture.restartOrder(0, `the splitter log was missing at open; every seq below ${knownCeiling.value} may be held by the journal`);
    }
    if (dirty.dirtyRegions > 0) {
      // Written while tracking, and not synced before the last run ended.
      capture.logger.warn(`${dirty.dirtyRegions} dirty region(s) from the last run: syncing them; no checkpoint until they are`);
      capture.dirtySince = new Date();
      capture.gate.hold(GATE_DIRTY);
      capture.startDirtySync();
    }
    return capture;
  }

  get lastSeq(): number {
    return this.nextSeq - 1;
  }

  status(): CaptureStatus {
    return {
      vpgId: this.vpg.id,
      lastSeq: this.lastSeq,
      shippedSeq: this.shipper.shippedSeq,
      confirmedSeq: this.confirmed,
      logFirstSeq: this.log.firstSeq ?? null,
      activeRegions: this.activity.regions().length,
      shipError: this.shipper.error ?? null,
      logDirectWrites: this.log.directWrites,
      volumeReadahead: [...this.volumes.values()].some((v) => v.readaheadOn !== null) ? 'on' : 'off',
      logSegmentFiles: this.log.segmentFiles,
      checkpointStall: this.stallStats(),
      barrier: this.barrier
        ? { epoch: this.barrier.epoch, checkpointId: this.barrier.marker.id, heldForMicros: (performance.now() - this.barrier.startedAt) * 1000 }
        : null,
      localFlushes: this.localFlushes ? { since: this.localFlushes.since.toISOString(), count: this.localFlushes.count } : null,
      zeroing: { ...this.zeroing },
      discards: { ...this.discards },
      ...this.trouble(),
    };
  }

  /**
   * The parts of the status that say something is wrong: cheap to read (the site reporter reads them
   * every second), where the whole status also sorts the checkpoint stalls.
   */
  trouble(): Pick<CaptureStatus, 'resync' | 'volumeBehind' | 'tracking' | 'dirtyRegions'> {
    return {
      resync: this.forced?.status() ?? null,
      volumeBehind: this.behind
        ? {
            writes: this.behind.writes.length,
            bytes: this.behind.writes.reduce((sum, w) => sum + w.data.length, 0),
            since: this.behind.since.toISOString(),
            error: this.behind.error,
          }
        : null,
      tracking: this.tracking
        ? { since: this.tracking.since.toISOString(), reason: this.tracking.reason, writes: this.tracking.writes, bytes: this.tracking.bytes }
        : null,
      dirtyRegions: this.dirtySince
        ? {
            regions: this.dirty.dirtyRegions,
            since: this.dirtySince.toISOString(),
            sync: this.syncPass ? { ...this.syncPass.progress(), startedAt: this.syncPass.startedAt.toISOString() } : null,
            error: this.syncError ?? null,
          }
        : null,
    };
  }

  volumeById(volumeId: string): ProtectedVolume {
    for (const volume of this.volumes.values()) {
      if (volume.volume.id === volumeId) {
        return volume;
      }
    }
    throw new DomainError('not-found', `volume ${volumeId} is not in VPG ${this.vpg.name}`);
  }

  /**
   * A buffer of `length` bytes, with `headroom` bytes in front of it in the same memory, from the
   * payload ring: for a write that will be passed to `write` (with that headroom), or given back with
   * `discardPayload`. Undefined when there is no ring or it is full: the caller allocates its own.
   *
   * The ring's region is held from here until the write is in the log and on its volume (the capture),
   * until the shipper has shipped or dropped it (the shipper), and until the bus has let it go (the
   * in-process bus, through the message's lease; a Kafka send has encoded it by the time it settles).
   */
  allocatePayload(length: number, headroom: number): Buffer | undefined {
    if (length < RING_MIN_PAYLOAD_BYTES) {
      return undefined;
    }
    const lease = this.payloads?.acquire(headroom + length);
    if (!lease) {
      return undefined;
    }
    const data = lease.data.subarray(headroom);
    this.lent.set(data, lease);
    return data;
  }

  /** A buffer from allocatePayload whose write will never be made. */
  discardPayload(data: Buffer): void {
    const lease = this.lent.get(data);
    this.lent.delete(data);
    lease?.release();
  }

  /**
   * Captures one write. Resolves when acknowledged (and, for FUA, when durable as flush() is).
   * `headroom` is how many bytes in front of `data`, in its ArrayBuffer, the caller reserved for the
   * capture to overwrite (and then `data` must not be used by the caller again): with
   * RECORD_HEADER_BYTES the record is framed there around the payload instead of copying it; with
   * RECORD_HEADER_BYTES + BATCH_HEADER_BYTES a bus batch holding that record alone is framed there too.
   * Resolves to null for a write taken in degraded mode (on its volume, its region dirty, not in the
   * stream yet: see the class comment).
   */
  write(volumeId: string, offset: number, data: Buffer, fua = false, options: { readonly headroom?: number } = {}): Promise<number | null> {
    // A buffer from allocatePayload: its region is the capture's from here on, whatever happens. (A
    // smaller one never came from there: no weak-map lookup for it.)
    const lease = data.length >= RING_MIN_PAYLOAD_BYTES ? this.lent.get(data) : undefined;
    if (lease) {
      this.lent.delete(data);
    }
    const headroom = options.headroom ?? 0;
    let target: ProtectedVolume;
    let keys: number[];
    try {
      target = this.volumeById(volumeId);
      validateWriteRange(target.volume, offset, data.length);
      keys = regionKeys(target.volume.index, offset, data.length);
      // The common case, captured at once: no hold, and the regions already in the activity log. It is
      // not an async function: one was the largest allocation per write (its suspended frame), twice
      // over with the NBD device's, and every write of a random 4 KiB job takes this path.
      if (!this.barrier && !this.behind && !this.logRecovery && !this.tracking && !this.closing && this.activity.touch(keys, this.epoch)) {
        return this.acknowledged(this.capture(target, offset, data, fua, headroom, lease), fua);
      }
    } catch (err) {
      // Never captured: nothing else holds the region.
      lease?.release();
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    return this.captureAfterWait(target, keys, offset, data, fua, headroom, lease);
  }

  /**
   * Zeroes [offset, offset + length) of a volume (NBD's WRITE_ZEROES), as writes of zeros of at most
   * ZERO_WRITE_BYTES, in order; with `fua`, durable as flush() makes them before it resolves.
   *
   * Only the parts that are not zero already are written (`ProtectedVolume.nonZeroRuns`: the file's
   * holes without reading them, the rest read and looked at in 64 KiB windows). A part that is zero
   * stays zero whether it is written or not, so leaving it alone changes neither the volume nor the
   * stream: both sites stay identical at every seq, and the journal's history is not spent on it.
   * That matters because zeroing comes in bulk: `qemu-img convert` zeroes every stretch of zeros in
   * its source (a fresh volume is all zeros: nothing is captured), and a guest zeroes whole tables.
   * Every write completed before the request is on the volume when the scan reads it (a write is
   * acknowledged once its volume has it), so the client reads zeros afterwards; a write that arrives
   * meanwhile is concurrent with the zeroing, and the scan may or may not see it, as with any two
   * overlapping requests in flight together. The exception: writes that failed on their volume and
   * wait to be put there in order (`volumeBehind`) are not on it yet, so then every byte is written.
   */
  async writeZeroes(volumeId: string, offset: number, length: number, fua: boolean): Promise<void> {
    const target = this.volumeById(volumeId);
    validateWriteRange(target.volume, offset, length, Number.POSITIVE_INFINITY);
    this.zeroing.requests++;
    this.zeroing.bytes += length;
    const end = offset + length;
    const runs = this.behind ? [{ start: offset, end }] : target.nonZeroRuns(offset, end);
    for await (const run of runs) {
      for (let at = run.start; at < run.end; at += ZERO_WRITE_BYTES) {
        if (this.closing) {
          // A long zeroing outlasts the NBD server's grace period at shutdown; its volume is closing.
          throw new DomainError('failed-precondition', `the capture of VPG ${this.vpg.name} is closing: the zeroing of [${offset}, ${end}) stopped at ${at}`);
        }
        const chunk = Math.min(ZERO_WRITE_BYTES, run.end - at);
        await this.write(volumeId, at, ZEROES.subarray(0, chunk));
        this.zeroing.capturedBytes += chunk;
      }
    }
    if (fua) {
      // Also what makes durable the zeros that were there already, if a write not yet flushed put them there.
      await this.flush();
    }
  }

  /**
   * The allocation of [offset, offset + length) of a volume, for NBD's block status: runs of the
   * volume file's data and holes (at most `limit`; the last may end early), a hole reading as zeros.
   * Writes completed before the call are on the volume, so its holes are bytes no write reached.
   * While writes wait to be put on their volume (`volumeBehind`) the file lags the stream, and the
   * whole range is reported as data: "allocated" is always a true answer.
   */
  allocation(volumeId: string, offset: number, length: number, limit: number): FileRun[] {
    const target = this.volumeById(volumeId);
    validateWriteRange(target.volume, offset, length, Number.POSITIVE_INFINITY);
    if (this.behind) {
      return [{ start: offset, end: offset + length, data: true }];
    }
    return target.runs(offset, offset + length, limit);
  }

  /**
   * A discard (NBD's TRIM) of [offset, offset + length): validated, counted, and nothing else. A
   * discard tells the disk the client no longer needs those bytes; what they read afterwards is
   * unspecified until written again (NBD's rule, as for SCSI UNMAP and ATA TRIM without a promise of
   * zeros), so keeping them as they are is a correct answer, and the only one that costs nothing: the
   * volume and the stream both keep the old bytes, so the sites stay identical, where capturing the
   * discard as zeros would make a guest's periodic `fstrim` ship and journal every free byte of its
   * file system that ever held data. (The volume file's space is not given back either.)
   */
  discard(volumeId: string, offset: number, length: number): void {
    validateWriteRange(this.volumeById(volumeId).volume, offset, length, Number.POSITIVE_INFINITY);
    this.discards.requests++;
    this.discards.bytes += length;
  }

  /**
   * write() when its regions are not active yet or a coordinated checkpoint holds writes. The regions
   * must be in the durable activity log before the write touches the volume. The check and the capture
   * run without a pause in between, so no eviction can slip in; nor can a coordinated checkpoint's hold
   * begin in between: a write that arrives while one is held is captured only after the marker, when
   * the hold is released.
   */
  private async captureAfterWait(
    target: ProtectedVolume,
    keys: readonly number[],
    offset: number,
    data: Buffer,
    fua: boolean,
    headroom: number,
    lease: PayloadLease | undefined,
  ): Promise<number | null> {
    let captured: Captured | undefined;
    try {
      for (;;) {
        if (this.closing) {
          // Its log and volumes are closing (a write that raced the shutdown): refused, not tracked.
          throw new DomainError('failed-precondition', `the capture of VPG ${this.vpg.name} is closing`);
        } else if (this.behind) {
          // Earlier writes are in the stream but not on their volume: they go first, or this one fails.
          await this.catchUp();
        } else if (this.tracking) {
          // Degraded mode: to the volume only, whatever else is going on (the failed batches being cut
          // off the log are tracked too, and ordered before it; a hold's epoch is voided).
          break;
        } else if (this.logRecovery) {
          // The log is being cut back after a failed append (milliseconds): then it takes appends again.
          await this.logRecovery;
        } else if (this.barrier) {
          await this.barrier.released;
        } else if (!this.activity.touch(keys, this.epoch)) {
          const ahead = regionsAhead(keys, target.volume.sizeBytes, (key) => this.activity.has(key), ACTIVITY_AHEAD_REGIONS);
          await this.activity.activate(keys, this.epoch, () => this.flushedEpoch, () => this.syncLocal(), ahead);
        } else {
          captured = this.capture(target, offset, data, fua, headroom, lease);
          break;
        }
      }
    } catch (err) {
      lease?.release();
      throw err;
    }
    if (captured) {
      return this.acknowledged(captured, fua);
    }
    try {
      await this.applyTracked([{ volume: target, offset, data, seq: 0 }], data.length);
      if (fua) {
        await this.flush();
      }
      return null;
    } finally {
      lease?.release();
    }
  }

  /**
   * The write's seq once it is in the log and on its volume, and with FUA once flush() covers it; null
   * if its batch was tracked instead (degraded mode: its seq was handed out again).
   */
  private acknowledged({ seq, applied, batch }: Captured, fua: boolean): Promise<number | null> {
    return (fua ? applied.then(() => this.flush()) : applied).then(() => (batch.tracked ? null : seq));
  }

  /** Inserts a checkpoint marker at the current end of the write order; returns its seq, the cut. */
  insertCheckpoint(marker: CheckpointMarkerBody): number | null {
    // Writes captured earlier in this turn have smaller seqs: they go into the log first (that is
    // their own work, done now rather than at the end of the turn, so not counted as the stall). First,
    // because draining them may begin degraded mode or leave writes behind their volume.
    this.drain();
    // A forced resync runs, or dirty regions exist: no cut may fall there (null: skipped or deferred, see CheckpointGate).
    if (this.gate.intercept(marker)) {
      return null;
    }
    if (this.behind) {
      // The stream holds writes the volume does not: a cut now would describe no state the volume was
      // ever in. Skipped; a tagged or application-consistent request is sent again by the scheduler.
      this.logger.warn(`checkpoint ${marker.id} (${marker.kind}) skipped: ${this.behind.writes.length} logged write(s) are not on their volume yet`);
      return null;
    }
    const started = performance.now();
    const seq = this.takeSeq();
    const record = encodeCheckpointRecord({ seq, capturedAtMicros: nowMicros(), marker });
    this.shipper.offer(this.appendOwn(seq, record), [record]);
    this.stalls[this.stallCount++ % STALL_SAMPLES] = (performance.now() - started) * 1000;
    return seq;
  }

  /**
   * Coordinated checkpoint, phase one (a VPG with several members): from now until the cut, new writes
   * are not captured (they wait), so none can be acknowledged. Returns 'holding', or 'voided' (a
   * forced resync runs: the epoch is voided here at once), both to be reported to the coordinator, or
   * 'concluded' (this epoch is already in the order here: nothing to report). A hold never outlasts
   * `holdTimeoutMs`: then the epoch is voided here and writes resume, whatever the coordinator does.
   *
   * Why holding capture is enough: the coordinator sends the cut only once every member holds. A
   * write acknowledged by member A after A's marker was acknowledged after the cut was sent, when
   * every other member B was still holding or past its own marker; so a write issued on B because of
   * it is captured after B's marker. No checkpoint holds B's write without A's.
   */
  prepareBarrier(epoch: number, marker: Omit<CheckpointMarkerBody, 'barrier'>, member: string, holdTimeoutMs: number): 'holding' | 'voided' | 'concluded' {
    if (epoch <= this.concludedEpoch) {
      return 'concluded';
    }
    if (this.barrier) {
      if (this.barrier.epoch === epoch) {
        return 'holding';
      }
      // An older epoch never got its cut; it cannot be consistent any more.
      this.concludeBarrier(true);
    }
    if (this.checkpointsPaused || this.behind) {
      // No cut may fall inside a forced resync or while dirty regions exist, nor while logged writes are not on their volume.
      // Voided at once, and reported all the same so that the round ends without waiting for its
      // timeout and the other members hold only briefly.
      this.appendBarrierMarker(marker, { epoch, member, void: true });
      return 'voided';
    }
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const timer = setTimeout(() => {
      if (this.barrier?.epoch === epoch) {
        this.logger.warn(`coordinated checkpoint epoch ${epoch}: no cut within ${holdTimeoutMs} ms, voided here and writes resumed`);
        this.concludeBarrier(true);
      }
    }, holdTimeoutMs);
    timer.unref();
    this.barrier = { epoch, marker, member, startedAt: performance.now(), released, release, timer };
    return 'holding';
  }

  /**
   * Phase two: the coordinator cut `epoch`. `consistent` says this process is among the holders the
   * coordinator counted (it held continuously since its report); then its marker is the epoch's cut
   * here, otherwise the epoch is voided here. Either way writes resume. An epoch this process never
   * held (it restarted in between) gets a void marker, so every member's order concludes every epoch
   * it is told about.
   */
  cutBarrier(epoch: number, checkpointId: string, member: string, consistent: boolean): void {
    if (this.barrier?.epoch === epoch) {
      this.concludeBarrier(!consistent);
    } else if (epoch > this.concludedEpoch) {
      this.appendBarrierMarker({ id: checkpointId, kind: 'automatic', name: null, vmId: null }, { epoch, member, void: true });
    }
  }

  /** The coordinator gave `epoch` up (a member did not report in time): void it here, resume writes. */
  abortBarrier(epoch: number, checkpointId: string, member: string): void {
    this.cutBarrier(epoch, checkpointId, member, false);
  }

  private concludeBarrier(voided: boolean): void {
    const barrier = this.barrier;
    if (!barrier) {
      return;
    }
    clearTimeout(barrier.timer);
    try {
      // Writes that failed on their volume during the hold are in the stream only, and writes tracked
      // during it are not in the stream at all: no cut there.
      this.appendBarrierMarker(barrier.marker, { epoch: barrier.epoch, member: barrier.member, void: voided || this.behind !== undefined || this.checkpointsPaused });
    } finally {
      this.barrier = undefined;
      this.stalls[this.stallCount++ % STALL_SAMPLES] = (performance.now() - barrier.startedAt) * 1000;
      barrier.release();
    }
  }

  private appendBarrierMarker(marker: Omit<CheckpointMarkerBody, 'barrier'>, barrier: BarrierMark): void {
    this.drain();
    // Draining may have begun degraded mode or left writes behind their volume: then no cut here either.
    const mark = !barrier.void && (this.checkpointsPaused || this.behind) ? { ...barrier, void: true } : barrier;
    const seq = this.takeSeq();
    const record = encodeCheckpointRecord({ seq, capturedAtMicros: nowMicros(), marker: { ...marker, barrier: mark } });
    this.shipper.offer(this.appendOwn(seq, record), [record]);
    this.concludedEpoch = Math.max(this.concludedEpoch, barrier.epoch);
  }

  /**
   * Everything acknowledged before this call becomes durable locally and in the replication stream.
   * Locally only in degraded mode (tracking when the flush is made, or from while it waits), and when
   * the bus has not acknowledged within `flushLinkWaitMs` (the link is down: the writes are durable in
   * the log and ship when it is back, and the VM goes on rather than stalling on its flushes).
   */
  async flush(): Promise<void> {
    const target = this.lastSeq;
    const began = this.trackingBegan.promise;
    await this.syncLocal();
    if (this.tracking) {
      return;
    }
    // A failed append may have taken seqs back meanwhile (see recoverLog): none of those was acknowledged.
    const shipped = this.shipper.waitShipped(Math.min(target, this.lastSeq));
    let timer: NodeJS.Timeout | undefined;
    const linkWait = this.flushLinkWaitMs;
    const linkDown = linkWait === null ? new Promise<never>(() => undefined) : new Promise<'link-down'>((resolve) => (timer = setTimeout(() => resolve('link-down'), linkWait)));
    try {
      const outcome = await Promise.race([shipped.then(() => 'shipped' as const), began.then(() => 'tracking' as const), linkDown]);
      if (outcome === 'link-down') {
        if (!this.localFlushes) {
          this.localFlushes = { since: new Date(), count: 0 };
          this.logger.error(
            `the bus has not acknowledged a flush's writes within ${this.flushLinkWaitMs} ms (${this.shipper.error ?? 'no error from it'}): ` +
              'flushes complete durable on this site only until it does; the writes stay in the log and ship when it is back',
          );
        }
        this.localFlushes.count++;
      } else if (outcome === 'shipped' && this.localFlushes) {
        this.logger.warn(`the bus acknowledges flushes again; ${this.localFlushes.count} completed locally only since ${this.localFlushes.since.toISOString()}`);
        this.localFlushes = undefined;
      }
    } finally {
      clearTimeout(timer);
    }
  }

  /** The journal holds every record up to `appliedSeq`: the log may forget them. */
  async confirm(appliedSeq: number): Promise<void> {
    if (appliedSeq <= this.confirmed) {
      return;
    }
    if (appliedSeq >= this.nextSeq) {
      this.journalAhead(appliedSeq);
    }
    this.confirmed = appliedSeq;
    // A write not yet on its volume keeps its record: a crash before the retry succeeds is repaired by
    // the redo at the next start, which reads it from the log.
    const firstBehind = this.behind?.writes[0]?.seq;
    await this.log.deleteThrough(firstBehind === undefined ? appliedSeq : Math.min(appliedSeq, firstBehind - 1));
    const confirmed = this.confirmedSignal;
    this.confirmedSignal = deferred();
    confirmed.resolve();
  }

  /**
   * The journal holds seqs up to `appliedSeq`, and this log never handed them out: another log of this
   * VPG did (the capture's directory restored from a backup, say), so what this one ships at or below
   * them the journal drops as duplicates. The order restarts above them (a restart may skip seqs, see
   * SegmentLog's continuity rule) with a full resync. Not while tracking: the next progress says it
   * again.
   */
  private journalAhead(appliedSeq: number): void {
    if (this.closing || this.tracking) {
      return;
    }
    this.drain();
    const last = this.nextSeq - 1;
    if (this.tracking || appliedSeq < this.nextSeq) {
      return;
    }
    this.logger.error(`the journal holds seqs up to ${appliedSeq}, past this splitter's last seq ${last}: another log of this VPG handed them out`);
    this.nextSeq = appliedSeq + 1;
    if (!this.restartOrder(0, `the journal holds seqs up to ${appliedSeq}, past this splitter's last seq ${last}`)) {
      // Only a restart may skip seqs in the log.
      this.nextSeq = Math.min(this.nextSeq, last + 1);
    }
  }

  /**
   * The journal found a gap: ship again from `seq`. When the log no longer holds it (the journal lost
   * what it had confirmed: a recovery site rebuilt, its journal restored from a backup), nothing can
   * ship it again, so the order restarts (see restartOrder). Returns what was done.
   */
  replayFrom(seq: number): 'replaying' | 'restarted' | 'refused' {
    const first = this.log.firstSeq ?? this.nextSeq;
    if (seq >= first) {
      if (seq > this.nextSeq) {
        // The journal has seqs this log never handed out (see journalAhead).
        const before = this.nextSeq;
        this.journalAhead(seq - 1);
        return this.nextSeq > before ? 'restarted' : 'refused';
      }
      this.shipper.rewind(seq);
      return 'replaying';
    }
    const restart = this.lastRestart;
    if (restart !== undefined && restart >= first) {
      // The restart sent for an earlier request is still in the log: it takes the place of `seq` too.
      this.shipper.rewind(restart);
      return 'replaying';
    }
    return this.restartOrder(seq, `the journal lacks seqs from ${seq}, and the splitter log holds only from ${first}`) ? 'restarted' : 'refused';
  }

  /**
   * The journal lacks seqs from `voidFrom` (0: nobody asked; the log itself was lost), which this log
   * does not hold. A restart record
   * (RecordKind.Restart) goes into the order: the journal takes it in place of every seq it lacks
   * before it. A full resync of the volumes follows at once (ForcedResync.restartAll, replacing one
   * that runs), holding the checkpoint gate, so the first checkpoint after the restart is consistent
   * and none can describe the void stretch. Checkpoints the journal recorded before it keep their
   * records and stay valid. The resync's progress file is durable before the record is appended, so a
   * crash never leaves a restart without its resync. Not while tracking (the log takes no records):
   * the journal asks again.
   */
  private restartOrder(voidFrom: number, reason: string): boolean {
    if (this.closing || this.tracking || !this.forced) {
      this.logger.warn(`${reason}: the order restarts once the log takes records again`);
      return false;
    }
    // Writes captured earlier in this turn go before the restart; their seqs are void for the journal too.
    this.drain();
    if (this.tracking) {
      return false;
    }
    const resyncId = randomUUID();
    this.forced.restartAll({ resyncId, requestedAt: new Date().toISOString(), reason });
    const seq = this.takeSeq();
    const record = encodeRestartRecord({ seq, capturedAtMicros: nowMicros(), restart: { resyncId, voidFrom, reason, member: this.member } });
    if (!this.appendOwnUnlessTracking(seq, record)) {
      // A full disk: the resync waits for room like any other, and the journal asks again (a new
      // restart then replaces this resync).
      return false;
    }
    // The restart begins the stretch for the journal itself.
    this.syncPending = false;
    this.lastRestart = seq;
    this.shipper.rewind(seq);
    this.logger.warn(`${reason}: the order restarts at seq ${seq}, and resync ${resyncId} of every volume follows`);
    return true;
  }

  async close(): Promise<void> {
    this.closing = true;
    clearTimeout(this.probeTimer);
    this.closed.resolve();
    await this.forced?.stop();
    await this.syncLoop;
    this.concludeBarrier(true);
    try {
      this.drain();
    } catch {
      // The batch's writers have the error.
    }
    await this.logRecovery;
    if (this.behind) {
      // One last try; the timer stops retrying (closing), and what is still behind is for the redo.
      clearTimeout(this.behind.timer);
      await this.catchUp().catch(() => undefined);
    }
    await this.shipper.stop();
    await this.syncLocal();
    await this.log.close();
    await this.activity.close();
    await this.dirty.close();
    for (const volume of this.volumes.values()) {
      volume.close();
    }
    if (this.behind) {
      // No clean-shutdown marker: the next start takes this for a crash and re-applies the log to the
      // volumes (redo), which puts these writes where they belong.
      this.logger.error(`closing with ${this.behind.writes.length} logged write(s) not on their volume (${this.behind.error}); the next start re-applies them`);
      return;
    }
    await writeFile(join(this.dir, CLEAN_MARKER), new Date().toISOString());
    await syncDir(this.dir);
  }

  /**
   * Assigns the write its seq and queues it; `this.batch.applied` resolves once it is in the log and on
   * the volume. Every write captured in one event-loop turn (all the requests one socket read
   * delivered) goes into the log in one vectored write, at the end of the turn, before any of them
   * touches its volume: one system call for the log instead of one per write, and the log stays a
   * write-ahead log. Nothing is acknowledged before its batch is applied, and everything that needs
   * the log or the volumes complete (a flush, a checkpoint marker, close) drains the batch first.
   */
  private capture(target: ProtectedVolume, offset: number, data: Buffer, fua: boolean, headroom = 0, lease?: PayloadLease): Captured {
    const seq = this.takeSeq();
    const inPlace = headroom >= RECORD_HEADER_BYTES;
    const record = encodeWriteRecord(
      {
        seq,
        volumeIndex: target.volume.index,
        offset,
        capturedAtMicros: nowMicros(),
        flags: fua ? RECORD_FLAG_FUA : 0,
        data,
      },
      { inPlace },
    );
    let batch = this.batch;
    if (!batch) {
      let settle!: (err?: Error) => void;
      const applied = new Promise<void>((resolve, reject) => {
        settle = (err) => (err === undefined ? resolve() : reject(err));
      });
      // Writers await it; a failure nobody awaits any more must not surface as unhandled.
      applied.catch(() => undefined);
      const leases: (PayloadLease | undefined)[] = [];
      batch = {
        firstSeq: seq,
        records: [],
        batchHeadroom: [],
        leases,
        writes: [],
        bytes: 0,
        tracked: false,
        applied,
        // Settled once the batch's log writes and volume writes are done or failed: the capture is
        // finished with its payloads (the shipper holds its own references).
        settle: (err) => {
          settle(err);
          for (const held of leases) {
            held?.release();
          }
        },
      };
      this.batch = batch;
      queueMicrotask(() => {
        try {
          this.drain();
        } catch {
          // The batch's writers have the error through `applied`.
        }
      });
    }
    batch.records.push(record);
    batch.batchHeadroom.push(headroom >= RECORD_HEADER_BYTES + BATCH_HEADER_BYTES);
    batch.leases.push(lease);
    batch.writes.push({ volume: target, offset, data, seq });
    batch.bytes += data.length;
    return { seq, applied: batch.applied, batch };
  }

  /**
   * Puts the queued writes into the log, then onto their volumes, in seq order; settles their waiters.
   * The records' places in the log are taken now whatever the path, so records appended after this
   * call (a checkpoint marker) come after them. A small batch with nothing in flight is done when this
   * returns; otherwise it is on its way (`applying`) and its waiters are settled when it is done.
   */
  private drain(): void {
    const batch = this.batch;
    if (!batch) {
      return;
    }
    this.batch = undefined;
    const failed = (err: unknown): Error => {
      const error = err instanceof Error ? err : new Error('capture failed', { cause: err });
      batch.settle(error);
      return error;
    };
    if (!this.tracking && this.logLimitBytes !== undefined && this.log.bytes + batch.bytes > this.logLimitBytes) {
      this.startTracking(`the splitter log holds ${this.log.bytes} bytes, and its limit is ${this.logLimitBytes}`);
    }
    if (this.tracking) {
      // Its seqs are the last ones handed out (anything appended after a capture drains it first).
      this.nextSeq = Math.min(this.nextSeq, batch.firstSeq);
      this.trackBatch(batch);
      return;
    }
    // A log write still queued (a marker appended behind a large batch) would let a synchronous append
    // join the queue and return before its bytes are in: the volume must not change before they are.
    if (this.inFlight.size === 0 && !this.log.writesInFlight && batch.bytes < ASYNC_BATCH_BYTES) {
      let placed;
      try {
        placed = this.log.append(batch.records);
      } catch (err) {
        this.afterFailedAppend(batch.firstSeq, err);
        this.trackBatch(batch);
        return;
      }
      const failure = applyInOrder(batch.writes);
      // In the log, so in the stream, whether or not the volume took them.
      this.shipper.offer(placed, batch.records, batch.batchHeadroom, batch.leases);
      if (failure) {
        this.fallBehind(batch.writes.slice(failure.from), failure.error);
        failed(failure.error);
        return;
      }
      batch.settle();
      return;
    }
    let placed;
    try {
      placed = this.log.appendAsync(batch.records);
    } catch (err) {
      this.afterFailedAppend(batch.firstSeq, err);
      this.trackBatch(batch);
      return;
    }
    // The shipper ships only what the log has made durable, and a sync waits for these writes.
    this.shipper.offer(placed, batch.records, batch.batchHeadroom, batch.leases);
    // Only the batches in flight that write where this one does must be on the volume first: the
    // others go to the disk side by side with it (one write at a time left the disk idle in between).
    const ranges = batch.writes.map((w) => ({ volume: w.volume, start: w.offset, end: w.offset + w.data.length }));
    const before = [...this.inFlight].filter((other) => overlaps(other.ranges, ranges)).map((other) => other.done);
    // This batch's own log write (and those before it), not the ones queued after it meanwhile.
    const logged = placed[0] ? this.log.written(placed[0]) : Promise.resolve();
    logged.catch(() => undefined);
    const applying = (async () => {
      // A batch before this one that failed has failed its own writers; this one goes on, as the
      // synchronous path does after a failed batch.
      await Promise.all(before);
      // Write-ahead: the records are in the log (written, if not yet durable) before the volumes change.
      try {
        await logged;
      } catch (err) {
        // Its records, and every one after them, are being cut off the log (their seqs handed out
        // again): this batch is taken in degraded mode instead.
        this.startTracking(`an append to the splitter log failed: ${messageOf(err)}`);
        this.recoverLog(err);
        batch.tracked = true;
        await this.markAndApply(batch.writes, batch.bytes);
        return;
      }
      if (this.behind) {
        // Earlier writes failed on their volume: these go after them, in order.
        this.fallBehind(batch.writes, undefined);
        throw new VolumeBehindError(`not applied: ${this.behind.writes.length} earlier write(s) are not on their volume yet (${this.behind.error})`, this.behind.code);
      }
      const failure = await applyInOrderAsync(batch.writes);
      if (failure) {
        this.fallBehind(batch.writes.slice(failure.from), failure.error);
        throw failure.error;
      }
    })().then(
      () => batch.settle(),
      (err: unknown) => void failed(err),
    );
    const entry = { ranges, done: applying };
    this.inFlight.add(entry);
    void applying.then(() => this.inFlight.delete(entry));
  }

  /**
   * A record of this capture's own (a marker, a resync chunk) into the log; if the append fails, its
   * seq is taken back, as a failed batch's are.
   */
  private appendOwn(seq: number, record: Buffer): ReturnType<SegmentLog['append']> {
    try {
      return this.log.append([record]);
    } catch (err) {
      throw this.afterFailedAppend(seq, err);
    }
  }

  /**
   * An append to the log failed (a full disk): nothing of it is in the log, so its seqs, the last ones
   * handed out, are handed out again, and the capture goes into degraded mode. When the failure was a
   * write on the thread pool, the log is cut back to it first (recoverLog), which may take seqs
   * further back.
   */
  private afterFailedAppend(firstSeq: number, err: unknown): unknown {
    this.nextSeq = Math.min(this.nextSeq, firstSeq);
    this.startTracking(`an append to the splitter log failed: ${messageOf(err)}`);
    if (this.log.failedAt) {
      this.recoverLog(err);
    }
    return err;
  }

  /**
   * A write on the thread pool failed to go into the log: once nothing is in flight, the log cuts off
   * that write's records and all after it (their batches are taken in degraded mode), and the capture hands out
   * their seqs again and drops them from the shipper's window, so the stream goes on without a gap.
   */
  private recoverLog(cause: unknown): void {
    if (this.logRecovery) {
      return;
    }
    this.logRecovery = this.log
      .recover()
      .then(
        (cut) => {
          if (!cut) {
            return;
          }
          // Captured after the failure, not yet drained: their seqs are past the cut. Tracked instead.
          const open = this.batch;
          this.batch = undefined;
          if (open) {
            this.trackBatch(open);
          }
          this.nextSeq = cut.seq;
          this.logCuts++;
          this.shipper.forgetFrom(cut.position, cut.seq);
          this.logger.warn(`an append to the splitter log failed (${messageOf(cause)}): the log goes on from seq ${cut.seq}; the writes from there on were taken in degraded mode`);
        },
        (err: unknown) => {
          this.logger.error(`the splitter log could not be cut back after a failed append: ${messageOf(err)}`);
        },
      )
      .finally(() => {
        this.logRecovery = undefined;
      });
  }

  /**
   * Writes in the log whose volume write failed, or that come after one that did (`error` undefined):
   * the stream has them, the volume does not. They are kept, copied, oldest first, and applied again
   * before any new write is taken (catchUp), so the volume and the stream agree before anything else
   * happens to them; until then new writes fail with the volume's error and no checkpoint is cut.
   * Their writers were told the write failed, so their bytes are undefined for the client, as after a
   * disk's failed write; the retry makes them what the stream says. A timer retries meanwhile.
   */
  private fallBehind(writes: readonly QueuedWrite[], error: unknown): void {
    let behind = this.behind;
    if (!behind) {
      let release!: () => void;
      const caughtUp = new Promise<void>((resolve) => (release = resolve));
      behind = { writes: [], since: new Date(), error: messageOf(error), code: codeOf(error), caughtUp, release, attempt: undefined, timer: undefined, delayMs: CATCH_UP_RETRY_FIRST_MS };
      this.behind = behind;
      this.logger.error(`a write to a protected volume failed (${behind.error}): the writes from seq ${writes[0]?.seq ?? '?'} on are in the stream but not on their volume; retrying them, and refusing new writes until they are in`);
      this.scheduleCatchUp(behind);
    }
    for (const w of writes) {
      // A copy: the payload's memory goes back to its owner when the writer is answered.
      behind.writes.push({ volume: w.volume, offset: w.offset, data: Buffer.from(w.data), seq: w.seq });
    }
  }

  private scheduleCatchUp(behind: Behind): void {
    clearTimeout(behind.timer);
    if (this.closing) {
      return;
    }
    behind.timer = setTimeout(() => {
      if (this.closing) {
        return;
      }
      this.catchUp().catch(() => {
        if (this.behind === behind && !this.closing) {
          behind.delayMs = Math.min(behind.delayMs * 2, CATCH_UP_RETRY_MAX_MS);
          this.scheduleCatchUp(behind);
        }
      });
    }, behind.delayMs);
    behind.timer.unref();
  }

  /**
   * Applies the writes that fell behind, oldest first; resolves once all are on their volumes, or
   * rejects (VolumeBehindError, with the file system's code) with those still left. Callers arriving
   * together share one attempt.
   */
  private catchUp(): Promise<void> {
    const behind = this.behind;
    if (!behind) {
      return Promise.resolve();
    }
    behind.attempt ??= Promise.resolve()
      .then(() => {
        let done = 0;
        try {
          for (const w of behind.writes) {
            w.volume.write(w.offset, w.data);
            done++;
          }
        } catch (err) {
          behind.writes.splice(0, done);
          behind.error = messageOf(err);
          behind.code = codeOf(err);
          throw new VolumeBehindError(`${behind.writes.length} logged write(s) are not on their volume yet: ${behind.error}`, behind.code, { cause: err });
        }
        clearTimeout(behind.timer);
        this.behind = undefined;
        behind.release();
        this.logger.warn(`the ${done} logged write(s) that had not reached their volume since ${behind.since.toISOString()} are on it now; taking writes again`);
      })
      .finally(() => {
        behind.attempt = undefined;
      });
    return behind.attempt;
  }

  /** Settles once every batch now on its way to the volumes is there; undefined when none is. */
  private get applying(): Promise<void> | undefined {
    return this.inFlight.size === 0 ? undefined : Promise.all([...this.inFlight].map((b) => b.done)).then(() => undefined);
  }

  /** Resolves once every batch drained before the call is on its volumes (or has failed its writers). */
  private async applied(): Promise<void> {
    await this.applying;
  }

  private stallStats(): CaptureStatus['checkpointStall'] {
    const n = Math.min(this.stallCount, STALL_SAMPLES);
    if (n === 0) {
      return { count: 0, p50Micros: null, p99Micros: null, maxMicros: null };
    }
    const sorted = this.stalls.slice(0, n).sort();
    const at = (p: number): number => sorted[Math.min(n - 1, Math.ceil(p * n) - 1)] as number;
    return { count: this.stallCount, p50Micros: at(0.5), p99Micros: at(0.99), maxMicros: sorted[n - 1] as number };
  }

  /** Log and volumes durable for every write made before the call; their regions become evictable. */
  private async syncLocal(): Promise<void> {
    // Writes queued in this turn carry the current epoch: they must be on disk before the epoch is
    // declared flushed, or their regions could leave the activity log while not yet durable.
    this.drain();
    const epoch = ++this.epoch;
    // Batches on the thread pool must be on their volumes before the volumes' fdatasync.
    await this.applied();
    await Promise.all([this.log.sync(), ...[...this.volumes.values()].map((v) => v.sync())]);
    this.flushedEpoch = Math.max(this.flushedEpoch, epoch);
  }

  /** Applies every write still in the log to its volume again, in seq order (see the class comment). */
  private async redo(): Promise<void> {
    let cursor = this.log.start;
    let applied = 0;
    for (;;) {
      const { records, next } = await this.log.readChunk(cursor, 4 * 1024 * 1024);
      if (records.length === 0) {
        break;
      }
      for (const { record } of records) {
        const decoded = decodeRecord(record);
        if (decoded.kind === RecordKind.Write) {
          const volume = this.volumes.get(decoded.volumeIndex);
          if (volume) {
            this.redoOutsideDirty(volume, decoded.offset, decoded.data);
            applied++;
          }
        }
      }
      cursor = next;
    }
    await Promise.all([...this.volumes.values()].map((v) => v.sync()));
    this.logger.warn(`unclean shutdown (${this.previousEnd}): re-applied ${applied} logged writes to the volumes (last seq ${this.lastSeq})`);
  }

  /**
   * A logged write applied again, except where it falls in a dirty region: there the volume holds
   * writes tracked after it (degraded mode), newer than the log, and the sync of the region puts the
   * volume's bytes into the stream after this record.
   */
  private redoOutsideDirty(volume: ProtectedVolume, offset: number, data: Buffer): void {
    const index = volume.volume.index;
    if (!this.dirty.intersects(index, offset, data.length)) {
      volume.write(offset, data);
      return;
    }
    for (let at = offset; at < offset + data.length; ) {
      const end = Math.min(offset + data.length, (Math.floor(at / DIRTY_REGION_BYTES) + 1) * DIRTY_REGION_BYTES);
      if (!this.dirty.intersects(index, at, end - at)) {
        volume.write(at, data.subarray(at - offset, end - offset));
      }
      at = end;
    }
  }

  /** After a host crash: every region of the activity log, read from the volume, captured as writes. */
  private async resyncActiveRegions(): Promise<void> {
    const regions = this.activity.regions();
    if (regions.length > 0 && !this.appendSync(`the ${regions.length} active region(s) after a host crash`)) {
      throw new Error('the splitter log cannot take records (a full disk?): the active regions after a host crash cannot be resynchronised');
    }
    let bytes = 0;
    for (const region of regions) {
      const volume = this.volumes.get(region.volumeIndex);
      if (!volume) {
        continue;
      }
      const start = region.regionIndex * REGION_BYTES;
      const length = Math.min(REGION_BYTES, volume.volume.sizeBytes - start);
      if (length <= 0) {
        continue;
      }
      this.capture(volume, start, volume.read(start, length), false);
      this.drain();
      bytes += length;
    }
    await this.syncLocal();
    this.logger.warn(`host crash: resynchronised ${regions.length} active region(s), ${bytes} bytes, through seq ${this.lastSeq}`);
  }

  // Forced resync

  /** The operator-forced resync (see forced-resync.ts); set at open, before any command is taken. */
  private forced: ForcedResync | undefined;
  /** The seq of the last restart of the order this run appended (see restartOrder). */
  private lastRestart: number | undefined;
  /** The member (host) this capture is for in a VPG with several; null with one. */
  private member: string | null = null;
  /** Set in open(), before any seq is handed out. */
  private ceiling!: SeqCeiling;

  /**
   * While true no checkpoint is cut here (a forced resync runs, or dirty regions exist): automatic
   * markers are skipped, the others deferred.
   */
  get checkpointsPaused(): boolean {
    return this.gate.held;
  }

  /**
   * Starts a forced resync of the given volumes (null: all of this capture's). Throws a DomainError,
   * doing nothing, for a volume not in the VPG or while another resync runs. 'duplicate': a resync
   * with this id was already started here (the command was delivered again).
   */
  startResync(request: ResyncRequest): 'started' | 'duplicate' {
    if (!this.forced) {
      throw new DomainError('failed-precondition', `the capture of VPG ${this.vpg.name} is not open`);
    }
    return this.forced.start(request);
  }

  private async openForcedResync(): Promise<void> {
    this.forced = await ForcedResync.open(this.dir, {
      vpg: this.vpg,
      volumes: this.volumes,
      captureChunk: (volume, offset, length) => this.captureResyncChunk(volume, offset, length),
      applying: () => this.chunkBlocked(),
      shippedSeq: () => this.shipper.shippedSeq,
      waitShipped: (seq) => this.shipper.waitShipped(seq),
      heldBarrier: () => this.barrier?.released,
      logCuts: () => this.logCuts,
      gate: this.gate,
    });
  }

  /**
   * What a resync chunk that could not be captured waits for: the end of tracking (the log takes no
   * records), the retry of writes behind their volume, or the writes on their way to the volumes.
   */
  private chunkBlocked(): Promise<void> | undefined {
    if (this.tracking) {
      return this.trackingEnded.promise;
    }
    if (!this.chunkFits(RESYNC_CHUNK_BYTES)) {
      return this.confirmedSignal.promise;
    }
    return this.behind?.caughtUp ?? this.applying;
  }

  /**
   * One chunk of a forced resync as a write record. The queued batch goes first, so the bytes read are
   * the volume's at this seq. The volume is not written: the record holds what it already has, so it
   * needs no activity-log entry either (a power loss cannot make volume and record disagree).
   */
  private captureResyncChunk(volume: ProtectedVolume, offset: number, length: number): number | undefined {
    this.drain();
    if (this.inFlight.size > 0 || this.behind || this.tracking || !this.chunkFits(length)) {
      // The volume does not hold every write before this seq yet, or the log takes no records, or
      // not this many before the journal confirms more: the resync waits (chunkBlocked) and asks again.
      return undefined;
    }
    if (this.syncPending && !this.appendSync(this.syncReason())) {
      return undefined;
    }
    const seq = this.takeSeq();
    const record = encodeWriteRecord({ seq, volumeIndex: volume.volume.index, offset, capturedAtMicros: nowMicros(), flags: 0, data: volume.read(offset, length) });
    return this.appendOwnUnlessTracking(seq, record) ? seq : undefined;
  }

  /**
   * A record of the capture's own into the log and to the shipper; false if the append failed and
   * the capture tracks writes now (a full disk): the caller waits for that to end and asks again.
   */
  private appendOwnUnlessTracking(seq: number, record: Buffer): boolean {
    let placed;
    try {
      placed = this.appendOwn(seq, record);
    } catch (err) {
      if (this.tracking) {
        return false;
      }
      throw err;
    }
    this.shipper.offer(placed, [record]);
    return true;
  }

  /**
   * A sync record (RecordKind.Sync): the records after it read regions of the volumes back, so until
   * the first checkpoint after it the order passes through states the volumes were never in, and the
   * journal recovers no point in time there. Put in front of the first chunk of each stretch the
   * checkpoint gate is held for, and of the active regions read back after a host crash.
   */
  private appendSync(reason: string): boolean {
    const seq = this.takeSeq();
    const record = encodeSyncRecord({ seq, capturedAtMicros: nowMicros(), sync: { reason, member: this.member } });
    if (!this.appendOwnUnlessTracking(seq, record)) {
      return false;
    }
    this.syncPending = false;
    return true;
  }

  /** What the stretch the gate is held for reads back, for the sync record. */
  private syncReason(): string {
    const reasons: string[] = [];
    const resync = this.forced?.status();
    if (resync) {
      reasons.push(`resync ${resync.id}${resync.reason ? ` (${resync.reason})` : ''}`);
    }
    if (this.dirty.dirtyRegions > 0) {
      reasons.push(`the sync of ${this.dirty.dirtyRegions} dirty region(s) after degraded mode`);
    }
    return reasons.join('; ') || 'a sync';
  }

  /**
   * Whether a resync chunk of `length` bytes fits under the log's size limit. A resync waits for room
   * rather than filling the log: filled, it would put the client's writes into degraded mode.
   */
  private chunkFits(length: number): boolean {
    return this.logLimitBytes === undefined || this.log.bytes + length <= this.logLimitBytes;
  }

  // Degraded mode (see the class comment)

  /** The log cannot take writes: tracking begins (once; later calls while it runs change nothing). */
  private startTracking(reason: string): void {
    if (this.tracking) {
      return;
    }
    this.clearProbe();
    const again = performance.now() - this.trackingEndedAt < 2 * this.probeDelayMs;
    // Back again soon after it last ended: the log is still full; look less often.
    this.probeDelayMs = again ? Math.min(this.probeDelayMs * 2, TRACKING_PROBE_MAX_MS) : TRACKING_PROBE_FIRST_MS;
    this.tracking = { since: new Date(), reason, writes: 0, bytes: 0 };
    this.dirtySince ??= this.tracking.since;
    this.gate.hold(GATE_DIRTY);
    const message = `${reason}: degraded mode, writes go to their volume only and their regions are tracked; no checkpoint until they are synced`;
    if (again) {
      this.logger.warn(message);
    } else {
      this.logger.error(message);
    }
    const began = this.trackingBegan;
    this.trackingBegan = deferred();
    began.resolve();
    this.scheduleProbe();
  }

  private scheduleProbe(): void {
    this.clearProbe();
    if (this.closing) {
      return;
    }
    this.probeTimer = setTimeout(() => this.probeTracking(), this.probeDelayMs);
    this.probeTimer.unref();
  }

  private clearProbe(): void {
    clearTimeout(this.probeTimer);
    this.probeTimer = undefined;
  }

  /** While tracking: once the log may take writes again, they are logged again and the dirty regions synced. */
  private probeTracking(): void {
    const tracking = this.tracking;
    if (!tracking || this.closing) {
      return;
    }
    if (this.logRecovery || (this.logLimitBytes !== undefined && this.log.bytes > this.logLimitBytes * LOG_LIMIT_RESUME_SHARE)) {
      this.scheduleProbe();
      return;
    }
    this.tracking = undefined;
    this.trackingEndedAt = performance.now();
    const ended = this.trackingEnded;
    this.trackingEnded = deferred();
    ended.resolve();
    this.logger.warn(
      `the splitter log takes writes again: ${tracking.writes} write(s) (${tracking.bytes} bytes) were tracked since ${tracking.since.toISOString()}; ` +
        `syncing ${this.dirty.dirtyRegions} dirty region(s)`,
    );
    this.startDirtySync();
  }

  /**
   * Writes to their volumes without the log, in order after the batches in flight that write where
   * they do, once their regions are durable in the dirty map. Resolves when they are on their volumes.
   */
  private applyTracked(writes: readonly QueuedWrite[], bytes: number): Promise<void> {
    const ranges = writes.map((w) => ({ volume: w.volume, start: w.offset, end: w.offset + w.data.length }));
    const before = [...this.inFlight].filter((other) => overlaps(other.ranges, ranges)).map((other) => other.done);
    const work = Promise.all(before).then(() => this.markAndApply(writes, bytes));
    const entry = { ranges, done: work.catch(() => undefined) };
    this.inFlight.add(entry);
    void entry.done.then(() => this.inFlight.delete(entry));
    return work;
  }

  /** A batch taken in degraded mode: its writers are answered once its writes are on their volumes. */
  private trackBatch(batch: CaptureBatch): void {
    batch.tracked = true;
    this.applyTracked(batch.writes, batch.bytes).then(
      () => batch.settle(),
      (err: unknown) => batch.settle(err instanceof Error ? err : new Error(String(err))),
    );
  }

  /**
   * Marks the writes' regions in the dirty map (durably), then applies them in order: after any logged
   * writes still behind their volume (retried first; if they still fail, these fail too, unapplied).
   */
  private async markAndApply(writes: readonly QueuedWrite[], bytes: number): Promise<void> {
    if (this.behind) {
      await this.catchUp();
    }
    if (this.tracking) {
      this.tracking.writes += writes.length;
      this.tracking.bytes += bytes;
    }
    const marked = writes.map((w) => this.dirty.mark(w.volume.volume.index, w.offset, w.data.length)).filter((p) => p !== undefined);
    if (marked.length > 0) {
      await Promise.all(marked);
    }
    const failure = bytes >= ASYNC_BATCH_BYTES ? await applyInOrderAsync(writes) : applyInOrder(writes);
    if (failure) {
      throw failure.error;
    }
  }

  /** Syncs the dirty regions, pass after pass, until none is left; stops while tracking, and when closing. */
  private startDirtySync(): void {
    if (this.syncLoop || this.closing) {
      return;
    }
    const host = {
      volumes: this.volumes,
      captureChunk: (volume: ProtectedVolume, offset: number, length: number) => this.captureResyncChunk(volume, offset, length),
      applying: () => this.chunkBlocked(),
      heldBarrier: () => this.barrier?.released,
      shippedSeq: () => this.shipper.shippedSeq,
      waitShipped: (seq: number) => this.shipper.waitShipped(seq),
      logCuts: () => this.logCuts,
      tracking: () => this.tracking !== undefined,
      closing: () => this.closing,
      interrupted: () => Promise.race([this.trackingBegan.promise, this.closed.promise]),
    };
    this.syncLoop = (async () => {
      while (!this.closing && !this.tracking && this.dirty.dirtyRegions > 0) {
        const pass = new DirtySync(this.dirty, host);
        this.syncPass = pass;
        await pass.run();
      }
    })()
      .then(
        () => {
          this.syncError = undefined;
        },
        (err: unknown) => {
          this.syncError = messageOf(err);
          this.logger.error(`the sync of dirty regions stopped: ${this.syncError}; trying again in ${DIRTY_SYNC_RETRY_MS} ms`);
          setTimeout(() => this.startDirtySync(), DIRTY_SYNC_RETRY_MS).unref();
        },
      )
      .finally(() => {
        this.syncPass = undefined;
        this.syncLoop = undefined;
        if (!this.closing && !this.tracking && this.dirty.dirtyRegions === 0 && this.dirtySince) {
          const since = this.dirtySince;
          this.dirtySince = undefined;
          const released = this.gate.release(GATE_DIRTY);
          this.logger.warn(
            `dirty regions synced (dirty since ${since.toISOString()}); ` +
              (released ? `checkpoints resume: ${released.inserted} deferred one(s) inserted, ${released.skipped} automatic one(s) skipped` : 'checkpoints stay paused for a forced resync'),
          );
        }
      });
  }
}

interface HeldBarrier {
  readonly epoch: number;
  readonly marker: Omit<CheckpointMarkerBody, 'barrier'>;
  readonly member: string;
  readonly startedAt: number;
  readonly released: Promise<void>;
  readonly release: () => void;
  readonly timer: NodeJS.Timeout;
}

interface WriteRange {
  readonly volume: ProtectedVolume;
  readonly start: number;
  readonly end: number;
}

/** Whether a write of `a` and one of `b` touch a common byte of a volume. */
function overlaps(a: readonly WriteRange[], b: readonly WriteRange[]): boolean {
  return a.some((x) => b.some((y) => x.volume === y.volume && x.start < y.end && y.start < x.end));
}

interface QueuedWrite {
  readonly volume: ProtectedVolume;
  readonly offset: number;
  readonly data: Buffer;
  readonly seq: number;
}

/** Logged writes that did not reach their volume (see fallBehind). */
interface Behind {
  readonly writes: QueuedWrite[];
  readonly since: Date;
  /** The last error a volume write (or its retry) got, and its code (ENOSPC...). */
  error: string;
  code: string | undefined;
  /** Resolves once every one of them is on its volume. */
  readonly caughtUp: Promise<void>;
  readonly release: () => void;
  attempt: Promise<void> | undefined;
  timer: NodeJS.Timeout | undefined;
  delayMs: number;
}

interface CaptureBatch {
  /** Seq of its first write: every seq from there to the last one handed out is this batch's. */
  readonly firstSeq: number;
  /** Taken in degraded mode instead of being logged (its seqs handed out again): its writers get no seq. */
  tracked: boolean;
  readonly records: Buffer[];
  /** Per record: BATCH_HEADER_BYTES in front of it are ours, so a batch of it alone needs no copy. */
  readonly batchHeadroom: boolean[];
  /** Per record: the payload ring's region it lies in, if it does (released when the batch settles). */
  readonly leases: (PayloadLease | undefined)[];
  readonly writes: QueuedWrite[];
  /** Payload bytes of the writes. */
  bytes: number;
  readonly applied: Promise<void>;
  readonly settle: (err?: Error) => void;
}

/** A write as capture() queued it: its seq, its batch, and when the batch is in the log and on the volumes. */
interface Captured {
  readonly seq: number;
  readonly applied: Promise<void>;
  readonly batch: CaptureBatch;
}

interface Deferred {
  readonly promise: Promise<void>;
  readonly resolve: () => void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/** Where applying a batch stopped: the index of the first write of the run that failed, and why. */
interface ApplyFailure {
  readonly from: number;
  readonly error: unknown;
}

/**
 * Applies writes in seq order; runs of adjacent writes to one volume go down in one vectored write.
 * Stops at the first run that fails (part of it may be on the volume) and says where.
 */
function applyInOrder(writes: readonly QueuedWrite[]): ApplyFailure | undefined {
  let from = 0;
  for (const run of adjacentRuns(writes)) {
    try {
      if (run.length === 1) {
        const only = run[0] as QueuedWrite;
        only.volume.write(only.offset, only.data);
      } else {
        const first = run[0] as QueuedWrite;
        first.volume.writeVector(first.offset, run.map((w) => w.data));
      }
    } catch (error) {
      return { from, error };
    }
    from += run.length;
  }
  return undefined;
}

/** As applyInOrder, on the thread pool: one run after the other, so overlapping writes land in seq order. */
async function applyInOrderAsync(writes: readonly QueuedWrite[]): Promise<ApplyFailure | undefined> {
  let from = 0;
  for (const run of adjacentRuns(writes)) {
    const first = run[0] as QueuedWrite;
    try {
      await first.volume.writeVectorAsync(first.offset, run.map((w) => w.data));
    } catch (error) {
      return { from, error };
    }
    from += run.length;
  }
  return undefined;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The system error's code an error carries (ENOSPC...), if any. */
function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** The writes split, in order, into runs of back-to-back writes to one volume. */
function adjacentRuns(writes: readonly QueuedWrite[]): QueuedWrite[][] {
  const runs: QueuedWrite[][] = [];
  let i = 0;
  while (i < writes.length) {
    const first = writes[i] as QueuedWrite;
    let end = first.offset + first.data.length;
    let j = i + 1;
    for (; j < writes.length; j++) {
      const next = writes[j] as QueuedWrite;
      if (next.volume !== first.volume || next.offset !== end) {
        break;
      }
      end += next.data.length;
    }
    runs.push(writes.slice(i, j));
    i = j;
  }
  return runs;
}

async function syncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Whether the log's directory holds a segment file: a missing directory or one with none holds no log. */
function hasSegmentFiles(logDir: string): boolean {
  try {
    return readdirSync(logDir).some((name) => name.endsWith('.seg'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      return false;
    }
    throw err;
  }
}
