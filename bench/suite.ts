import { spawnSync, type ChildProcess } from 'node:child_process';
import { cpus, release, totalmem } from 'node:os';
import { createServer } from 'node:net';
import { join } from 'node:path';

/**
 * What every bench suite shares: the shape of a figure, the run settings, and the small helpers each
 * suite needs. A suite is a file `bench/<name>.bench.ts` exporting `suite: BenchSuite`; `bench/run.ts`
 * runs them in order (or those named by `--only`), then writes BENCHMARKS.md and BENCHMARKS.json.
 */
export interface Figure {
  readonly name: string;
  readonly value: number;
  readonly unit: string;
  readonly baseline: string;
  readonly baselineValue: number | null;
  readonly ratio: number | null;
  readonly goal: string;
  readonly met: boolean | null;
  readonly command: string;
  readonly runs: readonly number[];
  readonly baselineRuns: readonly number[];
}

export interface BenchContext {
  /** `--quick` (CI): short runs, one repetition; only shows the suite works. */
  readonly quick: boolean;
  /** How many runs each figure's median is taken over (3 in full mode, 1 in quick mode). */
  readonly repeats: number;
  /** A scratch directory for this suite, removed after it (mode 0755: the embedded PostgreSQL user must get through). */
  readonly work: string;
  /** Progress for the person watching: one line, printed at once. */
  readonly log: (line: string) => void;
}

export interface BenchSuite {
  readonly name: string;
  /** Tools the suite needs on PATH; a missing one stops the bench with a message saying what to install. */
  readonly tools: readonly string[];
  run(ctx: BenchContext): Promise<Figure[]>;
}

export const ROOT = join(__dirname, '..');

export const median = (values: readonly number[]): number => {
  if (values.length === 0) {
    throw new Error('median of no values');
  }
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
};

/** The p-th percentile (0..100) by nearest rank. */
export const percentile = (values: readonly number[], p: number): number => {
  if (values.length === 0) {
    throw new Error('percentile of no values');
  }
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[rank] as number;
};

/** Ends a process this suite started, by its PID, and waits until it has exited; nothing if it already has. */
export async function stopChild(child: ChildProcess | undefined): Promise<void> {
  if (child?.pid && child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    process.kill(child.pid, 'SIGTERM');
    await exited;
  }
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export async function until(predicate: () => Promise<boolean>, timeoutMs: number, what: string): Promise<number> {
  const start = performance.now();
  while (!(await predicate())) {
    if (performance.now() - start > timeoutMs) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return performance.now() - start;
}

export async function json<T>(method: string, url: string, body?: unknown, attempt = 1): Promise<T> {
  let response: Response;
  try {
    response = await fetch(url, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : String(err);
    // A GET is safe to repeat. The suites wait in spawnSync for minutes (fio runs), longer than the
    // server keeps an idle connection (65 s): it closes them, but this process's pool cannot notice
    // until its event loop runs again, so the first requests after a run can meet a closed pooled
    // connection ("other side closed", EPIPE). Each retry is printed, so other failures still show.
    if (method === 'GET' && attempt < 4) {
      process.stderr.write(`GET ${url} failed (${cause}); trying again\n`);
      return json<T>(method, url, body, attempt + 1);
    }
    throw new Error(`${method} ${url} failed: ${cause}`);
  }
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`${method} ${url}: ${response.status} ${text}`);
  }
  return (text ? JSON.parse(text) : undefined) as T;
}

export function machine(): string {
  const cpu = cpus()[0]?.model ?? 'unknown CPU';
  return `${cpus().length} × ${cpu}, ${(totalmem() / 1024 ** 3).toFixed(0)} GiB RAM, Linux ${release()}, Node ${process.version}`;
}

export function hasTool(tool: string): boolean {
  return spawnSync('which', [tool]).status === 0;
}
