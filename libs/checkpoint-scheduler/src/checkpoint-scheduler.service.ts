import { randomUUID } from 'node:crypto';
import { Inject, Injectable, Logger, Optional, type OnApplicationBootstrap, type BeforeApplicationShutdown } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { BUS, type Bus, type BusConsumer, type BusProducer, type MessageBatch } from '@cdp/bus';
import { TOPICS, barrierHeldSchema, domainEventSchema, type SplitterCommand } from '@cdp/contracts';
import { DomainError, validateCheckpointName, volumesOf, vpgMembers, type Checkpoint, type CheckpointKind, type Vpg } from '@cdp/domain';
import { AutomaticCheckpointTimer, firstDueAt, systemSchedulerClock, type SchedulerClock } from './automatic-checkpoint.timer';
import { BarrierCoordinator, type BarrierRequest } from './barrier-coordinator';

/** Replaces the scheduler's clock and timeouts (tests drive time by hand). */
export const SCHEDULER_CLOCK = Symbol('SCHEDULER_CLOCK');

export interface CheckpointRequestResult {
  readonly checkpointId: string;
  readonly status: 'requested' | 'recorded';
  readonly checkpoint: Checkpoint | null;
}

/** Pending tagged/application requests are sent again after this long without being recorded. */
const RESEND_AFTER_MS = 30_000;

/**
 * Checkpoint scheduler: asks each VPG's splitter for an automatic crash-consistent checkpoint every
 * checkpointIntervalSeconds, and carries tagged and application-consistent requests to it.
 *
 * Tagged and application-consistent requests are written to checkpoint_requests before they are sent,
 * so a request that a crash (or a volatile bus) swallowed is sent again; the splitter may then insert
 * two markers with the same id, and the journal keeps the first. Automatic checkpoints are not
 * persisted: a lost one is replaced by the next tick. After a restart the first automatic checkpoint
 * of a VPG is due one interval after its newest recorded checkpoint, or at once if that has passed
 * (firstDueAt): no gap beyond the downtime, and no burst to make up for it.
 */
@Injectable()
export class CheckpointSchedulerService implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger('checkpoint-scheduler');
  private readonly producer: BusProducer;
  private readonly timers = new Map<string, AutomaticCheckpointTimer>();
  private readonly clock: SchedulerClock;
  private readonly waiters = new Map<string, ((checkpoint: Checkpoint) => void)[]>();
  private consumer: BusConsumer | undefined;
  private barrierConsumer: BusConsumer | undefined;
  private resendTimer: NodeJS.Timeout | undefined;
  /** Checkpoints of VPGs whose VMs sit on several hosts are coordinated across their splitters. */
  readonly coordinator: BarrierCoordinator;

  constructor(
    @Inject(BUS) private readonly bus: Bus,
    private readonly dataSource: DataSource,
    @Optional() @Inject(SCHEDULER_CLOCK) clock: SchedulerClock | null = null,
  ) {
    this.producer = bus.createProducer();
    this.clock = clock ?? systemSchedulerClock;
    this.coordinator = new BarrierCoordinator(this.producer);
  }

  async onApplicationBootstrap(): Promise<void> {
    // Subscribe first, then read the table: a VPG created in between is seen at least once.
    this.consumer = this.bus.createConsumer({ groupId: 'checkpoint-scheduler', topics: [TOPICS.events], start: 'latest' });
    await this.consumer.run((batch) => this.onEvents(batch));
    // Reports of rounds in flight only: a restarted coordinator has none, and members void on their own.
    this.barrierConsumer = this.bus.createConsumer({ groupId: 'checkpoint-scheduler-barrier', topics: [TOPICS.barrier], start: 'latest' });
    await this.barrierConsumer.run((batch) => {
      for (const message of batch.messages) {
        const parsed = barrierHeldSchema.safeParse(parseJson(message.value));
        if (parsed.success) {
          this.coordinator.onHeld(parsed.data);
        }
      }
      return Promise.resolve();
    });
    const rows = await this.dataSource.query<{ definition: Vpg }[]>(`SELECT definition FROM vpgs`);
    for (const row of rows) {
      await this.schedule(row.definition);
    }
    await this.resendPending(0);
    this.resendTimer = setInterval(() => {
      this.resendPending(RESEND_AFTER_MS).catch((err: unknown) => this.logger.error(`resending requests failed: ${String(err)}`));
    }, RESEND_AFTER_MS).unref();
    this.logger.log(`scheduling automatic checkpoints for ${this.timers.size} VPG(s)`);
  }

  async beforeApplicationShutdown(): Promise<void> {
    for (const timer of this.timers.values()) {
      timer.stop();
    }
    this.timers.clear();
    clearInterval(this.resendTimer);
    await this.consumer?.stop();
    await this.barrierConsumer?.stop();
  }

  /**
   * Asks for a tagged or application-consistent checkpoint. With `waitMs` > 0, resolves once it is
   * recorded (durable and recoverable) or the wait ends, whichever is first.
   */
  async request(vpgId: string, kind: Exclude<CheckpointKind, 'automatic'>, name: unknown, vmId: string | null, waitMs: number): Promise<CheckpointRequestResult> {
    const checkpointName = validateCheckpointName(name);
    const vpg = await this.vpg(vpgId);
    if (kind === 'application-consistent') {
      if (!vmId || !vpg.vms.some((vm) => vm.id === vmId)) {
        throw new DomainError('invalid-argument', `VM ${String(vmId)} is not in VPG ${vpg.name}`);
      }
    }
    const checkpointId = randomUUID();
    const recorded = waitMs > 0 ? this.waitRecorded(checkpointId, waitMs) : Promise.resolve(null);
    await this.dataSource.query(
      `INSERT INTO checkpoint_requests (id, vpg_id, kind, name, vm_id, requested_at) VALUES ($1, $2, $3, $4, $5, now())`,
      [checkpointId, vpgId, kind, checkpointName, vmId],
    );
    await this.dispatch(vpg, { checkpointId, kind, name: checkpointName, vmId });
    await this.dataSource.query(`UPDATE checkpoint_requests SET sent_at = now() WHERE id = $1`, [checkpointId]);
    const checkpoint = await recorded;
    return { checkpointId, status: checkpoint ? 'recorded' : 'requested', checkpoint };
  }

  /** Whether an automatic timer runs for the VPG, and at which interval (for tests and status). */
  automaticIntervalMs(vpgId: string): number | null {
    return this.timers.get(vpgId)?.intervalMs ?? null;
  }

  private async schedule(vpg: Vpg): Promise<void> {
    const interval = vpg.settings.checkpointIntervalSeconds * 1000;
    const existing = this.timers.get(vpg.id);
    if (existing?.intervalMs === interval) {
      return;
    }
    existing?.stop();
    this.timers.delete(vpg.id);
    if (volumesOf(vpg).length === 0) {
      return;
    }
    const timer = new AutomaticCheckpointTimer(interval, this.clock, () => {
      // A coordinated round still running is this interval's checkpoint; queueing more would only pile up.
      if (this.coordinator.busy(vpg.id)) {
        return;
      }
      this.dispatch(vpg, { checkpointId: randomUUID(), kind: 'automatic', name: null, vmId: null }).catch((err: unknown) =>
        this.logger.warn(`automatic checkpoint for ${vpg.name} not sent: ${String(err)}`),
      );
    });
    this.timers.set(vpg.id, timer);
    // The newest checkpoint of any kind: each is a cut of everything before it.
    const newest = await this.dataSource.query<{ captured_at: Date }[]>(
      `SELECT captured_at FROM checkpoints WHERE vpg_id = $1 ORDER BY captured_at DESC, id DESC LIMIT 1`,
      [vpg.id],
    );
    if (this.timers.get(vpg.id) === timer) {
      timer.start(firstDueAt(newest[0]?.captured_at.getTime() ?? null, interval, this.clock.now()));
    }
  }

  /**
   * One member: a marker command to its splitter. Several: a coordinated round, not awaited past its
   * start (the request waits for the checkpoint to be recorded, and is sent again if it never is).
   */
  private async dispatch(vpg: Vpg, request: BarrierRequest): Promise<void> {
    if (vpgMembers(vpg).length > 1) {
      this.coordinator.run(vpg, request).catch((err: unknown) => this.logger.warn(`coordinated checkpoint for ${vpg.name} failed: ${String(err)}`));
      return;
    }
    await this.send({ type: 'checkpoint.insert', vpgId: vpg.id, ...request, requestedAt: new Date(this.clock.now()).toISOString() });
  }

  private async send(command: SplitterCommand): Promise<void> {
    await this.producer.send(TOPICS.commands, [{ key: command.vpgId, value: Buffer.from(JSON.stringify(command)) }]);
  }

  private async onEvents(batch: MessageBatch): Promise<void> {
    for (const message of batch.messages) {
      let json: unknown;
      try {
        json = JSON.parse(message.value.toString('utf8'));
      } catch {
        continue;
      }
      const parsed = domainEventSchema.safeParse(json);
      if (!parsed.success) {
        continue;
      }
      const event = parsed.data;
      switch (event.type) {
        case 'vpg.created':
          await this.schedule(event.data.vpg as Vpg);
          break;
        case 'vpg.settings-changed':
          await this.schedule(await this.vpg(event.vpgId));
          break;
        case 'checkpoint.recorded': {
          const checkpoint = event.data.checkpoint as Checkpoint;
          const waiters = this.waiters.get(checkpoint.id);
          this.waiters.delete(checkpoint.id);
          waiters?.forEach((resolve) => resolve(checkpoint));
          break;
        }
        case 'checkpoint.tagged-inserted':
        case 'journal.gap-detected':
        case 'journal.corrupt-record-rejected':
        case 'journal.order-restarted':
        case 'history.status-changed':
        case 'history.alert-raised':
        case 'history.alert-cleared':
        case 'rpo.alert-raised':
        case 'rpo.alert-cleared':
        case 'site.conditions-reported':
        case 'site.alert-raised':
        case 'site.alert-cleared':
          break;
      }
    }
  }

  private waitRecorded(checkpointId: string, waitMs: number): Promise<Checkpoint | null> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters.delete(checkpointId);
        resolve(null);
      }, waitMs);
      const list = this.waiters.get(checkpointId) ?? [];
      list.push((checkpoint) => {
        clearTimeout(timer);
        resolve(checkpoint);
      });
      this.waiters.set(checkpointId, list);
    });
  }

  /** Requests not yet recorded as checkpoints, older than `olderThanMs`, are sent again. */
  private async resendPending(olderThanMs: number): Promise<void> {
    const rows = await this.dataSource.query<{ id: string; vpg_id: string; kind: 'tagged' | 'application-consistent'; name: string | null; vm_id: string | null; requested_at: Date }[]>(
      `SELECT r.id, r.vpg_id, r.kind, r.name, r.vm_id, r.requested_at FROM checkpoint_requests r
        WHERE NOT EXISTS (SELECT 1 FROM checkpoints c WHERE c.id = r.id)
          AND r.requested_at < now() - make_interval(secs => $1::double precision / 1000)
        ORDER BY r.requested_at LIMIT 1000`,
      [olderThanMs],
    );
    for (const row of rows) {
      await this.dispatch(await this.vpg(row.vpg_id), { checkpointId: row.id, kind: row.kind, name: row.name, vmId: row.vm_id });
    }
    if (rows.length > 0) {
      this.logger.warn(`sent ${rows.length} checkpoint request(s) again that were not yet recorded`);
    }
  }

  private async vpg(vpgId: string): Promise<Vpg> {
    const rows = await this.dataSource.query<{ definition: Vpg }[]>(`SELECT definition FROM vpgs WHERE id = $1`, [vpgId]);
    const row = rows[0];
    if (!row) {
      throw new DomainError('not-found', `VPG ${vpgId} does not exist`);
    }
    return row.definition;
  }
}

function parseJson(value: Buffer): unknown {
  try {
    return JSON.parse(value.toString('utf8'));
  } catch {
    return undefined;
  }
}
