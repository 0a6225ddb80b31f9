import { randomUUID } from 'node:crypto';
import { Inject, Injectable, Logger, Optional, type BeforeApplicationShutdown, type OnApplicationBootstrap } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { BUS, type Bus, type BusProducer } from '@cdp/bus';
import { TOPICS, type DomainEventMessage } from '@cdp/contracts';
import {
  decideHistoryTransition,
  decideRpoTransition,
  historyStatus,
  rpoStatus,
  type HistoryEvent,
  type HistoryLevel,
  type HistoryStatus,
  type RpoEvent,
  type Vpg,
} from '@cdp/domain';
import { CheckpointCatalog } from '@cdp/journal-store';

/** Where the monitor reads the time: the wall clock in production, a hand-moved one in tests. */
export interface Clock {
  now(): Date;
}

export interface HistoryMonitorOptions {
  readonly clock?: Clock;
  /** How often every VPG is evaluated (default 30 s); 0 turns the timer off (tests call evaluateAll). */
  readonly intervalMs?: number;
}

export const HISTORY_MONITOR_OPTIONS = Symbol('HISTORY_MONITOR_OPTIONS');

const DEFAULT_INTERVAL_MS = 30_000;

/** An open alert: the VPG's journal history is at or below its alert threshold. */
export interface HistoryAlert {
  readonly vpgId: string;
  readonly vpgName: string;
  readonly type: 'journal-history';
  readonly raisedAt: string;
  readonly actualSeconds: number;
  readonly configuredSeconds: number;
  readonly message: string;
}

/** An open alert: nothing newer than the VPG's RPO target is journaled (rpo-status.ts). */
export interface RpoAlert {
  readonly vpgId: string;
  readonly vpgName: string;
  readonly type: 'rpo';
  readonly raisedAt: string;
  readonly rpoSeconds: number;
  readonly targetSeconds: number;
  readonly message: string;
}

export interface StoredHistoryStatus extends HistoryStatus {
  readonly evaluatedAt: string;
  readonly changedAt: string;
  readonly alertRaisedAt: string | null;
  /** The RPO last evaluated (null before the first evaluation that had it) and its open alert. */
  readonly rpoSeconds: number | null;
  readonly rpoAlertRaisedAt: string | null;
}

interface StatusRow {
  vpg_id: string;
  status: HistoryLevel;
  actual_seconds: string;
  configured_seconds: string;
  evaluated_at: Date;
  changed_at: Date;
  alert_raised_at: Date | null;
  rpo_seconds: string | null;
  rpo_target_seconds: string | null;
  rpo_alert_raised_at: Date | null;
}

/**
 * The journal history monitor: evaluates every VPG's history status (history-status.ts) on a timer,
 * publishes each change of level on the events topic ('history.status-changed', and
 * 'history.alert-raised' / 'history.alert-cleared' around alerts), and keeps the last status and the
 * open alert per VPG in vpg_history_status.
 *
 * Events are published before the new status is stored: if the store fails, the next evaluation
 * decides the same change again and publishes it again (at least once), rather than a stored change
 * whose event was never sent. A restart reads the stored status, so it raises no alert twice.
 */
@Injectable()
export class HistoryMonitorService implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger('history-monitor');
  private readonly catalog: CheckpointCatalog;
  private readonly producer: BusProducer;
  private readonly clock: Clock;
  private readonly intervalMs: number;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<unknown> | undefined;

  constructor(
    private readonly dataSource: DataSource,
    @Inject(BUS) bus: Bus,
    @Optional() @Inject(HISTORY_MONITOR_OPTIONS) options: HistoryMonitorOptions | null = null,
  ) {
    this.catalog = new CheckpointCatalog(dataSource);
    this.producer = bus.createProducer();
    this.clock = options?.clock ?? { now: () => new Date() };
    this.intervalMs = options?.intervalMs ?? DEFAULT_INTERVAL_MS;
  }

  onApplicationBootstrap(): void {
    if (this.intervalMs > 0) {
      this.timer = setInterval(() => this.tick(), this.intervalMs).unref();
    }
  }

  async beforeApplicationShutdown(): Promise<void> {
    clearInterval(this.timer);
    await this.running?.catch(() => undefined);
  }

  /** Evaluates every VPG once; returns the events it published. */
  async evaluateAll(): Promise<DomainEventMessage[]> {
    const rows = await this.dataSource.query<{ definition: Vpg }[]>(`SELECT definition FROM vpgs ORDER BY created_at, id`);
    const published: DomainEventMessage[] = [];
    for (const { definition } of rows) {
      published.push(...(await this.evaluate(definition)));
    }
    return published;
  }

  /** Evaluates one VPG at the clock's time; returns the events it published. */
  async evaluate(vpg: Vpg): Promise<DomainEventMessage[]> {
    const now = this.clock.now();
    const stats = await this.catalog.stats(vpg.id);
    const next = historyStatus({
      oldestCheckpointAt: stats.earliest ? new Date(stats.earliest.capturedAt) : null,
      newestAt: stats.latest ? new Date(stats.latest.capturedAt) : null,
      now,
      settings: vpg.settings,
      protectedSince: new Date(vpg.createdAt),
    });
    const previous = await this.stored(vpg.id);
    const journaled = await this.dataSource.query<{ last_captured_at: Date | null }[]>(`SELECT last_captured_at FROM journal_vpgs WHERE vpg_id = $1`, [vpg.id]);
    const rpo = rpoStatus({ newestAt: journaled[0]?.last_captured_at ?? null, protectedSince: new Date(vpg.createdAt), now, settings: vpg.settings });
    const decided: (HistoryEvent | RpoEvent)[] = [...decideHistoryTransition(previous, next), ...decideRpoTransition((previous?.rpoAlertRaisedAt ?? null) !== null, rpo)];
    const messages = decided.map((event) => toMessage(vpg.id, now, event));
    if (messages.length > 0) {
      await this.producer.send(
        TOPICS.events,
        messages.map((m) => ({ key: m.vpgId, value: Buffer.from(JSON.stringify(m)) })),
      );
      for (const event of decided) {
        if (event.type === 'history.alert-raised') {
          this.logger.warn(`VPG ${vpg.name}: journal history ${event.actualSeconds} s of ${event.configuredSeconds} s configured; alert raised`);
        } else if (event.type === 'history.alert-cleared') {
          this.logger.log(`VPG ${vpg.name}: journal history back to ${event.to}; alert cleared`);
        } else if (event.type === 'rpo.alert-raised') {
          this.logger.warn(`VPG ${vpg.name}: nothing journaled for ${event.rpoSeconds} s, above the ${event.targetSeconds} s RPO target; alert raised`);
        } else if (event.type === 'rpo.alert-cleared') {
          this.logger.log(`VPG ${vpg.name}: RPO ${event.rpoSeconds} s, within its ${event.targetSeconds} s target again; alert cleared`);
        }
      }
    }
    const changed = previous === null || previous.status !== next.status;
    await this.dataSource.query(
      `INSERT INTO vpg_history_status AS h (vpg_id, status, actual_seconds, configured_seconds, evaluated_at, changed_at, alert_raised_at,
                                            rpo_seconds, rpo_target_seconds, rpo_alert_raised_at)
       VALUES ($1, $2, $3, $4, $5, $5, CASE WHEN $2 = 'alert' THEN $5::timestamptz END, $7, $8, CASE WHEN $9 THEN $5::timestamptz END)
       ON CONFLICT (vpg_id) DO UPDATE SET
         status = EXCLUDED.status, actual_seconds = EXCLUDED.actual_seconds, configured_seconds = EXCLUDED.configured_seconds,
         evaluated_at = EXCLUDED.evaluated_at,
         changed_at = CASE WHEN $6 THEN EXCLUDED.changed_at ELSE h.changed_at END,
         alert_raised_at = CASE WHEN EXCLUDED.status <> 'alert' THEN NULL WHEN h.alert_raised_at IS NULL THEN EXCLUDED.evaluated_at ELSE h.alert_raised_at END,
         rpo_seconds = EXCLUDED.rpo_seconds, rpo_target_seconds = EXCLUDED.rpo_target_seconds,
         rpo_alert_raised_at = CASE WHEN NOT $9 THEN NULL ELSE coalesce(h.rpo_alert_raised_at, EXCLUDED.evaluated_at) END`,
      [vpg.id, next.status, next.actualSeconds, next.configuredSeconds, now, changed, rpo.rpoSeconds, rpo.targetSeconds, rpo.exceeded],
    );
    return messages;
  }

  /** The status last evaluated for a VPG, or null if it has not been evaluated yet. */
  async stored(vpgId: string): Promise<StoredHistoryStatus | null> {
    const rows = await this.dataSource.query<StatusRow[]>(`SELECT * FROM vpg_history_status WHERE vpg_id = $1`, [vpgId]);
    const row = rows[0];
    return row ? toStored(row) : null;
  }

  /** Open alerts (history and RPO), of one VPG or of all, oldest first. */
  async alerts(vpgId?: string): Promise<(HistoryAlert | RpoAlert)[]> {
    const rows = await this.dataSource.query<(StatusRow & { name: string })[]>(
      `SELECT h.*, v.name FROM vpg_history_status h JOIN vpgs v ON v.id = h.vpg_id
        WHERE (h.alert_raised_at IS NOT NULL OR h.rpo_alert_raised_at IS NOT NULL) AND ($1::uuid IS NULL OR h.vpg_id = $1)
        ORDER BY h.vpg_id`,
      [vpgId ?? null],
    );
    const alerts: (HistoryAlert | RpoAlert)[] = [];
    for (const row of rows) {
      if (row.alert_raised_at) {
        alerts.push({
          vpgId: row.vpg_id,
          vpgName: row.name,
          type: 'journal-history',
          raisedAt: row.alert_raised_at.toISOString(),
          actualSeconds: Number(row.actual_seconds),
          configuredSeconds: Number(row.configured_seconds),
          message: `journal history is ${Number(row.actual_seconds)} s of ${Number(row.configured_seconds)} s configured`,
        });
      }
      if (row.rpo_alert_raised_at) {
        const rpoSeconds = Number(row.rpo_seconds);
        const targetSeconds = Number(row.rpo_target_seconds);
        alerts.push({
          vpgId: row.vpg_id,
          vpgName: row.name,
          type: 'rpo',
          raisedAt: row.rpo_alert_raised_at.toISOString(),
          rpoSeconds,
          targetSeconds,
          message: `nothing journaled for ${rpoSeconds} s (as of the last evaluation), above the ${targetSeconds} s RPO target`,
        });
      }
    }
    // ISO 8601 times in UTC sort as strings; ties keep the VPG order.
    return alerts.sort((a, b) => (a.raisedAt < b.raisedAt ? -1 : a.raisedAt > b.raisedAt ? 1 : 0));
  }

  private tick(): void {
    if (this.running) {
      return;
    }
    this.running = this.evaluateAll()
      .catch((err: unknown) => this.logger.error(`history evaluation failed: ${String(err)}`))
      .finally(() => (this.running = undefined));
  }
}

/** The table's CHECK constraint keeps `status` to the HistoryLevel values. */
function toStored(row: StatusRow): StoredHistoryStatus {
  return {
    status: row.status,
    actualSeconds: Number(row.actual_seconds),
    configuredSeconds: Number(row.configured_seconds),
    evaluatedAt: row.evaluated_at.toISOString(),
    changedAt: row.changed_at.toISOString(),
    alertRaisedAt: row.alert_raised_at?.toISOString() ?? null,
    rpoSeconds: row.rpo_seconds === null ? null : Number(row.rpo_seconds),
    rpoAlertRaisedAt: row.rpo_alert_raised_at?.toISOString() ?? null,
  };
}

function toMessage(vpgId: string, now: Date, event: HistoryEvent | RpoEvent): DomainEventMessage {
  const envelope = { id: randomUUID(), version: 1 as const, vpgId, occurredAt: now.toISOString() };
  switch (event.type) {
    case 'history.status-changed':
      return {
        ...envelope,
        type: event.type,
        data: { from: event.from, to: event.to, actualSeconds: event.actualSeconds, configuredSeconds: event.configuredSeconds },
      };
    case 'history.alert-raised':
      return { ...envelope, type: event.type, data: { actualSeconds: event.actualSeconds, configuredSeconds: event.configuredSeconds } };
    case 'history.alert-cleared':
      return {
        ...envelope,
        type: event.type,
        data: { to: event.to, actualSeconds: event.actualSeconds, configuredSeconds: event.configuredSeconds },
      };
    case 'rpo.alert-raised':
    case 'rpo.alert-cleared':
      return { ...envelope, type: event.type, data: { rpoSeconds: event.rpoSeconds, targetSeconds: event.targetSeconds } };
  }
}
