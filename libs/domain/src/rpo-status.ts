import { DomainError } from './domain.error';
import { DEFAULT_VPG_SETTINGS, type VpgSettings } from './vpg.model';

/**
 * RPO as the recovery site sees it: now minus the capture time of the newest record durable in the
 * VPG's journal (a write or a checkpoint; an idle VPG still journals a checkpoint every interval).
 * Before anything is journaled it counts from when protection began, so a VPG whose splitter never
 * comes up is reported too. Whole seconds, rounded down, never negative.
 *
 * The alert is raised while the RPO is above the VPG's target (`rpoAlertSeconds`, default 5 min) and
 * clears itself once something newer is journaled. Unlike the history status, it shows a stalled
 * replication within minutes: the history falls to its warning only after an hour of it.
 */
export interface RpoStatusInput {
  /** Capture time of the newest record in the journal; null before the first. */
  readonly newestAt: Date | null;
  readonly protectedSince: Date;
  readonly now: Date;
  readonly settings: VpgSettings;
}

export interface RpoStatus {
  readonly rpoSeconds: number;
  readonly targetSeconds: number;
  readonly exceeded: boolean;
}

export type RpoEvent =
  | { readonly type: 'rpo.alert-raised'; readonly rpoSeconds: number; readonly targetSeconds: number }
  | { readonly type: 'rpo.alert-cleared'; readonly rpoSeconds: number; readonly targetSeconds: number };

export function rpoStatus(input: RpoStatusInput): RpoStatus {
  const since = input.newestAt ?? input.protectedSince;
  const ms = input.now.getTime() - since.getTime();
  if (!Number.isFinite(ms)) {
    throw new DomainError('invalid-argument', 'now, newestAt and protectedSince must be valid dates');
  }
  const rpoSeconds = Math.max(0, Math.floor(ms / 1000));
  const targetSeconds = input.settings.rpoAlertSeconds ?? (DEFAULT_VPG_SETTINGS.rpoAlertSeconds as number);
  return { rpoSeconds, targetSeconds, exceeded: rpoSeconds > targetSeconds };
}

/** A raise when the RPO goes above the target with no alert open, a clear when it comes back; else nothing. */
export function decideRpoTransition(alertOpen: boolean, next: RpoStatus): RpoEvent[] {
  const measures = { rpoSeconds: next.rpoSeconds, targetSeconds: next.targetSeconds };
  if (next.exceeded && !alertOpen) {
    return [{ type: 'rpo.alert-raised', ...measures }];
  }
  if (!next.exceeded && alertOpen) {
    return [{ type: 'rpo.alert-cleared', ...measures }];
  }
  return [];
}
