import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';

export const LOCK_FILE = 'continuum.lock';

export class DataDirInUseError extends Error {
  override readonly name = 'DataDirInUseError';
}

/**
 * One process per data directory: two processes capturing into the same splitter logs and volumes,
 * or journaling into the same segments, would corrupt them. The lock is a file holding the owner's
 * PID, created exclusively; a lock whose process is gone (a crash, kill -9) is taken over.
 */
export class DataDirLock {
  private constructor(private readonly path: string) {}

  static acquire(dataDir: string): DataDirLock {
    mkdirSync(dataDir, { recursive: true });
    const path = join(dataDir, LOCK_FILE);
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        const fd = openSync(path, 'wx', 0o644);
        writeSync(fd, `${process.pid}\n`);
        closeSync(fd);
        return new DataDirLock(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
          throw err;
        }
      }
      const owner = Number.parseInt(readFileSync(path, 'utf8'), 10);
      if (Number.isInteger(owner) && owner !== process.pid && isAlive(owner)) {
        throw new DataDirInUseError(
          `data directory ${dataDir} is in use by process ${owner}; stop that process, or give this one another CDP_DATA_DIR`,
        );
      }
      rmSync(path, { force: true });
    }
    throw new DataDirInUseError(`could not lock data directory ${dataDir}: another process keeps taking it`);
  }

  release(): void {
    rmSync(this.path, { force: true });
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  // A PID can be reused after a crash: only a Node process can be one of ours.
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('node');
  } catch {
    return true;
  }
}
