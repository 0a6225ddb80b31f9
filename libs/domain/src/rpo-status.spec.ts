import { DomainError } from './domain.error';
import { decideRpoTransition, rpoStatus } from './rpo-status';
import { DEFAULT_VPG_SETTINGS } from './vpg.model';

const T0 = Date.parse('2026-12-05T10:00:00Z');
const at = (seconds: number): Date => new Date(T0 + seconds * 1000);

describe('rpoStatus', () => {
  it('is now minus the newest journaled record, above the target only past it (default 5 min)', () => {
    const status = (newest: number, now: number) => rpoStatus({ newestAt: at(newest), protectedSince: at(-3600), now: at(now), settings: DEFAULT_VPG_SETTINGS });
    expect(status(0, 300)).toEqual({ rpoSeconds: 300, targetSeconds: 300, exceeded: false });
    expect(status(0, 300.999)).toEqual({ rpoSeconds: 300, targetSeconds: 300, exceeded: false });
    expect(status(0, 301)).toEqual({ rpoSeconds: 301, targetSeconds: 300, exceeded: true });
    // A clock behind the newest record: no negative RPO.
    expect(status(10, 0)).toEqual({ rpoSeconds: 0, targetSeconds: 300, exceeded: false });
  });

  it('counts from the start of protection before anything is journaled, and takes the VPG\'s target', () => {
    const settings = { ...DEFAULT_VPG_SETTINGS, rpoAlertSeconds: 60 };
    expect(rpoStatus({ newestAt: null, protectedSince: at(0), now: at(61), settings })).toEqual({ rpoSeconds: 61, targetSeconds: 60, exceeded: true });
    // A VPG created before the setting existed gets the default.
    const { rpoAlertSeconds: _dropped, ...older } = DEFAULT_VPG_SETTINGS;
    expect(rpoStatus({ newestAt: at(0), protectedSince: at(0), now: at(301), settings: older }).targetSeconds).toBe(300);
  });

  it('refuses dates that are not valid', () => {
    expect(() => rpoStatus({ newestAt: new Date(NaN), protectedSince: at(0), now: at(0), settings: DEFAULT_VPG_SETTINGS })).toThrow(DomainError);
  });
});

describe('decideRpoTransition', () => {
  const exceeded = { rpoSeconds: 400, targetSeconds: 300, exceeded: true };
  const within = { rpoSeconds: 3, targetSeconds: 300, exceeded: false };

  it('raises once when the target is passed, clears once when back, and says nothing otherwise', () => {
    expect(decideRpoTransition(false, exceeded)).toEqual([{ type: 'rpo.alert-raised', rpoSeconds: 400, targetSeconds: 300 }]);
    expect(decideRpoTransition(true, exceeded)).toEqual([]);
    expect(decideRpoTransition(true, within)).toEqual([{ type: 'rpo.alert-cleared', rpoSeconds: 3, targetSeconds: 300 }]);
    expect(decideRpoTransition(false, within)).toEqual([]);
  });
});
