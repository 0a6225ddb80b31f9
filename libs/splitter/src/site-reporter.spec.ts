import { InProcessBus, type BusConsumer, type BusProducer } from '@cdp/bus';
import { TOPICS, domainEventSchema, type DomainEventMessage } from '@cdp/contracts';
import { diskFullFaults, oneVmVpg, tempDir, waitFor, type TempDir } from '@cdp/testing';
import { SiteConditionReporter, conditionsOf } from './site-reporter';
import { VpgCapture, type CaptureStatus } from './vpg-capture';

const MiB = 1024 * 1024;
const INSTANCE = '0a1b2c3d-0000-4000-8000-0000000000aa';

const vpg = oneVmVpg('6f1d2c3b-4a59-4e8f-9a7b-1c2d3e4f5a6c', 'reporter-test', '0a1b2c3d-0000-4000-8000-000000000001', [
  { id: '0a1b2c3d-0000-4000-8000-000000000011', name: 'a', index: 0, sizeBytes: 8 * MiB, blockSize: 512 }
]);
const volumeId = vpg.vms[0]!.volumes[0]!.id;

type Report = Extract<DomainEventMessage, { type: 'site.conditions-reported' }>;

/**
 * The splitter's side of protected-site alerts: a capture on a disk made full on purpose, and the
 * reports its reporter puts on the events topic, read back from the bus and checked against the
 * contract's schema.
 */
describe('SiteConditionReporter', () => {
  const faults = diskFullFaults();
  let dir: TempDir;
  let bus: InProcessBus;
  let consumer: BusConsumer;
  let capture: VpgCapture;
  const reports: Report[] = [];

  beforeEach(async () => {
    reports.length = 0;
    dir = await tempDir('site-reporter-');
    bus = new InProcessBus();
    await bus.ensureTopics([{ topic: TOPICS.events, partitions: 1 }]);
    consumer = bus.createConsumer({ groupId: 'reports', topics: [TOPICS.events], start: 'earliest' });
    await consumer.run((batch) => {
      for (const m of batch.messages) {
        const event = domainEventSchema.parse(JSON.parse(m.value.toString('utf8')));
        if (event.type === 'site.conditions-reported') {
          reports.push(event);
        }
      }
      return Promise.resolve();
    });
    capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot-1' });
  });

  afterEach(async () => {
    await capture.close();
    await consumer.stop();
    await bus.close();
    await dir.cleanup();
  });

  /** Reports once, expecting `expected` reports sent; returns the kinds of the reports that reached the bus since `before`. */
  async function reportOnce(reporter: SiteConditionReporter, before: number, expected: number): Promise<string[][]> {
    expect(await reporter.report()).toBe(expected);
    await waitFor(() => reports.length === before + expected, { timeoutMs: 5_000, message: `expected ${expected} new report(s), saw ${reports.length - before}` });
    return reports.slice(before).map((r) => r.data.conditions.map((c) => c.kind));
  }

  it('reports once at start, then only when the set of conditions changes, each report whole', async () => {
    const reporter = new SiteConditionReporter(bus.createProducer(), 'default', INSTANCE, () => [capture]);
    expect(await reportOnce(reporter, 0, 1)).toEqual([[]]);
    expect(reports[0]!.data).toMatchObject({ host: 'default', instance: INSTANCE, conditions: [] });
    expect(reports[0]!.vpgId).toBe(vpg.id);
    // Nothing changed: nothing sent.
    expect(await reportOnce(reporter, 1, 0)).toEqual([]);

    faults.on = '/log/';
    // Degraded mode: the write is taken, to the volume only.
    expect(await capture.write(volumeId, 0, Buffer.alloc(4096, 1))).toBeNull();
    expect(await reportOnce(reporter, 1, 1)).toEqual([['dirty-regions']]);
    const dirty = reports[1]!.data.conditions[0]!;
    expect(dirty.since).toBe(capture.status().dirtyRegions?.since);
    expect(dirty.message).toContain('ENOSPC');
    // Another tracked write changes the count, not the set: no new report.
    expect(await capture.write(volumeId, 4096, Buffer.alloc(4096, 2))).toBeNull();
    expect(await reportOnce(reporter, 2, 0)).toEqual([]);
    // Room again: the log takes writes, the region is synced, and the condition is gone.
    faults.on = undefined;
    await waitFor(() => capture.status().dirtyRegions === null, { timeoutMs: 10_000, message: 'the dirty region was never synced' });
    expect(await reportOnce(reporter, 2, 1)).toEqual([[]]);

    // The log takes writes, the volume does not.
    faults.on = '/volumes/';
    await expect(capture.write(volumeId, 0, Buffer.alloc(4096, 3))).rejects.toMatchObject({ code: 'ENOSPC' });
    expect(await reportOnce(reporter, 3, 1)).toEqual([['volume-behind']]);
    expect(reports[3]!.data.conditions[0]!.message).toMatch(/^1 logged write\(s\) \(4096 bytes\) are not on their protected volume/);

    faults.on = undefined;
    await capture.write(volumeId, 8192, Buffer.alloc(4096, 4));
    expect(capture.status().volumeBehind).toBeNull();
    expect(await reportOnce(reporter, 4, 1)).toEqual([[]]);
  });

  it('sends a report the bus refused again on the next look, with what is true then', async () => {
    const inner = bus.createProducer();
    let refuse = true;
    const producer: BusProducer = { send: (topic, messages) => (refuse ? Promise.reject(new Error('broker unreachable')) : inner.send(topic, messages)) };
    const reporter = new SiteConditionReporter(producer, 'default', INSTANCE, () => [capture]);
    expect(await reporter.report()).toBe(0);
    faults.on = '/log/';
    expect(await capture.write(volumeId, 0, Buffer.alloc(4096, 1))).toBeNull();
    expect(await reporter.report()).toBe(0);
    expect(reports).toHaveLength(0);
    refuse = false;
    expect(await reportOnce(reporter, 0, 1)).toEqual([['dirty-regions']]);
  });

  it('on its timer: the first report at once, then a change within an interval', async () => {
    const reporter = new SiteConditionReporter(bus.createProducer(), 'default', INSTANCE, () => [capture], 50);
    reporter.start();
    await waitFor(() => reports.length === 1, { timeoutMs: 5_000, message: 'no first report' });
    faults.on = '/log/';
    expect(await capture.write(volumeId, 0, Buffer.alloc(4096, 1))).toBeNull();
    await waitFor(() => reports.length === 2, { timeoutMs: 5_000, message: 'the change was not reported' });
    expect(reports[1]!.data.conditions.map((c) => c.kind)).toEqual(['dirty-regions']);
    await reporter.stop();
  });
});

describe('conditionsOf', () => {
  const healthy = { tracking: null, dirtyRegions: null, volumeBehind: null, resync: null } as unknown as CaptureStatus;

  it('has none for a healthy capture, and one per trouble, messages clipped to the contract', () => {
    expect(conditionsOf(healthy)).toEqual([]);
    const error = `EIO: ${'x'.repeat(5000)}`;
    const status = {
      ...healthy,
      tracking: { since: '2026-12-05T10:00:00.000Z', reason: error, writes: 3, bytes: 12288 },
      dirtyRegions: { regions: 2, since: '2026-12-05T10:00:00.000Z', sync: null, error: null },
      volumeBehind: { since: '2026-12-05T10:00:01.000Z', writes: 2, bytes: 8192, error },
      resync: { id: 'r-1', volumes: [], bytesDone: 1, bytesTotal: 2, startedAt: '2026-12-05T09:00:00.000Z', reason: null, error },
    } as unknown as CaptureStatus;
    const conditions = conditionsOf(status);
    expect(conditions.map((c) => [c.kind, c.since])).toEqual([
      ['dirty-regions', '2026-12-05T10:00:00.000Z'],
      ['volume-behind', '2026-12-05T10:00:01.000Z'],
      ['resync-failed', '2026-12-05T09:00:00.000Z'],
    ]);
    for (const c of conditions) {
      expect(c.message.length).toBeLessThanOrEqual(2000);
    }
    // A resync running without an error is no trouble.
    expect(conditionsOf({ ...status, tracking: null, dirtyRegions: null, volumeBehind: null, resync: { ...status.resync!, error: null } })).toEqual([]);
    // Syncing after tracking: still the same condition, saying how far the sync is.
    const syncing = conditionsOf({ ...healthy, dirtyRegions: { regions: 1, since: '2026-12-05T10:00:00.000Z', sync: { regionsTotal: 2, regionsDone: 1, startedAt: '2026-12-05T10:01:00.000Z' }, error: null } });
    expect(syncing.map((c) => c.kind)).toEqual(['dirty-regions']);
    expect(syncing[0]!.message).toContain('being synced (1 of 2)');
  });
});
