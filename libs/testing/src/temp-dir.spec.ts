import { readdir, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { tempDir } from './temp-dir';

describe('tempDir', () => {
  it('gives a fresh empty directory under the temp dir and removes it with its contents', async () => {
    const a = await tempDir('cdp-unit');
    const b = await tempDir('cdp-unit');
    expect(a.path).not.toBe(b.path);
    expect(dirname(a.path)).toBe(tmpdir());
    expect(await readdir(a.path)).toEqual([]);
    expect((await stat(a.path)).mode & 0o777).toBe(0o755);
    await writeFile(join(a.path, 'file'), 'x');
    await a.cleanup();
    await b.cleanup();
    await expect(stat(a.path)).rejects.toThrow(/ENOENT/);
    // Cleaning up twice is harmless.
    await a.cleanup();
  });
});
