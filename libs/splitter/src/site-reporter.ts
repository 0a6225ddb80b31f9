import { randomUUID } from 'node:crypto';
import { Logger } from '@nestjs/common';
import { type BusProducer } from '@cdp/bus';
import { SITE_CONDITION_MESSAGE_MAX_LENGTH, TOPICS, type DomainEventMessage } from '@cdp/contracts';
import { type SiteCondition } from '@cdp/domain';
import { type CaptureStatus, type VpgCapture } from './vpg-capture';

/** How often the reporter looks at every capture's conditions; a change is reported within this. */
export const SITE_REPORT_INTERVAL_MS = 1_000;

/** Room left in a condition's message for what is said around the error. */
const ERROR_TEXT_MAX_LENGTH = SITE_CONDITION_MESSAGE_MAX_LENGTH - 400;

/**
 * The conditions a capture's status shows (site-alerts.ts in the domain): what the recovery site
 * raises alerts for. Each `since` is when the capture entered the state; a forced resync's error has
 * no time of its own, so it counts from the resync's start.
 */
export function conditionsOf(status: Pick<CaptureStatus, 'resync' | 'volumeBehind' | 'tracking' | 'dirtyRegions'>): SiteCondition[] {
  const conditions: SiteCondition[] = [];
  if (status.dirtyRegions) {
    const { since, regions, sync, error } = status.dirtyRegions;
    const state = status.tracking
      ? `the splitter log cannot take writes (${clip(status.tracking.reason)}), so the VM's writes go to their volumes only (${status.tracking.writes} so far) and their regions are tracked`
      : sync
        ? `the splitter log takes writes again and the regions written meanwhile are being synced (${sync.regionsDone} of ${sync.regionsTotal})`
        : `regions written while the splitter log could not take writes wait to be synced${error ? `: ${clip(error)}` : ''}`;
    conditions.push({ kind: 'dirty-regions', since, message: `${state}; ${regions} dirty region(s); no checkpoint is cut until they are synced` });
  }
  if (status.volumeBehind) {
    const { since, writes, bytes, error } = status.volumeBehind;
    conditions.push({
      kind: 'volume-behind',
      since,
      message: `${writes} logged write(s) (${bytes} bytes) are not on their protected volume; retrying them, and refusing new writes until they are in: ${clip(error)}`,
    });
  }
  if (status.resync?.error) {
    const { id, bytesDone, bytesTotal, startedAt, error } = status.resync;
    conditions.push({
      kind: 'resync-failed',
      since: startedAt,
      message: `forced resync ${id} stopped at ${bytesDone} of ${bytesTotal} bytes; no checkpoint is cut until it completes (it resumes when the splitter restarts): ${clip(error)}`,
    });
  }
  return conditions;
}

/**
 * Reports each captured VPG's conditions to the recovery site ('site.conditions-reported' on the
 * events topic), which raises and clears alerts from them. A report carries every condition the VPG
 * has now, so it is sent only when the set of kinds changes, and once for each VPG after this
 * reporter starts (a restarted splitter thereby clears what the last process left open, or raises it
 * again). A report the bus refuses is sent again on the next look, with what is true then.
 *
 * It looks on a timer rather than being told by the capture: the write path stays free of it, and a
 * state entered and left within one interval (a write refused once) is not worth an alert.
 */
export class SiteConditionReporter {
  private readonly logger = new Logger('splitter');
  /** Per VPG, the kinds last reported (sorted, joined); absent until the first report is on the bus. */
  private readonly reported = new Map<string, string>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private failing = false;

  constructor(
    private readonly producer: BusProducer,
    private readonly host: string,
    private readonly instance: string,
    private readonly captures: () => readonly VpgCapture[],
    private readonly intervalMs = SITE_REPORT_INTERVAL_MS,
  ) {}

  start(): void {
    this.timer ??= setInterval(() => this.tick(), this.intervalMs).unref();
    this.tick();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    this.timer = undefined;
    await this.running;
  }

  /**
   * Sends the reports due now; resolves when the bus has them, with how many it sent (0 when none was
   * due, or the bus refused them: then they are due again).
   */
  async report(): Promise<number> {
    const due: { key: string; vpgId: string; vpgName: string; message: DomainEventMessage }[] = [];
    const now = new Date().toISOString();
    for (const capture of this.captures()) {
      const conditions = conditionsOf(capture.trouble());
      const key = conditions
        .map((c) => c.kind)
        .sort()
        .join(',');
      if (this.reported.get(capture.vpg.id) !== key) {
        const message: DomainEventMessage = {
          id: randomUUID(),
          version: 1,
          vpgId: capture.vpg.id,
          occurredAt: now,
          type: 'site.conditions-reported',
          data: { host: this.host, instance: this.instance, reportedAt: now, conditions },
        };
        due.push({ key, vpgId: capture.vpg.id, vpgName: capture.vpg.name, message });
      }
    }
    if (due.length === 0) {
      return 0;
    }
    try {
      await this.producer.send(
        TOPICS.events,
        due.map((d) => ({ key: d.vpgId, value: Buffer.from(JSON.stringify(d.message)) })),
      );
    } catch (err) {
      if (!this.failing) {
        this.logger.warn(`cannot report the protected site's conditions to the recovery site (${err instanceof Error ? err.message : String(err)}); trying again every ${this.intervalMs} ms`);
      }
      this.failing = true;
      return 0;
    }
    this.failing = false;
    for (const d of due) {
      this.reported.set(d.vpgId, d.key);
      if (d.key !== '') {
        this.logger.warn(`VPG ${d.vpgName} on host ${this.host}: reported ${d.key} to the recovery site`);
      }
    }
    return due.length;
  }

  private tick(): void {
    this.running ??= this.report()
      .then(() => undefined)
      .catch((err: unknown) => this.logger.error(`reporting conditions failed: ${String(err)}`))
      .finally(() => (this.running = undefined));
  }
}

function clip(text: string): string {
  return text.length <= ERROR_TEXT_MAX_LENGTH ? text : `${text.slice(0, ERROR_TEXT_MAX_LENGTH)}…`;
}
