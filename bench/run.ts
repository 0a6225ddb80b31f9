import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, totalmem, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';

/**
 * `npm run bench`: the block path's figures, each a median of runs measured beside its baseline in
 * the same run, written to BENCHMARKS.md and BENCHMARKS.json. `--quick` (CI) only checks the suite
 * runs: short runs, one repetition. The system is driven as a user would: the all-in-one process,
 * a VPG created over HTTP, fio through the splitter's NBD export; the baseline is nbdkit's file
 * plugin serving a plain file on the same disk.
 */
const ROOT = join(__dirname, '..');
const quick = process.argv.includes('--quick');
const REPEATS = quick ? 1 : 3;
const RANDOM_SECONDS = quick ? 2 : 15;
const SEQUENTIAL_SECONDS = quick ? 3 : 60;
const VOLUME_BYTES = 2 * 1024 ** 3;

interface Figure {
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

const median = (values: readonly number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
};

function freePort(): Promise<number> {
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

interface FioResult {
  readonly iops: number;
  readonly mbPerSecond: number;
}

function fio(args: readonly string[]): { result: FioResult; command: string } {
  const full = ['--output-format=json', '--group_reporting', '--verify_state_save=0', ...args];
  const run = spawnSync('fio', full, { encoding: 'utf8', timeout: 10 * 60_000 });
  if (run.status !== 0) {
    throw new Error(`fio failed (${String(run.status)}): ${run.stderr}`);
  }
  const json = JSON.parse(run.stdout.slice(run.stdout.indexOf('{'))) as { jobs: { write: { iops: number; bw: number }; read: { iops: number; bw: number } }[] };
  const job = json.jobs[0];
  if (!job) {
    throw new Error('fio reported no job');
  }
  const side = job.write.iops > 0 ? job.write : job.read;
  return { result: { iops: side.iops, mbPerSecond: (side.bw * 1024) / 1e6 }, command: `fio ${args.join(' ')}` };
}

async function startAllInOne(dataDir: string): Promise<{ child: ChildProcess; api: string; output: () => string }> {
  const child = spawn(process.execPath, ['-r', join(ROOT, 'tools', 'register.cjs'), join(ROOT, 'apps', 'all-in-one', 'src', 'main.ts')], {
    cwd: ROOT,
    env: { ...process.env, CDP_DATA_DIR: dataDir, CDP_HTTP_PORT: '0', CDP_NBD_PORT: '0', CDP_RECOVERY_NBD_PORT: '0', CDP_DEMO: 'false' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  const api = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`all-in-one did not start:\n${output}`)), 60_000);
    const onData = (chunk: Buffer): void => {
      output += chunk.toString();
      const match = /HTTP API\s+(http:\/\/\S+\/api)/.exec(output);
      if (match?.[1]) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('exit', (code) => reject(new Error(`all-in-one exited (${String(code)}):\n${output}`)));
  });
  child.on('exit', (code, signal) => (output += `\n[the all-in-one process exited: code ${String(code)}, signal ${String(signal)}]\n`));
  return { child, api, output: () => output };
}

async function json<T>(method: string, url: string, body?: unknown, retried = false): Promise<T> {
  let response: Response;
  try {
    response = await fetch(url, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : String(err);
    if (method === 'GET' && !retried) {
      return json<T>(method, url, body, true);
    }
    throw new Error(`${method} ${url} failed: ${cause}`);
  }
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`${method} ${url}: ${response.status} ${text}`);
  }
  return (text ? JSON.parse(text) : undefined) as T;
}

async function until(predicate: () => Promise<boolean>, timeoutMs: number, what: string): Promise<number> {
  const start = performance.now();
  while (!(await predicate())) {
    if (performance.now() - start > timeoutMs) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return performance.now() - start;
}

function machine(): string {
  const cpu = cpus()[0]?.model ?? 'unknown CPU';
  return `${cpus().length} × ${cpu}, ${(totalmem() / 1024 ** 3).toFixed(0)} GiB RAM, Linux ${release()}, Node ${process.version}`;
}

async function main(): Promise<void> {
  for (const tool of ['fio', 'nbdkit']) {
    if (spawnSync('which', [tool]).status !== 0) {
      throw new Error(`${tool} is missing: apt-get install fio nbdkit`);
    }
  }
  const work = mkdtempSync(join(tmpdir(), 'cdp-bench-'));
  // The embedded PostgreSQL server runs as its own user when we are root: it must be able to get through.
  chmodSync(work, 0o755);
  const figures: Figure[] = [];
  let system: ChildProcess | undefined;
  let systemOutput = (): string => '';
  let nbdkit: ChildProcess | undefined;
  try {
    // Baseline: nbdkit's file plugin serving a plain file on the same disk.
    const plainFile = join(work, 'plain.img');
    const fd = openSync(plainFile, 'w');
    ftruncateSync(fd, VOLUME_BYTES);
    closeSync(fd);
    const nbdkitPort = await freePort();
    nbdkit = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(nbdkitPort), 'file', plainFile], { stdio: 'ignore' });
    const nbdkitUri = `nbd://127.0.0.1:${nbdkitPort}/`;
    await until(() => Promise.resolve(spawnSync('nbdinfo', ['--size', nbdkitUri]).status === 0), 10_000, 'nbdkit');

    const started = await startAllInOne(join(work, 'data'));
    system = started.child;
    systemOutput = started.output;
    const api = started.api;
    const vpg = await json<{ id: string; vms: { volumes: { id: string }[] }[] }>('POST', `${api}/vpgs`, {
      name: 'bench',
      vms: [{ name: 'vm', volumes: [{ name: 'disk', sizeBytes: VOLUME_BYTES, blockSize: 4096 }] }],
    });
    await until(async () => (await fetch(`${api}/splitter/vpgs/${vpg.id}`)).ok, 10_000, 'the splitter');
    const nbd = await json<{ host: string; port: number }>('GET', `${api}/splitter/nbd`);
    const splitterUri = `nbd://${nbd.host}:${nbd.port}/bench/vm/disk`;

    // How long the journal needs, after a run, to hold everything the splitter captured: with the
    // journal keeping up this is a fraction of a second (the RPO at the end of a run).
    const catchUp = async (): Promise<number> =>
      until(async () => {
        const splitter = await json<{ lastSeq: number }>('GET', `${api}/splitter/vpgs/${vpg.id}`);
        const journal = await json<{ journal: { appliedSeq: number } }>('GET', `${api}/vpgs/${vpg.id}`);
        return journal.journal.appliedSeq >= splitter.lastSeq;
      }, 300_000, 'the journal to catch up');

    const compare = (name: string, unit: 'IOPS' | 'MB/s', goal: number, jobArgs: string[], pick: (r: FioResult) => number, baselineName = 'nbdkit file plugin, same fio job'): Promise<Figure> =>
      (async () => {
        const runs: number[] = [];
        const baselineRuns: number[] = [];
        const catchUps: number[] = [];
        let command = '';
        for (let i = 0; i < REPEATS; i++) {
          baselineRuns.push(pick(fio([...jobArgs, '--ioengine=nbd', `--uri=${nbdkitUri}`]).result));
          const measured = fio([...jobArgs, '--ioengine=nbd', `--uri=${splitterUri}`]);
          command = measured.command;
          runs.push(pick(measured.result));
          catchUps.push(await catchUp());
        }
        const value = median(runs);
        const baselineValue = median(baselineRuns);
        const ratio = value / baselineValue;
        process.stdout.write(`${name}: ${value.toFixed(0)} ${unit} vs ${baselineValue.toFixed(0)} (ratio ${ratio.toFixed(2)}); journal caught up ${median(catchUps).toFixed(0)} ms after the run\n`);
        return {
          name,
          value,
          unit,
          baseline: baselineName,
          baselineValue,
          ratio,
          goal: `ratio >= ${goal}`,
          met: ratio >= goal,
          command,
          runs,
          baselineRuns,
        };
      })();

    const random = ['--name=randwrite', '--rw=randwrite', '--bs=4k', '--iodepth=16', `--runtime=${RANDOM_SECONDS}`, '--time_based', `--size=${VOLUME_BYTES}`, '--randrepeat=0'];
    figures.push(await compare('4 KiB random writes, QD16, through the splitter (NBD, replication and journal on)', 'IOPS', 0.7, random, (r) => r.iops));
    figures.push(await compare('4 KiB random writes, QD16, flush every 32 writes', 'IOPS', 0.7, [...random, '--fsync=32'], (r) => r.iops));

    // Sequential: every byte is written twice (volume and journal), so the limit is half of what fio
    // writes to a plain file on the same disk.
    const diskRuns: number[] = [];
    for (let i = 0; i < REPEATS; i++) {
      diskRuns.push(
        fio(['--name=disk', `--filename=${join(work, 'fio-disk.dat')}`, '--rw=write', '--bs=1M', '--iodepth=4', '--ioengine=libaio', '--direct=1', `--size=${VOLUME_BYTES}`, `--runtime=${SEQUENTIAL_SECONDS}`, '--time_based'])
          .result.mbPerSecond,
      );
    }
    const sequential = ['--name=seqwrite', '--rw=write', '--bs=1M', '--iodepth=4', `--runtime=${SEQUENTIAL_SECONDS}`, '--time_based', `--size=${VOLUME_BYTES}`];
    const seq = await compare('1 MiB sequential writes through the splitter', 'MB/s', 0.8, sequential, (r) => r.mbPerSecond);
    const limit = median(diskRuns) / 2;
    figures.push({
      ...seq,
      baseline: `half of fio's sequential write bandwidth on the same disk (${median(diskRuns).toFixed(0)} MB/s / 2); nbdkit ${seq.baselineValue?.toFixed(0) ?? '?'} MB/s, ratio ${seq.ratio?.toFixed(2) ?? '?'}`,
      baselineValue: limit,
      ratio: seq.value / limit,
      goal: 'ratio >= 0.8',
      met: seq.value / limit >= 0.8,
      baselineRuns: diskRuns.map((d) => d / 2),
    });

    // Point-in-time export of the state after all of that: time to first read, sequential read.
    const tagged = await json<{ checkpoint: { id: string } }>('POST', `${api}/vpgs/${vpg.id}/checkpoints?waitMs=60000`, { name: 'bench' });
    const firstReads: number[] = [];
    let exportUrl = '';
    for (let i = 0; i < Math.max(REPEATS, 3); i++) {
      const start = performance.now();
      const opened = await json<{ id: string; url: string }>('POST', `${api}/vpgs/${vpg.id}/checkpoints/${tagged.checkpoint.id}/exports`, { volumeId: vpg.vms[0]?.volumes[0]?.id });
      const read = spawnSync('qemu-io', ['-r', '-f', 'raw', opened.url, '-c', 'read 0 4096'], { encoding: 'utf8' });
      if (read.status !== 0) {
        throw new Error(`qemu-io read failed: ${read.stderr}`);
      }
      firstReads.push(performance.now() - start);
      if (i === 0) {
        exportUrl = opened.url;
      } else {
        await json('DELETE', `${api}/exports/${opened.id}`);
      }
    }
    const qemuIoBaseline: number[] = [];
    for (let i = 0; i < 3; i++) {
      const start = performance.now();
      spawnSync('qemu-io', ['-r', '-f', 'raw', nbdkitUri, '-c', 'read 0 4096']);
      qemuIoBaseline.push(performance.now() - start);
    }
    figures.push({
      name: 'point-in-time export: time to first read (open the export + connect + read 4 KiB)',
      value: median(firstReads),
      unit: 'ms',
      baseline: 'qemu-io connect + read 4 KiB from nbdkit (process start included in both)',
      baselineValue: median(qemuIoBaseline),
      ratio: null,
      goal: '<= 100 ms',
      met: median(firstReads) <= 100,
      command: `POST /api/vpgs/:vpg/checkpoints/:cp/exports, then qemu-io -r -f raw <export> -c 'read 0 4096'`,
      runs: firstReads,
      baselineRuns: qemuIoBaseline,
    });
    const readJob = ['--name=seqread', '--rw=read', '--bs=1M', '--iodepth=4', `--runtime=${RANDOM_SECONDS}`, '--time_based', `--size=${VOLUME_BYTES}`];
    const pitRuns: number[] = [];
    const pitBaseline: number[] = [];
    let pitCommand = '';
    for (let i = 0; i < REPEATS; i++) {
      pitBaseline.push(fio([...readJob, '--ioengine=nbd', `--uri=${nbdkitUri}`]).result.mbPerSecond);
      const measured = fio([...readJob, '--ioengine=nbd', `--uri=${exportUrl}`]);
      pitCommand = measured.command;
      pitRuns.push(measured.result.mbPerSecond);
    }
    figures.push({
      name: 'point-in-time export: sequential read, 1 MiB, QD4',
      value: median(pitRuns),
      unit: 'MB/s',
      baseline: 'nbdkit file plugin, same fio job',
      baselineValue: median(pitBaseline),
      ratio: median(pitRuns) / median(pitBaseline),
      goal: 'ratio >= 0.8',
      met: median(pitRuns) / median(pitBaseline) >= 0.8,
      command: pitCommand,
      runs: pitRuns,
      baselineRuns: pitBaseline,
    });
  } catch (err) {
    process.stderr.write(`the system's last output:\n${systemOutput().slice(-4000)}\n`);
    throw err;
  } finally {
    if (system?.pid && system.exitCode === null) {
      process.kill(system.pid, 'SIGTERM');
      await new Promise((resolve) => system?.once('exit', resolve));
    }
    if (nbdkit?.pid && nbdkit.exitCode === null) {
      process.kill(nbdkit.pid, 'SIGTERM');
    }
    rmSync(work, { recursive: true, force: true });
  }
  if (!quick) {
    writeReport(figures);
  }
  process.stdout.write(`${quick ? 'quick run: the suite works; figures not written' : 'wrote BENCHMARKS.md and BENCHMARKS.json'}\n`);
}

function writeReport(figures: readonly Figure[]): void {
  const when = new Date().toISOString();
  const rows = figures.map((f) => {
    const ratio = f.ratio === null ? '' : f.ratio.toFixed(2);
    const verdict = f.met === null ? '' : f.met ? 'met' : `**missed** (${f.ratio !== null ? `${((1 - f.ratio / Number(f.goal.replace(/[^0-9.]/g, ''))) * 100).toFixed(0)}% short` : 'see value'})`;
    return `| ${f.name} | ${f.value.toFixed(f.unit === 'ms' ? 1 : 0)} ${f.unit} | ${f.baseline}: ${f.baselineValue?.toFixed(f.unit === 'ms' ? 1 : 0) ?? ''} | ${ratio} | ${f.goal} | ${verdict} |`;
  });
  const commands = figures.map((f) => `- ${f.name}: \`${f.command}\` (runs: ${f.runs.map((r) => r.toFixed(1)).join(', ')}; baseline runs: ${f.baselineRuns.map((r) => r.toFixed(1)).join(', ')})`);
  writeFileSync(
    join(ROOT, 'BENCHMARKS.md'),
    [
      '# Benchmarks',
      '',
      `Measured ${when} on ${machine()} by \`npm run bench\` (bench/run.ts). Each figure is the median of ${REPEATS} runs, measured beside its baseline in the same run; these machines are shared and noisy, so compare ratios, not absolute numbers. Where a goal is missed the table says by how much.`,
      '',
      '| figure | value | baseline (same run) | ratio | goal | |',
      '| --- | --- | --- | --- | --- | --- |',
      ...rows,
      '',
      '## Commands and runs',
      '',
      ...commands,
      '',
    ].join('\n'),
  );
  writeFileSync(join(ROOT, 'BENCHMARKS.json'), `${JSON.stringify({ measuredAt: when, machine: machine(), repeats: REPEATS, figures }, null, 2)}\n`);
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : err);
  process.exit(1);
});
