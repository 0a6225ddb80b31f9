import { randomUUID } from 'node:crypto';
import { Inject, Injectable, Logger, type BeforeApplicationShutdown, type OnApplicationBootstrap } from '@nestjs/common';
import { DataSource } from 'typeorm';
import { BUS, type Bus, type BusConsumer, type BusProducer, type MessageBatch } from '@cdp/bus';
import { TOPICS, domainEventSchema, type DomainEventMessage } from '@cdp/contracts';
import { decideSiteAlerts, type OpenSiteAlert, type SiteCondition, type SiteConditionKind } from '@cdp/domain';

/** An open alert: a protected site reported a condition for a VPG (site-alerts.ts in the domain). */
export interface SiteAlert {
  readonly vpgId: string;
  readonly vpgName: string;
  readonly type: 'protected-site';
  readonly host: string;
  readonly condition: SiteConditionKind;
  /** When the condition began, as the splitter saw it. */
  readonly raisedAt: string;
  readonly message: string;
}

type ConditionsReported = Extract<DomainEventMessage, { type: 'site.conditions-reported' }>;

interface AlertRow {
  vpg_id: string;
  name: string;
  host: string;
  kind: SiteConditionKind;
  raised_at: Date;
  message: string;
}

/**
 * Alerts for a protected site in trouble. Splitters report each VPG's conditions on their host
 * ('site.conditions-reported', every condition present, none when all is well); this turns each
 * report into alerts: a condition with no open alert raises one ('site.alert-raised'), an open alert
 * the report no longer has clears itself ('site.alert-cleared'). Open alerts are kept in site_alerts,
 * so a restart raises nothing twice.
 *
 * A report is applied in one transaction that first locks the host's row in site_reports: a report
 * older than the last one applied from the same splitter process (redelivered, or overtaken) changes
 * nothing. Events are published
 * before the transaction commits: if the commit fails, the bus delivers the report again and the same
 * events are published again (at least once), never a stored alert whose event was not sent.
 */
@Injectable()
export class SiteAlertsService implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger('site-alerts');
  private readonly producer: BusProducer;
  private consumer: BusConsumer | undefined;

  constructor(
    private readonly dataSource: DataSource,
    @Inject(BUS) private readonly bus: Bus,
  ) {
    this.producer = bus.createProducer();
  }

  async onApplicationBootstrap(): Promise<void> {
    this.consumer = this.bus.createConsumer({ groupId: 'site-alerts', topics: [TOPICS.events], start: 'earliest' });
    await this.consumer.run((batch) => this.onEvents(batch));
  }

  async beforeApplicationShutdown(): Promise<void> {
    await this.consumer?.stop();
  }

  /**
   * Applies one report; returns the events it published ('skipped' when the report is older than the
   * host's last one, or names a VPG this site does not know).
   */
  async apply(report: ConditionsReported): Promise<DomainEventMessage[] | 'skipped'> {
    const { host, instance, reportedAt, conditions } = report.data;
    return this.dataSource.transaction(async (em) => {
      const known = await em.query<{ name: string }[]>(`SELECT name FROM vpgs WHERE id = $1`, [report.vpgId]);
      if (known.length === 0) {
        this.logger.warn(`a condition report from host ${host} names VPG ${report.vpgId}, which this site does not protect; ignored`);
        return 'skipped';
      }
      // The host's row exists before it is locked, so two reports for one host queue on one lock.
      await em.query(`INSERT INTO site_reports (vpg_id, host, instance, reported_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`, [
        report.vpgId,
        host,
        instance,
        reportedAt,
      ]);
      const last = await em.query<{ instance: string; reported_at: Date }[]>(`SELECT instance, reported_at FROM site_reports WHERE vpg_id = $1 AND host = $2 FOR UPDATE`, [
        report.vpgId,
        host,
      ]);
      // Older than the last report of the same process: overtaken on the way, or delivered again. A
      // new process (a restarted splitter) is taken at its word even if its clock reads earlier: its
      // reports reach the bus after every report of the process before it.
      const previous = last[0];
      if (previous && previous.instance === instance && previous.reported_at.getTime() > Date.parse(reportedAt)) {
        return 'skipped';
      }
      const open = await em.query<{ kind: SiteConditionKind; raised_at: Date; message: string }[]>(
        `SELECT kind, raised_at, message FROM site_alerts WHERE vpg_id = $1 AND host = $2 ORDER BY kind`,
        [report.vpgId, host],
      );
      const decision = decideSiteAlerts(
        open.map((row) => ({ kind: row.kind, raisedAt: row.raised_at.toISOString(), message: row.message })),
        conditions,
      );
      const name = known[0]?.name ?? report.vpgId;
      const messages = [
        ...decision.raised.map((c) => raisedMessage(report.vpgId, host, c)),
        ...decision.cleared.map((a) => clearedMessage(report.vpgId, host, a)),
      ];
      if (messages.length > 0) {
        await this.producer.send(
          TOPICS.events,
          messages.map((m) => ({ key: m.vpgId, value: Buffer.from(JSON.stringify(m)) })),
        );
      }
      for (const c of decision.raised) {
        await em.query(`INSERT INTO site_alerts (vpg_id, host, kind, raised_at, message) VALUES ($1, $2, $3, $4, $5)`, [report.vpgId, host, c.kind, c.since, c.message]);
        this.logger.warn(`VPG ${name}, host ${host}: ${c.kind} since ${c.since}; alert raised: ${c.message}`);
      }
      for (const a of decision.cleared) {
        await em.query(`DELETE FROM site_alerts WHERE vpg_id = $1 AND host = $2 AND kind = $3`, [report.vpgId, host, a.kind]);
        this.logger.log(`VPG ${name}, host ${host}: ${a.kind} is over; alert cleared`);
      }
      for (const a of decision.kept) {
        await em.query(`UPDATE site_alerts SET message = $4 WHERE vpg_id = $1 AND host = $2 AND kind = $3`, [report.vpgId, host, a.kind, a.message]);
      }
      await em.query(`UPDATE site_reports SET instance = $3, reported_at = $4 WHERE vpg_id = $1 AND host = $2`, [report.vpgId, host, instance, reportedAt]);
      return messages;
    });
  }

  /** Open alerts, of one VPG or of all, oldest first. */
  async alerts(vpgId?: string): Promise<SiteAlert[]> {
    const rows = await this.dataSource.query<AlertRow[]>(
      `SELECT a.*, v.name FROM site_alerts a JOIN vpgs v ON v.id = a.vpg_id
        WHERE $1::uuid IS NULL OR a.vpg_id = $1
        ORDER BY a.raised_at, a.vpg_id, a.host, a.kind`,
      [vpgId ?? null],
    );
    return rows.map((row) => ({
      vpgId: row.vpg_id,
      vpgName: row.name,
      type: 'protected-site',
      host: row.host,
      condition: row.kind,
      raisedAt: row.raised_at.toISOString(),
      message: row.message,
    }));
  }

  private async onEvents(batch: MessageBatch): Promise<void> {
    for (const message of batch.messages) {
      // Most of the topic is other events (a checkpoint recorded every few seconds per VPG): only the
      // reports are validated, each once.
      const json = parseJson(message.value);
      if (typeof json !== 'object' || json === null || (json as { type?: unknown }).type !== 'site.conditions-reported') {
        continue;
      }
      const parsed = domainEventSchema.safeParse(json);
      if (!parsed.success) {
        this.logger.warn(`skipping a condition report that is not valid: ${parsed.error.message}`);
        continue;
      }
      if (parsed.data.type === 'site.conditions-reported') {
        await this.apply(parsed.data);
      }
    }
  }
}

function raisedMessage(vpgId: string, host: string, condition: SiteCondition): DomainEventMessage {
  return { ...envelope(vpgId), type: 'site.alert-raised', data: { host, kind: condition.kind, since: condition.since, message: condition.message } };
}

function clearedMessage(vpgId: string, host: string, alert: OpenSiteAlert): DomainEventMessage {
  return { ...envelope(vpgId), type: 'site.alert-cleared', data: { host, kind: alert.kind, raisedAt: alert.raisedAt } };
}

function envelope(vpgId: string): { id: string; version: 1; vpgId: string; occurredAt: string } {
  return { id: randomUUID(), version: 1, vpgId, occurredAt: new Date().toISOString() };
}

function parseJson(value: Buffer): unknown {
  try {
    return JSON.parse(value.toString('utf8'));
  } catch {
    return undefined;
  }
}
