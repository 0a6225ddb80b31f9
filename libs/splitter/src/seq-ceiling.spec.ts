import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, type TempDir } from '@cdp/testing';
import { SeqCeiling } from './seq-ceiling';

describe('SeqCeiling', () => {
  let dir: TempDir;
  beforeEach(async () => {
    dir = await tempDir('seq-ceiling-');
  });
  afterEach(async () => {
    await dir.cleanup();
  });

  it('is created whole (a crash mid-way leaves at most a temporary file), raised in alternate slots, and read back at its highest', () => {
    const path = join(dir.path, 'seq-ceiling');
    expect(SeqCeiling.open(path)).toBeUndefined();
    // A temporary file left by a crash in an earlier create changes nothing.
    writeFileSync(`${path}.tmp`, 'half');
    const ceiling = SeqCeiling.create(path, 10, 100);
    expect(ceiling.value).toBe(110);
    expect(existsSync(`${path}.tmp`)).toBe(false);
    expect(SeqCeiling.open(path, 100)?.value).toBe(110);

    ceiling.check(109);
    expect(ceiling.value).toBe(110);
    ceiling.check(110);
    expect(ceiling.value).toBe(210);
    const afterOne = readFileSync(path);
    ceiling.check(250);
    expect(ceiling.value).toBe(350);
    // Each raise rewrote one slot: the two raises wrote different ones.
    const afterTwo = readFileSync(path);
    expect(afterTwo.subarray(0, 512).equals(afterOne.subarray(0, 512))).toBe(true);
    expect(afterTwo.subarray(512).equals(afterOne.subarray(512))).toBe(false);
    expect(SeqCeiling.open(path)?.value).toBe(350);
    // A torn write of the newest slot (the second) leaves the one before it.
    writeFileSync(path, Buffer.concat([afterTwo.subarray(0, 512), Buffer.alloc(512, 0xee)]));
    expect(SeqCeiling.open(path)?.value).toBe(210);
  });
});
