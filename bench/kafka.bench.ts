import { join } from 'node:path';
import { type INestApplication, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { Client } from 'pg';
import { DataSource } from 'typeorm';
import { type MockCluster, startMockCluster } from '@cdp/bus';
import { CheckpointSchedulerModule } from '@cdp/checkpoint-scheduler';
import { loadConfig } from '@cdp/config';
import { EmbeddedPostgresServer } from '@cdp/database';
import { JournalWriterModule } from '@cdp/journal-writer';
import { RecoveryOrchestratorModule, VpgService } from '@cdp/recovery-orchestrator';
import { InfrastructureModule } from '@cdp/service-runtime';
import { SplitterModule, SplitterService } from '@cdp/splitter';
import { TransportModule } from '@cdp/transport';
import { type BenchContext, type BenchSuite, type Figure, median, percentile } from './suite';

/**
 * Replication over the Kafka driver beside the in-process driver, same workload, same run: the five
 * services composed in this process (as the all-in-one composes them) on one bus or the other, the
 * Kafka one against librdkafka's mock cluster (kcat), the fastest Kafka-protocol broker available here.
 *
 * Workload: 4 KiB writes at random 4 KiB-aligned offsets of one 256 MiB volume, captured straight into
 * the splitter (no HTTP, no NBD: this measures the bus path). Two phases on the same pipeline:
 *
 * - throughput: as fast as it goes, 8 in flight, with at most WINDOW writes acknowledged but not yet
 *   journaled; writes (and payload MB) per second from the first acknowledgement until the journal has
 *   every write durable and indexed (its applied seq, polled every POLL_MS in Postgres). The window keeps
 *   the backlog in the broker bounded: the mock keeps only a few MiB per partition, and an unbounded
 *   backlog would measure its gap-and-replay path instead.
 * - lag: at a steady LAG_RATE writes/s (well below either driver's throughput, so no queue builds up),
 *   for each write the time from its acknowledgement (capture) to the first poll that saw it journaled;
 *   p50 and p99. Resolution POLL_MS, the same for both drivers. Under saturation the lag would only be
 *   the window divided by the throughput.
 */
const WRITE_BYTES = 4096;
const VOLUME_BYTES = 256 * 1024 * 1024;
const IN_FLIGHT = 8;
const WINDOW = 512;
const POLL_MS = 2;
const LAG_RATE = 200;
// Kafka consumers wait at most this long for data that has not arrived yet (CDP_KAFKA_MAX_WAIT_MS). A
// real broker answers a waiting fetch as soon as data arrives; against the mock cluster the lag grew far
// beyond the wait (measured here: p50 about 130 ms at 10 ms, 7 ms at 1 ms), so the bench uses 1 ms.
const KAFKA_MAX_WAIT_MS = 1;

interface RunResult {
  readonly writesPerSecond: number;
  readonly megabytesPerSecond: number;
  readonly lagP50Ms: number;
  readonly lagP99Ms: number;
}

type Driver = 'in-process' | 'kafka';

async function run(ctx: BenchContext): Promise<Figure[]> {
  const { quick, work, log, repeats } = ctx;
  const writes = quick ? 1_500 : 20_000;
  const server = new EmbeddedPostgresServer({ dataDir: join(work, 'pg'), logger: { log: () => undefined, warn: (m) => log(m) } });
  const { url } = await server.start();
  let cluster: MockCluster | undefined;
  const results: Record<Driver, RunResult[]> = { 'in-process': [], kafka: [] };
  try {
    cluster = await startMockCluster();
    for (let i = 0; i < repeats; i++) {
      for (const driver of ['in-process', 'kafka'] as const) {
        const database = await createDatabase(url, `bench_${driver.replace('-', '_')}_${i}`);
        const env: Record<string, string> = {
          CDP_DATA_DIR: join(work, `${driver}-${i}`),
          DATABASE_URL: database,
          CDP_HTTP_PORT: '0',
          CDP_NBD_PORT: '0',
          CDP_RECOVERY_NBD_PORT: '0',
          CDP_BUS: driver,
          ...(driver === 'kafka'
            ? {
                CDP_KAFKA_BROKERS: cluster.bootstrap,
                CDP_KAFKA_TOPIC_CREATION: 'broker-auto-creates',
                CDP_KAFKA_IDEMPOTENT: 'false',
                CDP_KAFKA_SESSION_TIMEOUT_MS: '6000',
                CDP_KAFKA_MAX_WAIT_MS: String(KAFKA_MAX_WAIT_MS),
              }
            : {}),
        };
        const result = await measure(env, writes, `vpg-${driver}-${i}`);
        results[driver].push(result);
        log(
          `${driver} run ${i + 1}: ${result.writesPerSecond.toFixed(0)} writes/s, ${result.megabytesPerSecond.toFixed(1)} MB/s, ` +
            `lag p50 ${result.lagP50Ms.toFixed(1)} ms, p99 ${result.lagP99Ms.toFixed(1)} ms`,
        );
      }
    }
  } finally {
    await cluster?.stop();
    await server.stop();
  }
  const command =
    `bench/kafka.bench.ts: ${writes} random ${WRITE_BYTES} B writes, ${IN_FLIGHT} in flight, at most ${WINDOW} unjournaled; ` +
    `lag at ${LAG_RATE} writes/s; Kafka: kcat mock cluster, max wait ${KAFKA_MAX_WAIT_MS} ms`;
  const figure = (name: string, unit: string, pick: (r: RunResult) => number, baseline: string): Figure => {
    const runs = results.kafka.map(pick);
    const baselineRuns = results['in-process'].map(pick);
    return {
      name,
      value: median(runs),
      unit,
      baseline,
      baselineValue: median(baselineRuns),
      ratio: median(runs) / median(baselineRuns),
      goal: 'report',
      met: null,
      command,
      runs,
      baselineRuns,
    };
  };
  return [
    figure('replication throughput over Kafka (mock cluster), acknowledged to journaled', 'writes/s', (r) => r.writesPerSecond, 'in-process bus, same workload'),
    figure('replication throughput over Kafka (mock cluster), payload', 'MB/s', (r) => r.megabytesPerSecond, 'in-process bus, same workload'),
    figure(`end-to-end lag over Kafka (mock cluster), capture to journaled at ${LAG_RATE} writes/s, p50`, 'ms', (r) => r.lagP50Ms, 'in-process bus, same workload'),
    figure(`end-to-end lag over Kafka (mock cluster), capture to journaled at ${LAG_RATE} writes/s, p99`, 'ms', (r) => r.lagP99Ms, 'in-process bus, same workload'),
  ];
}

async function measure(env: Record<string, string>, writes: number, name: string): Promise<RunResult> {
  const config = loadConfig(env);
  @Module({})
  class BenchPipelineModule {}
  const app: INestApplication = await NestFactory.create(
    {
      module: BenchPipelineModule,
      imports: [
        InfrastructureModule.forRoot(config, { service: 'bench', database: true }),
        SplitterModule,
        TransportModule,
        JournalWriterModule,
        CheckpointSchedulerModule,
        RecoveryOrchestratorModule,
      ],
    },
    { logger: ['error'] },
  );
  await app.init();
  try {
    const vpg = await app.get(VpgService).create({
      name,
      vms: [{ name: 'vm', volumes: [{ name: 'disk', sizeBytes: VOLUME_BYTES, blockSize: 4096 }] }],
      // No automatic checkpoint during the run: markers would share the stream with the measured writes.
      settings: { checkpointIntervalSeconds: 60 },
    });
    const volumeId = vpg.vms[0]!.volumes[0]!.id;
    const splitter = app.get(SplitterService);
    const dataSource = app.get(DataSource);
    await until(() => splitter.allCaptures().some((c) => c.status().vpgId === vpg.id), 60_000, 'the splitter to protect the VPG');
    const capture = splitter.capture(vpg.id);

    let applied = 0;
    let polling = true;
    const ackedAt = new Map<number, number>();
    const lags: number[] = [];
    let lastSeq = 0;
    const poller = (async (): Promise<void> => {
      while (polling) {
        const rows = await dataSource.query<{ applied_seq: string }[]>(`SELECT applied_seq FROM journal_vpgs WHERE vpg_id = $1`, [vpg.id]);
        const seq = Number(rows[0]?.applied_seq ?? 0);
        const now = performance.now();
        for (let s = applied + 1; s <= seq; s++) {
          const at = ackedAt.get(s);
          if (at !== undefined) {
            lags.push(now - at);
            ackedAt.delete(s);
          }
        }
        applied = Math.max(applied, seq);
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      }
    })();

    const payload = Buffer.alloc(WRITE_BYTES);
    let x = 0x9e3779b9;
    const write = async (): Promise<number> => {
      x ^= x << 13;
      x >>>= 0;
      x ^= x >>> 17;
      x ^= x << 5;
      x >>>= 0;
      payload.writeUInt32LE(x, 0);
      const seq = await capture.write(volumeId, (x % (VOLUME_BYTES / WRITE_BYTES)) * WRITE_BYTES, Buffer.from(payload));
      if (seq === null) {
        throw new Error('the splitter log could not take a write (degraded mode): the figures would not be of the replication path');
      }
      ackedAt.set(seq, performance.now());
      lastSeq = Math.max(lastSeq, seq);
      return seq;
    };
    let seconds: number;
    try {
      let issued = 0;
      const start = performance.now();
      const writer = async (): Promise<void> => {
        while (issued < writes) {
          if (lastSeq - applied >= WINDOW) {
            await new Promise((resolve) => setTimeout(resolve, POLL_MS));
            continue;
          }
          issued++;
          await write();
        }
      };
      await Promise.all(Array.from({ length: IN_FLIGHT }, writer));
      await until(() => applied >= lastSeq, 120_000, 'the journal to catch up');
      seconds = (performance.now() - start) / 1000;

      lags.length = 0;
      const paced = Math.max(100, Math.floor(writes / 10));
      const pacedStart = performance.now();
      const inFlight: Promise<number>[] = [];
      for (let i = 0; i < paced; i++) {
        const due = pacedStart + (i * 1000) / LAG_RATE;
        const wait = due - performance.now();
        if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
        inFlight.push(write());
      }
      await Promise.all(inFlight);
      await until(() => applied >= lastSeq, 60_000, 'the journal to catch up with the paced writes');
    } finally {
      polling = false;
      await poller;
    }
    return {
      writesPerSecond: writes / seconds,
      megabytesPerSecond: (writes * WRITE_BYTES) / seconds / 1e6,
      lagP50Ms: percentile(lags, 50),
      lagP99Ms: percentile(lags, 99),
    };
  } finally {
    await app.close();
  }
}

async function until(predicate: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

async function createDatabase(adminUrl: string, name: string): Promise<string> {
  const client = new Client({ connectionString: adminUrl });
  await client.connect();
  try {
    await client.query(`CREATE DATABASE ${client.escapeIdentifier(name)}`);
  } finally {
    await client.end();
  }
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

export const suite: BenchSuite = { name: 'kafka', tools: ['kcat'], run };
