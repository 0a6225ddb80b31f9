import { randomUUID } from 'node:crypto';
import { type Vpg } from '@cdp/domain';
import { waitFor } from '@cdp/testing';
import { appWithProtectedVpg } from './all-in-one.test-app';

interface ErrorBody {
  readonly message: string;
}

/**
 * Changing a VPG's settings over HTTP (`PATCH /api/vpgs/:vpg/settings`): only what is named changes,
 * the whole system follows (the scheduler moves to the new interval), and a change that is not valid
 * is refused with a clear 400 and changes nothing.
 */
describe('VPG settings over HTTP', () => {
  const ctx = appWithProtectedVpg({ name: 'settings', vms: [{ name: 'vm', volumes: [{ name: 'disk', sizeBytes: 1 << 20 }] }], settings: { checkpointIntervalSeconds: 60 } });

  const automaticCount = async (): Promise<number> =>
    (await ctx.api.ok<{ byKind: Record<string, number> }>('GET', `/vpgs/${ctx.vpg.id}/checkpoints/stats`)).byKind['automatic'] ?? 0;
  const settingsNow = async (): Promise<Vpg['settings']> => (await ctx.api.ok<{ vpg: Vpg }>('GET', `/vpgs/${ctx.vpg.id}`)).vpg.settings;

  it('refuses changes that are not valid, and changes nothing', async () => {
    const before = await settingsNow();
    const refused: [string, unknown, number, RegExp][] = [
      [`/vpgs/${ctx.vpg.id}/settings`, {}, 400, /at least one setting/],
      [`/vpgs/${ctx.vpg.id}/settings`, { colour: 'red' }, 400, /colour|unrecognized/i],
      [`/vpgs/${ctx.vpg.id}/settings`, { checkpointIntervalSeconds: 0 }, 400, /checkpointIntervalSeconds/],
      [`/vpgs/${ctx.vpg.id}/settings`, { checkpointIntervalSeconds: '5' }, 400, /checkpointIntervalSeconds/],
      [`/vpgs/${ctx.vpg.id}/settings`, { journalSizeLimitMb: -1 }, 400, /journalSizeLimitMb/],
      // Valid alone, not with the rest: the decider refuses it whole.
      [`/vpgs/${ctx.vpg.id}/settings`, { historyAlertSeconds: before.historyWarningSeconds + 1 }, 400, /historyAlertSeconds/],
      [`/vpgs/${randomUUID()}/settings`, { checkpointIntervalSeconds: 5 }, 404, /does not exist/],
      ['/vpgs/not-a-uuid/settings', { checkpointIntervalSeconds: 5 }, 400, /UUID/],
    ];
    for (const [path, body, status, message] of refused) {
      const answer = await ctx.api.json<ErrorBody>('PATCH', path, body);
      expect({ path, body, status: answer.status }).toEqual({ path, body, status });
      expect(answer.body.message).toMatch(message);
    }
    expect(await settingsNow()).toEqual(before);
  });

  it('changes only what is named, and the scheduler follows the new interval', async () => {
    const before = await settingsNow();
    expect(before.checkpointIntervalSeconds).toBe(60);
    // At 60 s no automatic checkpoint falls in this test's few seconds; at 1 s several do.
    const changed = await ctx.api.ok<Vpg>('PATCH', `/vpgs/${ctx.vpg.id}/settings`, { checkpointIntervalSeconds: 1, journalSizeLimitMb: 2048 });
    expect(changed.settings).toEqual({ ...before, checkpointIntervalSeconds: 1, journalSizeLimitMb: 2048 });
    expect(await settingsNow()).toEqual(changed.settings);
    const start = await automaticCount();
    await waitFor(async () => (await automaticCount()) >= start + 2, { timeoutMs: 15_000, message: 'the scheduler never took the 1 s interval' });

    // null takes the limit away again.
    const unlimited = await ctx.api.ok<Vpg>('PATCH', `/vpgs/${ctx.vpg.id}/settings`, { journalSizeLimitMb: null });
    expect(unlimited.settings).toEqual({ ...before, checkpointIntervalSeconds: 1, journalSizeLimitMb: null });
  });
});
