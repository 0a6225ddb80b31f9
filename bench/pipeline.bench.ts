import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fio, startAllInOne, type FioResult } from './block.bench';
import { type BenchContext, type BenchSuite, type Figure, json, median, percentile, stopChild, until } from './suite';

/**
 * The pipeline under sustained load, driven as a user would (the all-in-one process, VPGs over HTTP,
 * fio through the splitter's NBD exports):
 *
 * - RPO: how far the journal trails the acknowledged writes, sampled every 50 ms while fio writes at
 *   50% and at 90% of the highest rate the path sustained in the same run. At each sample the RPO is
 *   how long ago the splitter had acknowledged no more than the journal now holds (interpolated
 *   between samples).
 * - Checkpoint stall: how long placing each checkpoint held up the VPG's writes (the splitter measures
 *   it around the marker's insertion; with one splitter nothing else holds writes).
 * - Memory: the all-in-one's resident set while 10 VPGs take writes for 10 minutes.
 */
const SAMPLE_MS = 50;

interface VpgHandle {
  readonly id: string;
  readonly uri: string;
}

async function createVpg(api: string, name: string, sizeBytes: number, checkpointIntervalSeconds: number): Promise<VpgHandle> {
  const vpg = await json<{ id: string }>('POST', `${api}/vpgs`, {
    name,
    vms: [{ name: 'vm', volumes: [{ name: 'disk', sizeBytes, blockSize: 4096 }] }],
    settings: { checkpointIntervalSeconds },
  });
  await until(async () => (await fetch(`${api}/splitter/vpgs/${vpg.id}`)).ok, 10_000, `the splitter to protect ${name}`);
  const nbd = await json<{ host: string; port: number }>('GET', `${api}/splitter/nbd`);
  return { id: vpg.id, uri: `nbd://${nbd.host}:${nbd.port}/${name}/vm/disk` };
}

export function fioInBackground(args: readonly string[]): { done: Promise<FioResult>; command: string } {
  const full = ['--output-format=json', '--group_reporting', ...args];
  const child = spawn('fio', full, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const done = new Promise<FioResult>((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => {
      if (code !== 0) {
        reject(new Error(`fio failed (${String(code)}): ${err}`));
        return;
      }
      const parsed = JSON.parse(out.slice(out.indexOf('{'))) as { jobs: { write: { iops: number; bw: number } }[] };
      const job = parsed.jobs[0];
      resolve({ iops: job?.write.iops ?? 0, mbPerSecond: ((job?.write.bw ?? 0) * 1024) / 1e6 });
    });
  });
  return { done, command: `fio ${args.join(' ')}` };
}

/** RPO samples (ms) while `load` runs: each the age of the newest acknowledged write the journal already held. */
async function sampleRpo(api: string, vpgId: string, load: Promise<unknown>): Promise<number[]> {
  const acknowledged: { t: number; seq: number }[] = [];
  const rpo: number[] = [];
  let running = true;
  void load.finally(() => (running = false)).catch(() => undefined);
  while (running) {
    const t = performance.now();
    const [splitter, journal] = await Promise.all([
      json<{ lastSeq: number }>('GET', `${api}/splitter/vpgs/${vpgId}`),
      json<{ journal: { appliedSeq: number } }>('GET', `${api}/vpgs/${vpgId}`),
    ]);
    acknowledged.push({ t, seq: splitter.lastSeq });
    const applied = journal.journal.appliedSeq;
    if (splitter.lastSeq <= applied) {
      rpo.push(0);
    } else {
      // The last moment the splitter had acknowledged nothing the journal lacks now: between the last
      // sample at or below the applied seq and the next one, interpolated (writes arrive at a steady
      // rate), so the figure is not rounded to the sampling interval.
      let held: number | undefined;
      for (let i = acknowledged.length - 2; i >= 0; i--) {
        const before = acknowledged[i] as { t: number; seq: number };
        if (before.seq <= applied) {
          const after = acknowledged[i + 1] as { t: number; seq: number };
          held = before.t + ((applied - before.seq) / (after.seq - before.seq)) * (after.t - before.t);
          break;
        }
      }
      rpo.push(t - (held ?? (acknowledged[0] as { t: number }).t));
    }
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, SAMPLE_MS - (performance.now() - t))));
  }
  await load;
  return rpo;
}

function rssMegabytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = /VmRSS:\s+(\d+)\s+kB/.exec(status)?.[1];
  if (!kb) {
    throw new Error(`no VmRSS for pid ${pid}`);
  }
  return Number(kb) / 1024;
}

async function run(ctx: BenchContext): Promise<Figure[]> {
  const { quick, repeats, work, log } = ctx;
  const maxSeconds = quick ? 2 : 15;
  const rpoSeconds = quick ? 3 : 30;
  const memorySeconds = quick ? 6 : 600;
  const figures: Figure[] = [];
  const system = await startAllInOne(join(work, 'data'));
  const pid = system.child.pid as number;
  try {
    const api = system.api;
    const vpg = await createVpg(api, 'rpo', 2 * 1024 ** 3, 1);
    const job = ['--name=rpo', '--rw=randwrite', '--bs=4k', '--iodepth=16', '--ioengine=nbd', `--uri=${vpg.uri}`, '--size=2G', '--randrepeat=0', '--time_based'];
    const catchUp = (): Promise<number> =>
      until(async () => {
        const splitter = await json<{ lastSeq: number }>('GET', `${api}/splitter/vpgs/${vpg.id}`);
        const journal = await json<{ journal: { appliedSeq: number } }>('GET', `${api}/vpgs/${vpg.id}`);
        return journal.journal.appliedSeq >= splitter.lastSeq;
      }, 600_000, 'the journal to catch up');

    // The highest rate the whole path sustains: fio unthrottled, then the time the journal needed to
    // catch up stretches the run it sustained over.
    const maxRuns: number[] = [];
    for (let i = 0; i < repeats; i++) {
      const measured = fio([...job, `--runtime=${maxSeconds}`]).result;
      const behindMs = await catchUp();
      maxRuns.push((measured.iops * maxSeconds) / (maxSeconds + behindMs / 1000));
    }
    const maxRate = median(maxRuns);
    log(`highest sustained rate: ${maxRate.toFixed(0)} writes/s (4 KiB, QD16)`);

    for (const [share, goalMs] of [
      [0.5, 1000],
      [0.9, 2000],
    ] as const) {
      const p50s: number[] = [];
      const p99s: number[] = [];
      let command = '';
      for (let i = 0; i < repeats; i++) {
        const load = fioInBackground([...job, `--runtime=${rpoSeconds}`, `--rate_iops=${Math.max(1, Math.round(maxRate * share))}`]);
        command = load.command;
        const samples = await sampleRpo(api, vpg.id, load.done);
        await catchUp();
        p50s.push(percentile(samples, 50));
        p99s.push(percentile(samples, 99));
      }
      log(`RPO at ${share * 100}%: p50 ${median(p50s).toFixed(0)} ms, p99 ${median(p99s).toFixed(0)} ms`);
      for (const [label, runs, goal] of [
        ['p50', p50s, null],
        ['p99', p99s, goalMs],
      ] as const) {
        const value = median(runs);
        figures.push({
          name: `RPO ${label} at ${share * 100}% of the highest sustained write rate (${Math.round(maxRate * share)} writes/s of 4 KiB)`,
          value,
          unit: 'ms',
          baseline: 'none (absolute)',
          baselineValue: null,
          ratio: null,
          goal: goal === null ? 'report' : `<= ${goal} ms`,
          met: goal === null ? null : value <= goal,
          command: `${command}; GET splitter lastSeq and journal appliedSeq every ${SAMPLE_MS} ms`,
          runs,
          baselineRuns: [],
        });
      }
    }

    const status = await json<{ checkpointStall: { count: number; p50Micros: number | null; p99Micros: number | null } }>('GET', `${api}/splitter/vpgs/${vpg.id}`);
    const stall = status.checkpointStall;
    log(`checkpoint stall over ${stall.count} checkpoints: p50 ${String(stall.p50Micros)} µs, p99 ${String(stall.p99Micros)} µs`);
    for (const [label, value, goal] of [
      ['p50', stall.p50Micros, null],
      ['p99', stall.p99Micros, 1],
    ] as const) {
      if (value === null) {
        throw new Error('no checkpoint was taken during the run');
      }
      figures.push({
        name: `checkpoint stall on writes, ${label}, one splitter (${stall.count} checkpoints, one a second, under the runs above)`,
        value: value / 1000,
        unit: 'ms',
        baseline: 'none (absolute)',
        baselineValue: null,
        ratio: null,
        goal: goal === null ? 'report' : `<= ${goal} ms`,
        met: goal === null ? null : value / 1000 <= goal,
        command: 'GET /api/splitter/vpgs/:id (checkpointStall: time the marker insertion held the VPG\'s writes)',
        runs: [value / 1000],
        baselineRuns: [],
      });
    }

    // Memory: 10 VPGs, each written at a steady rate, for 10 minutes.
    const vpgs: VpgHandle[] = [];
    for (let i = 0; i < 10; i++) {
      vpgs.push(await createVpg(api, `mem-${i}`, 256 * 1024 ** 2, 5));
    }
    const jobs = vpgs.flatMap((v, i) => [`--name=mem-${i}`, '--rw=randwrite', '--bs=4k', '--iodepth=4', '--ioengine=nbd', `--uri=${v.uri}`, '--size=256M', '--rate_iops=300', '--time_based', `--runtime=${memorySeconds}`]);
    const memoryLoad = fioInBackground(jobs);
    const rss: { t: number; mb: number }[] = [];
    const started = performance.now();
    let finished = false;
    void memoryLoad.done.finally(() => (finished = true)).catch(() => undefined);
    while (!finished) {
      rss.push({ t: (performance.now() - started) / 1000, mb: rssMegabytes(pid) });
      await new Promise((resolve) => setTimeout(resolve, quick ? 500 : 5_000));
    }
    await memoryLoad.done;
    // After the first tenth of the run (start-up, caches and pools filling) the set should stay flat.
    const settled = rss.filter((s) => s.t >= memorySeconds / 10);
    const first = settled[0]?.mb ?? (rss[0] as { mb: number }).mb;
    const last = (rss[rss.length - 1] as { mb: number }).mb;
    const peak = Math.max(...rss.map((s) => s.mb));
    log(`all-in-one RSS with 10 VPGs writing: ${first.toFixed(0)} MB after warm-up, ${last.toFixed(0)} MB at the end, peak ${peak.toFixed(0)} MB`);
    figures.push({
      name: `memory of the all-in-one (RSS) with 10 VPGs writing 300 writes/s each for ${memorySeconds / 60} min: at the end (peak ${peak.toFixed(0)} MB)`,
      value: last,
      unit: 'MB',
      baseline: `RSS after the first tenth of the run`,
      baselineValue: first,
      ratio: last / first,
      goal: 'flat: end <= 1.1 × after warm-up',
      met: last / first <= 1.1,
      command: `${memoryLoad.command.slice(0, 160)}… (10 jobs); VmRSS every ${quick ? 0.5 : 5} s`,
      runs: rss.map((s) => s.mb),
      baselineRuns: [],
    });
  } catch (err) {
    log(`the system's last output:\n${system.output().slice(-4000)}`);
    throw err;
  } finally {
    await stopChild(system.child);
  }
  return figures;
}

export const suite: BenchSuite = { name: 'pipeline', tools: ['fio'], run };
