import { existsSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Logger } from '@nestjs/common';
import { type BusProducer } from '@cdp/bus';
import {
  RECORD_FLAG_FUA,
  RecordKind,
  decodeRecord,
  encodeCheckpointRecord,
  encodeWriteRecord,
  type CheckpointMarkerBody,
} from '@cdp/contracts';
import { DomainError, validateWriteRange, volumesOf, type Vpg } from '@cdp/domain';
import { SegmentLog } from '@cdp/segment-log';
import { DEFAULT_SHIPPER_OPTIONS, LogShipper, type ShipperOptions } from './log-shipper';
import { ProtectedVolume } from './protected-volume';

export interface CaptureStatus {
  readonly vpgId: string;
  readonly lastSeq: number;
  readonly shippedSeq: number;
  readonly confirmedSeq: number;
  readonly logFirstSeq: number | null;
  readonly shipError: string | null;
}

const CLEAN_MARKER = 'clean-shutdown';

export function nowMicros(): number {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

/**
 * Capture for one VPG: assigns each write its seq, appends it to the splitter log, applies it to the
 * protected volume, and acknowledges. That is the contract of a disk with a write cache:
 *
 * - a write is acknowledged once it is in the log and applied locally, in seq order;
 * - `flush()` (and a FUA write) completes only when everything acknowledged before it is durable in
 *   the log and on the volume (fdatasync) and the bus has acknowledged it.
 *
 * Everything happens synchronously from seq assignment to volume write, so one VPG's writes reach log
 * and volume in exactly seq order with no interleaving. The log is a write-ahead log: a record is in
 * the log before its bytes reach the volume. After a process crash, every record still in the log is
 * applied again to the volumes (redo), so volume and stream agree even if the crash fell between the
 * two writes. Records stay in the log until the journal reports them durable and indexed.
 */
export class VpgCapture {
  private nextSeq: number;
  private confirmed = 0;
  private readonly logger: Logger;

  private constructor(
    readonly vpg: Vpg,
    private readonly dir: string,
    private readonly log: SegmentLog,
    private readonly volumes: ReadonlyMap<number, ProtectedVolume>,
    private readonly shipper: LogShipper,
  ) {
    this.nextSeq = (log.lastSeq ?? 0) + 1;
    this.logger = new Logger(`capture ${vpg.name}`);
  }

  static async open(vpg: Vpg, dir: string, producer: BusProducer, shipperOptions: ShipperOptions = DEFAULT_SHIPPER_OPTIONS): Promise<VpgCapture> {
    const log = await SegmentLog.open({ dir: join(dir, 'log'), tail: 'scan' });
    const volumes = new Map<number, ProtectedVolume>();
    for (const volume of volumesOf(vpg)) {
      volumes.set(volume.index, ProtectedVolume.open(volume, join(dir, 'volumes', `${volume.index}.img`)));
    }
    const capture = new VpgCapture(vpg, dir, log, volumes, new LogShipper(vpg.id, log, producer, shipperOptions));
    const clean = join(dir, CLEAN_MARKER);
    if (existsSync(clean)) {
      rmSync(clean);
    } else if (log.lastSeq !== undefined) {
      await capture.redo();
    }
    capture.shipper.start();
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
      shipError: this.shipper.error ?? null,
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

  /** Captures one write. Resolves when acknowledged (and, for FUA, when durable as flush() is). */
  async write(volumeId: string, offset: number, data: Buffer, fua = false): Promise<number> {
    const target = this.volumeById(volumeId);
    validateWriteRange(target.volume, offset, data.length);
    const seq = this.nextSeq++;
    const record = encodeWriteRecord({
      seq,
      volumeIndex: target.volume.index,
      offset,
      capturedAtMicros: nowMicros(),
      flags: fua ? RECORD_FLAG_FUA : 0,
      data,
    });
    this.log.append([record]);
    target.write(offset, data);
    this.shipper.notify();
    if (fua) {
      await this.flush();
    }
    return seq;
  }

  /** Inserts a checkpoint marker at the current end of the write order; returns its seq, the cut. */
  insertCheckpoint(marker: CheckpointMarkerBody): number {
    const seq = this.nextSeq++;
    this.log.append([encodeCheckpointRecord({ seq, capturedAtMicros: nowMicros(), marker })]);
    this.shipper.notify();
    return seq;
  }

  /** Everything acknowledged before this call becomes durable locally and in the replication stream. */
  async flush(): Promise<void> {
    const target = this.lastSeq;
    await Promise.all([this.log.sync(), ...[...this.volumes.values()].map((v) => v.sync())]);
    await this.shipper.waitShipped(target);
  }

  /** The journal holds every record up to `appliedSeq`: the log may forget them. */
  async confirm(appliedSeq: number): Promise<void> {
    if (appliedSeq <= this.confirmed) {
      return;
    }
    this.confirmed = appliedSeq;
    await this.log.deleteThrough(appliedSeq);
  }

  /** The journal found a gap: ship again from `seq`. */
  replayFrom(seq: number): void {
    this.shipper.rewind(seq);
  }

  async close(): Promise<void> {
    await this.shipper.stop();
    await this.log.close();
    await Promise.all([...this.volumes.values()].map((v) => v.sync()));
    for (const volume of this.volumes.values()) {
      volume.close();
    }
    writeFileSync(join(this.dir, CLEAN_MARKER), new Date().toISOString());
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
          this.volumes.get(decoded.volumeIndex)?.write(decoded.offset, decoded.data);
          applied++;
        }
      }
      cursor = next;
    }
    await Promise.all([...this.volumes.values()].map((v) => v.sync()));
    this.logger.warn(`unclean shutdown: re-applied ${applied} logged writes to the volumes (last seq ${this.lastSeq})`);
  }
}
