import { DomainError } from './domain.error';
import { DEFAULT_VPG_SETTINGS } from './vpg.model';
import { decideVpg, evolveVpg, initialVpgState, type VpgCommand, type VpgEvent, type VpgState } from './vpg.decider';
import { memberOfVolume, vpgMembers } from './vpg-members';

/** Given events, when a command, then events (or an error): the decider is pure, so that is all. */
function given(events: readonly VpgEvent[]): { when(command: VpgCommand): { then(expected: VpgEvent[]): void; thenError(code: DomainError['code'], message?: RegExp): void } } {
  const state = events.reduce<VpgState>(evolveVpg, initialVpgState);
  return {
    when: (command) => ({
      then: (expected) => expect(decideVpg(command, state)).toEqual(expected),
      thenError: (code, message) => {
        let error: unknown;
        try {
          decideVpg(command, state);
        } catch (err) {
          error = err;
        }
        expect(error).toBeInstanceOf(DomainError);
        expect((error as DomainError).code).toBe(code);
        if (message) {
          expect((error as DomainError).message).toMatch(message);
        }
      },
    }),
  };
}

const now = '2026-11-25T00:00:00.000Z';
const vpgId = '11111111-1111-4111-8111-111111111111';
const create = (overrides: Partial<Extract<VpgCommand, { type: 'CreateVpg' }>> = {}): VpgCommand => ({
  type: 'CreateVpg',
  vpgId,
  name: ' erp ',
  vms: [
    { id: 'vm-1', name: 'app', volumes: [{ id: 'vol-1', name: 'root', sizeBytes: 1 << 20, blockSize: 512 }] },
    { id: 'vm-2', name: 'db', volumes: [{ id: 'vol-2', name: 'data', sizeBytes: 1 << 22, blockSize: 4096 }, { id: 'vol-3', name: 'log', sizeBytes: 1 << 20, blockSize: 512 }] },
  ],
  settings: {},
  now,
  ...overrides,
});
const created = (): VpgEvent => decideVpg(create(), initialVpgState)[0]!;

describe('VPG decider', () => {
  it('creates a VPG with default settings, trimmed names and volume indexes in order across VMs', () => {
    given([])
      .when(create())
      .then([
        {
          type: 'VpgCreated',
          vpg: {
            id: vpgId,
            name: 'erp',
            createdAt: now,
            settings: DEFAULT_VPG_SETTINGS,
            vms: [
              { id: 'vm-1', name: 'app', volumes: [{ id: 'vol-1', name: 'root', index: 0, sizeBytes: 1 << 20, blockSize: 512 }] },
              {
                id: 'vm-2',
                name: 'db',
                volumes: [
                  { id: 'vol-2', name: 'data', index: 1, sizeBytes: 1 << 22, blockSize: 4096 },
                  { id: 'vol-3', name: 'log', index: 2, sizeBytes: 1 << 20, blockSize: 512 },
                ],
              },
            ],
          },
        },
      ]);
  });

  it('defaults to 4 h of journal history and a checkpoint every 5 s, as the article does', () => {
    expect(DEFAULT_VPG_SETTINGS.journalHistorySeconds).toBe(4 * 3600);
    expect(DEFAULT_VPG_SETTINGS.checkpointIntervalSeconds).toBe(5);
    expect(DEFAULT_VPG_SETTINGS.historyWarningSeconds).toBe(3 * 3600);
    expect(DEFAULT_VPG_SETTINGS.historyAlertSeconds).toBe(3600);
  });

  it('refuses to create a VPG twice', () => {
    given([created()]).when(create()).thenError('already-exists');
  });

  it.each([
    ['no VM', { vms: [] }, /at least one VM/],
    ['a VM without volumes', { vms: [{ id: 'v', name: 'x', volumes: [] }] }, /at least one volume/],
    ['an empty name', { name: '  ' }, /VPG name/],
    ['a name of 129 characters', { name: 'n'.repeat(129) }, /at most 128/],
    ['a size that is not a multiple of the block size', { vms: [{ id: 'v', name: 'x', volumes: [{ id: 'd', name: 'd', sizeBytes: 1000, blockSize: 512 as const }] }] }, /multiple of its block size/],
    ['a zero size', { vms: [{ id: 'v', name: 'x', volumes: [{ id: 'd', name: 'd', sizeBytes: 0, blockSize: 512 as const }] }] }, /positive integer/],
    ['two VMs with one name', { vms: [{ id: 'a', name: 'x', volumes: [{ id: 'd1', name: 'd', sizeBytes: 512, blockSize: 512 as const }] }, { id: 'b', name: 'x', volumes: [{ id: 'd2', name: 'd', sizeBytes: 512, blockSize: 512 as const }] }] }, /used twice/],
    ['one id twice', { vms: [{ id: 'a', name: 'x', volumes: [{ id: 'a', name: 'd', sizeBytes: 512, blockSize: 512 as const }] }] }, /used twice/],
    ['a 0 s checkpoint interval', { settings: { checkpointIntervalSeconds: 0 } }, /checkpointIntervalSeconds/],
    ['a 61 s checkpoint interval', { settings: { checkpointIntervalSeconds: 61 } }, /checkpointIntervalSeconds/],
    ['a warning threshold above the history', { settings: { journalHistorySeconds: 3600, historyWarningSeconds: 7200 } }, /historyWarningSeconds/],
    ['an alert threshold above the warning', { settings: { historyWarningSeconds: 600, historyAlertSeconds: 1200 } }, /historyAlertSeconds/],
    ['an RPO target no longer than the checkpoint interval', { settings: { checkpointIntervalSeconds: 30, rpoAlertSeconds: 30 } }, /rpoAlertSeconds must be an integer from 31/],
    ['an RPO target past a week', { settings: { rpoAlertSeconds: 7 * 24 * 3600 + 1 } }, /rpoAlertSeconds/],
    ['a journal size limit of 0 MiB', { settings: { journalSizeLimitMb: 0 } }, /journalSizeLimitMb must be an integer from 1/],
    ['a journal size limit of 1.5 MiB', { settings: { journalSizeLimitMb: 1.5 } }, /journalSizeLimitMb/],
    ['a journal size limit past 64 TiB', { settings: { journalSizeLimitMb: 64 * 1024 * 1024 + 1 } }, /journalSizeLimitMb/],
  ])('rejects %s', (_what, overrides, message) => {
    given([]).when(create(overrides as Partial<Extract<VpgCommand, { type: 'CreateVpg' }>>)).thenError('invalid-argument', message);
  });

  it('sets a journal size limit and takes it away again (null)', () => {
    given([created()])
      .when({ type: 'ChangeVpgSettings', vpgId, settings: { journalSizeLimitMb: 10_240 }, now })
      .then([{ type: 'VpgSettingsChanged', vpgId, settings: { ...DEFAULT_VPG_SETTINGS, journalSizeLimitMb: 10_240 }, changedAt: now }]);
    given([created(), { type: 'VpgSettingsChanged', vpgId, settings: { ...DEFAULT_VPG_SETTINGS, journalSizeLimitMb: 10_240 }, changedAt: now }])
      .when({ type: 'ChangeVpgSettings', vpgId, settings: { journalSizeLimitMb: null }, now })
      .then([{ type: 'VpgSettingsChanged', vpgId, settings: { ...DEFAULT_VPG_SETTINGS, journalSizeLimitMb: null }, changedAt: now }]);
  });

  it('changes settings of an existing VPG, keeping the ones not named', () => {
    given([created()])
      .when({ type: 'ChangeVpgSettings', vpgId, settings: { checkpointIntervalSeconds: 1 }, now })
      .then([{ type: 'VpgSettingsChanged', vpgId, settings: { ...DEFAULT_VPG_SETTINGS, checkpointIntervalSeconds: 1 }, changedAt: now }]);
  });

  it('scales the thresholds left out to a shorter history (3/4 and 1/4 of it), keeping the ones given', () => {
    const settingsOf = (events: VpgEvent[]): unknown => (events[0]?.type === 'VpgCreated' ? events[0].vpg.settings : undefined);
    expect(settingsOf(decideVpg(create({ settings: { journalHistorySeconds: 3600 } }), initialVpgState))).toMatchObject({
      historyWarningSeconds: 2700,
      historyAlertSeconds: 900,
    });
    expect(settingsOf(decideVpg(create({ settings: { journalHistorySeconds: 3600, historyAlertSeconds: 60 } }), initialVpgState))).toMatchObject({
      historyWarningSeconds: 2700,
      historyAlertSeconds: 60,
    });
    given([created()])
      .when({ type: 'ChangeVpgSettings', vpgId, settings: { journalHistorySeconds: 7200 }, now })
      .then([
        {
          type: 'VpgSettingsChanged',
          vpgId,
          settings: { ...DEFAULT_VPG_SETTINGS, journalHistorySeconds: 7200, historyWarningSeconds: 5400, historyAlertSeconds: 1800 },
          changedAt: now,
        },
      ]);
  });

  it('places VMs on hosts: the members of the VPG, and which member captures each volume', () => {
    const vms = [
      { id: 'vm-1', name: 'app', host: 'esx-b', volumes: [{ id: 'vol-1', name: 'root', sizeBytes: 1 << 20, blockSize: 512 as const }] },
      { id: 'vm-2', name: 'db', volumes: [{ id: 'vol-2', name: 'data', sizeBytes: 1 << 20, blockSize: 512 as const }] },
      { id: 'vm-3', name: 'web', host: 'esx-b', volumes: [{ id: 'vol-3', name: 'root', sizeBytes: 1 << 20, blockSize: 512 as const }] },
    ];
    const [created] = decideVpg(create({ vms }), initialVpgState);
    const vpg = (created as Extract<VpgEvent, { type: 'VpgCreated' }>).vpg;
    expect(vpg.vms.map((vm) => vm.host)).toEqual(['esx-b', undefined, 'esx-b']);
    expect(vpgMembers(vpg)).toEqual(['default', 'esx-b']);
    expect([...memberOfVolume(vpg)]).toEqual([
      [0, 'esx-b'],
      [1, 'default'],
      [2, 'esx-b'],
    ]);
    for (const host of ['', 'ESX-A', 'esx a', '-esx', 'a'.repeat(64)]) {
      given([]).when(create({ vms: [{ ...vms[0]!, host }] })).thenError('invalid-argument', /is not a valid host name/);
    }
  });

  it('refuses settings changes for a VPG that does not exist', () => {
    given([]).when({ type: 'ChangeVpgSettings', vpgId, settings: {}, now }).thenError('not-found');
  });

  it('rebuilds the same state from the same events', () => {
    const events = [created(), ...decideVpg({ type: 'ChangeVpgSettings', vpgId, settings: { checkpointIntervalSeconds: 2 }, now }, evolveVpg(initialVpgState, created()))];
    const once = events.reduce<VpgState>(evolveVpg, initialVpgState);
    const twice = events.reduce<VpgState>(evolveVpg, initialVpgState);
    expect(once).toEqual(twice);
    expect(once.status === 'active' && once.vpg.settings.checkpointIntervalSeconds).toBe(2);
  });
});
