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

  async close(): Promise<void> {
    const handles = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(handles.map(async (h) => (await h).close()));
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
