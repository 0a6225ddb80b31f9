import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { NestFactory } from '@nestjs/core';
import { InProcessBus } from '@cdp/bus';
import { CheckpointSchedulerService } from '@cdp/checkpoint-scheduler';
import { loadConfig } from '@cdp/config';
import { EmbeddedPostgresServer } from '@cdp/database';
import { VpgService } from '@cdp/recovery-orchestrator';
import { SplitterNbdService } from '@cdp/splitter';
import { AllInOneModule } from '../apps/all-in-one/src/all-in-one.module';
import { sharedBus, startSplitterHost, type SplitterHost } from '../apps/all-in-one/src/splitter-host';
import { fioInBackground } from './pipeline.bench';
import { type BenchContext, type BenchSuite, type Figure, median } from './suite';

/**
 * The stall a coordinated checkpoint adds to writes with three splitter instances: one VPG whose three
 * VMs sit on three hosts, each host's splitter its own instance (in this process, on the in-process
 * bus, each serving its VM's volume over NBD on its own port), fio writing 4 KiB random writes to
 * all three at a steady rate, automatic checkpoints every second and tagged ones asked for five times a
 * second. Each member measures how long it held new writes for each checkpoint (prepare to its
 * marker); the figure is the worst member's percentile, median over the runs.
 */
const HOSTS = ['host-a', 'host-b', 'host-c'];
const RATE_IOPS = 2_000;

async function run(ctx: BenchContext): Promise<Figure[]> {
  const seconds = ctx.quick ? 3 : 30;
  const server = new EmbeddedPostgresServer({ dataDir: join(ctx.work, 'pg'), logger: { log: () => undefined, warn: (m) => ctx.log(`  postgres: ${m}`) } });
  const pg = await server.start();
  const bus = new InProcessBus({ retention: 'consumed', values: 'hand-over' });
  const shared = sharedBus(bus);
  const dataDir = join(ctx.work, 'all-in-one');
  await mkdir(dataDir, { recursive: true });
  const config = loadConfig({ CDP_DATA_DIR: dataDir, DATABASE_URL: pg.url, CDP_HTTP_PORT: '0', CDP_NBD_PORT: '0', CDP_RECOVERY_NBD_PORT: '0' });
  const app = await NestFactory.createApplicationContext(AllInOneModule.forRoot(config, { bus: shared }), { logger: ['error'] });
  const hosts: SplitterHost[] = [];
  const p50s: number[] = [];
  const p99s: number[] = [];
  let checkpoints = 0;
  try {
    for (const host of HOSTS) {
      const dir = join(ctx.work, host);
      await mkdir(dir, { recursive: true });
      hosts.push(await startSplitterHost(dir, host, shared));
    }
    const vpgs = app.get(VpgService);
    const scheduler = app.get(CheckpointSchedulerService);
    for (let r = 0; r < ctx.repeats; r++) {
      const name = `barrier-${r}`;
      const vpg = await vpgs.create({
        name,
        vms: HOSTS.map((host) => ({ name: host, host, volumes: [{ name: 'disk', sizeBytes: 256 * 1024 ** 2, blockSize: 4096 }] })),
        settings: { checkpointIntervalSeconds: 1 },
      });
      const deadline = performance.now() + 10_000;
      while (!hosts.every((h) => h.splitter.allCaptures().some((c) => c.vpg.id === vpg.id))) {
        if (performance.now() > deadline) {
          throw new Error('the splitters never picked the VPG up');
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      const jobs = hosts.map((h, i) => {
        const uri = h.app.get(SplitterNbdService).uri(`${name}/${HOSTS[i]}/disk`);
        if (!uri) {
          throw new Error(`${HOSTS[i]} serves no NBD`);
        }
        return fioInBackground([
          `--name=${HOSTS[i]}`,
          '--ioengine=nbd',
          `--uri=${uri}`,
          '--rw=randwrite',
          '--bs=4k',
          '--iodepth=16',
          `--rate_iops=${RATE_IOPS}`,
          `--runtime=${seconds}`,
          '--time_based',
          '--size=256M',
        ]);
      });
      let asking = true;
      const tagged = (async () => {
        let n = 0;
        while (asking) {
          await scheduler.request(vpg.id, 'tagged', `b${n++}`, null, 0);
          await new Promise((resolve) => setTimeout(resolve, 200));
        }
      })();
      const results = await Promise.all(jobs.map((j) => j.done));
      asking = false;
      await tagged;
      const stalls = hosts.map((h) => h.splitter.capture(vpg.id).status().checkpointStall);
      const worstP50 = Math.max(...stalls.map((s) => s.p50Micros ?? Number.NaN)) / 1000;
      const worstP99 = Math.max(...stalls.map((s) => s.p99Micros ?? Number.NaN)) / 1000;
      const counts = scheduler.coordinator.counts();
      checkpoints = Math.min(...stalls.map((s) => s.count));
      ctx.log(
        `  run ${r + 1}: ${results.map((x) => Math.round(x.iops)).join('/')} IOPS, ${checkpoints} holds per member (${counts.cut} cut, ${counts.aborted} aborted so far), ` +
          `stall worst member p50 ${worstP50.toFixed(3)} ms, p99 ${worstP99.toFixed(3)} ms`,
      );
      if (!Number.isFinite(worstP99)) {
        throw new Error('no coordinated checkpoint was taken during the run');
      }
      p50s.push(worstP50);
      p99s.push(worstP99);
    }
  } finally {
    for (const host of hosts) {
      await host.app.close();
    }
    await app.close();
    await bus.close();
    await server.stop();
  }
  const command = `three splitter instances in one process (in-process bus), fio --rw=randwrite --bs=4k --iodepth=16 --rate_iops=${RATE_IOPS} on each host's NBD export for ${seconds} s; automatic checkpoints every 1 s and tagged ones every 200 ms; checkpointStall of each member`;
  return [
    ['p50', p50s, null],
    ['p99', p99s, 5],
  ].map(([label, runs, goal]) => {
    const values = runs as number[];
    const value = median(values);
    return {
      name: `checkpoint stall on writes, ${String(label)}, three splitters (coordinated; worst member; ${checkpoints} checkpoints per run)`,
      value,
      unit: 'ms',
      baseline: 'none (absolute)',
      baselineValue: null,
      ratio: null,
      goal: goal === null ? 'report' : `<= ${String(goal)} ms`,
      met: goal === null ? null : value <= (goal as number),
      command,
      runs: values,
      baselineRuns: [],
    };
  });
}

export const suite: BenchSuite = { name: 'barrier', tools: ['fio'], run };
