import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ActivityLog, REGION_BYTES, regionKeys, regionsAhead } from './activity-log';

describe('ActivityLog', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'activity-log-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('looks ahead only for a stream that came from the region before, and never past the volume', () => {
    const active = new Set(regionKeys(1, 0, REGION_BYTES));
    const isActive = (key: number): boolean => active.has(key);
    const volumeBytes = 6 * REGION_BYTES;
    // Region 1 of volume 1, region 0 active: a sequential stream. Regions 2.. up to the volume's end.
    expect(regionsAhead(regionKeys(1, REGION_BYTES, 4096), volumeBytes, isActive, 7)).toEqual(regionKeys(1, 2 * REGION_BYTES, 4 * REGION_BYTES));
    // Region 3 with region 2 not active: a random write, nothing ahead.
    expect(regionsAhead(regionKeys(1, 3 * REGION_BYTES, 4096), volumeBytes, isActive, 7)).toEqual([]);
    // Region 0: no region before it in this volume (the key before belongs to another volume).
    expect(regionsAhead(regionKeys(1, 0, 4096), volumeBytes, () => true, 7)).toEqual([]);
  });

  it('activates the regions ahead in the same update while there is room, and evicts none for them', async () => {
    const { log } = await ActivityLog.open(join(dir, 'activity.log'), 'boot', 12);
    const volumeBytes = 64 * REGION_BYTES;
    const walk = async (region: number): Promise<void> => {
      const keys = regionKeys(0, region * REGION_BYTES, 4096);
      if (!log.touch(keys, 1)) {
        const ahead = regionsAhead(keys, volumeBytes, (key) => log.has(key), 7);
        // Nothing is ever flushed here: an eviction would need a flush, which must not be asked for.
        await log.activate(keys, 1, () => 0, () => Promise.reject(new Error('asked for a flush')), ahead);
      }
    };
    const before = log.persistedWrites;
    for (let region = 0; region < 12; region++) {
      await walk(region);
    }
    // Region 0 alone (no region before it), 1 with 2..8 ahead, 9 with 10 and 11 (the capacity is
    // reached): three updates for twelve regions, where one each made twelve.
    expect(log.persistedWrites - before).toBe(3);
    expect(log.regions()).toHaveLength(12);
    await log.close();
  });
});
