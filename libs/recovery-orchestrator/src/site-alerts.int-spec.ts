import { randomUUID } from 'node:crypto';
import { type DataSource } from 'typeorm';
import { InProcessBus, type BusConsumer, type BusProducer } from '@cdp/bus';
import { TOPICS, domainEventSchema, type DomainEventMessage } from '@cdp/contracts';
import { DEFAULT_VPG_SETTINGS, type SiteCondition, type Vpg } from '@cdp/domain';
import { createMigratedDatabase, insertVpgRow, waitFor } from '@cdp/testing';
import { SiteAlertsService } from './site-alerts.service';

const T0 = Date.parse('2026-12-05T10:00:00Z');
const SPLITTER = randomUUID();

/**
 * Protected-site alerts as the recovery site keeps them: splitters' condition reports are put on the
 * events topic, the service (consuming it as in production) raises and clears alerts in PostgreSQL,
 * and its own events are read back from the bus.
 */
describe('SiteAlertsService', () => {
  let dataSource: DataSource;
  let drop: () => Promise<void>;
  let bus: InProcessBus;
  let producer: BusProducer;
  let consumer: BusConsumer;
  let service: SiteAlertsService;
  const received: DomainEventMessage[] = [];

  const vpg: Vpg = {
    id: randomUUID(),
    name: 'site-vpg',
    vms: [{ id: randomUUID(), name: 'vm', volumes: [{ id: randomUUID(), name: 'disk', index: 0, sizeBytes: 1 << 20, blockSize: 512 }] }],
    settings: DEFAULT_VPG_SETTINGS,
    createdAt: new Date(T0).toISOString(),
  };
  const full: SiteCondition = { kind: 'log-refusing', since: new Date(T0).toISOString(), message: 'the splitter log cannot take writes: ENOSPC' };
  const behind: SiteCondition = { kind: 'volume-behind', since: new Date(T0 + 5_000).toISOString(), message: '1 logged write(s) are not on their protected volume: ENOSPC' };

  const report = (at: number, conditions: SiteCondition[], host = 'default', vpgId = vpg.id): Extract<DomainEventMessage, { type: 'site.conditions-reported' }> => ({
    id: randomUUID(),
    version: 1,
    vpgId,
    occurredAt: new Date(at).toISOString(),
    type: 'site.conditions-reported',
    data: { host, instance: SPLITTER, reportedAt: new Date(at).toISOString(), conditions },
  });
  const alertEvents = (): string[] =>
    received.filter((e) => e.type === 'site.alert-raised' || e.type === 'site.alert-cleared').map((e) => `${e.type}:${'kind' in e.data ? e.data.kind : ''}@${'host' in e.data ? e.data.host : ''}`);
  /** Puts a report on the bus and waits until the service has applied it (its row in site_reports). */
  async function deliver(message: DomainEventMessage | string, appliedAt?: number, host = 'default'): Promise<void> {
    const value = typeof message === 'string' ? message : JSON.stringify(message);
    await producer.send(TOPICS.events, [{ key: vpg.id, value: Buffer.from(value) }]);
    if (appliedAt !== undefined) {
      await waitFor(
        async () => {
          const rows = await dataSource.query<{ reported_at: Date }[]>(`SELECT reported_at FROM site_reports WHERE vpg_id = $1 AND host = $2`, [vpg.id, host]);
          return rows[0]?.reported_at.getTime() === appliedAt;
        },
        { timeoutMs: 5_000, message: 'the report was never applied' },
      );
    }
  }

  beforeAll(async () => {
    ({ dataSource, drop } = await createMigratedDatabase());
    await insertVpgRow(dataSource, vpg);
    bus = new InProcessBus();
    await bus.ensureTopics([{ topic: TOPICS.events, partitions: 2 }]);
    producer = bus.createProducer();
    consumer = bus.createConsumer({ groupId: 'site-test', topics: [TOPICS.events], start: 'earliest' });
    await consumer.run((batch) => {
      for (const message of batch.messages) {
        const parsed = domainEventSchema.safeParse(JSON.parse(message.value.toString('utf8')));
        if (parsed.success) {
          received.push(parsed.data);
        }
      }
      return Promise.resolve();
    });
    service = new SiteAlertsService(dataSource, bus);
    await service.onApplicationBootstrap();
  });

  afterAll(async () => {
    await service?.beforeApplicationShutdown();
    await bus?.close();
    await dataSource?.destroy();
    await drop?.();
  });

  it('raises an alert per condition once, keeps it while reported, ignores late reports, and clears it when a report no longer has it', async () => {
    // A healthy report (a splitter starting) raises nothing.
    await deliver(report(T0, []), T0);
    expect(await service.alerts()).toEqual([]);

    await deliver(report(T0 + 1_000, [full]), T0 + 1_000);
    await waitFor(() => alertEvents().length === 1, { timeoutMs: 5_000, message: 'no raise event' });
    expect(alertEvents()).toEqual(['site.alert-raised:log-refusing@default']);
    const raised = received.find((e) => e.type === 'site.alert-raised');
    expect(raised).toMatchObject({ vpgId: vpg.id, version: 1, data: { host: 'default', kind: 'log-refusing', since: full.since, message: full.message } });
    const alert = { vpgId: vpg.id, vpgName: vpg.name, type: 'protected-site', host: 'default', condition: 'log-refusing', raisedAt: full.since, message: full.message };
    expect(await service.alerts()).toEqual([alert]);
    expect(await service.alerts(vpg.id)).toEqual([alert]);
    expect(await service.alerts(randomUUID())).toEqual([]);

    // Reported again with a newer message: one alert still, first raise time kept, no event.
    await deliver(report(T0 + 2_000, [{ ...full, message: 'still full' }, behind]), T0 + 2_000);
    await waitFor(() => alertEvents().length === 2, { timeoutMs: 5_000, message: 'no raise event for the second condition' });
    expect(alertEvents()).toEqual(['site.alert-raised:log-refusing@default', 'site.alert-raised:volume-behind@default']);
    expect(await service.alerts()).toEqual([{ ...alert, message: 'still full' }, expect.objectContaining({ condition: 'volume-behind', raisedAt: behind.since })]);

    // A report older than the last one applied (overtaken on the way) changes nothing.
    expect(await service.apply(report(T0 + 1_500, []))).toBe('skipped');
    expect(await service.alerts()).toHaveLength(2);

    // Another host of the VPG has its own alerts.
    await deliver(report(T0 + 2_500, [full], 'host-b'), T0 + 2_500, 'host-b');
    expect((await service.alerts()).map((a) => `${a.host}:${a.condition}`)).toEqual(['default:log-refusing', 'host-b:log-refusing', 'default:volume-behind']);

    // A restarted service raises nothing twice for a report it has seen the like of.
    const restarted = new SiteAlertsService(dataSource, bus);
    expect(await restarted.apply(report(T0 + 3_000, [full, behind]))).toEqual([]);

    // A restarted splitter whose clock reads earlier is taken at its word: its first report is whole.
    const newInstance = randomUUID();
    const fromNewInstance = (at: number, conditions: SiteCondition[]): ReturnType<typeof report> => {
      const r = report(at, conditions);
      return { ...r, data: { ...r.data, instance: newInstance } };
    };
    expect(await service.apply(fromNewInstance(T0 + 2_800, [full, behind]))).toEqual([]);
    // Its own reports are ordered by its own clock.
    expect(await service.apply(fromNewInstance(T0 + 2_700, []))).toBe('skipped');
    expect((await service.alerts(vpg.id)).filter((a) => a.host === 'default')).toHaveLength(2);

    // The log takes writes again; then all is well.
    await deliver(report(T0 + 4_000, [behind]), T0 + 4_000);
    await deliver(report(T0 + 5_000, []), T0 + 5_000);
    await deliver(report(T0 + 5_000, [], 'host-b'), T0 + 5_000, 'host-b');
    await waitFor(() => alertEvents().length === 6, { timeoutMs: 5_000, message: 'clear events missing' });
    expect(alertEvents().slice(2)).toEqual([
      'site.alert-raised:log-refusing@host-b',
      'site.alert-cleared:log-refusing@default',
      'site.alert-cleared:volume-behind@default',
      'site.alert-cleared:log-refusing@host-b',
    ]);
    const cleared = received.find((e) => e.type === 'site.alert-cleared');
    expect(cleared).toMatchObject({ data: { host: 'default', kind: 'log-refusing', raisedAt: full.since } });
    expect(await service.alerts()).toEqual([]);
  });

  it('changes nothing for a report it cannot take: an unknown VPG, a bad condition, not JSON', async () => {
    const before = await dataSource.query<unknown[]>(`SELECT * FROM site_reports ORDER BY vpg_id, host`);
    const unknown = randomUUID();
    expect(await service.apply(report(T0 + 10_000, [full], 'default', unknown))).toBe('skipped');
    const bad = report(T0 + 10_000, [full]) as unknown as { data: { conditions: unknown[] } };
    bad.data.conditions = [{ kind: 'disk-on-fire', since: full.since, message: 'x' }];
    await deliver(JSON.stringify(bad));
    await deliver('not json');
    await deliver(JSON.stringify({ ...report(T0 + 10_000, []), data: { host: 'Bad Host!', instance: SPLITTER, reportedAt: new Date(T0).toISOString(), conditions: [] } }));
    // A good report after them is applied: the bad ones were passed over, not stuck in front of it.
    await deliver(report(T0 + 11_000, [behind]), T0 + 11_000);
    expect(await service.alerts()).toEqual([expect.objectContaining({ condition: 'volume-behind' })]);
    expect(await dataSource.query(`SELECT * FROM site_alerts WHERE vpg_id = $1`, [unknown])).toEqual([]);
    const after = await dataSource.query<{ vpg_id: string; host: string }[]>(`SELECT * FROM site_reports ORDER BY vpg_id, host`);
    expect(after.filter((r) => r.vpg_id === unknown)).toEqual([]);
    expect(after).toHaveLength(before.length);
    await deliver(report(T0 + 12_000, []), T0 + 12_000);
    expect(await service.alerts()).toEqual([]);
  });
});
