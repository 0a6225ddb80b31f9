/** A protected block device. `index` is the volume's compact id inside its VPG, used in records. */
export interface Volume {
  readonly id: string;
  readonly name: string;
  readonly index: number;
  readonly sizeBytes: number;
  readonly blockSize: BlockSize;
}

export type BlockSize = 512 | 4096;

export interface Vm {
  readonly id: string;
  readonly name: string;
  readonly volumes: readonly Volume[];
  /**
   * The splitter instance (host) whose hypervisor runs the VM and captures its writes; absent means
   * DEFAULT_HOST. A VPG whose VMs sit on several hosts has one write order per host (a member), made
   * consistent with each other by coordinated checkpoints (see vpg-members.ts).
   */
  readonly host?: string;
}

export interface VpgSettings {
  /** Configured journal history (default 4 h). */
  readonly journalHistorySeconds: number;
  /** Interval of automatic crash-consistent checkpoints, 1 to 60 s (default 5 s). */
  readonly checkpointIntervalSeconds: number;
  /** Actual history at or below this is a warning (default 3 h, as in the article). */
  readonly historyWarningSeconds: number;
  /** Actual history at or below this is an alert (default 1 h). */
  readonly historyAlertSeconds: number;
  /**
   * Most bytes of journal records the VPG keeps (MiB; absent or null: no limit, only the history
   * window bounds the journal). Past it, promotion moves the oldest writes into the replica even
   * inside the history window, so the history shrinks (and the history status says so) rather than
   * the recovery site's disk filling up.
   */
  readonly journalSizeLimitMb?: number | null;
  /**
   * The RPO target: an alert is raised while nothing newer than this many seconds is journaled
   * (default 5 min; absent in VPGs created before it existed, which get the default). It must be
   * longer than the checkpoint interval, since checkpoints are what an idle VPG journals.
   */
  readonly rpoAlertSeconds?: number;
}

export const DEFAULT_VPG_SETTINGS: VpgSettings = {
  journalHistorySeconds: 4 * 3600,
  checkpointIntervalSeconds: 5,
  historyWarningSeconds: 3 * 3600,
  historyAlertSeconds: 1 * 3600,
  rpoAlertSeconds: 300,
};

/** Default thresholds as fractions of the configured history, when it is not the default 4 h. */
export const HISTORY_WARNING_FRACTION = { numerator: 3, denominator: 4 } as const;
export const HISTORY_ALERT_FRACTION = { numerator: 1, denominator: 4 } as const;

export const SETTINGS_LIMITS = {
  checkpointIntervalSeconds: { min: 1, max: 60 },
  journalHistorySeconds: { min: 60, max: 30 * 24 * 3600 },
  // Up to 64 TiB, the largest volume.
  journalSizeLimitMb: { min: 1, max: 64 * 1024 * 1024 },
  rpoAlertSeconds: { min: 2, max: 7 * 24 * 3600 },
} as const;

/** Largest single write the system accepts (matches the common NBD maximum request size). */
export const MAX_WRITE_BYTES = 32 * 1024 * 1024;
/** Volumes up to 64 TiB: offsets stay exact as JavaScript numbers (< 2^53). */
export const MAX_VOLUME_BYTES = 64 * 1024 ** 4;
/** Volume indexes travel as u16 in records. */
export const MAX_VOLUMES_PER_VPG = 65_535;
export const MAX_NAME_LENGTH = 128;

export interface Vpg {
  readonly id: string;
  readonly name: string;
  readonly vms: readonly Vm[];
  readonly settings: VpgSettings;
  readonly createdAt: string;
}

export function volumesOf(vpg: Pick<Vpg, 'vms'>): Volume[] {
  return vpg.vms.flatMap((vm) => vm.volumes);
}
