import { join } from 'node:path';
import { InProcessBus, type BusConsumer } from '@cdp/bus';
import { TOPICS, domainEventSchema, type DomainEventMessage } from '@cdp/contracts';
import { type Checkpoint, type Vpg } from '@cdp/domain';
import { diskFullFaults, randomBuffer, seededRandom, waitFor, type ApiClient } from '@cdp/testing';
import { createProtectedVpg, startTestApp, type TestApp } from './all-in-one.test-app';

const MiB = 1024 * 1024;

interface Alert {
  readonly vpgId: string;
  readonly type: string;
  readonly host?: string;
  readonly condition?: string;
  readonly raisedAt: string;
  readonly message: string;
}

/**
 * A protected site in trouble, seen from the recovery site's API: the disk under the splitter's log
 * fills (ENOSPC from the log's write calls, nothing else touched). The VM's writes are still taken
 * (degraded mode: to the volume only, their regions tracked), and within a few seconds
 * `GET /api/alerts` and the VPG's own alerts say so, and 'site.alert-raised' is on the events topic. A
 * checkpoint asked for meanwhile waits. Once there is room the regions are synced, the alert clears
 * itself, the checkpoint is recorded, and it recovers the volume bit-exact.
 */
describe('protected-site alerts, end to end', () => {
  const faults = diskFullFaults();
  let testApp: TestApp;
  let api: ApiClient;
  let vpg: Vpg;
  let consumer: BusConsumer;
  const events: DomainEventMessage[] = [];

  beforeAll(async () => {
    const bus = new InProcessBus();
    testApp = await startTestApp({ bus });
    api = testApp.api;
    vpg = await createProtectedVpg(api, { name: 'site-alerts', vms: [{ name: 'vm', volumes: [{ name: 'disk', sizeBytes: 4 * MiB }] }] });
    consumer = bus.createConsumer({ groupId: 'site-alerts-test', topics: [TOPICS.events], start: 'earliest' });
    await consumer.run((batch) => {
      for (const message of batch.messages) {
        const parsed = domainEventSchema.safeParse(JSON.parse(message.value.toString('utf8')));
        if (parsed.success && parsed.data.vpgId === vpg.id) {
          events.push(parsed.data);
        }
      }
      return Promise.resolve();
    });
  });

  afterAll(async () => {
    await consumer?.stop();
    await testApp?.close();
  });

  const siteAlerts = async (path: string): Promise<Alert[]> => {
    const body = await api.ok<Alert[] | { alerts: Alert[] }>('GET', path);
    return (Array.isArray(body) ? body : body.alerts).filter((a) => a.type === 'protected-site' && a.vpgId === vpg.id);
  };

  it('raises an alert while the splitter log is out of space and writes are tracked, and clears it once they are synced', async () => {
    const volume = vpg.vms[0]!.volumes[0]!;
    const random = seededRandom(21);
    const model = Buffer.alloc(volume.sizeBytes);
    const write = async (offset: number, length: number): Promise<{ seq: number | null }> => {
      const data = randomBuffer(random, length);
      const seq = await api.writeOrTrack(vpg.id, volume.id, offset, data);
      data.copy(model, offset);
      return { seq };
    };
    expect((await write(0, 4096)).seq).not.toBeNull();
    // The splitter reported the VPG healthy when it opened it: no alert.
    await waitFor(() => events.some((e) => e.type === 'site.conditions-reported'), { timeoutMs: 10_000, message: 'the splitter never reported' });
    expect(await siteAlerts('/alerts')).toEqual([]);

    faults.on = join(testApp.dataDir, 'splitter', vpg.id, 'log') + '/';
    // Taken all the same, with no seq: on the volume only.
    for (let i = 1; i < 8; i++) {
      expect((await write(i * 300 * 1024, 64 * 1024)).seq).toBeNull();
    }
    await waitFor(async () => (await siteAlerts('/alerts')).length === 1, { timeoutMs: 10_000, message: 'no alert in GET /api/alerts' });
    const [alert] = await siteAlerts('/alerts');
    expect(alert).toMatchObject({ host: 'default', condition: 'dirty-regions' });
    expect(alert!.message).toContain('ENOSPC');
    expect(await siteAlerts(`/vpgs/${vpg.id}`)).toEqual([alert]);
    const raised = events.filter((e) => e.type === 'site.alert-raised');
    expect(raised.map((e) => [e.data.kind, e.data.host, e.data.since])).toEqual([['dirty-regions', 'default', alert!.raisedAt]]);
    // A checkpoint asked for now cannot be cut: the stream does not hold these writes.
    const during = await api.ok<{ status: string }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=500`, { name: 'during' });
    expect(during.status).not.toBe('recorded');
    const atDuring = Buffer.from(model);

    faults.on = undefined;
    await waitFor(async () => (await siteAlerts('/alerts')).length === 0, { timeoutMs: 20_000, message: 'the alert never cleared' });
    expect(await siteAlerts(`/vpgs/${vpg.id}`)).toEqual([]);
    await waitFor(() => events.some((e) => e.type === 'site.alert-cleared'), { timeoutMs: 5_000, message: 'no clear event' });
    expect(events.filter((e) => e.type === 'site.alert-raised' || e.type === 'site.alert-cleared').map((e) => e.type)).toEqual(['site.alert-raised', 'site.alert-cleared']);
    // The checkpoint asked for meanwhile is recorded once the regions are synced, and holds every
    // write the splitter took, tracked ones included.
    let recorded: Checkpoint | undefined;
    await waitFor(
      async () => {
        recorded = (await api.ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints`)).find((c) => c.name === 'during');
        return recorded !== undefined;
      },
      { timeoutMs: 30_000, message: 'the checkpoint asked for during the outage was never recorded' },
    );
    const image = await api.bytes(`/vpgs/${vpg.id}/checkpoints/${recorded!.id}/volumes/${volume.id}/image`);
    expect(image.status).toBe(200);
    expect(image.data.equals(atDuring)).toBe(true);
    expect((await write(4096, 4096)).seq).not.toBeNull();
  });
});
