import { createRequire } from 'node:module';

interface FileAdviceAddon {
  adviseRandom(fd: number): void;
  /** lseek(fd, offset, SEEK_DATA); -1 where no data follows. */
  seekData(fd: number, offset: number): number;
  /** lseek(fd, offset, SEEK_HOLE); -1 past the end. */
  seekHole(fd: number, offset: number): number;
}

/**
 * The Node-API addon in native/file-advice (posix_fadvise and lseek's SEEK_DATA and SEEK_HOLE have no
 * binding in Node), an optional dependency: npm builds it where a C compiler is found. Loaded once, on
 * first use.
 */
let loaded: { readonly addon: FileAdviceAddon } | { readonly error: string } | undefined;

function load(): { readonly addon: FileAdviceAddon } | { readonly error: string } {
  if (!loaded) {
    try {
      loaded = { addon: createRequire(__filename)('continuum-file-advice') as FileAdviceAddon };
    } catch (err) {
      loaded = { error: `the file-advice addon is not built (${(err as Error).message.split('\n')[0] ?? ''}); reinstall with a C compiler, python3 and make present` };
    }
  }
  return loaded;
}

/**
 * Tells the kernel that `fd` is read at random (POSIX_FADV_RANDOM), which turns its readahead off.
 * Returns null once done, or why it could not be (the addon missing, the file system refusing): the
 * file then keeps the kernel's default readahead, which costs speed, never correctness.
 *
 * Why a volume wants it: readahead fills the page cache with large folios (up to the readahead
 * window, megabytes here), and a later 4 KiB write into one costs ext4 a walk over every block of the
 * folio. Measured on this project's machines (Linux 6.18): random 4 KiB writes after a sequential read
 * of the volume took 50 µs of kernel time each, against 4 µs after the same read with this advice
 * (docs/architecture.md, "Large folios in the volume's page cache").
 */
export function adviseRandomAccess(fd: number): string | null {
  const addon = load();
  if ('error' in addon) {
    return addon.error;
  }
  try {
    addon.addon.adviseRandom(fd);
    return null;
  } catch (err) {
    return (err as Error).message;
  }
}

/** A byte range [start, end) of a file. */
export interface FileRange {
  readonly start: number;
  readonly end: number;
}

/**
 * The first range at or after `at`, and before `end`, that the file system says holds data (lseek's
 * SEEK_DATA, then SEEK_HOLE), cut at `end`; null when only holes are left before `end`. Everything
 * outside such ranges is a hole, and reads as zeros. Where the addon is missing, or the file system
 * cannot tell (it then reports the whole file as data), the answer is `[at, end)`: never wrong, only
 * slower for the caller, who reads it to find out.
 */
export function nextDataRange(fd: number, at: number, end: number): FileRange | null {
  const addon = load();
  if (at >= end) {
    return null;
  }
  if ('error' in addon) {
    return { start: at, end };
  }
  let start: number;
  let hole: number;
  try {
    start = addon.addon.seekData(fd, at);
    if (start < 0 || start >= end) {
      return null;
    }
    hole = addon.addon.seekHole(fd, start);
  } catch {
    // Whatever made lseek fail (a closed descriptor) makes the caller's read fail, with its own error.
    return { start: at, end };
  }
  return { start, end: hole < 0 ? end : Math.min(hole, end) };
}


/** A stretch of a file that holds data, or a hole (which reads as zeros). */
export interface FileRun extends FileRange {
  readonly data: boolean;
}

/**
 * [start, end) of the file as alternating runs of data and holes, in order (lseek's SEEK_DATA and
 * SEEK_HOLE, see `nextDataRange`), at most `limit` of them: the last may end before `end`, and the
 * caller asks again from there. Where the addon is missing or the file system cannot tell, one run
 * of data: never wrong, only less informative.
 */
export function fileRuns(fd: number, start: number, end: number, limit: number): FileRun[] {
  const runs: FileRun[] = [];
  let at = start;
  while (at < end && runs.length < limit) {
    const data = nextDataRange(fd, at, end);
    if (!data) {
      runs.push({ start: at, end, data: false });
      break;
    }
    if (data.start > at) {
      runs.push({ start: at, end: data.start, data: false });
      if (runs.length === limit) {
        break;
      }
    }
    runs.push({ start: data.start, end: data.end, data: true });
    at = data.end;
  }
  return runs;
}
