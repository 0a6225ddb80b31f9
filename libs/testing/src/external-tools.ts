import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** The absolute path of an executable on PATH, or undefined. */
export function findTool(name: string): string | undefined {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter)) {
    if (dir === '') {
      continue;
    }
    const candidate = join(dir, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * Registers a test that needs external programs. When one is missing the test is skipped, and its
 * name says which program to install, except under CI=true, where a missing tool is a failure: CI
 * must never go green by testing nothing.
 */
export function itWithTools(tools: readonly string[], name: string, fn: () => Promise<void>, timeoutMs?: number): void {
  const missing = tools.filter((tool) => findTool(tool) === undefined);
  if (missing.length === 0) {
    it(name, fn, timeoutMs);
  } else if (process.env['CI'] === 'true') {
    it(name, () => {
      throw new Error(`${missing.join(', ')} not installed; CI=true requires it`);
    });
  } else {
    it.skip(`${name} [skipped: ${missing.join(', ')} not installed]`, fn);
  }
}

export interface ToolResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

/**
 * Runs a program with no shell and a hard deadline: past it, the child (and only it, by its PID) is
 * killed and the promise rejects. Output is kept, bounded, for the error message.
 */
export function runTool(command: string, args: readonly string[], timeoutMs = 20_000): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    const keep = (sofar: string, chunk: Buffer): string => (sofar.length > 1_000_000 ? sofar : sofar + chunk.toString('utf8'));
    child.stdout.on('data', (chunk: Buffer) => (stdout = keep(stdout, chunk)));
    child.stderr.on('data', (chunk: Buffer) => (stderr = keep(stderr, chunk)));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (timedOut) {
        reject(new Error(`${command} ${args.join(' ')} timed out after ${timeoutMs} ms\n${stdout}\n${stderr}`));
      } else {
        resolve({ code, signal, stdout, stderr });
      }
    });
  });
}

/** Like runTool, but a nonzero exit is an error that shows the output. */
export async function runToolOk(command: string, args: readonly string[], timeoutMs?: number): Promise<ToolResult> {
  const result = await runTool(command, args, timeoutMs);
  if (result.code !== 0) {
    throw new Error(`${command} ${args.join(' ')} exited ${result.code ?? result.signal}\n${result.stdout}\n${result.stderr}`);
  }
  return result;
}
