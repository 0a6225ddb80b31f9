import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir, type TempDir } from '@cdp/testing';
import { adviseRandomAccess } from './read-advice';

describe('adviseRandomAccess', () => {
  let dir: TempDir;

  beforeEach(async () => {
    dir = await tempDir('read-advice-');
  });

  afterEach(() => dir.cleanup());

  it('advises an open file and says why it could not for anything else, without throwing', () => {
    const fd = openSync(join(dir.path, 'file'), 'w+');
    expect(adviseRandomAccess(fd)).toBeNull();
    closeSync(fd);
    expect(adviseRandomAccess(fd)).toMatch(/POSIX_FADV_RANDOM\): Bad file descriptor/);
    expect(adviseRandomAccess(-1)).toMatch(/takes one file descriptor/);
  });
});
