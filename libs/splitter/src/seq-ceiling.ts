import { closeSync, fdatasyncSync, fsyncSync, openSync, readSync, renameSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { crc32c } from '@node-rs/crc32';

/**
 * How far past the seq that asks for it the ceiling is raised: one raise (a 512-byte write and an
 * fdatasync, a millisecond or two) per 4M seqs, about three minutes of 4 KiB writes at 25k a second.
 * Seqs are plentiful (2^53); a lost log skips at most this many.
 */
export const SEQ_CEILING_STEP = 1 << 22;

const MAGIC = 0x43534443; // "CDSC"
const SLOT_BYTES = 512;
/** magic 4, crc32c 4 (of the 16 bytes after it), generation 8, ceiling 8. */
const SLOT_USED = 24;

/**
 * A bound, kept outside the splitter log (`seq-ceiling` in the capture's directory), that no seq this
 * VPG's splitter ever handed out reaches. It exists for the day the log is lost while the volumes are
 * not (deleted by hand, or moved aside because it was damaged and would not open): a log started from
 * nothing would number its records from 1 again, and the journal, which holds those seqs already,
 * would drop them as duplicates, silently. With the ceiling, the capture starts above every seq it ever
 * used and restarts the order there (VpgCapture: a restart record and a full resync).
 *
 * On disk: two slots of 512 bytes, written alternately in place, one fdatasync per raise (a torn write
 * can only damage the slot being written; the other still holds the previous ceiling), as the activity
 * log does. The file's blocks exist from its creation, so a raise needs no new block on a full disk.
 * A raise is synchronous, on the seq that reaches the ceiling, and rare (SEQ_CEILING_STEP): a raise on
 * the thread pool in flight beside a synchronous one could overwrite a slot out of order.
 */
export class SeqCeiling {
  private constructor(
    private readonly path: string,
    /** Every seq handed out is below it, and it is durable. */
    private ceiling: number,
    private generation: number,
    private readonly step: number,
  ) {}

  /**
   * Opens the file at `path`: undefined if there is none (a new capture, or one from before the
   * ceiling existed). A file with no valid slot is refused: without it, a lost log could not be told
   * from a new one.
   */
  static open(path: string, step = SEQ_CEILING_STEP): SeqCeiling | undefined {
    let fd: number;
    try {
      fd = openSync(path, 'r+');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        return undefined;
      }
      throw err;
    }
    const file = Buffer.alloc(2 * SLOT_BYTES);
    let got: number;
    try {
      got = readSync(fd, file, 0, file.length, 0);
    } finally {
      closeSync(fd);
    }
    const slots = [0, 1].map((i) => (got >= (i + 1) * SLOT_BYTES ? decodeSlot(file.subarray(i * SLOT_BYTES, (i + 1) * SLOT_BYTES)) : undefined));
    const best = slots.filter((s) => s !== undefined).sort((a, b) => b.generation - a.generation)[0];
    if (!best) {
      throw new Error(`${path} is damaged (neither of its slots is valid); it bounds the seqs this VPG has used, so the capture does not open without it`);
    }
    return new SeqCeiling(path, best.ceiling, best.generation, step);
  }

  /** A new file whose ceiling is one step past `nextSeq`, durable (its directory entry too) when this returns. */
  static create(path: string, nextSeq: number, step = SEQ_CEILING_STEP): SeqCeiling {
    const file = Buffer.alloc(2 * SLOT_BYTES);
    const ceiling = nextSeq + step;
    encodeSlot(file.subarray(0, SLOT_BYTES), 1, ceiling);
    encodeSlot(file.subarray(SLOT_BYTES), 0, ceiling);
    // Written aside and renamed into place: a crash can leave no half-written file, which the next
    // open would have to refuse.
    const tmp = `${path}.tmp`;
    const fd = openSync(tmp, 'w');
    try {
      writeSync(fd, file, 0, file.length, 0);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
    const dir = openSync(dirname(path), 'r');
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
    return new SeqCeiling(path, ceiling, 1, step);
  }

  get value(): number {
    return this.ceiling;
  }

  /** Called with every seq before it is handed out: at the ceiling, raises it first (durably). */
  check(seq: number): void {
    if (seq >= this.ceiling) {
      this.raise(seq + this.step);
    }
  }

  /** Raises the ceiling to at least `atLeast`. */
  raise(atLeast: number): void {
    if (atLeast <= this.ceiling) {
      return;
    }
    const generation = this.generation + 1;
    const slot = Buffer.alloc(SLOT_BYTES);
    encodeSlot(slot, generation, atLeast);
    // Opened for each raise (one per step): nothing to close when a capture's open fails half-way.
    const fd = openSync(this.path, 'r+');
    try {
      writeSync(fd, slot, 0, SLOT_BYTES, (generation % 2) * SLOT_BYTES);
      fdatasyncSync(fd);
    } finally {
      closeSync(fd);
    }
    this.generation = generation;
    this.ceiling = atLeast;
  }
}

function encodeSlot(slot: Buffer, generation: number, ceiling: number): void {
  slot.fill(0);
  slot.writeUInt32LE(MAGIC, 0);
  slot.writeBigUInt64LE(BigInt(generation), 8);
  slot.writeBigUInt64LE(BigInt(ceiling), 16);
  slot.writeUInt32LE(crc32c(slot.subarray(8, SLOT_USED)), 4);
}

function decodeSlot(slot: Buffer): { generation: number; ceiling: number } | undefined {
  if (slot.readUInt32LE(0) !== MAGIC || slot.readUInt32LE(4) !== crc32c(slot.subarray(8, SLOT_USED))) {
    return undefined;
  }
  const generation = Number(slot.readBigUInt64LE(8));
  const ceiling = Number(slot.readBigUInt64LE(16));
  return Number.isSafeInteger(ceiling) && ceiling > 0 ? { generation, ceiling } : undefined;
}
