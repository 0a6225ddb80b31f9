/**
 * The lock file PostgreSQL keeps in its data directory while a server runs on it (see
 * src/include/miscadmin.h, "LOCK_FILE_LINE_*"). The server writes it in stages while it starts, so a
 * reader may see only the first lines.
 */
export interface PostmasterPid {
  readonly pid: number;
  readonly dataDir: string;
  /** Seconds since the epoch. */
  readonly startedAt: number | undefined;
  /** Undefined while the server has not yet written it. */
  readonly port: number | undefined;
  readonly socketDir: string | undefined;
  readonly listenAddress: string | undefined;
  /** "starting", "stopping", "ready" or "standby"; undefined on servers too early in their start. */
  readonly status: string | undefined;
}

function positiveInteger(line: string | undefined): number | undefined {
  const text = line?.trim();
  if (text === undefined || !/^\d+$/.test(text)) {
    return undefined;
  }
  const value = Number(text);
  return value > 0 ? value : undefined;
}

/** Returns undefined for a file too short or garbled to name a process. */
export function parsePostmasterPid(text: string): PostmasterPid | undefined {
  const lines = text.split('\n');
  const pid = positiveInteger(lines[0]);
  if (pid === undefined) {
    return undefined;
  }
  const optional = (line: string | undefined): string | undefined => {
    const value = line?.trim();
    return value === undefined || value === '' ? undefined : value;
  };
  return {
    pid,
    dataDir: lines[1] ?? '',
    startedAt: positiveInteger(lines[2]),
    port: positiveInteger(lines[3]),
    socketDir: optional(lines[4]),
    listenAddress: optional(lines[5]),
    status: optional(lines[7]),
  };
}
