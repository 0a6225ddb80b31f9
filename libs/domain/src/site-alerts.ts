/**
 * Alerts for a protected site in trouble: what a splitter reports about one VPG it captures, and how
 * the recovery site turns those reports into alerts that are raised once and clear themselves.
 *
 * The splitter reports levels, not edges: each report carries every condition the VPG has on that
 * host at that moment (none when all is well), and a splitter sends one whenever the set changes and
 * once when it opens the VPG. So a report lost between a raise and a clear, or a splitter restarted
 * while its disk was full and found healthy, leaves nothing open for good: the next report says what
 * is true, and the alerts follow it.
 *
 * Conditions (each one a state in which the VPG is not protected as it should be):
 *   - 'dirty-regions': the splitter log cannot take writes (its size limit, or a full disk), so the
 *     VM's writes go to their volumes only and their regions are tracked (degraded mode); or the log
 *     takes them again and those regions are being synced. No checkpoint is cut until they are;
 *   - 'log-refusing':  the splitter log cannot take appends and the VM's writes fail. Splitters from
 *     before degraded mode reported it; it stays so that their open alerts are understood and clear;
 *   - 'volume-behind': writes are in the log and the stream but not on their protected volume (its
 *     write failed, a full disk): they are retried, and new writes are refused until they are in;
 *   - 'resync-failed': an operator-forced resync stopped on an error; no checkpoint is cut until it
 *     completes.
 */
export const SITE_CONDITION_KINDS = ['dirty-regions', 'log-refusing', 'volume-behind', 'resync-failed'] as const;
export type SiteConditionKind = (typeof SITE_CONDITION_KINDS)[number];

export interface SiteCondition {
  readonly kind: SiteConditionKind;
  /** When the condition began, as the splitter saw it (ISO 8601). */
  readonly since: string;
  /** What an operator reads: what is wrong and the error behind it. */
  readonly message: string;
}

/** An alert the recovery site holds open for one VPG on one host. */
export interface OpenSiteAlert {
  readonly kind: SiteConditionKind;
  readonly raisedAt: string;
  readonly message: string;
}

export interface SiteAlertDecision {
  /** Conditions reported that had no open alert: raise them. */
  readonly raised: readonly SiteCondition[];
  /** Open alerts whose condition the report no longer has: they clear themselves. */
  readonly cleared: readonly OpenSiteAlert[];
  /** Open alerts still reported: kept, with their first raise time and the newest message. */
  readonly kept: readonly OpenSiteAlert[];
}

/**
 * What one report does to a host's open alerts. An alert is raised once however many reports repeat
 * its condition, keeps the time it was first raised, and clears when a report no longer has it. A
 * report naming a kind twice counts it once (the first).
 */
export function decideSiteAlerts(open: readonly OpenSiteAlert[], reported: readonly SiteCondition[]): SiteAlertDecision {
  const now = new Map<SiteConditionKind, SiteCondition>();
  for (const condition of reported) {
    if (!now.has(condition.kind)) {
      now.set(condition.kind, condition);
    }
  }
  const openKinds = new Set(open.map((a) => a.kind));
  return {
    raised: [...now.values()].filter((c) => !openKinds.has(c.kind)),
    cleared: open.filter((a) => !now.has(a.kind)),
    kept: open.filter((a) => now.has(a.kind)).map((a) => ({ ...a, message: now.get(a.kind)?.message ?? a.message })),
  };
}
