import { DomainError } from './domain.error';
import { type Vm, type Vpg } from './vpg.model';

/** The host of a VM that names none: a deployment with one splitter never has to name hosts. */
export const DEFAULT_HOST = 'default';

/** Host names travel in consumer group ids, file names and JSON: kept to a safe alphabet. */
const HOST_NAME = /^[a-z0-9][a-z0-9._-]{0,62}$/;

export function validateHostName(value: unknown): string {
  if (typeof value !== 'string' || !HOST_NAME.test(value)) {
    throw new DomainError(
      'invalid-argument',
      `host ${JSON.stringify(value)} is not a valid host name: 1 to 63 of lower-case letters, digits, '.', '_' or '-', starting with a letter or digit`,
    );
  }
  return value;
}

export function hostOf(vm: Pick<Vm, 'host'>): string {
  return vm.host ?? DEFAULT_HOST;
}

/**
 * The members of a VPG: the hosts its VMs run on, sorted. Each member captures the writes of its own
 * VMs into its own dense sequence; a VPG with one member has one write order (every position a
 * crash-consistent cut), a VPG with several has a consistent cut only at coordinated checkpoints.
 */
export function vpgMembers(vpg: Pick<Vpg, 'vms'>): string[] {
  return [...new Set(vpg.vms.map(hostOf))].sort();
}

/** Which member captures each volume, by volume index. */
export function memberOfVolume(vpg: Pick<Vpg, 'vms'>): Map<number, string> {
  const map = new Map<number, string>();
  for (const vm of vpg.vms) {
    for (const volume of vm.volumes) {
      map.set(volume.index, hostOf(vm));
    }
  }
  return map;
}
