import { createRequire } from 'node:module';

interface FileAdviceAddon {
  adviseRandom(fd: number): void;
}

/**
 * The Node-API addon in native/file-advice (posix_fadvise has no binding in Node), an optional
 * dependency: npm builds it where a C compiler is found. Loaded once, on first use.
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
