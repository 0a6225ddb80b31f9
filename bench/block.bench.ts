import { fork, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, ftruncateSync, openSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type BenchContext, type BenchSuite, type Figure, ROOT, freePort, json, median, stopChild, until } from './suite';

/**
 * The block path: fio through the splitter's NBD export (replication and journal on) beside nbdkit's
 * file plugin serving a plain file on the same disk, then a point-in-time export of the result. The
 * system is driven as a user would: the all-in-one process, a VPG created over HTTP.
 */
const VOLUME_BYTES = 2 * 1024 ** 3;

export interface FioResult {
  readonly iops: number;
  readonly mbPerSecond: number;
}

export function fio(args: readonly string[]): { result: FioResult; command: string } {
  const full = ['--output-format=json', '--group_reporting', '--verify_state_save=0', ...args];
  const run = spawnSync('fio', full, { encoding: 'utf8', timeout: 10 * 60_000 });
  if (run.status !== 0) {
    if (run.stderr.includes('No space left on device')) {
      // The journal keeps every byte a run writes (the history window is hours): a full run needs tens of GB.
      throw new Error(`fio: the disk ran out of space (${run.stderr.split('\n')[0] ?? ''}); the block suite needs about 60 GB free under ${tmpdir()} (set TMPDIR to use another disk)`);
    }
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

export async function startAllInOne(dataDir: string): Promise<{ child: ChildProcess; api: string; output: () => string }> {
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

/** Our NBD server alone over a plain file (bench/nbd-front-end.ts), in a process of its own. */
async function startFrontEnd(file: string): Promise<{ child: ChildProcess; uri: string }> {
  const child = fork(join(__dirname, 'nbd-front-end.ts'), [file], {
    execArgv: ['-r', join(ROOT, 'tools', 'register.cjs')],
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.once('message', (message: { port: number }) => resolve(message.port));
    child.once('error', reject);
    child.once('exit', (code, signal) => reject(new Error(`the NBD front-end reference ended (code ${String(code)}, signal ${String(signal)}) before it listened`)));
  });
  return { child, uri: `nbd://127.0.0.1:${port}/` };
}

async function run(ctx: BenchContext): Promise<Figure[]> {
  const { quick, work } = ctx;
  const REPEATS = ctx.repeats;
  const RANDOM_SECONDS = quick ? 2 : 15;
  const SEQUENTIAL_SECONDS = quick ? 3 : 60;
  const figures: Figure[] = [];
  let system: ChildProcess | undefined;
  let systemOutput = (): string => '';
  let nbdkit: ChildProcess | undefined;
  let frontEnd: ChildProcess | undefined;
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

    // Before every run, baselines included: whatever the run before left dirty is written out first
    // (logged), so that no run pays for its predecessor's writeback. nbdkit's file plugin writes through
    // the page cache and can leave gigabytes dirty after a sequential run; the next run would then share
    // the disk with that writeback, and each splitter run follows one of nbdkit's.
    const settle = (before: string): void => {
      const dirty = /Dirty:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? '?';
      const start = performance.now();
      spawnSync('sync');
      const ms = performance.now() - start;
      if (ms >= 100) {
        ctx.log(`  sync ${before}: ${dirty} kB dirty written out in ${ms.toFixed(0)} ms`);
      }
    };

    const ringStats = async (): Promise<{ served: number; fallbacks: number } | null> =>
      (await json<{ payloadRing: { served: number; fallbacks: number } | null }>('GET', `${api}/splitter/nbd`)).payloadRing;
    const compare = (name: string, unit: 'IOPS' | 'MB/s', goal: number, jobArgs: string[], pick: (r: FioResult) => number, baselineName = 'nbdkit file plugin, same fio job'): Promise<Figure> =>
      (async () => {
        const runs: number[] = [];
        const baselineRuns: number[] = [];
        const catchUps: number[] = [];
        let command = '';
        for (let i = 0; i < REPEATS; i++) {
          settle(`before nbdkit's run ${i + 1}`);
          baselineRuns.push(pick(fio([...jobArgs, '--ioengine=nbd', `--uri=${nbdkitUri}`]).result));
          const ringBefore = await ringStats();
          settle(`before the splitter's run ${i + 1}`);
          const measured = fio([...jobArgs, '--ioengine=nbd', `--uri=${splitterUri}`]);
          command = measured.command;
          runs.push(pick(measured.result));
          catchUps.push(await catchUp());
          const ringAfter = await ringStats();
          if (ringBefore && ringAfter && ringAfter.served + ringAfter.fallbacks > ringBefore.served + ringBefore.fallbacks) {
            // Large payloads the ring had no room for: many mean the journal fell behind by more than the ring.
            ctx.log(`  run ${i + 1}: ${ringAfter.served - ringBefore.served} payloads received into the payload ring, ${ringAfter.fallbacks - ringBefore.fallbacks} allocated because it was full`);
          }
        }
        const value = median(runs);
        const baselineValue = median(baselineRuns);
        const ratio = value / baselineValue;
        ctx.log(`${name}: ${value.toFixed(0)} ${unit} vs ${baselineValue.toFixed(0)} (ratio ${ratio.toFixed(2)}); journal caught up ${median(catchUps).toFixed(0)} ms after the run`);
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

    // A reference, not a goal: our NBD server alone (no capture, replication or journal) over the file
    // nbdkit serves, runs alternated with nbdkit's. Beside the figure above it says how much of the gap
    // to nbdkit is the protocol handling in this runtime and how much what the splitter does per write.
    const front = await startFrontEnd(plainFile);
    frontEnd = front.child;
    const frontRuns: number[] = [];
    const frontBaseline: number[] = [];
    let frontCommand = '';
    for (let i = 0; i < REPEATS; i++) {
      settle(`before nbdkit's run ${i + 1}`);
      frontBaseline.push(fio([...random, '--ioengine=nbd', `--uri=${nbdkitUri}`]).result.iops);
      settle(`before the front end's run ${i + 1}`);
      const measured = fio([...random, '--ioengine=nbd', `--uri=${front.uri}`]);
      frontCommand = measured.command;
      frontRuns.push(measured.result.iops);
    }
    await stopChild(frontEnd);
    ctx.log(`NBD front end alone: ${median(frontRuns).toFixed(0)} IOPS vs nbdkit ${median(frontBaseline).toFixed(0)} (ratio ${(median(frontRuns) / median(frontBaseline)).toFixed(2)})`);
    figures.push({
      name: '4 KiB random writes, QD16, through our NBD server alone over a plain file (no capture, replication or journal): a reference',
      value: median(frontRuns),
      unit: 'IOPS',
      baseline: 'nbdkit file plugin, same fio job, same file',
      baselineValue: median(frontBaseline),
      ratio: median(frontRuns) / median(frontBaseline),
      goal: 'report',
      met: null,
      command: `node -r ./tools/register.cjs bench/nbd-front-end.ts <file>, then ${frontCommand}`,
      runs: frontRuns,
      baselineRuns: frontBaseline,
    });

    // Sequential: every byte is written twice (volume and journal), so the limit is half of what fio
    // writes to a plain file on the same disk.
    const diskRuns: number[] = [];
    for (let i = 0; i < REPEATS; i++) {
      settle(`before the disk's run ${i + 1}`);
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
    settle('before the point-in-time export');
    const firstReads: number[] = [];
    let exportUrl = '';
    for (let i = 0; i < Math.max(REPEATS, 3); i++) {
      const start = performance.now();
      const opened = await json<{ id: string; url: string }>('POST', `${api}/vpgs/${vpg.id}/checkpoints/${tagged.checkpoint.id}/exports`, { volumeId: vpg.vms[0]?.volumes[0]?.id });
      const openedAt = performance.now();
      const read = spawnSync('qemu-io', ['-r', '-f', 'raw', opened.url, '-c', 'read 0 4096'], { encoding: 'utf8' });
      if (read.status !== 0) {
        throw new Error(`qemu-io read failed: ${read.stderr}`);
      }
      const end = performance.now();
      firstReads.push(end - start);
      ctx.log(`point-in-time export ${i + 1}: opened in ${(openedAt - start).toFixed(1)} ms, qemu-io connect + first read ${(end - openedAt).toFixed(1)} ms`);
      if (i === 0) {
        exportUrl = opened.url;
      } else {
        await json('DELETE', `${api}/exports/${opened.id}`);
      }
    }
    const qemuIoBaseline: number[] = [];
    settle('before the baseline of the first read');
    for (let i = 0; i < 3; i++) {
      const start = performance.now();
      spawnSync('qemu-io', ['-r', '-f', 'raw', nbdkitUri, '-c', 'read 0 4096']);
      qemuIoBaseline.push(performance.now() - start);
    }
    figures.push({
      name: 'point-in-time export: time to first read (open the export + connect + read 4 KiB), dirty pages of the runs before written out first',
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

    // The random job again, on files read cold: each dropped from the page cache, then read once from
    // end to end through its server, as a guest booting or a backup reads its disk. Readahead then fills
    // the page cache with large folios, and every later 4 KiB write into one costs the kernel more: nbdkit's
    // file plugin runs with its defaults (readahead on; it has `fadvise=random`), the splitter turns
    // readahead off for its volumes (docs/architecture.md, "Large folios in the volume's page cache").
    // Without the drop the files stay cached in the folios the runs above made, and the figure showed
    // little (nbdkit at 48k after the sequential runs, against 55k before them). A report beside the goal
    // figure, last so that it changes nothing the figures before it measure.
    settle('before dropping both files from the page cache');
    for (const file of [plainFile, join(work, 'data', 'splitter', vpg.id, 'volumes', '0.img')]) {
      const dropped = spawnSync('dd', [`if=${file}`, 'iflag=nocache', 'count=0'], { encoding: 'utf8' });
      if (dropped.status !== 0) {
        throw new Error(`dd could not drop ${file} from the page cache: ${dropped.stderr}`);
      }
    }
    const coldRead = ['--name=coldread', '--rw=read', '--bs=1M', '--iodepth=4', `--size=${VOLUME_BYTES}`];
    fio([...coldRead, '--ioengine=nbd', `--uri=${nbdkitUri}`]);
    fio([...coldRead, '--ioengine=nbd', `--uri=${splitterUri}`]);
    const afterColdRead = await compare('4 KiB random writes, QD16, after each file was dropped from the page cache and read once through its server (1 MiB reads)', 'IOPS', 0, random, (r) => r.iops);
    figures.push({ ...afterColdRead, goal: 'report', met: null });
  } catch (err) {
    process.stderr.write(`the system's last output:\n${systemOutput().slice(-4000)}\n`);
    throw err;
  } finally {
    await stopChild(system);
    await stopChild(nbdkit);
    await stopChild(frontEnd);
  }
  return figures;
}

export const suite: BenchSuite = { name: 'block', tools: ['fio', 'nbdkit', 'nbdinfo', 'qemu-io', 'dd'], run };
