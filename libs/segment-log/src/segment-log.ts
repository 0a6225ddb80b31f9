import { closeSync, constants, existsSync, ftruncateSync, openSync, readSync, renameSync, writev as writevCb, writevSync } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat, truncate, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { fdatasync as fdatasyncCb, fsync as fsyncCb } from 'node:fs';
import { CorruptRecordError, RECORD_HEADER_BYTES, RecordKind, peekRecordLength, recordKind, recordSeq, verifyRecord } from '@cdp/contracts';
import { DIRECT_IO_ALIGNMENT, alignDown, isDirectIoRefusal, openDirect, writeDirect } from './direct-io';

const fsync = promisify(fsyncCb);

/** `fs.fdatasync` looked up at each call, so that tests can make one slow or fail. */
function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fdatasyncCb(fd, (err) => (err ? reject(err) : resolve())));
}

/**
 * An append-only log of checksummed replication records (see record.codec.ts), cut into segment files
 * named by a 16-digit, zero-padded, increasing number (`0000000000000001.seg`). The splitter keeps its
 * outgoing stream in one; the journal keeps a VPG's history in one.
 *
 * Appends are synchronous positioned writes into the page cache, so the order of appends is the order
 * on disk with no interleaving; `sync()` makes everything appended so far durable (fdatasync of every
 * segment written since the last sync, and of the directory when a segment was created). A crash can
 * leave a torn tail: `open` finds the last whole, verified record and truncates after it, or truncates
 * to a position the caller knows to be the durable end (the journal's index says where that is).
 */
export interface LogPosition {
  readonly segment: number;
  readonly position: number;
}

export interface AppendedRecord extends LogPosition {
  readonly length: number;
  readonly seq: number;
}

export interface ScannedRecord extends AppendedRecord {
  readonly record: Buffer;
}

export interface SegmentLogOptions {
  readonly dir: string;
  /** A segment is sealed once it reaches this size (a single record may make it larger). Default 64 MiB. */
  readonly segmentBytes?: number;
  /**
   * How to treat the tail at open. 'scan' keeps every verified record and truncates a torn tail.
   * A position truncates the log there, deleting later segments: the journal passes the end that its
   * index recorded, dropping bytes that were appended but never indexed.
   */
  readonly tail?: 'scan' | LogPosition;
  /**
   * An appendAsync of at least this many bytes is written with O_DIRECT, past the page cache (see
   * direct-io.ts for why). Undefined: never. With it set, every write that is not synchronous goes
   * through one queue, in order, because a direct write rewrites the block it starts in: an `append`
   * made while the queue is busy joins the queue rather than write under it. A segment may then end
   * with up to DIRECT_IO_ALIGNMENT - 1 zero bytes past its last record; `open` allows for them.
   */
  readonly directWriteMinBytes?: number;
  /**
   * How many deleted segments to keep as spare files, each reused for a later segment (as PostgreSQL
   * recycles WAL files). Writing over blocks a file already has is cheaper than growing a file: no
   * block is allocated, the size does not change, and an fdatasync is then little more than a cache
   * flush (measured in docs/architecture.md). Default 0: segments are deleted.
   *
   * A reused file holds an older segment's records past the new ones, whole and with valid checksums.
   * `open` tells them apart by their seqs, so this needs a log whose records' seqs rise by exactly one
   * from each record to the next, as the splitter's stream does: a record that does not continue the
   * log ends the segment, and a segment that ends before its file does is accepted only where the next
   * segment continues from its last record (or is the last one and holds none).
   */
  readonly spareSegments?: number;
}

export class SegmentLogError extends Error {
  override readonly name = 'SegmentLogError';
  readonly retriable = false;
  /**
   * The system error's code when a write or a sync failed (ENOSPC, EDQUOT, EIO...): a caller tells a
   * full disk from damage by it, and an NBD client gets NBD_ENOSPC for the first kind.
   */
  readonly code: string | undefined;

  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    const cause = options?.cause;
    this.code = cause instanceof SegmentLogError ? cause.code : (cause as NodeJS.ErrnoException | undefined)?.code;
  }
}

/** Where an append that failed had its place, and what its segment held before it (see `recover`). */
interface FailedWrite {
  readonly at: LogPosition;
  readonly seq: number;
  readonly firstSeqBefore: number | undefined;
  readonly lastSeqBefore: number | undefined;
  readonly error: unknown;
}

interface SegmentInfo {
  readonly segment: number;
  /** Its file was a spare (see `spareSegments`): it has blocks past the records, holding older ones. */
  reused?: true;
  /** Seq of the first record, undefined while empty. */
  firstSeq: number | undefined;
  lastSeq: number | undefined;
  size: number;
}

const writevAsync = (fd: number, buffers: readonly Buffer[], position: number): Promise<number> =>
  new Promise((resolve, reject) => writevCb(fd, buffers, position, (err, written) => (err ? reject(err) : resolve(written))));

const SEGMENT_NAME = /^(\d{16})\.seg$/;
const SPARE_NAME = /^(\d{16})\.spare$/;
const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;
const SCAN_CHUNK_BYTES = 4 * 1024 * 1024;
const ZERO_PAGE = Buffer.alloc(DIRECT_IO_ALIGNMENT);

export function segmentFileName(segment: number): string {
  return `${String(segment).padStart(16, '0')}.seg`;
}

function spareFileName(segment: number): string {
  return `${String(segment).padStart(16, '0')}.spare`;
}

export class SegmentLog {
  private readonly segments: SegmentInfo[] = [];
  /** Files of deleted segments waiting to be reused for new ones (`spareSegments`). */
  private readonly spares: string[] = [];
  private sparesPending = 0;
  private segmentFilesReused = 0;
  private segmentFilesCreated = 0;
  private activeFd: number | undefined;
  /** File descriptors written since the last sync; sealed ones are closed after their sync. */
  private readonly unsynced = new Set<number>();
  /** Sealed segments' descriptors that a sync still has to cover (or is covering) before they close. */
  private readonly sealedAwaitingSync = new Set<number>();
  /** Descriptors the sync in flight is fdatasyncing: they must not be closed (or reused) under it. */
  private readonly syncingFds = new Set<number>();
  private dirUnsynced = false;
  private readonly readHandles = new Map<number, Promise<FileHandle>>();
  private syncing: Promise<void> | undefined;
  /** appendAsync writes still running. */
  private readonly writing = new Map<Promise<void>, LogPosition>();
  private closed = false;
  /** A failure the log cannot recover from by itself (a failed fsync, a failed truncate): reopen it. */
  private failure: SegmentLogError | undefined;
  /**
   * The earliest appendAsync write that did not make it into the file (a full disk). Nothing is
   * appended while it is set; `recover` cuts the log back to where it began.
   */
  private writeFailure: FailedWrite | undefined;
  private recovering: Promise<{ position: LogPosition; seq: number } | undefined> | undefined;
  /** Everything before this position has been fdatasynced. */
  private durable: LogPosition = { segment: 1, position: 0 };
  /**
   * With direct writes: the last write queued (each waits for the one before), the bytes of the active
   * segment from its last aligned position to its end (a direct write's head), the direct descriptor
   * of each segment still written to, and whether the file system refused direct writes.
   */
  private queue: Promise<void> = Promise.resolve();
  private readonly tailBlock = Buffer.alloc(DIRECT_IO_ALIGNMENT);
  private readonly directFds = new Map<number, number>();
  private directRefused = false;

  private constructor(
    readonly dir: string,
    private readonly segmentBytes: number,
    private readonly directWriteMinBytes: number | undefined,
    private readonly spareSegments: number,
  ) {}

  static async open(options: SegmentLogOptions): Promise<SegmentLog> {
    if (options.directWriteMinBytes !== undefined && !(options.directWriteMinBytes >= 0)) {
      throw new RangeError(`directWriteMinBytes must be a number of bytes, not ${options.directWriteMinBytes}`);
    }
    if (options.segmentBytes !== undefined && !(Number.isInteger(options.segmentBytes) && options.segmentBytes > 0)) {
      throw new RangeError(`segmentBytes must be a whole number of bytes above 0, not ${options.segmentBytes}`);
    }
    if (options.spareSegments !== undefined && !(Number.isInteger(options.spareSegments) && options.spareSegments >= 0)) {
      throw new RangeError(`spareSegments must be a whole number of files, not ${options.spareSegments}`);
    }
    const log = new SegmentLog(options.dir, options.segmentBytes ?? DEFAULT_SEGMENT_BYTES, options.directWriteMinBytes, options.spareSegments ?? 0);
    await mkdir(options.dir, { recursive: true });
    await log.load(options.tail ?? 'scan');
    return log;
  }

  /** Seq of the last record in the log, or undefined when it holds none. */
  get lastSeq(): number | undefined {
    for (let i = this.segments.length - 1; i >= 0; i--) {
      const seq = this.segments[i]?.lastSeq;
      if (seq !== undefined) {
        return seq;
      }
    }
    return undefined;
  }

  get firstSeq(): number | undefined {
    return this.segments.find((s) => s.firstSeq !== undefined)?.firstSeq;
  }

  /** Where the next record will be appended. */
  get end(): LogPosition {
    const active = this.active();
    return { segment: active.segment, position: active.size };
  }

  /**
   * Everything before this position is durable (fdatasynced). A shipper that never reads past it can
   * never put a record on the wire that a power loss could take back from this log.
   */
  get durableEnd(): LogPosition {
    return this.durable;
  }

  /** Bytes of records the log holds, over all its segments (spare files not counted). */
  get bytes(): number {
    let total = 0;
    for (const segment of this.segments) {
      total += segment.size;
    }
    return total;
  }

  get start(): LogPosition {
    return { segment: this.segments[0]?.segment ?? 1, position: 0 };
  }

  /**
   * Appends whole, already encoded records in one vectored write. Returns where each one landed.
   * Not durable until `sync()` resolves. If the write fails (a full disk), nothing of it stays in the
   * log: it throws a SegmentLogError carrying the system error's code, and the next append takes its
   * place. With direct writes, while a queued write is still running (`writesInFlight`), the records
   * join the queue instead: in the file once `written()` resolves.
   */
  append(records: readonly Buffer[]): AppendedRecord[] {
    if (this.directWriteMinBytes !== undefined && this.writing.size > 0) {
      return this.appendAsync(records);
    }
    const reserved = this.reserve(records);
    if (!reserved) {
      return [];
    }
    this.noteTail(records, reserved.offset, reserved.bytes);
    let { offset, bytes } = reserved;
    // writev may write fewer bytes than asked; loop until all of them are in.
    let pending: Buffer[] = [...records];
    const padding = this.pagePadding(reserved);
    if (padding > 0) {
      pending.push(ZERO_PAGE.subarray(0, padding));
      bytes += padding;
    }
    try {
      while (bytes > 0) {
        const written = writevSync(reserved.fd, pending, offset);
        offset += written;
        bytes -= written;
        pending = dropBytes(pending, written);
      }
    } catch (err) {
      // A full disk, typically, after some of the bytes went in: cut them off again, so the log holds
      // exactly what it held before and the next append takes this place. Nothing else can have seen
      // the records: the write was synchronous.
      this.undoReservation(reserved);
      throw new SegmentLogError(`append to ${this.dir} failed, nothing was appended: ${messageOf(err)}`, { cause: err });
    }
    return reserved.placed;
  }

  /**
   * Zero bytes to write after a synchronous append, up to the next 4 KiB boundary, in a reused file:
   * its blocks hold data, so the kernel would read a page from disk before writing part of it
   * (measured: 5.1 µs a 4.2 KB record against 1.5 into a new file, when the file's last life was
   * written past the page cache). Whole pages need no read; the next append starts in the page this one
   * left in memory. Only where writes to the file never overlap in time (`directWriteMinBytes` set:
   * a synchronous append is made only when no other write is in flight), or the zeros could land on a
   * later append's records; the next append overwrites them, `open` takes them for the log's end.
   */
  private pagePadding(reserved: Reservation): number {
    // A reservation is always in the active segment.
    if (this.directWriteMinBytes === undefined || !this.active().reused) {
      return 0;
    }
    return (DIRECT_IO_ALIGNMENT - ((reserved.offset + reserved.bytes) % DIRECT_IO_ALIGNMENT)) % DIRECT_IO_ALIGNMENT;
  }

  /** Takes back a reservation whose bytes did not all go in (see `append`). */
  private undoReservation(reserved: Reservation): void {
    const info = this.segments.find((s) => s.segment === reserved.segment);
    try {
      ftruncateSync(reserved.fd, reserved.offset);
    } catch (err) {
      this.failure ??= new SegmentLogError(`could not cut a failed append off ${this.dir}; the log must be reopened`, { cause: err });
      throw this.failure;
    }
    if (info) {
      info.size = reserved.offset;
      info.firstSeq = reserved.firstSeqBefore;
      info.lastSeq = reserved.lastSeqBefore;
    }
    this.reloadTail(reserved.fd, reserved.offset);
  }

  /** Reads the active segment's bytes from its last aligned position to `end` into tailBlock (direct writes). */
  private reloadTail(fd: number, end: number): void {
    if (this.directWriteMinBytes === undefined) {
      return;
    }
    const blockStart = alignDown(end);
    this.tailBlock.fill(0);
    let got = 0;
    while (got < end - blockStart) {
      const n = readSync(fd, this.tailBlock, got, end - blockStart - got, blockStart + got);
      if (n === 0) {
        break;
      }
      got += n;
    }
  }

  /**
   * As `append`, but the write runs on libuv's thread pool, so the caller's thread goes on meanwhile
   * (the journal writer: its batches are large, and the capture shares its event loop). The places
   * are reserved at once; `sync()` waits for every write begun before it, so a record is durable, as
   * with `append`, once a later sync resolves. The caller must not read the records back before that.
   * A failed write (a full disk) leaves a hole: from then on the log takes no append, `written` and
   * `sync` reject for records at or after it, and `recover` cuts it and everything after it off.
   */
  appendAsync(records: readonly Buffer[]): AppendedRecord[] {
    const reserved = this.reserve(records);
    if (!reserved) {
      return [];
    }
    const buffered = async (): Promise<void> => {
      let { offset, bytes } = reserved;
      let pending: Buffer[] = [...records];
      while (bytes > 0) {
        const written = await writevAsync(reserved.fd, pending, offset);
        offset += written;
        bytes -= written;
        pending = dropBytes(pending, written);
      }
    };
    let write = buffered;
    if (this.directWriteMinBytes !== undefined) {
      if (reserved.bytes >= this.directWriteMinBytes) {
        // What the file holds from the aligned position before the records: copied now, as the next
        // append changes the tail block.
        const head = Buffer.from(this.tailBlock.subarray(0, reserved.offset % DIRECT_IO_ALIGNMENT));
        write = () => this.writeDirect(reserved.segment, reserved.offset, head, records, buffered);
      }
      this.noteTail(records, reserved.offset, reserved.bytes);
      // One at a time, in order: a direct write rewrites the block it starts in. Once one has failed,
      // those queued behind it are not made: `recover` cuts them off with it.
      const previous = this.queue;
      const queued = write;
      write = async () => {
        await previous;
        if (this.writeFailure) {
          throw new SegmentLogError(`not written: an earlier append to ${this.dir} failed`, { cause: this.writeFailure.error });
        }
        await queued();
      };
    }
    const writing = write().catch((err: unknown) => {
      // The records' place is now a hole (or holds part of them): no append may follow until `recover`
      // has cut the log back to where they began. The earliest failure is the one that counts.
      const at = { segment: reserved.segment, position: reserved.offset };
      if (!this.writeFailure || comparePositions(at, this.writeFailure.at) < 0) {
        this.writeFailure = {
          at,
          seq: (reserved.placed[0] as AppendedRecord).seq,
          firstSeqBefore: reserved.firstSeqBefore,
          lastSeqBefore: reserved.lastSeqBefore,
          error: err,
        };
      }
    });
    if (this.directWriteMinBytes !== undefined) {
      this.queue = writing;
    }
    this.writing.set(writing, { segment: reserved.segment, position: reserved.offset });
    void writing.finally(() => this.writing.delete(writing));
    return reserved.placed;
  }

  /** Where the earliest failed appendAsync write began, while the log waits for `recover`. */
  get failedAt(): LogPosition | undefined {
    return this.writeFailure?.at;
  }

  /**
   * After an appendAsync write failed (a full disk): waits for every write still in flight, then cuts
   * the log back to where the failed write began, dropping its records and every record appended
   * after it (their writes were refused: `written` rejects for them), and takes appends again.
   * Returns that place and the seq of the first record dropped, which the owner should give the next
   * record so that no seq is skipped; undefined when no write had failed. Concurrent calls share one cut.
   */
  recover(): Promise<{ position: LogPosition; seq: number } | undefined> {
    this.recovering ??= this.cutFailedTail().finally(() => {
      this.recovering = undefined;
    });
    return this.recovering;
  }

  private async cutFailedTail(): Promise<{ position: LogPosition; seq: number } | undefined> {
    while (this.writing.size > 0) {
      await Promise.all([...this.writing.keys()]);
    }
    await this.queue;
    const failed = this.writeFailure;
    if (!failed || this.failure) {
      return undefined;
    }
    // Make what precedes the failed write durable first (a sync stops there), which also closes the
    // sealed segments' descriptors: the cut then has only the active one to deal with.
    while (this.syncing) {
      await this.syncing.catch(() => undefined);
    }
    if (this.unsynced.size > 0 || this.dirUnsynced) {
      // It reports the loss this cut is about; only a failure of its own (fsync) stops the cut.
      await this.doSync().catch((err: unknown) => {
        if (this.failure) {
          throw err;
        }
      });
    }
    const index = this.segments.findIndex((s) => s.segment === failed.at.segment);
    const info = this.segments[index];
    if (!info) {
      this.failure = new SegmentLogError(`segment ${failed.at.segment} of ${this.dir} is gone; the log must be reopened`, { cause: failed.error });
      throw this.failure;
    }
    try {
      // Segments begun after the failed write hold only records refused with it. They are deleted, never
      // kept as spares: their seqs are handed out again, so in a reused file they would pass for the log's.
      const later = this.segments.splice(index + 1);
      if (later.length > 0 && this.activeFd !== undefined) {
        // It belongs to the last of them.
        closeSync(this.activeFd);
        this.activeFd = undefined;
      }
      for (const dropped of later) {
        this.closeDirect(dropped.segment);
        await this.closeReadHandle(dropped.segment);
        await rm(join(this.dir, segmentFileName(dropped.segment)), { force: true });
        this.dirUnsynced = true;
      }
      const fd = this.ensureActiveFd();
      ftruncateSync(fd, failed.at.position);
      this.unsynced.add(fd);
      info.size = failed.at.position;
      info.firstSeq = failed.firstSeqBefore;
      info.lastSeq = failed.lastSeqBefore;
      this.reloadTail(fd, failed.at.position);
    } catch (err) {
      this.failure = new SegmentLogError(`could not cut a failed append off ${this.dir}; the log must be reopened`, { cause: err });
      throw this.failure;
    }
    this.writeFailure = undefined;
    return { position: failed.at, seq: failed.seq };
  }

  /**
   * Whether large appends bypass the page cache: 'off' when the log was not asked to, 'refused' once
   * the file system refused O_DIRECT (appends are buffered from then on: correct, only costlier in
   * CPU), 'on' otherwise, which before the first large append means only that nothing was refused
   * yet. For an operator's status page: nothing else reports the fallback.
   */
  get directWrites(): 'off' | 'on' | 'refused' {
    if (this.directWriteMinBytes === undefined) {
      return 'off';
    }
    return this.directRefused ? 'refused' : 'on';
  }

  /** True while an appendAsync write (or a queued `append`) is not yet in the file. */
  get writesInFlight(): boolean {
    return this.writing.size > 0;
  }

  /** One queued direct write, or the buffered one if the file system refuses (then and from then on). */
  private async writeDirect(segment: number, offset: number, head: Buffer, records: readonly Buffer[], buffered: () => Promise<void>): Promise<void> {
    let fd = this.directFds.get(segment);
    if (fd === undefined && !this.directRefused) {
      fd = openDirect(join(this.dir, segmentFileName(segment)));
      if (fd === undefined) {
        this.directRefused = true;
      } else {
        this.directFds.set(segment, fd);
      }
    }
    if (fd === undefined || this.directRefused) {
      return buffered();
    }
    try {
      await writeDirect(fd, alignDown(offset), head, records);
    } catch (err) {
      if (!isDirectIoRefusal(err)) {
        throw err;
      }
      this.directRefused = true;
      await buffered();
    }
  }

  /** Keeps tailBlock equal to the active segment's bytes from its last aligned position to its end. */
  private noteTail(records: readonly Buffer[], offset: number, bytes: number): void {
    if (this.directWriteMinBytes === undefined) {
      return;
    }
    const end = offset + bytes;
    const blockStart = alignDown(end);
    if (blockStart <= offset) {
      // Still in the block the tail holds: the records go after what it has.
      let at = offset - blockStart;
      for (const record of records) {
        at += record.copy(this.tailBlock, at);
      }
      return;
    }
    // A new block: it holds only the records' last bytes.
    let left = end - blockStart;
    for (let i = records.length - 1; i >= 0 && left > 0; i--) {
      const record = records[i] as Buffer;
      const take = Math.min(left, record.length);
      record.copy(this.tailBlock, left - take, record.length - take);
      left -= take;
    }
  }

  /**
   * Resolves once every appendAsync write begun before the call is in the file (not yet durable: that
   * is `sync`), or with `through`, every one that starts at or before that position (a record's
   * place: its own write and the earlier ones, not those queued after it); rejects if one failed. For a caller
   * that must not act on records before their bytes are written, such as a write-ahead log's owner
   * applying them elsewhere.
   */
  async written(through?: LogPosition): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const [writing, start] of this.writing) {
      if (through === undefined || comparePositions(start, through) <= 0) {
        waits.push(writing);
      }
    }
    await Promise.all(waits);
    if (this.failure) {
      throw this.failure;
    }
    // Writes before the failed one are in the file: only those at or after it failed.
    const failed = this.writeFailure;
    if (failed && (through === undefined || comparePositions(through, failed.at) >= 0)) {
      throw new SegmentLogError(`append to ${this.dir} failed: ${messageOf(failed.error)}`, { cause: failed.error });
    }
  }

  /** The places of records about to be written at the end of the active segment (rolling it first if full). */
  private reserve(records: readonly Buffer[]): Reservation | undefined {
    this.assertOpen();
    if (records.length === 0) {
      return undefined;
    }
    const failed = this.writeFailure;
    if (failed) {
      throw new SegmentLogError(`an earlier append to ${this.dir} failed (${messageOf(failed.error)}); nothing is appended until it is cut off`, {
        cause: failed.error,
      });
    }
    let active = this.active();
    const bytes = records.reduce((sum, r) => sum + r.length, 0);
    if (active.size > 0 && active.size + bytes > this.segmentBytes) {
      active = this.roll();
    }
    const fd = this.ensureActiveFd();
    const placed: AppendedRecord[] = [];
    const offset = active.size;
    const { firstSeq: firstSeqBefore, lastSeq: lastSeqBefore } = active;
    let position = offset;
    for (const record of records) {
      const seq = recordSeq(record);
      placed.push({ segment: active.segment, position, length: record.length, seq });
      position += record.length;
      active.firstSeq ??= seq;
      active.lastSeq = seq;
    }
    active.size = position;
    // Before the bytes are in: a roll must not close this descriptor, and the next sync covers it.
    this.unsynced.add(fd);
    return { fd, segment: active.segment, offset, bytes, placed, firstSeqBefore, lastSeqBefore };
  }

  /**
   * Makes every record appended before this call durable. A sync already in flight may have started
   * before our records were appended, so wait for it and then start one of our own; callers that
   * arrive together share that one.
   */
  async sync(): Promise<void> {
    this.assertOpen();
    while (this.recovering) {
      await this.recovering.catch(() => undefined);
    }
    while (this.syncing) {
      await this.syncing.catch(() => undefined);
    }
    if (this.unsynced.size === 0 && !this.dirUnsynced) {
      // Whatever we appended, the sync we waited for took: if it failed, so do we (the log is then
      // unusable, and says so), or a flush would report records durable that no fsync made so.
      if (this.failure) {
        throw this.failure;
      }
      return;
    }
    const running = this.doSync();
    this.syncing = running;
    try {
      await running;
    } finally {
      this.syncing = undefined;
    }
  }

  private async doSync(): Promise<void> {
    let target = this.segments.length > 0 ? this.end : this.durable;
    let lost: FailedWrite | undefined;
    const fds = [...this.unsynced];
    this.unsynced.clear();
    fds.forEach((fd) => this.syncingFds.add(fd));
    const dir = this.dirUnsynced;
    this.dirUnsynced = false;
    try {
      // Writes begun before this sync (appendAsync) must be in before their descriptors are synced.
      await Promise.all([...this.writing.keys()]);
      if (this.failure) {
        throw this.failure;
      }
      // What lies past a failed write is not the log's (recover cuts it off): durable up to it only,
      // and this sync then fails, since records appended before it are lost.
      if (this.writeFailure && comparePositions(target, this.writeFailure.at) > 0) {
        target = this.writeFailure.at;
        lost = this.writeFailure;
      }
      await Promise.all(fds.map((fd) => fdatasync(fd)));
      if (dir) {
        const dirFd = openSync(this.dir, 'r');
        try {
          await fsync(dirFd);
        } finally {
          closeSync(dirFd);
        }
      }
    } catch (err) {
      // After a failed fsync Linux may drop the dirty pages and report success to the next fsync, so
      // a retry proves nothing. The log refuses all further work; the owner must reopen it, which
      // rescans what is really on disk.
      this.failure ??= new SegmentLogError(`fsync failed in ${this.dir}; the log must be reopened`, { cause: err });
      throw this.failure;
    }
    this.syncingFds.clear();
    for (const fd of fds) {
      // A sealed segment written again after this sync began waits for the sync that covers that write.
      if (this.sealedAwaitingSync.has(fd) && !this.unsynced.has(fd)) {
        this.sealedAwaitingSync.delete(fd);
        closeSync(fd);
      }
    }
    if (comparePositions(target, this.durable) > 0) {
      this.durable = target;
    }
    if (lost) {
      throw new SegmentLogError(`append to ${this.dir} failed: ${messageOf(lost.error)}`, { cause: lost.error });
    }
  }

  /** Reads and verifies one record. Throws CorruptRecordError rather than return damaged bytes. */
  async read(at: LogPosition & { readonly length: number }): Promise<Buffer> {
    this.assertOpen();
    const handle = await this.readHandle(at.segment);
    const buf = Buffer.allocUnsafe(at.length);
    const { bytesRead } = await handle.read(buf, 0, at.length, at.position);
    if (bytesRead !== at.length) {
      throw new CorruptRecordError(
        `record at segment ${at.segment} byte ${at.position} is cut short (${bytesRead} of ${at.length} bytes)`,
      );
    }
    verifyRecord(buf);
    return buf;
  }

  /**
   * Reads whole, verified records from `from` on, at most about `maxBytes` of them (at least one record
   * if any is there), never past the current end. Returns the records and where the next read starts.
   */
  async readChunk(from: LogPosition, maxBytes: number, upTo?: LogPosition): Promise<{ records: ScannedRecord[]; next: LogPosition }> {
    this.assertOpen();
    if (this.segments.length === 0) {
      return { records: [], next: from };
    }
    let cursor = this.normalise(from);
    const info = this.segments.find((s) => s.segment === cursor.segment);
    if (!info) {
      throw new SegmentLogError(`segment ${cursor.segment} is not in the log (first is ${this.start.segment})`);
    }
    const limit = upTo === undefined || upTo.segment > cursor.segment ? info.size : upTo.segment === cursor.segment ? Math.min(upTo.position, info.size) : 0;
    const available = limit - cursor.position;
    if (available <= 0) {
      return { records: [], next: cursor };
    }
    let read: { buf: Buffer; bytesRead: number };
    try {
      read = await this.readFrom(cursor, Math.min(available, Math.max(maxBytes, RECORD_HEADER_BYTES)), available);
    } catch (err) {
      // The segment was deleted while we read it (its read handle closed under us): every record in
      // it is confirmed, so this is the read a moment later, which starts where the log now does. A
      // shipper sending the log again after a restart meets this as the journal confirms behind it.
      if (!this.segments.some((s) => s.segment === cursor.segment)) {
        return { records: [], next: this.normalise(cursor) };
      }
      throw err;
    }
    const { buf, bytesRead } = read;
    const records: ScannedRecord[] = [];
    let pos = 0;
    while (pos < bytesRead) {
      const length = peekRecordLength(buf.subarray(0, bytesRead), pos);
      if (length === undefined || pos + length > bytesRead) {
        break;
      }
      const record = buf.subarray(pos, pos + length);
      verifyRecord(record);
      records.push({ segment: cursor.segment, position: cursor.position + pos, length, seq: recordSeq(record), record });
      pos += length;
    }
    cursor = { segment: cursor.segment, position: cursor.position + pos };
    return { records, next: this.normalise(cursor) };
  }

  /** Position of the record with this seq, or undefined if the log no longer (or not yet) holds it. */
  async find(seq: number): Promise<LogPosition | undefined> {
    const info = this.segments.find((s) => s.firstSeq !== undefined && s.lastSeq !== undefined && s.firstSeq <= seq && seq <= s.lastSeq);
    if (!info) {
      return undefined;
    }
    let cursor: LogPosition = { segment: info.segment, position: 0 };
    for (;;) {
      const { records, next } = await this.readChunk(cursor, SCAN_CHUNK_BYTES);
      const hit = records.find((r) => r.seq === seq);
      if (hit) {
        return { segment: hit.segment, position: hit.position };
      }
      if (records.length === 0 || next.segment !== info.segment) {
        return undefined;
      }
      cursor = next;
    }
  }

  /**
   * Deletes sealed segments whose every record has seq <= `seq`. The active segment always stays, so
   * the log always knows its last seq.
   */
  async deleteThrough(seq: number): Promise<number> {
    this.assertOpen();
    let deleted = 0;
    while (this.segments.length > 1) {
      const oldest = this.segments[0];
      const next = this.segments[1];
      if (!oldest || !next || (oldest.lastSeq !== undefined && oldest.lastSeq > seq)) {
        break;
      }
      // Only once a later segment holds a durable record: until then a power loss could leave the log
      // with none (a new segment's first record still in the page cache), and its owner, which learns
      // its last seq from the log, would hand the same seqs out again.
      if (comparePositions(this.durable, { segment: next.segment, position: 0 }) <= 0) {
        break;
      }
      this.segments.shift();
      await this.closeReadHandle(oldest.segment);
      const path = join(this.dir, segmentFileName(oldest.segment));
      if (!(this.spares.length + this.sparesPending < this.spareSegments && (await this.keepAsSpare(path, oldest.segment)))) {
        await rm(path, { force: true });
      }
      deleted++;
    }
    return deleted;
  }

  /** Renames a deleted segment's file to a spare's name; false if that failed (the caller deletes it). */
  private async keepAsSpare(path: string, segment: number): Promise<boolean> {
    const spare = join(this.dir, spareFileName(segment));
    this.sparesPending++;
    try {
      await rename(path, spare);
      this.spares.push(spare);
      return true;
    } catch {
      return false;
    } finally {
      this.sparesPending--;
    }
  }

  /** Files for new segments so far: reused spares, files created, and spares waiting (`spareSegments`). */
  get segmentFiles(): { readonly reused: number; readonly created: number; readonly spare: number } {
    return { reused: this.segmentFilesReused, created: this.segmentFilesCreated, spare: this.spares.length };
  }

  async close(): Promise<void> {
    if (this.closed) {
      return;
    }
    // A failed write left a hole with records after it: cut them off, or the next open would find the
    // hole in the middle of the log.
    await this.recover();
    await this.sync();
    await this.queue;
    this.closed = true;
    for (const segment of [...this.directFds.keys()]) {
      this.closeDirect(segment);
    }
    if (this.activeFd !== undefined) {
      closeSync(this.activeFd);
      this.activeFd = undefined;
    }
    for (const segment of [...this.readHandles.keys()]) {
      await this.closeReadHandle(segment);
    }
  }

  private async load(tail: 'scan' | LogPosition): Promise<void> {
    const entries = await readdir(this.dir);
    const names = entries.flatMap((name) => {
      const match = SEGMENT_NAME.exec(name);
      return match?.[1] ? [Number(match[1])] : [];
    });
    names.sort((a, b) => a - b);
    if (tail !== 'scan') {
      for (const segment of names.filter((s) => s > tail.segment)) {
        await rm(join(this.dir, segmentFileName(segment)));
      }
    }
    const kept = tail === 'scan' ? names : names.filter((s) => s <= tail.segment);
    for (const segment of kept) {
      const path = join(this.dir, segmentFileName(segment));
      const size = (await stat(path)).size;
      this.segments.push({ segment, firstSeq: undefined, lastSeq: undefined, size });
    }
    if (tail !== 'scan') {
      const last = this.segments[this.segments.length - 1];
      if (last && last.segment === tail.segment) {
        if (last.size < tail.position) {
          throw new SegmentLogError(
            `segment ${tail.segment} holds ${last.size} bytes but ${tail.position} were recorded as durable: the log lost data`,
          );
        }
        last.size = tail.position;
      } else if (tail.position > 0) {
        throw new SegmentLogError(`segment ${tail.segment}, recorded as durable, is missing from ${this.dir}`);
      }
    }
    // Every segment is scanned once at open: it verifies what the log holds and learns each segment's
    // seq range (needed to trim and to find a seq). A torn tail can only be in the last segment, unless
    // files are reused: then any segment may end before its file does (see `spareSegments`).
    const continuity: Continuity | undefined = this.spareSegments > 0 ? { next: undefined } : undefined;
    const validEnds = this.segments.map((info, i) => this.scanSegment(info, i === this.segments.length - 1, continuity));
    const endedEarly: SegmentInfo[] = [];
    this.segments.forEach((info, i) => {
      const validEnd = validEnds[i] as number;
      if (validEnd >= info.size) {
        return;
      }
      const next = this.segments[i + 1];
      const nextIsLast = i + 1 === this.segments.length - 1;
      // With reused files the rest is an older segment's records, or a write a power loss tore (and
      // nothing then reached the next segment), provided the next segment takes the log on from this
      // one's last record or is the last and holds none. Records missing in between (a seq skipped) made
      // scanSegment throw already.
      const fine =
        next === undefined ||
        (continuity ? info.lastSeq !== undefined && (next.firstSeq !== undefined || nextIsLast) : this.isPadding(info.segment, validEnd, info.size));
      if (!fine) {
        throw new SegmentLogError(`segment ${info.segment} of ${this.dir} is corrupt at byte ${validEnd}, before the log's tail`);
      }
      info.size = validEnd;
      if (continuity && next !== undefined) {
        endedEarly.push(info);
      }
    });
    // Spares left by the last run are deleted, not reused: after a power loss one may be a new segment
    // whose new name was lost, holding records with seqs the log hands out again, which in a reused file
    // could pass for the log's own. (Only now: a log that does not open is left as it was.)
    for (const name of entries.filter((n) => SPARE_NAME.test(n))) {
      await rm(join(this.dir, name), { force: true });
    }
    // A sealed segment that ended early may hold, past its records, whole records a power loss left
    // behind a torn one, with the seqs the log now hands out again. Cut off (and made durable below),
    // so that whatever a file holds past its records is older than they are: what reuse relies on.
    for (const info of endedEarly) {
      await truncate(join(this.dir, segmentFileName(info.segment)), info.size);
    }
    const last = this.segments[this.segments.length - 1];
    if (last) {
      // Cut off a torn or unindexed tail for good, so the next append starts at a record boundary.
      const handle = await open(join(this.dir, segmentFileName(last.segment)), 'r+');
      try {
        await handle.truncate(last.size);
        await handle.datasync();
      } finally {
        await handle.close();
      }
      this.activeFd = openSync(join(this.dir, segmentFileName(last.segment)), constants.O_RDWR);
      if (this.directWriteMinBytes !== undefined) {
        // The next direct write starts at the last aligned position: it needs what is there.
        const blockStart = alignDown(last.size);
        readSync(this.activeFd, this.tailBlock, 0, last.size - blockStart, blockStart);
      }
      // A process crash leaves written but unsynced pages behind; make them durable now, so that what
      // this log holds at open is what it will hold after a power loss too.
      for (const info of this.segments.slice(0, -1)) {
        const handle = await open(join(this.dir, segmentFileName(info.segment)), 'r');
        try {
          await handle.datasync();
        } finally {
          await handle.close();
        }
      }
      const dirFd = openSync(this.dir, 'r');
      try {
        await fsync(dirFd);
      } finally {
        closeSync(dirFd);
      }
      this.durable = { segment: last.segment, position: last.size };
    }
  }

  /** Whether a sealed segment's bytes from `from` to its end are a direct write's zero padding. */
  private isPadding(segment: number, from: number, size: number): boolean {
    if (size - from >= DIRECT_IO_ALIGNMENT) {
      return false;
    }
    const bytes = Buffer.alloc(size - from);
    const fd = openSync(join(this.dir, segmentFileName(segment)), 'r');
    try {
      readSync(fd, bytes, 0, bytes.length, from);
    } finally {
      closeSync(fd);
    }
    return bytes.every((b) => b === 0);
  }

  /** Verifies records from the start of a segment; returns the end of the last whole, valid record. */
  private scanSegment(info: SegmentInfo, isLast: boolean, continuity: Continuity | undefined): number {
    const fd = openSync(join(this.dir, segmentFileName(info.segment)), 'r');
    try {
      let position = 0;
      let carry = Buffer.alloc(0);
      let fileOffset = 0;
      while (fileOffset < info.size) {
        const want = Math.min(SCAN_CHUNK_BYTES, info.size - fileOffset);
        const chunk = Buffer.allocUnsafe(want);
        const got = readSync(fd, chunk, 0, want, fileOffset);
        if (got === 0) {
          break;
        }
        fileOffset += got;
        let buf = carry.length > 0 ? Buffer.concat([carry, chunk.subarray(0, got)]) : chunk.subarray(0, got);
        let pos = 0;
        for (;;) {
          let length: number | undefined;
          try {
            length = peekRecordLength(buf, pos);
          } catch (err) {
            // Not a record: a torn tail, a direct write's padding, or damage (the caller tells which).
            if (err instanceof CorruptRecordError) {
              return position;
            }
            throw err;
          }
          if (length === undefined || pos + length > buf.length) {
            break;
          }
          const record = buf.subarray(pos, pos + length);
          try {
            verifyRecord(record);
          } catch (err) {
            // With reused files a record torn by a power loss can be in any segment (the caller decides).
            if ((isLast || continuity) && err instanceof CorruptRecordError) {
              return position;
            }
            throw new SegmentLogError(
              `segment ${info.segment} of ${this.dir}: record at byte ${position} is corrupt (${(err as Error).message})`,
            );
          }
          const seq = recordSeq(record);
          if (continuity) {
            const expected = continuity.next;
            if (expected !== undefined && seq < expected) {
              // A reused file's older record: the segment's own records end here.
              return position;
            }
            // A restart of the order (RecordKind.Restart) is the one record that may skip seqs: it goes
            // above seqs another log of the same order handed out. Older records in a reused file are
            // older than the segment's own, so a stale restart cannot pass for one.
            if (expected !== undefined && seq > expected && recordKind(record) !== RecordKind.Restart) {
              throw new SegmentLogError(
                `segment ${info.segment} of ${this.dir}: the record at byte ${position} has seq ${seq} where ${expected} was next: records are missing`,
              );
            }
            continuity.next = seq + 1;
          }
          info.firstSeq ??= seq;
          info.lastSeq = seq;
          pos += length;
          position += length;
        }
        carry = Buffer.from(buf.subarray(pos));
        buf = Buffer.alloc(0);
      }
      return position;
    } finally {
      closeSync(fd);
    }
  }

  private active(): SegmentInfo {
    let last = this.segments[this.segments.length - 1];
    if (!last) {
      last = { segment: 1, firstSeq: undefined, lastSeq: undefined, size: 0 };
      this.segments.push(last);
    }
    return last;
  }

  private ensureActiveFd(): number {
    if (this.activeFd === undefined) {
      const active = this.active();
      const path = join(this.dir, segmentFileName(active.segment));
      if (!existsSync(path)) {
        const spare = this.spares.shift();
        if (spare !== undefined && this.reuse(spare, path)) {
          active.reused = true;
          this.segmentFilesReused++;
        } else {
          this.segmentFilesCreated++;
        }
      }
      // Not O_APPEND: positioned writes must land where we say, and on Linux O_APPEND ignores the position.
      this.activeFd = openSync(path, constants.O_RDWR | constants.O_CREAT, 0o644);
      this.dirUnsynced = true;
    }
    return this.activeFd;
  }

  /**
   * Renames a spare to a new segment's name. Its old records stay past the new ones until overwritten;
   * `open` knows them by their seqs. A spare that cannot be renamed is dropped: the segment is created.
   */
  private reuse(spare: string, path: string): boolean {
    try {
      renameSync(spare, path);
      return true;
    } catch {
      return false;
    }
  }

  private roll(): SegmentInfo {
    if (this.activeFd !== undefined) {
      if (this.unsynced.has(this.activeFd) || this.syncingFds.has(this.activeFd)) {
        this.sealedAwaitingSync.add(this.activeFd);
      } else {
        closeSync(this.activeFd);
      }
      this.activeFd = undefined;
    }
    if (this.directWriteMinBytes !== undefined) {
      // After the sealed segment's queued writes (one may not have opened its descriptor yet).
      const sealed = this.active().segment;
      this.queue = this.queue.then(() => this.closeDirect(sealed));
    }
    const next: SegmentInfo = { segment: this.active().segment + 1, firstSeq: undefined, lastSeq: undefined, size: 0 };
    this.segments.push(next);
    return next;
  }

  private closeDirect(segment: number): void {
    const fd = this.directFds.get(segment);
    this.directFds.delete(segment);
    if (fd !== undefined) {
      closeSync(fd);
    }
  }

  /** `want` bytes of the segment from `at`, or more: the whole of a first record larger than that (up to `available`). */
  private async readFrom(at: LogPosition, want: number, available: number): Promise<{ buf: Buffer; bytesRead: number }> {
    const handle = await this.readHandle(at.segment);
    const buf = Buffer.allocUnsafe(want);
    const { bytesRead } = await handle.read(buf, 0, want, at.position);
    const firstLength = peekRecordLength(buf.subarray(0, bytesRead), 0);
    if (firstLength === undefined || firstLength <= bytesRead || firstLength > available) {
      return { buf, bytesRead };
    }
    // One record larger than the chunk (a large write): keep what was read and read only the rest of
    // that record, rather than reading it all again.
    const whole = Buffer.allocUnsafe(firstLength);
    buf.copy(whole, 0, 0, bytesRead);
    let got = bytesRead;
    while (got < firstLength) {
      const { bytesRead: more } = await handle.read(whole, got, firstLength - got, at.position + got);
      if (more === 0) {
        break;
      }
      got += more;
    }
    return { buf: whole, bytesRead: got };
  }

  /** A position at the very end of a sealed segment is the start of the next one. */
  private normalise(at: LogPosition): LogPosition {
    const index = this.segments.findIndex((s) => s.segment === at.segment);
    const info = this.segments[index];
    const next = this.segments[index + 1];
    if (info && next && at.position >= info.size) {
      return { segment: next.segment, position: 0 };
    }
    if (!info && at.segment < this.start.segment) {
      return this.start;
    }
    return at;
  }

  private readHandle(segment: number): Promise<FileHandle> {
    let handle = this.readHandles.get(segment);
    if (!handle) {
      handle = open(join(this.dir, segmentFileName(segment)), 'r');
      this.readHandles.set(segment, handle);
    }
    return handle;
  }

  private async closeReadHandle(segment: number): Promise<void> {
    const handle = this.readHandles.get(segment);
    this.readHandles.delete(segment);
    if (handle) {
      await (await handle).close();
    }
  }

  private assertOpen(): void {
    if (this.failure) {
      throw this.failure;
    }
    if (this.closed) {
      throw new SegmentLogError(`segment log ${this.dir} is closed`);
    }
  }
}

/** The seq the next record must have to continue the log, while `open` scans a log of reused files. */
interface Continuity {
  next: number | undefined;
}

/** A reservation's place, and what its segment held before it (so that a failed append can be taken back). */
interface Reservation {
  readonly fd: number;
  readonly segment: number;
  readonly offset: number;
  readonly bytes: number;
  readonly placed: AppendedRecord[];
  readonly firstSeqBefore: number | undefined;
  readonly lastSeqBefore: number | undefined;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function dropBytes(buffers: Buffer[], count: number): Buffer[] {
  const out: Buffer[] = [];
  let skip = count;
  for (const b of buffers) {
    if (skip >= b.length) {
      skip -= b.length;
      continue;
    }
    out.push(skip > 0 ? b.subarray(skip) : b);
    skip = 0;
  }
  return out;
}

/** Orders two log positions: negative if a is before b, 0 if equal, positive if after. */
export function comparePositions(a: LogPosition, b: LogPosition): number {
  return a.segment !== b.segment ? a.segment - b.segment : a.position - b.position;
}
