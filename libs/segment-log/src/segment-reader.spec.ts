import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CorruptRecordError } from '@cdp/contracts';
import { segmentFileName } from './segment-log';
import { SegmentReader } from './segment-reader';

describe('SegmentReader.readScattered', () => {
  let dir: string;
  let bytes: Buffer;
  let reader: SegmentReader;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'segment-reader-'));
    bytes = Buffer.alloc(200_000);
    for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + (i >> 8)) & 0xff;
    writeFileSync(join(dir, segmentFileName(3)), bytes);
    reader = new SegmentReader(dir);
  });
  afterEach(async () => {
    await reader.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('fills each buffer in turn with the bytes from the position on, empty buffers included', async () => {
    const buffers = [48, 0, 65_536, 48, 1, 0, 4_096].map((n) => Buffer.alloc(n));
    await reader.readScattered({ segment: 3, position: 1_000 }, buffers);
    expect(Buffer.concat(buffers)).toEqual(bytes.subarray(1_000, 1_000 + 48 + 65_536 + 48 + 1 + 4_096));
  });

  it('goes on where a read stopped: more buffers than one system call takes (IOV_MAX is 1024)', async () => {
    const buffers = Array.from({ length: 3_000 }, (_, i) => Buffer.alloc(1 + (i % 50)));
    await reader.readScattered({ segment: 3, position: 17 }, buffers);
    const total = buffers.reduce((n, b) => n + b.length, 0);
    expect(Buffer.concat(buffers)).toEqual(bytes.subarray(17, 17 + total));
  });

  it('refuses a range that runs past the end of the segment', async () => {
    const buffers = [Buffer.alloc(100), Buffer.alloc(1_000)];
    await expect(reader.readScattered({ segment: 3, position: bytes.length - 500 }, buffers)).rejects.toThrow(CorruptRecordError);
  });
});
