import fc from 'fast-check';
import { DomainError } from './domain.error';
import {
  decideHistoryTransition,
  HISTORY_LEVELS,
  historyStatus,
  type HistoryEvent,
  type HistoryLevel,
  type HistoryStatus,
} from './history-status';
import { DEFAULT_VPG_SETTINGS } from './vpg.model';

const SECOND = 1000;
const MINUTE = 60 * SECOND;
const HOUR = 60 * MINUTE;
const T0 = new Date('2026-11-25T00:00:00.000Z').getTime();
const at = (ms: number): Date => new Date(ms);

describe('historyStatus', () => {
  const now = at(T0 + 48 * HOUR);
  const withHistory = (seconds: number): HistoryStatus =>
    historyStatus({
      oldestCheckpointAt: at(now.getTime() - seconds * SECOND),
      newestAt: now,
      now,
      settings: DEFAULT_VPG_SETTINGS,
    });

  it.each<[string, number, HistoryLevel]>([
    ['4 h of 4 h (the default)', 4 * 3600, 'ok'],
    ['more than configured', 5 * 3600, 'ok'],
    ['just over 3 h', 3 * 3600 + 1, 'ok'],
    ['3 h of 4 h (the article: warning)', 3 * 3600, 'warning'],
    ['just over 1 h', 3600 + 1, 'warning'],
    ['1 h of 4 h (the article: alert)', 3600, 'alert'],
    ['41 min 25 s (the article screenshot)', 41 * 60 + 25, 'alert'],
    ['none', 0, 'alert'],
  ])('%s is %s', (_, seconds, level) => {
    expect(withHistory(seconds)).toEqual({ status: level, actualSeconds: seconds, configuredSeconds: 4 * 3600 });
  });

  it('measures to the newest point, not to now: a stalled journal shrinks its history', () => {
    const status = historyStatus({
      oldestCheckpointAt: at(T0 - 4 * HOUR),
      newestAt: at(T0 - 2 * HOUR - 30 * MINUTE),
      now: at(T0),
      settings: DEFAULT_VPG_SETTINGS,
    });
    expect(status).toEqual({ status: 'warning', actualSeconds: 90 * 60, configuredSeconds: 4 * 3600 });
  });

  it('rounds down to whole seconds, reports no history for a missing end or reversed ends', () => {
    const base = { now: at(T0), settings: DEFAULT_VPG_SETTINGS };
    const almostFive = historyStatus({ ...base, oldestCheckpointAt: at(T0 - 5 * HOUR - 999), newestAt: at(T0) });
    expect(almostFive.actualSeconds).toBe(5 * 3600);
    expect(historyStatus({ ...base, oldestCheckpointAt: null, newestAt: null })).toEqual({
      status: 'alert',
      actualSeconds: 0,
      configuredSeconds: 4 * 3600,
    });
    expect(historyStatus({ ...base, oldestCheckpointAt: at(T0), newestAt: null }).actualSeconds).toBe(0);
    expect(historyStatus({ ...base, oldestCheckpointAt: at(T0), newestAt: at(T0 - SECOND) }).actualSeconds).toBe(0);
  });

  it('uses the VPG thresholds', () => {
    const settings = {
      ...DEFAULT_VPG_SETTINGS,
      journalHistorySeconds: 3600,
      historyWarningSeconds: 1800,
      historyAlertSeconds: 600,
    };
    const status = (seconds: number): HistoryLevel =>
      historyStatus({ oldestCheckpointAt: at(T0 - seconds * SECOND), newestAt: at(T0), now: at(T0), settings }).status;
    expect([status(3600), status(1801), status(1800), status(601), status(600)]).toEqual([
      'ok',
      'ok',
      'warning',
      'warning',
      'alert',
    ]);
  });

  it.each<[string, number, number, HistoryLevel]>([
    ['a new VPG, 10 min old, 10 min of history', 10 * MINUTE, 10 * MINUTE, 'filling'],
    ['2 h old, 2 h of history', 2 * HOUR, 2 * HOUR, 'filling'],
    ['3 h 30 min old: above the warning threshold already', 3.5 * HOUR, 3.5 * HOUR, 'ok'],
    ['4 h old, history still short: filling is over', 4 * HOUR, 30 * MINUTE, 'alert'],
    ['5 h old, 2 h of history', 5 * HOUR, 2 * HOUR, 'warning'],
  ])('filling: %s', (_, age, history, level) => {
    const now = T0 + 10 * HOUR;
    expect(
      historyStatus({
        oldestCheckpointAt: at(now - history),
        newestAt: at(now),
        now: at(now),
        settings: DEFAULT_VPG_SETTINGS,
        protectedSince: at(now - age),
      }).status,
    ).toBe(level);
  });

  it('rejects invalid dates', () => {
    const invalid = new Date(Number.NaN);
    const base = { oldestCheckpointAt: at(T0), newestAt: at(T0), now: at(T0), settings: DEFAULT_VPG_SETTINGS };
    expect(() => historyStatus({ ...base, now: invalid })).toThrow(DomainError);
    expect(() => historyStatus({ ...base, newestAt: invalid })).toThrow(DomainError);
    expect(() => historyStatus({ ...base, protectedSince: invalid, oldestCheckpointAt: null })).toThrow(DomainError);
  });

  it('is monotone in the history: more history never gives a worse level (outside filling)', () => {
    const rank: Record<HistoryLevel, number> = { alert: 0, warning: 1, filling: 1, ok: 2 };
    fc.assert(
      fc.property(fc.nat({ max: 10 * 3600 }), fc.nat({ max: 10 * 3600 }), (a, b) => {
        const [less, more] = a <= b ? [a, b] : [b, a];
        expect(rank[withHistory(less).status]).toBeLessThanOrEqual(rank[withHistory(more).status]);
      }),
    );
  });
});

describe('decideHistoryTransition', () => {
  const status = (level: HistoryLevel, actualSeconds = 0): HistoryStatus => ({
    status: level,
    actualSeconds,
    configuredSeconds: 4 * 3600,
  });

  it('says nothing while the level holds, whatever the seconds do', () => {
    expect(decideHistoryTransition(status('warning', 10_000), status('warning', 9_000))).toEqual([]);
  });

  it('raises an alert on entering alert, clears it on leaving, reports every change', () => {
    expect(decideHistoryTransition(null, status('ok', 14_400))).toEqual([
      { type: 'history.status-changed', from: null, to: 'ok', actualSeconds: 14_400, configuredSeconds: 14_400 },
    ]);
    expect(decideHistoryTransition(null, status('alert', 0)).map((e) => e.type)).toEqual([
      'history.status-changed',
      'history.alert-raised',
    ]);
    expect(decideHistoryTransition(status('warning'), status('alert', 3600))).toEqual([
      { type: 'history.status-changed', from: 'warning', to: 'alert', actualSeconds: 3600, configuredSeconds: 14_400 },
      { type: 'history.alert-raised', actualSeconds: 3600, configuredSeconds: 14_400 },
    ]);
    expect(decideHistoryTransition(status('alert'), status('filling', 60))).toEqual([
      { type: 'history.status-changed', from: 'alert', to: 'filling', actualSeconds: 60, configuredSeconds: 14_400 },
      { type: 'history.alert-cleared', to: 'filling', actualSeconds: 60, configuredSeconds: 14_400 },
    ]);
  });

  it('over any sequence of evaluations, raises and clears alternate, starting with a raise', () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...HISTORY_LEVELS), { maxLength: 50 }), (levels) => {
        let previous: HistoryStatus | null = null;
        let alerting = false;
        for (const level of levels) {
          const events = decideHistoryTransition(previous, status(level));
          for (const event of events) {
            if (event.type === 'history.alert-raised') {
              expect(alerting).toBe(false);
              alerting = true;
            } else if (event.type === 'history.alert-cleared') {
              expect(alerting).toBe(true);
              alerting = false;
            }
          }
          expect(events.some((e) => e.type === 'history.status-changed')).toBe(previous?.status !== level);
          previous = status(level);
        }
        expect(alerting).toBe(previous?.status === 'alert');
      }),
    );
  });
});

/**
 * A VPG over half a day on a controllable clock, with the journal modelled as this system keeps it:
 * checkpoints every 5 s reach the journal while the link is up (a backlog arrives at once when it comes
 * back), and the promoter keeps the newest checkpoint at or before now - 4 h and everything after it.
 */
describe('history status over time', () => {
  const linkDown = { from: T0 + 5 * HOUR, to: T0 + 9 * HOUR + 20 * MINUTE };
  const checkpointAtOrBefore = (t: number): number => T0 + Math.floor((t - T0) / (5 * SECOND)) * 5 * SECOND;

  function evaluate(nowMs: number, protectedSince: Date | null): HistoryStatus {
    const newest = checkpointAtOrBefore(nowMs >= linkDown.from && nowMs < linkDown.to ? linkDown.from : nowMs);
    const oldest = Math.min(newest, Math.max(T0, checkpointAtOrBefore(nowMs - 4 * HOUR)));
    return historyStatus({
      oldestCheckpointAt: at(oldest),
      newestAt: at(newest),
      now: at(nowMs),
      settings: DEFAULT_VPG_SETTINGS,
      protectedSince,
    });
  }

  function run(protectedSince: Date | null): { minute: number; event: HistoryEvent }[] {
    const log: { minute: number; event: HistoryEvent }[] = [];
    let previous: HistoryStatus | null = null;
    for (let minute = 0; minute <= 12 * 60; minute += 10) {
      const next = evaluate(T0 + minute * MINUTE, protectedSince);
      for (const event of decideHistoryTransition(previous, next)) {
        log.push({ minute, event });
      }
      previous = next;
    }
    return log;
  }

  const summary = (log: { minute: number; event: HistoryEvent }[]): string[] =>
    log.map(({ minute, event }) =>
      event.type === 'history.status-changed'
        ? `${minute} ${event.from ?? '-'} -> ${event.to}`
        : `${minute} ${event.type} (${event.actualSeconds} s)`,
    );

  it('fills, turns ok, warns and alerts while the link is down, clears once it is back', () => {
    // Link down at 5 h: history = 9 h - t, so 3 h (warning) at 6 h, 1 h (alert) at 8 h; back at 9 h 20.
    expect(summary(run(at(T0)))).toEqual([
      '0 - -> filling',
      '190 filling -> ok',
      '360 ok -> warning',
      '480 warning -> alert',
      '480 history.alert-raised (3600 s)',
      '560 alert -> ok',
      '560 history.alert-cleared (14400 s)',
    ]);
  });

  it('without a protection start, a new VPG alerts for its first hour, as the article product does', () => {
    expect(summary(run(null)).slice(0, 5)).toEqual([
      '0 - -> alert',
      '0 history.alert-raised (0 s)',
      '70 alert -> warning',
      '70 history.alert-cleared (4200 s)',
      '190 warning -> ok',
    ]);
  });
});
