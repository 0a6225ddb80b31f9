import { InProcessBus, type BusConsumer } from '@cdp/bus';
import { TOPICS, domainEventSchema, type DomainEventMessage } from '@cdp/contracts';
import { type Checkpoint, type Vpg } from '@cdp/domain';
import { waitFor, type ApiClient } from '@cdp/testing';
import { createProtectedVpg, startTestApp, type TestApp } from './all-in-one.test-app';

interface ErrorBody {
  readonly error: string;
  readonly message: string;
}

/**
 * Checkpoints over the HTTP API of the whole system: tagged and application-consistent ones and the
 * events they cause, the paged manual list with its cursor, the stats, alerts, and bad input.
 */
describe('checkpoints over HTTP', () => {
  let testApp: TestApp;
  let api: ApiClient;
  let consumer: BusConsumer;
  let vpg: Vpg;
  const events: DomainEventMessage[] = [];

  const get = async (path: string): Promise<{ status: number; body: unknown; next: string | null; link: string | null }> => {
    const response = await fetch(`${api.baseUrl}/api${path}`);
    return { status: response.status, body: await response.json(), next: response.headers.get('x-next-cursor'), link: response.headers.get('link') };
  };

  beforeAll(async () => {
    const bus = new InProcessBus();
    testApp = await startTestApp({ bus });
    api = testApp.api;
    consumer = bus.createConsumer({ groupId: 'checkpoints-test', topics: [TOPICS.events], start: 'earliest' });
    await consumer.run((batch) => {
      for (const message of batch.messages) {
        events.push(domainEventSchema.parse(JSON.parse(message.value.toString('utf8'))));
      }
      return Promise.resolve();
    });
    vpg = await createProtectedVpg(api, {
      name: 'checkpoints',
      vms: [
        { name: 'app', volumes: [{ name: 'root', sizeBytes: 1 << 20 }] },
        { name: 'db', volumes: [{ name: 'data', sizeBytes: 1 << 20 }] },
      ],
      settings: { checkpointIntervalSeconds: 1 },
    });
  });

  afterAll(async () => {
    await consumer?.stop();
    await testApp?.close();
  });

  it('a tagged checkpoint is recoverable when the request returns and emits "tagged checkpoint inserted"', async () => {
    const seq = await api.write(vpg.id, vpg.vms[0]!.volumes[0]!.id, 0, Buffer.alloc(4096, 1));
    const answer = await api.ok<{ status: string; checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'before upgrade' });
    expect(answer.status).toBe('recorded');
    expect(answer.checkpoint).toMatchObject({ kind: 'tagged', name: 'before upgrade', vmId: null, vpgId: vpg.id });
    expect(answer.checkpoint.cut).toBeGreaterThanOrEqual(seq);
    await waitFor(() => events.some((e) => e.type === 'checkpoint.tagged-inserted'), { timeoutMs: 10_000, message: 'no tagged-inserted event' });
    const inserted = events.filter((e) => e.type === 'checkpoint.tagged-inserted');
    expect(inserted).toHaveLength(1);
    expect(inserted[0]).toMatchObject({ vpgId: vpg.id, version: 1, data: { checkpoint: answer.checkpoint } });
  });

  it('an application-consistent checkpoint is marked with the VM that asked and covers the whole VPG', async () => {
    // A write on the other VM, acknowledged before the agent on db asks: it is inside the cut.
    const seq = await api.write(vpg.id, vpg.vms[0]!.volumes[0]!.id, 8192, Buffer.alloc(4096, 2));
    const db = vpg.vms[1]!;
    const answer = await api.ok<{ status: string; checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/application-checkpoints?waitMs=30000`, { name: 'sql quiesced', vmId: db.id });
    expect(answer.status).toBe('recorded');
    expect(answer.checkpoint).toMatchObject({ kind: 'application-consistent', name: 'sql quiesced', vmId: db.id });
    expect(answer.checkpoint.cut).toBeGreaterThanOrEqual(seq);
    expect(await api.ok<Checkpoint>('GET', `/vpgs/${vpg.id}/checkpoints/${answer.checkpoint.id}`)).toEqual(answer.checkpoint);
    const image = await api.bytes(`/vpgs/${vpg.id}/checkpoints/${answer.checkpoint.id}/volumes/${vpg.vms[0]!.volumes[0]!.id}/image`);
    expect(image.data.subarray(8192, 8192 + 4096).equals(Buffer.alloc(4096, 2))).toBe(true);
    // Only tagged checkpoints are "tagged checkpoint inserted".
    expect(events.filter((e) => e.type === 'checkpoint.tagged-inserted')).toHaveLength(1);

    const timeline = await api.ok<{ checkpoints: (Checkpoint & { marked: boolean })[] }>('GET', `/vpgs/${vpg.id}/timeline`);
    expect(timeline.checkpoints.filter((c) => c.marked).map((c) => c.name)).toEqual(['before upgrade', 'sql quiesced']);
    // The slider takes no parameters: a window or a time asked for is refused, not ignored.
    const unknown = await api.json<ErrorBody>('GET', `/vpgs/${vpg.id}/timeline?windowHours=1`);
    expect(unknown.status).toBe(400);
    expect(unknown.body.message).toMatch(/windowHours/);
  });

  it('refuses an application-consistent checkpoint for a VM outside the VPG, and records nothing', async () => {
    const before = (await api.ok<{ byKind: Record<string, number> }>('GET', `/vpgs/${vpg.id}/checkpoints/stats`)).byKind;
    const other = await api.json<ErrorBody>('POST', `/vpgs/${vpg.id}/application-checkpoints?waitMs=0`, { name: 'x', vmId: vpg.vms[0]!.volumes[0]!.id });
    expect(other.status).toBe(400);
    expect(other.body.message).toMatch(/not in VPG/);
    const malformed = await api.json<ErrorBody>('POST', `/vpgs/${vpg.id}/application-checkpoints?waitMs=0`, { name: 'x', vmId: 'db' });
    expect(malformed.status).toBe(400);
    const stats = await api.ok<{ byKind: Record<string, number> }>('GET', `/vpgs/${vpg.id}/checkpoints/stats`);
    expect(stats.byKind['application-consistent']).toBe(before['application-consistent']);
  });

  it('lists every checkpoint of a range a page at a time, and counts them in the stats', async () => {
    await waitFor(async () => (await api.ok<{ count: number }>('GET', `/vpgs/${vpg.id}/checkpoints/stats`)).count >= 6, {
      timeoutMs: 20_000,
      message: 'automatic checkpoints never reached 6',
    });
    const stats = await api.ok<{ count: number; byKind: Record<string, number>; earliest: Checkpoint; latest: Checkpoint }>('GET', `/vpgs/${vpg.id}/checkpoints/stats`);
    expect(stats.byKind).toMatchObject({ tagged: 1, 'application-consistent': 1 });
    expect(stats.count).toBe(stats.byKind['automatic']! + 2);

    // The range ends at the latest in the stats, so what keeps being recorded does not move it.
    const range = `from=${encodeURIComponent(stats.earliest.capturedAt)}&to=${encodeURIComponent(stats.latest.capturedAt)}`;
    const whole = await get(`/vpgs/${vpg.id}/checkpoints?${range}&limit=10000`);
    expect(whole.next).toBeNull();
    const all = whole.body as Checkpoint[];
    expect(all.length).toBeGreaterThanOrEqual(stats.count);
    expect(all[0]).toEqual(stats.earliest);

    const paged: Checkpoint[] = [];
    let page = await get(`/vpgs/${vpg.id}/checkpoints?${range}&limit=3`);
    expect(page.link).toContain('rel="next"');
    for (;;) {
      expect(page.status).toBe(200);
      paged.push(...(page.body as Checkpoint[]));
      if (page.next === null) {
        break;
      }
      page = await get(`/vpgs/${vpg.id}/checkpoints?${range}&limit=3&cursor=${page.next}`);
    }
    expect(paged).toEqual(all);

    // Without a range: the newest ones, as before.
    const newest = await api.ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints?limit=2`);
    expect(newest).toHaveLength(2);
    expect(Date.parse(newest[1]!.capturedAt)).toBeGreaterThanOrEqual(Date.parse(stats.latest.capturedAt));
  });

  it('answers bad list queries with a clear 400', async () => {
    const cases: [string, RegExp][] = [
      ['cursor=not-a-cursor', /cursor/],
      ['from=2026-11-25T10:00:00Z&to=2026-11-25T09:00:00Z', /from must not be after to/],
      ['from=yesterday', /from/],
      ['limit=0', /limit/],
      ['limit=10001', /limit/],
      ['page=2', /page/],
    ];
    for (const [query, message] of cases) {
      const answer = await get(`/vpgs/${vpg.id}/checkpoints?${query}`);
      expect(answer.status).toBe(400);
      expect((answer.body as ErrorBody).message).toMatch(message);
    }
    expect((await get(`/vpgs/00000000-0000-4000-8000-000000000000/checkpoints/stats`)).status).toBe(404);
    expect((await get(`/vpgs/not-a-uuid/checkpoints/stats`)).status).toBe(400);
  });

  it('shows open alerts: none for a VPG whose history is still filling', async () => {
    expect(await api.ok('GET', '/alerts')).toEqual([]);
    const shown = await api.ok<{ alerts: unknown[]; history: { status: string }; rpo: { rpoSeconds: number; targetSeconds: number; exceeded: boolean } }>('GET', `/vpgs/${vpg.id}`);
    expect(shown.alerts).toEqual([]);
    expect(shown.history.status).toBe('filling');
    // The VPG journals a checkpoint every interval: its RPO is seconds, far inside the 5 min target.
    expect(shown.rpo).toMatchObject({ targetSeconds: 300, exceeded: false });
    expect(shown.rpo.rpoSeconds).toBeLessThan(60);
  });
});
