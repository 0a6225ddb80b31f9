import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { type CreateVpgRequest, vpgSchema } from '@cdp/contracts';

/**
 * The deployments' demo workload, a one-shot process: it waits until the recovery orchestrator and the
 * splitter are ready, creates the demo VPG through the orchestrator's API (or finds it, so a rerun
 * carries on), writes random blocks through the splitter's API with a flush every few writes and a
 * tagged checkpoint now and then, and exits 0 once every write is acknowledged and the last tag is
 * recorded (recoverable). Any failure exits 1 with the reason.
 *
 *   node -r ./tools/register.cjs deploy/demo-workload.ts
 */

const url = z.url({ protocol: /^https?$/ }).transform((u) => u.replace(/\/+$/, ''));
const envSchema = z.object({
  CDP_DEMO_ORCHESTRATOR_URL: url.default('http://recovery-orchestrator:8080'),
  CDP_DEMO_SPLITTER_URL: url.default('http://splitter:8080'),
  CDP_DEMO_VPG: z.string().min(1).max(200).default('demo'),
  CDP_DEMO_WRITES: z.coerce.number().int().min(1).max(10_000_000).default(600),
  CDP_DEMO_WRITES_PER_SECOND: z.coerce.number().int().min(1).max(10_000).default(10),
  CDP_DEMO_READY_TIMEOUT_SECONDS: z.coerce.number().int().min(1).max(3_600).default(300),
});
type DemoConfig = z.infer<typeof envSchema>;

const MiB = 1024 * 1024;
const FLUSH_EVERY = 20;
const TAG_EVERY = 200;

function log(line: string): void {
  process.stdout.write(`demo-workload: ${line}\n`);
}

async function call(method: string, target: string, body?: Buffer | object): Promise<Response> {
  const init: RequestInit =
    body === undefined
      ? { method }
      : Buffer.isBuffer(body)
        ? { method, body, headers: { 'content-type': 'application/octet-stream' } }
        : { method, body: JSON.stringify(body), headers: { 'content-type': 'application/json' } };
  return fetch(target, { ...init, signal: AbortSignal.timeout(30_000) });
}

async function expectOk(method: string, target: string, body?: Buffer | object): Promise<unknown> {
  const response = await call(method, target, body);
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`${method} ${target} answered ${response.status}: ${text.slice(0, 500)}`);
  }
  return text === '' ? undefined : (JSON.parse(text) as unknown);
}

/** Polls until `probe` answers true; a refused connection counts as "not yet". */
async function until(what: string, deadline: number, probe: () => Promise<boolean>): Promise<void> {
  let last = 'no answer yet';
  for (;;) {
    try {
      if (await probe()) {
        return;
      }
      last = 'not yet';
    } catch (err) {
      last = err instanceof Error ? err.message : String(err);
    }
    if (Date.now() > deadline) {
      throw new Error(`gave up waiting for ${what}: ${last}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 1_000));
  }
}

async function run(config: DemoConfig): Promise<void> {
  const api = `${config.CDP_DEMO_ORCHESTRATOR_URL}/api`;
  const splitter = `${config.CDP_DEMO_SPLITTER_URL}/api/splitter`;
  const deadline = Date.now() + config.CDP_DEMO_READY_TIMEOUT_SECONDS * 1_000;
  for (const base of [config.CDP_DEMO_ORCHESTRATOR_URL, config.CDP_DEMO_SPLITTER_URL]) {
    await until(`${base} to be ready`, deadline, async () => (await call('GET', `${base}/api/health/ready`)).ok);
  }

  const existing = z.array(vpgSchema).parse(await expectOk('GET', `${api}/vpgs`));
  const request: CreateVpgRequest = {
    name: config.CDP_DEMO_VPG,
    vms: [
      { name: 'web-01', volumes: [{ name: 'root', sizeBytes: 64 * MiB, blockSize: 512 }] },
      { name: 'db-01', volumes: [{ name: 'data', sizeBytes: 128 * MiB, blockSize: 4096 }] },
    ],
    // One hour of history keeps the demo's journal small; the history alerts scale down with it.
    settings: { checkpointIntervalSeconds: 5, journalHistorySeconds: 3_600, historyWarningSeconds: 2_700, historyAlertSeconds: 900 },
  };
  const vpg = existing.find((v) => v.name === config.CDP_DEMO_VPG) ?? vpgSchema.parse(await expectOk('POST', `${api}/vpgs`, request));
  log(`VPG ${vpg.name} (${vpg.id})`);
  await until(`the splitter to protect VPG ${vpg.id}`, deadline, async () => (await call('GET', `${splitter}/vpgs/${vpg.id}`)).ok);

  const volumes = vpg.vms.flatMap((vm) => vm.volumes);
  const interval = 1_000 / config.CDP_DEMO_WRITES_PER_SECOND;
  const started = Date.now();
  for (let n = 1; n <= config.CDP_DEMO_WRITES; n++) {
    const volume = volumes[n % volumes.length]!;
    const blocks = 1 + Math.floor(Math.random() * 8);
    const length = volume.blockSize * blocks;
    const offset = volume.blockSize * Math.floor(Math.random() * ((volume.sizeBytes - length) / volume.blockSize));
    await expectOk('PUT', `${splitter}/vpgs/${vpg.id}/volumes/${volume.id}/data?offset=${offset}`, randomBytes(length));
    if (n % FLUSH_EVERY === 0) {
      await expectOk('POST', `${splitter}/vpgs/${vpg.id}/flush`);
    }
    if (n % TAG_EVERY === 0 || n === config.CDP_DEMO_WRITES) {
      await expectOk('POST', `${splitter}/vpgs/${vpg.id}/flush`);
      await expectOk('POST', `${api}/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: `demo-workload write ${n}` });
      log(`${n} writes acknowledged, tagged checkpoint "demo-workload write ${n}" recorded`);
    }
    // Paces the workload to the configured rate; a slow acknowledgement just lowers it.
    const due = started + n * interval;
    if (due > Date.now()) {
      await new Promise((resolve) => setTimeout(resolve, due - Date.now()));
    }
  }
  log(`done: ${config.CDP_DEMO_WRITES} writes in ${((Date.now() - started) / 1_000).toFixed(1)} s`);
}

function main(): void {
  const parsed = envSchema.safeParse(Object.fromEntries(Object.entries(process.env).filter(([, v]) => v !== undefined && v !== '')));
  if (!parsed.success) {
    process.stderr.write(`demo-workload: invalid configuration:\n${parsed.error.issues.map((i) => `  - ${i.path.join('.')}: ${i.message}`).join('\n')}\n`);
    process.exit(2);
  }
  run(parsed.data).catch((err: unknown) => {
    process.stderr.write(`demo-workload: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}

main();
