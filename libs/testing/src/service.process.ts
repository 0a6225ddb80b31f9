import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

const ROOT = join(__dirname, '..', '..', '..');

export interface ServiceProcess {
  readonly url: string;
  readonly pid: number;
  /** Everything the process printed so far, for failure messages. */
  output(): string;
  /** Sends the signal to this process (by its PID) and resolves when it has exited. */
  kill(signal: NodeJS.Signals): Promise<void>;
  /** Graceful stop: SIGTERM, then SIGKILL if it has not exited within 20 s. Resolves with the exit code. */
  stop(): Promise<number | null>;
}

export type AllInOneProcess = ServiceProcess;

/**
 * Starts one of the applications in apps/ as a user runs it (`node -r tools/register.cjs
 * apps/<app>/src/main.ts`) on an ephemeral loopback port, and resolves once it says where it listens.
 */
export function startService(app: string, env: Record<string, string>, timeoutMs = 60_000): Promise<ServiceProcess> {
  const { command, args, options } = serviceCommand(app, env);
  const child = spawn(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${app} did not start within ${timeoutMs} ms:\n${output}`));
    }, timeoutMs);
    const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
      clearTimeout(timer);
      reject(new Error(`${app} exited before it was ready (code ${String(code)}, signal ${String(signal)}):\n${output}`));
    };
    const onData = (chunk: Buffer): void => {
      output += chunk.toString('utf8');
      const match = /listening on (http:\/\/\S+)\/api/.exec(output);
      if (match?.[1]) {
        clearTimeout(timer);
        child.off('exit', onExit);
        resolve(handle(child, match[1], () => output, exited));
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
    child.once('exit', onExit);
  });
}

/** How a user starts apps/<app>: the command, its arguments, and the environment (loopback, ephemeral port). */
export function serviceCommand(
  app: string,
  env: Record<string, string>,
): { command: string; args: string[]; options: { cwd: string; env: NodeJS.ProcessEnv } } {
  return {
    command: process.execPath,
    args: ['-r', join(ROOT, 'tools', 'register.cjs'), join(ROOT, 'apps', app, 'src', 'main.ts')],
    options: { cwd: ROOT, env: { ...process.env, CDP_HTTP_HOST: '127.0.0.1', CDP_HTTP_PORT: '0', CDP_NBD_PORT: '0', CDP_RECOVERY_NBD_PORT: '0', CDP_DEMO: 'false', ...env } },
  };
}

/** The all-in-one application; see startService. */
export function startAllInOne(env: Record<string, string>, timeoutMs?: number): Promise<AllInOneProcess> {
  return startService('all-in-one', env, timeoutMs);
}

function handle(child: ChildProcess, url: string, output: () => string, exited: Promise<number | null>): ServiceProcess {
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
      if (alive()) {
        process.kill(pid, 'SIGTERM');
      }
      const timer = setTimeout(() => alive() && process.kill(pid, 'SIGKILL'), 20_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}
