import { randomUUID } from 'node:crypto';
import { Inject, Injectable, Logger, type OnApplicationBootstrap, type BeforeApplicationShutdown } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { BUS, type Bus, type BusConsumer, type BusProducer, type MessageBatch } from '@cdp/bus';
import { TOPICS, domainEventSchema, type SplitterCommand } from '@cdp/contracts';
import { DomainError, validateCheckpointName, volumesOf, type Checkpoint, type CheckpointKind, type Vpg } from '@cdp/domain';

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
 * persisted: a lost one is replaced by the next tick.
 */
@Injectable()
export class CheckpointSchedulerService implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger('checkpoint-scheduler');
  private readonly producer: BusProducer;
  private readonly timers = new Map<string, { interval: number; timer: NodeJS.Timeout }>();
  private readonly waiters = new Map<string, ((checkpoint: Checkpoint) => void)[]>();
  private consumer: BusConsumer | undefined;
  private resendTimer: NodeJS.Timeout | undefined;

  constructor(
    @Inject(BUS) private readonly bus: Bus,
    private readonly dataSource: DataSource,
  ) {
    this.producer = bus.createProducer();
  }

  async onApplicationBootstrap(): Promise<void> {
    // Subscribe first, then read the table: a VPG created in between is seen at least once.
    this.consumer = this.bus.createConsumer({ groupId: 'checkpoint-scheduler', topics: [TOPICS.events], start: 'latest' });
    await this.consumer.run((batch) => this.onEvents(batch));
    const rows = await this.dataSource.query<{ definition: Vpg }[]>(`SELECT definition FROM vpgs`);
    for (const row of rows) {
      this.schedule(row.definition);
    }
    await this.resendPending(0);
    this.resendTimer = setInterval(() => {
      this.resendPending(RESEND_AFTER_MS).catch((err: unknown) => this.logger.error(`resending requests failed: ${String(err)}`));
    }, RESEND_AFTER_MS).unref();
    this.logger.log(`scheduling automatic checkpoints for ${this.timers.size} VPG(s)`);
  }

  async beforeApplicationShutdown(): Promise<void> {
    for (const { timer } of this.timers.values()) {
      clearInterval(timer);
    }
    this.timers.clear();
    clearInterval(this.resendTimer);
    await this.consumer?.stop();
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
    await this.send({ type: 'checkpoint.insert', vpgId, checkpointId, kind, name: checkpointName, vmId, requestedAt: new Date().toISOString() });
    await this.dataSource.query(`UPDATE checkpoint_requests SET sent_at = now() WHERE id = $1`, [checkpointId]);
    const checkpoint = await recorded;
    return { checkpointId, status: checkpoint ? 'recorded' : 'requested', checkpoint };
  }

  private schedule(vpg: Vpg): void {
    const interval = vpg.settings.checkpointIntervalSeconds * 1000;
    const existing = this.timers.get(vpg.id);
    if (existing?.interval === interval) {
      return;
    }
    if (existing) {
      clearInterval(existing.timer);
    }
    if (volumesOf(vpg).length === 0) {
      return;
    }
    const timer = setInterval(() => {
      this.send({
        type: 'checkpoint.insert',
        vpgId: vpg.id,
        checkpointId: randomUUID(),
        kind: 'automatic',
        name: null,
        vmId: null,
        requestedAt: new Date().toISOString(),
      }).catch((err: unknown) => this.logger.warn(`automatic checkpoint for ${vpg.name} not sent: ${String(err)}`));
    }, interval).unref();
    this.timers.set(vpg.id, { interval, timer });
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
          this.schedule(event.data.vpg as Vpg);
          break;
        case 'vpg.settings-changed':
          this.schedule(await this.vpg(event.vpgId));
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
      await this.send({
        type: 'checkpoint.insert',
        vpgId: row.vpg_id,
        checkpointId: row.id,
        kind: row.kind,
        name: row.name,
        vmId: row.vm_id,
        requestedAt: row.requested_at.toISOString(),
      });
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
