import { InProcessBus, type Bus } from '@cdp/bus';
import { type Checkpoint, type Vpg } from '@cdp/domain';
import { type VpgCapture } from '@cdp/splitter';
import { seededRandom, tempDir, waitFor, type TempDir } from '@cdp/testing';
import { startTestApp, type TestApp } from './all-in-one.test-app';
import { sharedBus, startSplitterHost, type SplitterHost } from './splitter-host';

const HOSTS = ['host-a', 'host-b', 'host-c'] as const;
const BLOCK = 512;
const BLOCKS = 768;

/**
 * How many leading blocks of a recovered volume hold the workload's writes, checking that they are a
 * prefix: block i holds i + 1 once written, zeros before.
 */
export function writtenPrefix(image: Buffer): number {
  let n = 0;
  while (n < BLOCKS && image.readUInt32LE(n * BLOCK) === n + 1) {
    n++;
  }
  for (let i = n; i < BLOCKS; i++) {
    if (image.readUInt32LE(i * BLOCK) !== 0) {
      throw new Error(`block ${i} holds ${image.readUInt32LE(i * BLOCK)} after the written prefix of ${n} blocks: not a prefix of the workload`);
    }
  }
  return n;
}

/**
 * The workload is one causal chain: write i goes to host A, then, once acknowledged, to B, then to C,
 * then write i + 1 to A. A consistent cut that holds B's write i holds A's write i, and so on round
 * the chain: with a, b, c the written prefixes, a >= b >= c >= a - 1.
 */
export function causalViolation(a: number, b: number, c: number): string | null {
  if (b > a) {
    return `host-b holds write ${b - 1}, host-a only ${a - 1}`;
  }
  if (c > b) {
    return `host-c holds write ${c - 1}, host-b only ${b - 1}`;
  }
  if (a > c + 1) {
    return `host-a holds write ${a - 1}, host-c only ${c - 1}`;
  }
  return null;
}

/**
 * Coordinated checkpoints of a VPG whose three VMs sit on three hosts, each captured by its own
 * splitter instance (CDP_SPLITTER_HOST) with its own order: a causal workload across the hosts with
 * random timing while checkpoints are asked for at random moments; every recorded checkpoint is
 * recovered through the API and must be a consistent cut of the chain.
 */
describe('coordinated checkpoints across three splitter instances', () => {
  let bus: InProcessBus;
  let late: Bus;
  let testApp: TestApp;
  const hosts: ({ host: string; dir: TempDir } & SplitterHost)[] = [];
  const startHost = (host: string, dir: TempDir): Promise<SplitterHost> => startSplitterHost(dir.path, host, late);

  beforeAll(async () => {
    bus = new InProcessBus();
    const shared = sharedBus(bus);
    testApp = await startTestApp({ bus: shared });
    // Hosts are apart: each gets every message a little later than the others, at random, so the
    // coordinator's commands reach the three splitters at different moments (as over a network).
    const random = seededRandom(7);
    late = {
      ...shared,
      createConsumer: (options) => {
        const consumer = bus.createConsumer(options);
        return {
          run: (handler) =>
            consumer.run(async (batch, context) => {
              await new Promise<void>((resolve) => setTimeout(resolve, Math.floor(random() * 3)));
              await handler(batch, context);
            }),
          stop: () => consumer.stop(),
        };
      },
    };
    for (const host of HOSTS) {
      const dir = await tempDir(`splitter-${host}-`);
      hosts.push({ host, dir, ...(await startHost(host, dir)) });
    }
  });

  afterAll(async () => {
    for (const host of hosts) {
      await host.app.close();
      await host.dir.cleanup();
    }
    await testApp?.close();
    await bus?.close();
  });

  const createVpg = async (name: string): Promise<{ vpg: Vpg; volumeIds: string[] }> => {
    const vpg = await testApp.api.ok<Vpg>('POST', '/vpgs', {
      name,
      vms: HOSTS.map((host) => ({ name: `vm-${host}`, host, volumes: [{ name: 'disk', sizeBytes: BLOCKS * BLOCK }] })),
      settings: { checkpointIntervalSeconds: 1 },
    });
    for (const host of hosts) {
      await waitFor(() => host.splitter.allCaptures().some((c) => c.vpg.id === vpg.id), { timeoutMs: 10_000, message: `${host.host} never picked the VPG up` });
    }
    return { vpg, volumeIds: vpg.vms.map((vm) => vm.volumes[0]!.id) };
  };

  const block = (i: number): Buffer => {
    const data = Buffer.alloc(BLOCK, 0xab);
    data.writeUInt32LE(i + 1, 0);
    return data;
  };

  /** Every recorded checkpoint recovered through the API; returns the written prefixes per checkpoint. */
  const recoverAll = async (vpgId: string, volumeIds: readonly string[]): Promise<{ checkpoint: Checkpoint; prefixes: number[] }[]> => {
    const checkpoints = await testApp.api.ok<Checkpoint[]>('GET', `/vpgs/${vpgId}/checkpoints?limit=1000`);
    const out: { checkpoint: Checkpoint; prefixes: number[] }[] = [];
    for (const checkpoint of checkpoints) {
      const prefixes: number[] = [];
      for (const volumeId of volumeIds) {
        const { status, data } = await testApp.api.bytes(`/vpgs/${vpgId}/checkpoints/${checkpoint.id}/volumes/${volumeId}/image`);
        expect({ status, body: status === 200 ? '' : data.toString('utf8') }).toEqual({ status: 200, body: '' });
        prefixes.push(writtenPrefix(data));
      }
      out.push({ checkpoint, prefixes });
    }
    return out;
  };

  // Three rounds in the suite; CDP_BARRIER_ROUNDS=n runs n, each with its own seeded timing (a soak).
  const rounds = Array.from({ length: Math.max(1, Number(process.env['CDP_BARRIER_ROUNDS'] ?? 3) || 3) }, (_, i) => i + 1);
  it.each(rounds)('never records a checkpoint that holds a write without every write acknowledged before it on any host (round %i)', async (round) => {
    const { api } = testApp;
    const { vpg, volumeIds } = await createVpg(`three-hosts-${round}`);
    const captures: VpgCapture[] = hosts.map((h) => h.splitter.capture(vpg.id));
    // The default host's splitter (the all-in-one's own) has no VM of this VPG.
    expect((await api.json('GET', `/splitter/vpgs/${vpg.id}`)).status).toBe(404);

    const random = seededRandom(20261125 + round);
    const jitter = async (): Promise<void> => {
      const r = random();
      if (r < 0.5) {
        return;
      }
      if (r < 0.8) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        return;
      }
      await new Promise<void>((resolve) => setTimeout(resolve, Math.floor(random() * 4)));
    };
    let done = false;
    const asked: Promise<unknown>[] = [];
    const asking = (async () => {
      let n = 0;
      while (!done) {
        asked.push(api.json('POST', `/vpgs/${vpg.id}/checkpoints`, { name: `t${n++}` }));
        await new Promise<void>((resolve) => setTimeout(resolve, 5 + Math.floor(random() * 40)));
      }
    })();
    for (let i = 0; i < BLOCKS; i++) {
      for (let h = 0; h < HOSTS.length; h++) {
        await captures[h]!.write(volumeIds[h]!, i * BLOCK, block(i));
        await jitter();
      }
    }
    done = true;
    await asking;
    await Promise.all(asked);
    // Everything asked for is settled once one more checkpoint after the workload is recorded.
    const last = await api.ok<{ status: string }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=20000`, { name: 'after' });
    expect(last.status).toBe('recorded');

    const recovered = await recoverAll(vpg.id, volumeIds);
    expect(recovered.length).toBeGreaterThanOrEqual(20);
    for (const { checkpoint, prefixes } of recovered) {
      const [a, b, c] = prefixes as [number, number, number];
      expect({ checkpoint: checkpoint.name, violation: causalViolation(a, b, c) }).toEqual({ checkpoint: checkpoint.name, violation: null });
    }
    // The checkpoints fell inside the workload, not only before and after it.
    expect(recovered.filter(({ prefixes }) => prefixes[0]! > 0 && prefixes[0]! < BLOCKS).length).toBeGreaterThanOrEqual(10);
    expect(recovered.find(({ checkpoint }) => checkpoint.name === 'after')?.prefixes).toEqual([BLOCKS, BLOCKS, BLOCKS]);

    // Each member held its writes for every coordinated checkpoint, and says for how long.
    for (const capture of captures) {
      const stall = capture.status().checkpointStall;
      expect(stall.count).toBeGreaterThanOrEqual(recovered.length);
      expect(stall.p99Micros).not.toBeNull();
    }

    // A time inside the journal recovers to the newest checkpoint at or before it: only coordinated
    // checkpoints are consistent cuts of a VPG with several members.
    const checkpoints = recovered.map((r) => r.checkpoint);
    const middle = checkpoints[Math.floor(checkpoints.length / 2)]!;
    const opened = await api.ok<{ id: string; cut: number }>('POST', `/vpgs/${vpg.id}/exports`, { volumeId: volumeIds[0], at: middle.capturedAt });
    expect(opened.cut).toBe(Math.max(...checkpoints.filter((c) => c.capturedAt <= middle.capturedAt).map((c) => c.cut)));
    expect((await api.json('DELETE', `/exports/${opened.id}`)).status).toBe(204);
  }, 120_000);

  it('a host that is down costs the others at most the report timeout per checkpoint, and none is recorded until it is back', async () => {
    const { api } = testApp;
    const { vpg, volumeIds } = await createVpg('one-host-down');
    const [a, b, c] = hosts as [(typeof hosts)[number], (typeof hosts)[number], (typeof hosts)[number]];
    for (let i = 0; i < 10; i++) {
      for (const [h, host] of [a, b, c].entries()) {
        await host.splitter.capture(vpg.id).write(volumeIds[h]!, i * BLOCK, block(i));
      }
    }
    const before = await api.ok<{ status: string; checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=20000`, { name: 'before' });
    expect(before.status).toBe('recorded');

    await c.app.close();
    // Host c is down: a and b go on writing; every coordinated checkpoint is aborted after the report
    // timeout and voided by a and b, whose writes resume.
    const asked = await api.ok<{ status: string }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=2500`, { name: 'while-down' });
    expect(asked.status).toBe('requested');
    const started = performance.now();
    for (let i = 10; i < 40; i++) {
      await a.splitter.capture(vpg.id).write(volumeIds[0]!, i * BLOCK, block(i));
      await b.splitter.capture(vpg.id).write(volumeIds[1]!, i * BLOCK, block(i));
    }
    // Thirty writes each, through at most a couple of held rounds: never stuck behind the down host.
    expect(performance.now() - started).toBeLessThan(10_000);
    const voided = [a, b].map((h) => h.splitter.capture(vpg.id).status().checkpointStall.maxMicros ?? 0);
    expect(Math.max(...voided)).toBeLessThan(2_000_000 + 500_000);

    // Host c comes back (a new process on its data directory): checkpoints are cut again, consistent.
    Object.assign(c, await startHost(c.host, c.dir));
    await waitFor(() => c.splitter.allCaptures().some((x) => x.vpg.id === vpg.id), { timeoutMs: 10_000, message: 'host c did not reopen the VPG' });
    for (let i = 10; i < 40; i++) {
      await c.splitter.capture(vpg.id).write(volumeIds[2]!, i * BLOCK, block(i));
    }
    const after = await api.ok<{ status: string }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=20000`, { name: 'after' });
    expect(after.status).toBe('recorded');
    const recovered = await recoverAll(vpg.id, volumeIds);
    expect(recovered.find((r) => r.checkpoint.name === 'before')?.prefixes).toEqual([10, 10, 10]);
    expect(recovered.find((r) => r.checkpoint.name === 'after')?.prefixes).toEqual([40, 40, 40]);
    for (const { checkpoint, prefixes } of recovered) {
      const [pa, pb, pc] = prefixes as [number, number, number];
      // While c was down, a and b wrote in step (a then b); c caught up after: any recorded cut shows
      // b never ahead of a, and c never ahead of b.
      expect({ checkpoint: checkpoint.name, ok: pb <= pa && pc <= pb && pa <= pb + 1 }).toEqual({ checkpoint: checkpoint.name, ok: true });
    }
  }, 120_000);

  it('the checker itself rejects cuts that break the chain', () => {
    expect(causalViolation(5, 5, 4)).toBeNull();
    expect(causalViolation(5, 5, 5)).toBeNull();
    expect(causalViolation(5, 6, 5)).toMatch(/host-b holds write 5/);
    expect(causalViolation(5, 4, 5)).toMatch(/host-c/);
    expect(causalViolation(6, 4, 4)).toMatch(/host-a holds write 5/);
    const image = Buffer.alloc(BLOCKS * BLOCK);
    image.writeUInt32LE(1, 0);
    image.writeUInt32LE(3, 2 * BLOCK);
    expect(() => writtenPrefix(image)).toThrow(/not a prefix/);
  });
});
