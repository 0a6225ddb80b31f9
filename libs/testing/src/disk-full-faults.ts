import type * as fs from 'node:fs';

/** What `diskFullFaults` fails: writes to descriptors whose path contains `on`; none while it is undefined. */
export interface DiskFullFaults {
  on: string | undefined;
}

/**
 * A full disk, made to order, for the tests of a jest file (call it at the top of a describe block):
 * the file system's ENOSPC from the write system calls (sync and callback, single and vectored) on
 * descriptors whose path contains `faults.on` (read from /proc/self/fd), while it is set. Every other
 * call, and every call while it is unset, is the real one on the real file. Reset after each test.
 */
export function diskFullFaults(): DiskFullFaults {
  const faults: DiskFullFaults = { on: undefined };
  // The module object the code under test calls into (an `import * as` would be a copy of it).
  const realFs = jest.requireActual<typeof fs>('node:fs');
  const enospc = (): NodeJS.ErrnoException => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28 });
  const hit = (fd: unknown): boolean => {
    const on = faults.on;
    if (on === undefined || typeof fd !== 'number') {
      return false;
    }
    try {
      return realFs.readlinkSync(`/proc/self/fd/${fd}`).includes(on);
    } catch {
      return false;
    }
  };
  beforeEach(() => {
    for (const name of ['writeSync', 'writevSync'] as const) {
      const real = realFs[name] as (...args: unknown[]) => number;
      jest.spyOn(realFs, name).mockImplementation(((...args: unknown[]) => {
        if (hit(args[0])) {
          throw enospc();
        }
        return real(...args);
      }) as never);
    }
    for (const name of ['write', 'writev'] as const) {
      const real = realFs[name] as (...args: unknown[]) => void;
      jest.spyOn(realFs, name).mockImplementation(((...args: unknown[]) => {
        if (hit(args[0])) {
          const callback = args[args.length - 1] as (err: Error) => void;
          process.nextTick(callback, enospc());
          return;
        }
        real(...args);
      }) as never);
    }
  });
  afterEach(() => {
    faults.on = undefined;
    jest.restoreAllMocks();
  });
  return faults;
}
