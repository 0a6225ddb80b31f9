import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, type TempDir } from '@cdp/testing';
import { DIRTY_REGION_BYTES, DirtyMap, MAX_DIRTY_MAP_VOLUMES } from './dirty-map';

const MiB = 1024 * 1024;
const volumes = [
  { index: 0, sizeBytes: 64 * MiB },
  { index: 3, sizeBytes: 10 * MiB + 4096 },
];

describe('DirtyMap', () => {
  let dir: TempDir;
  let path: string;

  beforeEach(async () => {
    dir = await tempDir('dirty-map-');
    path = join(dir.path, 'dirty.map');
  });

  afterEach(async () => {
    await dir.cleanup();
  });

  it('is written out in full when created, so that setting a bit needs no new block', async () => {
    const map = await DirtyMap.open(path, volumes);
    expect(map.dirtyRegions).toBe(0);
    // A header page and one page of bits (75 regions), every block written.
    expect(statSync(path).size).toBe(2 * 4096);
    expect(statSync(path).blocks * 512).toBeGreaterThanOrEqual(2 * 4096);
    await map.close();
  });

  it('makes a bit durable before a write may rely on it, and only once', async () => {
    const map = await DirtyMap.open(path, volumes);
    const first = map.mark(3, 5 * MiB - 10, 20);
    expect(first).toBeInstanceOf(Promise);
    // Marked in memory at once: a second write into the same regions waits for the same write.
    expect(map.mark(3, 5 * MiB, 1)).toBeInstanceOf(Promise);
    await first;
    // Durable: nothing to wait for.
    expect(map.mark(3, 4 * MiB, 2 * MiB)).toBeUndefined();
    expect(map.dirtyRegions).toBe(2);
    expect(map.regions()).toEqual([
      { key: 64 + 4, volumeIndex: 3, offset: 4 * MiB, length: DIRTY_REGION_BYTES },
      { key: 64 + 5, volumeIndex: 3, offset: 5 * MiB, length: DIRTY_REGION_BYTES },
    ]);
    // What a crash leaves: the file as it is now, read by another open.
    writeFileSync(join(dir.path, 'crashed.map'), readFileSync(path));
    const reread = await DirtyMap.open(join(dir.path, 'crashed.map'), volumes);
    expect(reread.regions().map((r) => r.key)).toEqual([68, 69]);
    await reread.close();
    await map.close();
  });

  it('clears a bit once its chunk is shipped, unless the region was written again after the chunk was read', async () => {
    const map = await DirtyMap.open(path, volumes);
    await map.mark(0, 0, 3 * MiB);
    const [a, b, c] = map.regions().map((r) => r.key);
    map.captured(a!);
    map.captured(b!);
    // Written again after its chunk was read: that chunk does not hold the write.
    await map.mark(0, MiB + 7, 1);
    map.shipped(a!);
    map.shipped(b!);
    // Never captured: shipping something else says nothing about it.
    map.shipped(c!);
    expect(map.regions().map((r) => r.key)).toEqual([b, c]);
    await map.persist();
    await map.close();
    const reopened = await DirtyMap.open(path, volumes);
    expect(reopened.regions().map((r) => r.key)).toEqual([b, c]);
    expect(reopened.intersects(0, 0, MiB)).toBe(false);
    expect(reopened.intersects(0, MiB - 1, 2)).toBe(true);
    expect(reopened.intersects(3, 0, 10 * MiB)).toBe(false);
    await reopened.close();
  });

  it('keeps the bits of volumes it still has when the volumes change, and reads a damaged file as all dirty', async () => {
    const map = await DirtyMap.open(path, volumes);
    await map.mark(0, 63 * MiB, 1);
    await map.mark(3, 10 * MiB, 4096);
    await map.close();
    // Volume 3 is gone, volume 0 grew, volume 1 is new.
    const changed = await DirtyMap.open(path, [
      { index: 0, sizeBytes: 128 * MiB },
      { index: 1, sizeBytes: 2 * MiB },
    ]);
    expect(changed.regions().map((r) => [r.volumeIndex, r.offset])).toEqual([[0, 63 * MiB]]);
    await changed.close();

    const bytes = readFileSync(path);
    bytes[20] = (bytes[20] ?? 0) ^ 0xff;
    writeFileSync(path, bytes);
    const damaged = await DirtyMap.open(path, volumes);
    expect(damaged.dirtyRegions).toBe(64 + 11);
    // The tail region of a volume whose size is not a whole number of regions is the rest of it.
    expect(damaged.regions().at(-1)).toMatchObject({ volumeIndex: 3, offset: 10 * MiB, length: 4096 });
    await damaged.close();
  });

  it('refuses more volumes than its header can describe, and a volume it does not have', async () => {
    const many = Array.from({ length: MAX_DIRTY_MAP_VOLUMES + 1 }, (_, index) => ({ index, sizeBytes: MiB }));
    await expect(DirtyMap.open(path, many)).rejects.toThrow(RangeError);
    const map = await DirtyMap.open(path, volumes);
    expect(() => map.mark(1, 0, 1)).toThrow(RangeError);
    await map.close();
  });
});
