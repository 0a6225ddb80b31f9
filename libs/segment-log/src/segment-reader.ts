import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { CorruptRecordError, verifyRecord } from '@cdp/contracts';
import { segmentFileName, type LogPosition } from './segment-log';

/**
 * Read-only access to records of a segment log that another component (or process) owns and appends
 * to. It never truncates or scans; it reads a record where an index says it is and verifies it, so a
 * damaged record surfaces as CorruptRecordError, never as data.
 */
export class SegmentReader {
  private readonly handles = new Map<number, Promise<FileHandle>>();

  constructor(readonly dir: string) {}

  async read(at: LogPosition & { readonly length: number }): Promise<Buffer> {
    const handle = await this.handle(at.segment);
    const buf = Buffer.allocUnsafe(at.length);
    const { bytesRead } = await handle.read(buf, 0, at.length, at.position);
    if (bytesRead !== at.length) {
      throw new CorruptRecordError(`${this.dir}: record at segment ${at.segment} byte ${at.position} is cut short`);
    }
    try {
      verifyRecord(buf);
    } catch (err) {
      throw new CorruptRecordError(`${this.dir}: record at segment ${at.segment} byte ${at.position}: ${(err as Error).message}`);
    }
    return buf;
  }

  /**
   * The raw bytes of a run of whole records, in one read, for a reader that knows from an index where
   * the run lies. Not verified here: the caller decodes (and so verifies) each record it takes out of
   * the range before using a byte of it. `into` (at least `length` bytes), when given, receives the
   * bytes instead of a new buffer, for a caller that reuses its buffers; the result is then a view of it.
   */
  async readRange(at: LogPosition & { readonly length: number }, into?: Buffer): Promise<Buffer> {
    if (into && into.length < at.length) {
      throw new RangeError(`a buffer of ${into.length} bytes cannot take a range of ${at.length}`);
    }
    const handle = await this.handle(at.segment);
    const buf = into ? into.subarray(0, at.length) : Buffer.allocUnsafe(at.length);
    let done = 0;
    while (done < at.length) {
      const { bytesRead } = await handle.read(buf, done, at.length - done, at.position + done);
      if (bytesRead === 0) {
        throw new CorruptRecordError(`${this.dir}: segment ${at.segment} ends before byte ${at.position + at.length} the index points at`);
      }
      done += bytesRead;
    }
    return buf;
  }

  /**
   * Reads the bytes from `at` on into `buffers`, one after the other, filling each (a scatter read: a
   * caller that wants a record's payload in one place and its header in another). Unverified, as
   * readRange. A short read (the kernel, or libuv past IOV_MAX buffers, may stop early) goes on from
   * where it stopped.
   */
  async readScattered(at: LogPosition, buffers: readonly Buffer[]): Promise<void> {
    const handle = await this.handle(at.segment);
    const left = buffers.filter((b) => b.length > 0);
    let position = at.position;
    let first = 0;
    while (first < left.length) {
      const pending = first === 0 ? left : left.slice(first);
      const { bytesRead } = await handle.readv(pending, position);
      if (bytesRead === 0) {
        throw new CorruptRecordError(`${this.dir}: segment ${at.segment} ends at byte ${position}, before the range the index points at`);
      }
      position += bytesRead;
      let consumed = bytesRead;
      while (consumed > 0) {
        const head = left[first] as Buffer;
        if (head.length <= consumed) {
          consumed -= head.length;
          first++;
        } else {
          left[first] = head.subarray(consumed);
          consumed = 0;
        }
      }
    }
  }

  async close(): Promise<void> {
    const handles = [...this.handles.values()];
    this.handles.clear();
    // A handle whose open failed has nothing to close.
    await Promise.all(handles.map(async (h) => (await h.catch(() => undefined))?.close()));
  }

  private handle(segment: number): Promise<FileHandle> {
    let handle = this.handles.get(segment);
    if (!handle) {
      handle = open(join(this.dir, segmentFileName(segment)), 'r');
      handle.catch(() => this.handles.delete(segment));
      this.handles.set(segment, handle);
    }
    return handle;
  }
}
