import { randomUUID } from 'node:crypto';
import { type DataSource } from 'typeorm';
import { InProcessBus, type BusConsumer } from '@cdp/bus';
import { TOPICS, splitterCommandSchema, type SplitterCommand } from '@cdp/contracts';
import { DEFAULT_VPG_SETTINGS, type Vpg } from '@cdp/domain';
import { createMigratedDatabase, insertVpgRow, waitFor } from '@cdp/testing';
import { type SchedulerClock } from './automatic-checkpoint.timer';
import { CheckpointSchedulerService } from './checkpoint-scheduler.service';

/** Time moved by hand; due timeouts run as it passes them. */
class ManualClock implements SchedulerClock {
  private timeouts: { id: number; at: number; callback: () => void }[] = [];
  private nextId = 1;

  constructor(public time: number) {}

  now(): number {
    return this.time;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const id = this.nextId++;
    this.timeouts.push({ id, at: this.time + ms, callback });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timeouts = this.timeouts.filter((t) => t.id !== handle);
  }

  dueTimes(): number[] {
    return this.timeouts.map((t) => t.at).sort((a, b) => a - b);
  }

  advanceTo(until: number): void {
    for (;;) {
      this.timeouts.sort((a, b) => a.at - b.at || a.id - b.id);
      const next = this.timeouts[0];
      if (!next || next.at > until) {
        break;
      }
      this.timeouts.shift();
      this.time = next.at;
      next.callback();
    }
    this.time = until;
  }
}

const INTERVAL = 5_000;

/**
 * The scheduler service across a restart, with its clock in the test's hands: the first automatic
 * checkpoint after a start is due one interval after the newest recorded one, or at once if that has
 * passed, and a downtime is never made up by a burst.
 */
describe('CheckpointSchedulerService automatic checkpoints across a restart', () => {
  let dataSource: DataSource;
  let drop: () => Promise<void>;
  let bus: InProcessBus;
  let consumer: BusConsumer;
  const commands: { at: number; command: SplitterCommand }[] = [];
  const clock = new ManualClock(Date.parse('2026-11-25T12:00:00Z'));
  const vpg: Vpg = {
    id: randomUUID(),
    name: 'scheduled',
    vms: [{ id: randomUUID(), name: 'vm', volumes: [{ id: randomUUID(), name: 'disk', index: 0, sizeBytes: 1 << 20, blockSize: 512 }] }],
    settings: { ...DEFAULT_VPG_SETTINGS, checkpointIntervalSeconds: INTERVAL / 1000 },
    createdAt: '2026-11-25T00:00:00.000Z',
  };

  async function recorded(at: number): Promise<void> {
    await dataSource.query(`INSERT INTO checkpoints (id, vpg_id, cut, kind, captured_at) VALUES ($1, $2, 1, 'automatic', $3)`, [randomUUID(), vpg.id, new Date(at)]);
  }

  async function automaticSent(count: number): Promise<number[]> {
    await waitFor(() => commands.length >= count, { timeoutMs: 5_000, message: `expected ${count} commands, got ${commands.length}` });
    return commands.map((c) => c.at);
  }

  beforeAll(async () => {
    ({ dataSource, drop: drop } = await createMigratedDatabase());
    await insertVpgRow(dataSource, vpg);
    bus = new InProcessBus();
    await bus.ensureTopics([{ topic: TOPICS.commands, partitions: 1 }, { topic: TOPICS.events, partitions: 1 }]);
    consumer = bus.createConsumer({ groupId: 'scheduler-test', topics: [TOPICS.commands], start: 'earliest' });
    await consumer.run((batch) => {
      for (const message of batch.messages) {
        const command = splitterCommandSchema.parse(JSON.parse(message.value.toString('utf8')));
        if (command.type === 'checkpoint.insert') {
          commands.push({ at: Date.parse(command.requestedAt), command });
        }
      }
      return Promise.resolve();
    });
  });

  afterAll(async () => {
    await bus?.close();
    await dataSource?.destroy();
    await drop?.();
  });

  it('continues one interval after the newest checkpoint, and after a long downtime takes one at once, not a burst', async () => {
    const start = clock.now();
    await recorded(start - 2_000);
    const first = new CheckpointSchedulerService(bus, dataSource, clock);
    await first.onApplicationBootstrap();
    expect(first.automaticIntervalMs(vpg.id)).toBe(INTERVAL);
    // Due one interval after the newest recorded checkpoint: 3 s from now, not 5.
    expect(clock.dueTimes()).toEqual([start + 3_000]);
    clock.advanceTo(start + 3_000 + 2 * INTERVAL);
    expect(await automaticSent(3)).toEqual([start + 3_000, start + 3_000 + INTERVAL, start + 3_000 + 2 * INTERVAL]);
    for (const { command } of commands) {
      expect(command).toMatchObject({ type: 'checkpoint.insert', vpgId: vpg.id, kind: 'automatic', name: null, vmId: null });
    }
    await first.beforeApplicationShutdown();
    expect(clock.dueTimes()).toEqual([]);

    // The last one was recorded; the scheduler is down for a minute (twelve intervals).
    const lastSent = start + 3_000 + 2 * INTERVAL;
    await recorded(lastSent);
    clock.advanceTo(lastSent + 60_000);
    const restartedAt = clock.now();
    const second = new CheckpointSchedulerService(bus, dataSource, clock);
    await second.onApplicationBootstrap();
    expect(clock.dueTimes()).toEqual([restartedAt]);
    clock.advanceTo(restartedAt + 2 * INTERVAL);
    const sent = await automaticSent(6);
    expect(sent.slice(3)).toEqual([restartedAt, restartedAt + INTERVAL, restartedAt + 2 * INTERVAL]);
    await second.beforeApplicationShutdown();
    expect(commands).toHaveLength(6);
  });
});
