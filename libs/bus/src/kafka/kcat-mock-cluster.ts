import { type ChildProcess, spawn, spawnSync } from 'node:child_process';

/**
 * librdkafka's mock Kafka cluster, run through `kcat` (Debian package kcat), for integration tests of the
 * Kafka driver where no real Kafka can run. kcat starts the mock when given test.mock.num.brokers and
 * prints, as a notice on stderr, "Mock cluster enabled: ... replaced with 127.0.0.1:<port>". The consumer
 * kcat itself runs (on a throwaway topic) only keeps the process, and so the cluster, alive.
 */
export interface MockCluster {
  readonly bootstrap: string;
  readonly pid: number;
  stop(): Promise<void>;
}

/** Whether kcat can be run here. */
export function kcatAvailable(): boolean {
  const probe = spawnSync('kcat', ['-V'], { stdio: 'ignore' });
  return probe.error === undefined && probe.status === 0;
}

export async function startMockCluster(options: { brokers?: number; timeoutMs?: number } = {}): Promise<MockCluster> {
  const child = spawn(
    'kcat',
    ['-b', '127.0.0.1:1', '-C', '-q', '-t', '__keepalive', '-X', `test.mock.num.brokers=${options.brokers ?? 1}`],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const pid = child.pid;
  if (pid === undefined) throw new Error('kcat did not start');
  try {
    const bootstrap = await bootstrapOf(child, options.timeoutMs ?? 10_000);
    return { bootstrap, pid, stop: () => stopChild(child) };
  } catch (error) {
    await stopChild(child);
    throw error;
  }
}

function bootstrapOf(child: ChildProcess, timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    let output = '';
    const done = (error: Error | undefined, bootstrap?: string): void => {
      clearTimeout(timer);
      child.off('exit', onExit);
      // Keep draining stderr so kcat never blocks on a full pipe, but no longer keep what it says.
      child.stderr?.removeListener('data', onData);
      child.stderr?.resume();
      if (error !== undefined || bootstrap === undefined) reject(error ?? new Error('no bootstrap address'));
      else resolve(bootstrap);
    };
    const onData = (chunk: Buffer): void => {
      output += chunk.toString('utf8');
      // The notice kcat always prints; with -d mock it also prints bootstrap.servers=<address>.
      const match =
        /replaced with (127\.0\.0\.1:\d+)/.exec(output) ?? /bootstrap\.servers=(127\.0\.0\.1:\d+)/.exec(output);
      if (match?.[1] !== undefined) done(undefined, match[1]);
    };
    const onExit = (code: number | null): void =>
      done(new Error(`kcat exited (${code}) before the mock started: ${output}`));
    const timer = setTimeout(
      () => done(new Error(`kcat printed no bootstrap address in ${timeoutMs} ms: ${output}`)),
      timeoutMs,
    );
    child.stderr?.on('data', onData);
    child.once('exit', onExit);
  });
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const force = setTimeout(() => child.kill('SIGKILL'), 5_000);
    child.once('exit', () => {
      clearTimeout(force);
      resolve();
    });
    child.kill('SIGTERM');
  });
}
