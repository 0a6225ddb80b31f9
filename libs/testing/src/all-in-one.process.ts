import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

const ROOT = join(__dirname, '..', '..', '..');

export interface AllInOneProcess {
  readonly url: string;
  readonly pid: number;
  /** Everything the process printed so far, for failure messages. */
  output(): string;
  /** Sends the signal to this process (by its PID) and resolves when it has exited. */
  kill(signal: NodeJS.Signals): Promise<void>;
  /** Graceful stop: SIGTERM, then SIGKILL if it has not exited within 20 s. */
  stop(): Promise<void>;
}

/**
 * Starts the all-in-one application as a user runs it (`node -r tools/register.cjs main.ts`), on an
 * ephemeral loopback port, and resolves once it prints where its API is.
 */
export function startAllInOne(env: Record<string, string>, timeoutMs = 60_000): Promise<AllInOneProcess> {
  const child = spawn(process.execPath, ['-r', join(ROOT, 'tools', 'register.cjs'), join(ROOT, 'apps', 'all-in-one', 'src', 'main.ts')], {
    cwd: ROOT,
    env: { ...process.env, CDP_HTTP_HOST: '127.0.0.1', CDP_HTTP_PORT: '0', CDP_DEMO: 'false', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`all-in-one did not start within ${timeoutMs} ms:\n${output}`));
    }, timeoutMs);
    const onData = (chunk: Buffer): void => {
      output += chunk.toString('utf8');
      const match = /HTTP API\s+(http:\/\/\S+)\/api/.exec(output);
      if (match?.[1]) {
        clearTimeout(timer);
        child.stdout?.off('data', onData);
        child.stdout?.on('data', (more: Buffer) => (output += more.toString('utf8')));
        resolve(handle(child, match[1], () => output, exited));
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`all-in-one exited before it was ready (code ${String(code)}, signal ${String(signal)}):\n${output}`));
    });
  });
}

function handle(child: ChildProcess, url: string, output: () => string, exited: Promise<void>): AllInOneProcess {
  const pid = child.pid ?? -1;
  const alive = (): boolean => child.exitCode === null && child.signalCode === null;
  return {
    url,
    pid,
    output,
    async kill(signal) {
      if (alive()) {
        process.kill(pid, signal);
      }
      await exited;
    },
    async stop() {
      if (!alive()) {
        return;
      }
      process.kill(pid, 'SIGTERM');
      const timer = setTimeout(() => alive() && process.kill(pid, 'SIGKILL'), 20_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
