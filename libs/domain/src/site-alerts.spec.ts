import fc from 'fast-check';
import { decideSiteAlerts, SITE_CONDITION_KINDS, type OpenSiteAlert, type SiteCondition, type SiteConditionKind } from './site-alerts';

const condition = (kind: SiteConditionKind, message = `${kind} now`, since = '2026-12-05T10:00:00.000Z'): SiteCondition => ({ kind, since, message });
const alert = (kind: SiteConditionKind, raisedAt = '2026-12-05T09:00:00.000Z', message = `${kind} then`): OpenSiteAlert => ({ kind, raisedAt, message });

describe('decideSiteAlerts', () => {
  it('raises what a report has and nothing holds open', () => {
    expect(decideSiteAlerts([], [condition('log-refusing')])).toEqual({ raised: [condition('log-refusing')], cleared: [], kept: [] });
  });

  it('keeps an alert a report repeats: raised once, first raise time kept, newest message', () => {
    const decision = decideSiteAlerts([alert('volume-behind')], [condition('volume-behind', '3 writes behind')]);
    expect(decision).toEqual({ raised: [], cleared: [], kept: [{ kind: 'volume-behind', raisedAt: '2026-12-05T09:00:00.000Z', message: '3 writes behind' }] });
  });

  it('clears what a report no longer has, and an empty report clears everything', () => {
    expect(decideSiteAlerts([alert('log-refusing'), alert('resync-failed')], [condition('resync-failed')]).cleared).toEqual([alert('log-refusing')]);
    expect(decideSiteAlerts([alert('log-refusing'), alert('resync-failed')], [])).toEqual({
      raised: [],
      cleared: [alert('log-refusing'), alert('resync-failed')],
      kept: [],
    });
  });

  it('counts a kind named twice in one report once (the first)', () => {
    expect(decideSiteAlerts([], [condition('log-refusing', 'first'), condition('log-refusing', 'second')]).raised).toEqual([condition('log-refusing', 'first')]);
  });

  it('over any sequence of reports: the open alerts are exactly the last report, each raised once between clears', () => {
    const report = fc.uniqueArray(fc.constantFrom(...SITE_CONDITION_KINDS), { maxLength: SITE_CONDITION_KINDS.length });
    fc.assert(
      fc.property(fc.array(report, { maxLength: 30 }), (reports) => {
        let open: OpenSiteAlert[] = [];
        const raises = new Map<SiteConditionKind, number>();
        const clears = new Map<SiteConditionKind, number>();
        reports.forEach((kinds, i) => {
          const decision = decideSiteAlerts(open, kinds.map((k) => condition(k)));
          for (const c of decision.raised) {
            raises.set(c.kind, (raises.get(c.kind) ?? 0) + 1);
          }
          for (const a of decision.cleared) {
            clears.set(a.kind, (clears.get(a.kind) ?? 0) + 1);
          }
          open = [...decision.kept, ...decision.raised.map((c) => ({ kind: c.kind, raisedAt: String(i), message: c.message }))];
          expect(new Set(open.map((a) => a.kind))).toEqual(new Set(kinds));
          for (const kind of SITE_CONDITION_KINDS) {
            // Raises and clears alternate, starting with a raise.
            expect((raises.get(kind) ?? 0) - (clears.get(kind) ?? 0)).toBe(kinds.includes(kind) ? 1 : 0);
          }
        });
      }),
    );
  });
});
