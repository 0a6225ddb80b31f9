import { randomUUID } from 'node:crypto';
import { type DataSource } from 'typeorm';
import { InProcessBus, type BusConsumer } from '@cdp/bus';
import { TOPICS, domainEventSchema, type DomainEventMessage } from '@cdp/contracts';
import { DEFAULT_VPG_SETTINGS, type Vpg } from '@cdp/domain';
import { createMigratedDatabase, insertVpgRow, waitFor } from '@cdp/testing';
import { HistoryMonitorService, type Clock } from './history-monitor.service';

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const T0 = Date.parse('2026-11-25T00:00:00Z');

/**
 * Journal history status as the monitor sees it, with time moved by hand: a VPG is protected, its
 * history fills, replication stalls while the promoter keeps trimming to the window, the history falls
 * to a warning and then an alert, replication resumes and the alert clears itself. Events are read back
 * from the bus; alerts from the monitor.
 */
describe('HistoryMonitorService', () => {
  let dataSource: DataSource;
  let drop: () => Promise<void>;
  let bus: InProcessBus;
  let consumer: BusConsumer;
  const received: DomainEventMessage[] = [];
  let time = T0;
  const clock: Clock = { now: () => new Date(time) };

  const vpg: Vpg = {
    id: randomUUID(),
    name: 'history-vpg',
    vms: [{ id: randomUUID(), name: 'vm', volumes: [{ id: randomUUID(), name: 'disk', index: 0, sizeBytes: 1 << 20, blockSize: 512 }] }],
    settings: DEFAULT_VPG_SETTINGS,
    createdAt: new Date(T0).toISOString(),
  };

  /** Automatic checkpoints every minute in [from, to]. */
  async function checkpoints(from: number, to: number): Promise<void> {
    const times: string[] = [];
    for (let t = from; t <= to; t += MINUTE) {
      times.push(new Date(t).toISOString());
    }
    await dataSource.query(
      `INSERT INTO checkpoints (id, vpg_id, cut, kind, captured_at)
       SELECT gen_random_uuid(), $1, extract(epoch FROM t)::bigint, 'automatic', t FROM unnest($2::timestamptz[]) AS t`,
      [vpg.id, times],
    );
  }

  /** What the promoter does at `now`: drop the checkpoints older than the configured history. */
  async function trim(now: number): Promise<void> {
    await dataSource.query(`DELETE FROM checkpoints WHERE vpg_id = $1 AND captured_at < $2`, [vpg.id, new Date(now - vpg.settings.journalHistorySeconds * 1000)]);
  }

  const historyAlerts = async (m: HistoryMonitorService, of?: string): Promise<unknown[]> => (await m.alerts(of)).filter((a) => a.type === 'journal-history');

  /** Evaluates every VPG at `at`; returns the events of `kind` ('history.' or 'rpo.') it published for `of`. */
  async function evaluateAt(at: number, monitor: HistoryMonitorService, kind = 'history.', of: Vpg = vpg): Promise<string[]> {
    time = at;
    const before = received.length;
    const published = await monitor.evaluateAll();
    await waitFor(() => received.length === before + published.length, { timeoutMs: 5_000, message: 'events never arrived on the bus' });
    expect(received.slice(before)).toEqual(published);
    return published.filter((e) => e.vpgId === of.id && e.type.startsWith(kind)).map((e) => `${e.type}${'to' in e.data ? `:${e.data.to}` : ''}`);
  }

  beforeAll(async () => {
    ({ dataSource, drop: drop } = await createMigratedDatabase());
    await insertVpgRow(dataSource, vpg);
    bus = new InProcessBus();
    await bus.ensureTopics([{ topic: TOPICS.events, partitions: 2 }]);
    consumer = bus.createConsumer({ groupId: 'history-test', topics: [TOPICS.events], start: 'earliest' });
    await consumer.run((batch) => {
      for (const message of batch.messages) {
        received.push(domainEventSchema.parse(JSON.parse(message.value.toString('utf8'))));
      }
      return Promise.resolve();
    });
  });

  afterAll(async () => {
    await bus?.close();
    await dataSource?.destroy();
    await drop?.();
  });

  it('goes filling, ok, warning, alert and back, raising one alert and clearing it, and survives a restart', async () => {
    const monitor = new HistoryMonitorService(dataSource, bus, { clock, intervalMs: 0 });

    // Right after protection starts the history is short: filling, not an alert.
    await checkpoints(T0, T0 + 30 * MINUTE);
    expect(await evaluateAt(T0 + 30 * MINUTE, monitor)).toEqual(['history.status-changed:filling']);
    expect(await historyAlerts(monitor)).toEqual([]);
    expect(await monitor.stored(vpg.id)).toMatchObject({ status: 'filling', actualSeconds: 1800, configuredSeconds: 14_400, alertRaisedAt: null });

    // Still filling an hour later: no event for a level that did not change.
    await checkpoints(T0 + 31 * MINUTE, T0 + 90 * MINUTE);
    expect(await evaluateAt(T0 + 90 * MINUTE, monitor)).toEqual([]);

    // More than 3 h of history: ok, even before the 4 h filling period ends.
    await checkpoints(T0 + 91 * MINUTE, T0 + 210 * MINUTE);
    expect(await evaluateAt(T0 + 210 * MINUTE, monitor)).toEqual(['history.status-changed:ok']);

    // Replication stalls at 3.5 h while the promoter keeps trimming to the 4 h window.
    await trim(T0 + 6 * HOUR);
    expect(await evaluateAt(T0 + 6 * HOUR, monitor)).toEqual(['history.status-changed:warning']);
    expect(await historyAlerts(monitor)).toEqual([]);

    await trim(T0 + 7 * HOUR);
    expect(await evaluateAt(T0 + 7 * HOUR, monitor)).toEqual(['history.status-changed:alert', 'history.alert-raised']);
    const raised = received[received.length - 1]!;
    expect(raised).toMatchObject({ type: 'history.alert-raised', vpgId: vpg.id, version: 1, occurredAt: new Date(T0 + 7 * HOUR).toISOString(), data: { actualSeconds: 1800, configuredSeconds: 14_400 } });
    const alert = { vpgId: vpg.id, vpgName: vpg.name, type: 'journal-history', raisedAt: new Date(T0 + 7 * HOUR).toISOString(), actualSeconds: 1800, configuredSeconds: 14_400 };
    expect(await historyAlerts(monitor)).toEqual([expect.objectContaining(alert)]);
    expect(await historyAlerts(monitor, vpg.id)).toHaveLength(1);
    expect(await historyAlerts(monitor, randomUUID())).toEqual([]);

    // Nothing new while it stays an alert; the alert keeps the time it was raised. A restarted
    // monitor reads the stored status and does not raise it again.
    expect(await evaluateAt(T0 + 7 * HOUR + 5 * MINUTE, monitor)).toEqual([]);
    const restarted = new HistoryMonitorService(dataSource, bus, { clock, intervalMs: 0 });
    expect(await evaluateAt(T0 + 7 * HOUR + 10 * MINUTE, restarted)).toEqual([]);
    expect(await historyAlerts(restarted)).toEqual([expect.objectContaining(alert)]);

    // Replication resumes and the history grows back past the alert threshold: the alert clears itself.
    await checkpoints(T0 + 7 * HOUR + 11 * MINUTE, T0 + 10 * HOUR);
    await trim(T0 + 10 * HOUR);
    expect(await evaluateAt(T0 + 10 * HOUR, restarted)).toEqual(['history.status-changed:warning', 'history.alert-cleared:warning']);
    expect(await historyAlerts(restarted)).toEqual([]);
    expect(await restarted.stored(vpg.id)).toMatchObject({ status: 'warning', alertRaisedAt: null, changedAt: new Date(T0 + 10 * HOUR).toISOString() });

    await checkpoints(T0 + 10 * HOUR + MINUTE, T0 + 12 * HOUR);
    await trim(T0 + 12 * HOUR);
    expect(await evaluateAt(T0 + 12 * HOUR, restarted)).toEqual(['history.status-changed:ok']);
    expect(received.filter((e) => e.type === 'history.alert-raised')).toHaveLength(1);
    expect(received.filter((e) => e.type === 'history.alert-cleared')).toHaveLength(1);
  });

  it('raises an RPO alert once while nothing newer than the target is journaled, and clears it when something is', async () => {
    const idle: Vpg = { ...vpg, id: randomUUID(), name: 'rpo-vpg', settings: { ...DEFAULT_VPG_SETTINGS, rpoAlertSeconds: 120 }, createdAt: new Date(T0).toISOString() };
    await insertVpgRow(dataSource, idle);
    const monitor = new HistoryMonitorService(dataSource, bus, { clock, intervalMs: 0 });
    const rpoAlerts = async (m: HistoryMonitorService): Promise<unknown[]> => (await m.alerts(idle.id)).filter((a) => a.type === 'rpo');
    const journaled = (at: number): Promise<unknown> =>
      dataSource.query(
        `INSERT INTO journal_vpgs (vpg_id, last_captured_at) VALUES ($1, $2) ON CONFLICT (vpg_id) DO UPDATE SET last_captured_at = EXCLUDED.last_captured_at`,
        [idle.id, new Date(at)],
      );

    // Nothing journaled yet: counted from the start of protection.
    expect(await evaluateAt(T0 + 60_000, monitor, 'rpo.', idle)).toEqual([]);
    expect(await evaluateAt(T0 + 121_000, monitor, 'rpo.', idle)).toEqual(['rpo.alert-raised']);
    await journaled(T0 + 200_000);
    expect(await evaluateAt(T0 + 205_000, monitor, 'rpo.', idle)).toEqual(['rpo.alert-cleared']);
    expect(await rpoAlerts(monitor)).toEqual([]);

    // Replication stalls: one alert, which keeps the time it was raised, across a restart too.
    expect(await evaluateAt(T0 + 320_000, monitor, 'rpo.', idle)).toEqual([]);
    expect(await evaluateAt(T0 + 321_000, monitor, 'rpo.', idle)).toEqual(['rpo.alert-raised']);
    const raised = received.filter((e) => e.vpgId === idle.id).pop();
    expect(raised).toMatchObject({ type: 'rpo.alert-raised', data: { rpoSeconds: 121, targetSeconds: 120 } });
    expect(await evaluateAt(T0 + 400_000, monitor, 'rpo.', idle)).toEqual([]);
    const restarted = new HistoryMonitorService(dataSource, bus, { clock, intervalMs: 0 });
    expect(await evaluateAt(T0 + 500_000, restarted, 'rpo.', idle)).toEqual([]);
    const open = await rpoAlerts(restarted);
    expect(open).toMatchObject([{ vpgId: idle.id, vpgName: 'rpo-vpg', type: 'rpo', raisedAt: new Date(T0 + 321_000).toISOString(), rpoSeconds: 300, targetSeconds: 120 }]);
    expect((open[0] as { message: string }).message).toMatch(/300 s .*120 s RPO target/);
    // A VPG created before the setting existed gets the 5 min default.
    const { rpoAlertSeconds: _dropped, ...older } = idle.settings;
    await dataSource.query(`UPDATE vpgs SET definition = $2 WHERE id = $1`, [idle.id, JSON.stringify({ ...idle, settings: older })]);
    expect(await evaluateAt(T0 + 500_000, restarted, 'rpo.', idle)).toEqual(['rpo.alert-cleared']);

    await journaled(T0 + 600_000);
    expect(await evaluateAt(T0 + 610_000, restarted, 'rpo.', idle)).toEqual([]);
    expect(await rpoAlerts(restarted)).toEqual([]);
  });
});
