import { chmod, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TempDir {
  readonly path: string;
  /** Removes the directory and everything in it. */
  cleanup(): Promise<void>;
}

/**
 * A fresh, empty directory directly under os.tmpdir(). It is made searchable by others (0755, not
 * mkdtemp's 0700) so that an embedded PostgreSQL, which runs as the `postgres` user when the tests
 * run as root, can keep its data in a subdirectory, as the applications do under their data dir.
 */
export async function tempDir(prefix: string): Promise<TempDir> {
  const path = await mkdtemp(join(tmpdir(), prefix.endsWith('-') ? prefix : `${prefix}-`));
  await chmod(path, 0o755);
  return { path, cleanup: () => rm(path, { recursive: true, force: true }) };
}
