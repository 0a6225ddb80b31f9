import { DomainError } from './domain.error';
import { validateHostName } from './vpg-members';
import {
  DEFAULT_VPG_SETTINGS,
  HISTORY_ALERT_FRACTION,
  HISTORY_WARNING_FRACTION,
  MAX_NAME_LENGTH,
  MAX_VOLUME_BYTES,
  MAX_VOLUMES_PER_VPG,
  SETTINGS_LIMITS,
  type BlockSize,
  type Vm,
  type Volume,
  type Vpg,
  type VpgSettings,
} from './vpg.model';

/**
 * The VPG lifecycle as a decider: `decide` turns a command and the current state into events (or a
 * DomainError), `evolve` folds events into state. Both are pure; identifiers and time arrive inside
 * the command so that replaying events always rebuilds the same state.
 */

export interface VolumeSpec {
  readonly id: string;
  readonly name: string;
  readonly sizeBytes: number;
  readonly blockSize: BlockSize;
}
export interface VmSpec {
  readonly id: string;
  readonly name: string;
  readonly volumes: readonly VolumeSpec[];
  readonly host?: string;
}

export type VpgCommand =
  | {
      readonly type: 'CreateVpg';
      readonly vpgId: string;
      readonly name: string;
      readonly vms: readonly VmSpec[];
      readonly settings: Partial<VpgSettings>;
      readonly now: string;
    }
  | { readonly type: 'ChangeVpgSettings'; readonly vpgId: string; readonly settings: Partial<VpgSettings>; readonly now: string };

export type VpgEvent =
  | { readonly type: 'VpgCreated'; readonly vpg: Vpg }
  | { readonly type: 'VpgSettingsChanged'; readonly vpgId: string; readonly settings: VpgSettings; readonly changedAt: string };

export type VpgState = { readonly status: 'absent' } | { readonly status: 'active'; readonly vpg: Vpg };

export const initialVpgState: VpgState = { status: 'absent' };

export function decideVpg(command: VpgCommand, state: VpgState): VpgEvent[] {
  switch (command.type) {
    case 'CreateVpg': {
      if (state.status !== 'absent') {
        throw new DomainError('already-exists', `VPG ${command.vpgId} already exists`);
      }
      const name = validateName(command.name, 'VPG name');
      const vms = validateVms(command.vms);
      const settings = validateSettings(withHistoryThresholds({ ...DEFAULT_VPG_SETTINGS, ...command.settings }, command.settings));
      return [{ type: 'VpgCreated', vpg: { id: command.vpgId, name, vms, settings, createdAt: command.now } }];
    }
    case 'ChangeVpgSettings': {
      if (state.status !== 'active') {
        throw new DomainError('not-found', `VPG ${command.vpgId} does not exist`);
      }
      const settings = validateSettings(withHistoryThresholds({ ...state.vpg.settings, ...command.settings }, command.settings));
      return [{ type: 'VpgSettingsChanged', vpgId: command.vpgId, settings, changedAt: command.now }];
    }
  }
}

export function evolveVpg(state: VpgState, event: VpgEvent): VpgState {
  switch (event.type) {
    case 'VpgCreated':
      return { status: 'active', vpg: event.vpg };
    case 'VpgSettingsChanged':
      return state.status === 'active' ? { status: 'active', vpg: { ...state.vpg, settings: event.settings } } : state;
  }
}

export function validateName(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.trim().length === 0) {
    throw new DomainError('invalid-argument', `${what} must be a non-empty string`);
  }
  const name = value.trim();
  if (name.length > MAX_NAME_LENGTH) {
    throw new DomainError('invalid-argument', `${what} is ${name.length} characters; at most ${MAX_NAME_LENGTH} are allowed`);
  }
  return name;
}

function validateVms(specs: readonly VmSpec[]): Vm[] {
  if (specs.length === 0) {
    throw new DomainError('invalid-argument', 'a VPG needs at least one VM');
  }
  const seenIds = new Set<string>();
  const seenVmNames = new Set<string>();
  let index = 0;
  const vms = specs.map((vmSpec): Vm => {
    const vmName = validateName(vmSpec.name, 'VM name');
    if (seenVmNames.has(vmName)) {
      throw new DomainError('invalid-argument', `VM name ${vmName} is used twice in the VPG`);
    }
    seenVmNames.add(vmName);
    if (vmSpec.volumes.length === 0) {
      throw new DomainError('invalid-argument', `VM ${vmName} needs at least one volume`);
    }
    const seenVolumeNames = new Set<string>();
    const volumes = vmSpec.volumes.map((spec): Volume => {
      const volumeName = validateName(spec.name, 'volume name');
      if (seenVolumeNames.has(volumeName)) {
        throw new DomainError('invalid-argument', `volume name ${volumeName} is used twice in VM ${vmName}`);
      }
      seenVolumeNames.add(volumeName);
      if (spec.blockSize !== 512 && spec.blockSize !== 4096) {
        throw new DomainError('invalid-argument', `volume ${volumeName}: block size must be 512 or 4096`);
      }
      if (!Number.isSafeInteger(spec.sizeBytes) || spec.sizeBytes <= 0 || spec.sizeBytes > MAX_VOLUME_BYTES) {
        throw new DomainError('invalid-argument', `volume ${volumeName}: size must be a positive integer up to ${MAX_VOLUME_BYTES} bytes`);
      }
      if (spec.sizeBytes % spec.blockSize !== 0) {
        throw new DomainError('invalid-argument', `volume ${volumeName}: size ${spec.sizeBytes} is not a multiple of its block size ${spec.blockSize}`);
      }
      return { id: spec.id, name: volumeName, index: index++, sizeBytes: spec.sizeBytes, blockSize: spec.blockSize };
    });
    return vmSpec.host === undefined ? { id: vmSpec.id, name: vmName, volumes } : { id: vmSpec.id, name: vmName, volumes, host: validateHostName(vmSpec.host) };
  });
  for (const id of [...vms.map((vm) => vm.id), ...vms.flatMap((vm) => vm.volumes.map((v) => v.id))]) {
    if (seenIds.has(id)) {
      throw new DomainError('invalid-argument', `identifier ${id} is used twice`);
    }
    seenIds.add(id);
  }
  if (index > MAX_VOLUMES_PER_VPG) {
    throw new DomainError('invalid-argument', `a VPG holds at most ${MAX_VOLUMES_PER_VPG} volumes`);
  }
  return vms;
}

/**
 * Thresholds the caller left out follow the configured history in the article's proportions (3 h and
 * 1 h of 4 h: three quarters and one quarter) whenever the inherited ones would not fit it; so a VPG
 * with one hour of history warns at 45 min and alerts at 15 min instead of being refused.
 */
function withHistoryThresholds(settings: VpgSettings, given: Partial<VpgSettings>): VpgSettings {
  const history = settings.journalHistorySeconds;
  let { historyWarningSeconds, historyAlertSeconds } = settings;
  const rescaled = given.historyWarningSeconds === undefined && historyWarningSeconds > history;
  if (rescaled) {
    historyWarningSeconds = Math.floor((history * HISTORY_WARNING_FRACTION.numerator) / HISTORY_WARNING_FRACTION.denominator);
  }
  if (given.historyAlertSeconds === undefined && (rescaled || historyAlertSeconds > historyWarningSeconds)) {
    historyAlertSeconds = Math.min(historyWarningSeconds, Math.floor((history * HISTORY_ALERT_FRACTION.numerator) / HISTORY_ALERT_FRACTION.denominator));
  }
  return { ...settings, historyWarningSeconds, historyAlertSeconds };
}

function validateSettings(settings: VpgSettings): VpgSettings {
  const integer = (value: number, key: keyof VpgSettings, min: number, max: number): void => {
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new DomainError('invalid-argument', `setting ${key} must be an integer from ${min} to ${max}, got ${String(value)}`);
    }
  };
  const interval = SETTINGS_LIMITS.checkpointIntervalSeconds;
  const history = SETTINGS_LIMITS.journalHistorySeconds;
  integer(settings.checkpointIntervalSeconds, 'checkpointIntervalSeconds', interval.min, interval.max);
  integer(settings.journalHistorySeconds, 'journalHistorySeconds', history.min, history.max);
  integer(settings.historyWarningSeconds, 'historyWarningSeconds', 0, settings.journalHistorySeconds);
  integer(settings.historyAlertSeconds, 'historyAlertSeconds', 0, settings.historyWarningSeconds);
  if (settings.journalSizeLimitMb !== undefined && settings.journalSizeLimitMb !== null) {
    const size = SETTINGS_LIMITS.journalSizeLimitMb;
    integer(settings.journalSizeLimitMb, 'journalSizeLimitMb', size.min, size.max);
  }
  if (settings.rpoAlertSeconds !== undefined) {
    // Longer than the interval: an idle VPG journals only its checkpoints, one an interval.
    integer(settings.rpoAlertSeconds, 'rpoAlertSeconds', Math.max(SETTINGS_LIMITS.rpoAlertSeconds.min, settings.checkpointIntervalSeconds + 1), SETTINGS_LIMITS.rpoAlertSeconds.max);
  }
  return settings;
}
