import { DomainError } from './domain.error';
import { type VpgSettings } from './vpg.model';

/**
 * Journal history status: how far back a VPG can be recovered, judged against its settings.
 *
 * Actual history is the span the recovery slider covers: from the oldest checkpoint to the newest
 * recoverable point (`newestAt`, the newest checkpoint), in whole seconds (rounded down), never
 * negative, and 0 when either end is missing. It is measured to the newest point and not to `now`
 * because the journal is trimmed against the wall clock (the promoter keeps the newest checkpoint at
 * or before `now - journalHistorySeconds` and everything after it), so `now - oldest` never drops
 * below the configured history: while replication is down the recoverable span shrinks, and only
 * `newest - oldest` shows it.
 * How stale the newest point is (RPO) is a separate measure.
 *
 * Levels, with thresholds inclusive (the article: 3 h of 4 h is a warning, 1 h an alert):
 *   - 'alert'   when actual <= historyAlertSeconds;
 *   - 'warning' when actual <= historyWarningSeconds;
 *   - 'ok'      otherwise;
 *   - 'filling' replaces 'warning' and 'alert' while the history cannot yet be full: when
 *     `protectedSince` is given and `now - protectedSince < journalHistorySeconds`. A new VPG's
 *     history grows from zero; reporting that as an alert for its first hour (the article's product
 *     does) raises an alert nobody can act on. `protectedSince` is when the current unbroken history
 *     began: the VPG's protection start, and again the end of a resync, which restarts the history
 *     (the resync is reported by its own events). Inside the filling period a history already above
 *     the warning threshold is reported as 'ok'. Without `protectedSince` there is no filling state.
 */

export const HISTORY_LEVELS = ['ok', 'warning', 'alert', 'filling'] as const;
export type HistoryLevel = (typeof HISTORY_LEVELS)[number];

export interface HistoryStatusInput {
  readonly oldestCheckpointAt: Date | null;
  /** The newest recoverable point: the newest checkpoint's capture time. */
  readonly newestAt: Date | null;
  readonly now: Date;
  readonly settings: VpgSettings;
  /** When the current unbroken history began (protection start, or the end of the latest resync). */
  readonly protectedSince?: Date | null;
}

export interface HistoryStatus {
  readonly status: HistoryLevel;
  readonly actualSeconds: number;
  readonly configuredSeconds: number;
}

export function historyStatus(input: HistoryStatusInput): HistoryStatus {
  const { oldestCheckpointAt, newestAt, now, settings } = input;
  const protectedSince = input.protectedSince ?? null;
  const nowMs = validTime(now, 'now');
  const configuredSeconds = settings.journalHistorySeconds;

  let actualSeconds = 0;
  if (oldestCheckpointAt !== null && newestAt !== null) {
    const spanMs = validTime(newestAt, 'newestAt') - validTime(oldestCheckpointAt, 'oldestCheckpointAt');
    // Negative only if the two were read at different moments around a trim: report no history.
    actualSeconds = Math.max(0, Math.floor(spanMs / 1000));
  }

  let status: HistoryLevel =
    actualSeconds <= settings.historyAlertSeconds
      ? 'alert'
      : actualSeconds <= settings.historyWarningSeconds
        ? 'warning'
        : 'ok';
  if (
    status !== 'ok' &&
    protectedSince !== null &&
    nowMs - validTime(protectedSince, 'protectedSince') < configuredSeconds * 1000
  ) {
    status = 'filling';
  }
  return { status, actualSeconds, configuredSeconds };
}

/**
 * Events of the history status, derived by `decideHistoryTransition`. They carry no VPG id or time:
 * the caller's envelope does, as for every event it publishes.
 */
export type HistoryEvent =
  | {
      readonly type: 'history.status-changed';
      /** null on a VPG's first evaluation. */
      readonly from: HistoryLevel | null;
      readonly to: HistoryLevel;
      readonly actualSeconds: number;
      readonly configuredSeconds: number;
    }
  | { readonly type: 'history.alert-raised'; readonly actualSeconds: number; readonly configuredSeconds: number }
  | {
      readonly type: 'history.alert-cleared';
      /** The level the history recovered to. */
      readonly to: HistoryLevel;
      readonly actualSeconds: number;
      readonly configuredSeconds: number;
    };

/**
 * Status changes as events. `previous` is the last evaluation that was acted on (null if the VPG has
 * never been evaluated; the caller keeps it, so that a restart does not raise an alert again).
 *   - no event when the level is unchanged, whatever the seconds did;
 *   - otherwise 'history.status-changed' {from, to}, then
 *   - 'history.alert-raised' when entering 'alert' (also on a first evaluation that is 'alert'),
 *   - 'history.alert-cleared' when leaving 'alert' for any other level: alerts clear themselves
 *     when the history recovers (or when a resync starts a new filling period).
 * Warnings are a level only, not an alert. Between a raise and the next clear there is no other raise.
 */
export function decideHistoryTransition(previous: HistoryStatus | null, next: HistoryStatus): HistoryEvent[] {
  const from = previous === null ? null : previous.status;
  if (from === next.status) {
    return [];
  }
  const measures = { actualSeconds: next.actualSeconds, configuredSeconds: next.configuredSeconds };
  const events: HistoryEvent[] = [{ type: 'history.status-changed', from, to: next.status, ...measures }];
  if (next.status === 'alert') {
    events.push({ type: 'history.alert-raised', ...measures });
  } else if (from === 'alert') {
    events.push({ type: 'history.alert-cleared', to: next.status, ...measures });
  }
  return events;
}

function validTime(date: Date, what: string): number {
  const ms = date.getTime();
  if (!Number.isFinite(ms)) {
    throw new DomainError('invalid-argument', `${what} must be a valid date`);
  }
  return ms;
}
