import { join } from 'node:path';
import { InProcessBus, type BusConsumer } from '@cdp/bus';
import { TOPICS, domainEventSchema, type DomainEventMessage } from '@cdp/contracts';
import { type Vpg } from '@cdp/domain';
import { diskFullFaults, waitFor, type ApiClient } from '@cdp/testing';
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
 * fills (ENOSPC from the log's write calls, nothing else touched), the VM's writes fail, and within a
 * few seconds `GET /api/alerts` and the VPG's own alerts say so, and 'site.alert-raised' is on the
 * events topic; once there is room again the next write goes through and the alert clears itself.
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

  it('raises an alert while the splitter log is out of space, and clears it once writes go through', async () => {
    const volume = vpg.vms[0]!.volumes[0]!;
    await api.write(vpg.id, volume.id, 0, Buffer.alloc(4096, 1));
    // The splitter reported the VPG healthy when it opened it: no alert.
    await waitFor(() => events.some((e) => e.type === 'site.conditions-reported'), { timeoutMs: 10_000, message: 'the splitter never reported' });
    expect(await siteAlerts('/alerts')).toEqual([]);

    faults.on = join(testApp.dataDir, 'splitter', vpg.id, 'log') + '/';
    // A client error it can act on (507 Insufficient Storage), with the file system's reason.
    await expect(api.write(vpg.id, volume.id, 4096, Buffer.alloc(4096, 2))).rejects.toThrow(/^write answered 507: .*ENOSPC/);
    await waitFor(async () => (await siteAlerts('/alerts')).length === 1, { timeoutMs: 10_000, message: 'no alert in GET /api/alerts' });
    const [alert] = await siteAlerts('/alerts');
    expect(alert).toMatchObject({ host: 'default', condition: 'log-refusing' });
    expect(alert!.message).toContain('ENOSPC');
    expect(await siteAlerts(`/vpgs/${vpg.id}`)).toEqual([alert]);
    const raised = events.filter((e) => e.type === 'site.alert-raised');
    expect(raised.map((e) => [e.data.kind, e.data.host, e.data.since])).toEqual([['log-refusing', 'default', alert!.raisedAt]]);

    faults.on = undefined;
    await api.write(vpg.id, volume.id, 4096, Buffer.alloc(4096, 3));
    await waitFor(async () => (await siteAlerts('/alerts')).length === 0, { timeoutMs: 10_000, message: 'the alert never cleared' });
    expect(await siteAlerts(`/vpgs/${vpg.id}`)).toEqual([]);
    await waitFor(() => events.some((e) => e.type === 'site.alert-cleared'), { timeoutMs: 5_000, message: 'no clear event' });
    expect(events.filter((e) => e.type === 'site.alert-raised' || e.type === 'site.alert-cleared').map((e) => e.type)).toEqual(['site.alert-raised', 'site.alert-cleared']);
  });
});
