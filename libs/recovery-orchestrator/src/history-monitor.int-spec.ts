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

  async function evaluateAt(at: number, monitor: HistoryMonitorService): Promise<string[]> {
    time = at;
    const before = received.length;
    const published = await monitor.evaluateAll();
    await waitFor(() => received.length === before + published.length, { timeoutMs: 5_000, message: 'events never arrived on the bus' });
    expect(received.slice(before)).toEqual(published);
    return published.map((e) => `${e.type}${'to' in e.data ? `:${e.data.to}` : ''}`);
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
    expect(await monitor.alerts()).toEqual([]);
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
    expect(await monitor.alerts()).toEqual([]);

    await trim(T0 + 7 * HOUR);
    expect(await evaluateAt(T0 + 7 * HOUR, monitor)).toEqual(['history.status-changed:alert', 'history.alert-raised']);
    const raised = received[received.length - 1]!;
    expect(raised).toMatchObject({ type: 'history.alert-raised', vpgId: vpg.id, version: 1, occurredAt: new Date(T0 + 7 * HOUR).toISOString(), data: { actualSeconds: 1800, configuredSeconds: 14_400 } });
    const alert = { vpgId: vpg.id, vpgName: vpg.name, type: 'journal-history', raisedAt: new Date(T0 + 7 * HOUR).toISOString(), actualSeconds: 1800, configuredSeconds: 14_400 };
    expect(await monitor.alerts()).toEqual([expect.objectContaining(alert)]);
    expect(await monitor.alerts(vpg.id)).toHaveLength(1);
    expect(await monitor.alerts(randomUUID())).toEqual([]);

    // Nothing new while it stays an alert; the alert keeps the time it was raised. A restarted
    // monitor reads the stored status and does not raise it again.
    expect(await evaluateAt(T0 + 7 * HOUR + 5 * MINUTE, monitor)).toEqual([]);
    const restarted = new HistoryMonitorService(dataSource, bus, { clock, intervalMs: 0 });
    expect(await evaluateAt(T0 + 7 * HOUR + 10 * MINUTE, restarted)).toEqual([]);
    expect(await restarted.alerts()).toEqual([expect.objectContaining(alert)]);

    // Replication resumes and the history grows back past the alert threshold: the alert clears itself.
    await checkpoints(T0 + 7 * HOUR + 11 * MINUTE, T0 + 10 * HOUR);
    await trim(T0 + 10 * HOUR);
    expect(await evaluateAt(T0 + 10 * HOUR, restarted)).toEqual(['history.status-changed:warning', 'history.alert-cleared:warning']);
    expect(await restarted.alerts()).toEqual([]);
    expect(await restarted.stored(vpg.id)).toMatchObject({ status: 'warning', alertRaisedAt: null, changedAt: new Date(T0 + 10 * HOUR).toISOString() });

    await checkpoints(T0 + 10 * HOUR + MINUTE, T0 + 12 * HOUR);
    await trim(T0 + 12 * HOUR);
    expect(await evaluateAt(T0 + 12 * HOUR, restarted)).toEqual(['history.status-changed:ok']);
    expect(received.filter((e) => e.type === 'history.alert-raised')).toHaveLength(1);
    expect(received.filter((e) => e.type === 'history.alert-cleared')).toHaveLength(1);
  });
});
