import { type Volume } from '@cdp/domain';
import { type VpgCapture } from './vpg-capture';

/** One protected volume as the NBD server offers it. */
export interface NbdExport {
  /** `<vpg name>/<vm name>/<volume name>`; the volume's UUID is accepted as well. */
  readonly name: string;
  readonly vpgId: string;
  readonly vpgName: string;
  readonly vmId: string;
  readonly vmName: string;
  readonly volumeId: string;
  readonly volumeName: string;
  readonly sizeBytes: number;
  readonly blockSize: Volume['blockSize'];
  readonly description: string;
  readonly capture: VpgCapture;
}

export interface NbdExportCatalog {
  /** In VPG, VM and volume order. An export whose name is ambiguous is listed under its UUID. */
  readonly exports: readonly NbdExport[];
  /** By name form and by volume UUID. */
  find(exportName: string): NbdExport | undefined;
}

/**
 * The exports of the given captures. VPG names are unique, and so are VM names in a VPG and volume
 * names in a VM, but names may contain '/', so two volumes can in principle spell the same path
 * ("a/b" + "c" + "d" and "a" + "b/c" + "d"): such a name resolves to neither, and only the UUIDs
 * reach them, rather than one of them at random.
 */
export function nbdExportCatalog(captures: readonly VpgCapture[]): NbdExportCatalog {
  const all: NbdExport[] = [];
  for (const capture of captures) {
    const vpg = capture.vpg;
    for (const vm of vpg.vms) {
      for (const volume of vm.volumes) {
        all.push({
          name: `${vpg.name}/${vm.name}/${volume.name}`,
          vpgId: vpg.id,
          vpgName: vpg.name,
          vmId: vm.id,
          vmName: vm.name,
          volumeId: volume.id,
          volumeName: volume.name,
          sizeBytes: volume.sizeBytes,
          blockSize: volume.blockSize,
          description: `VPG ${vpg.name}, VM ${vm.name}, volume ${volume.name}: ${formatBytes(volume.sizeBytes)}, ${volume.blockSize}-byte blocks`,
          capture,
        });
      }
    }
  }
  const byName = new Map<string, NbdExport | null>();
  for (const entry of all) {
    byName.set(entry.name, byName.has(entry.name) ? null : entry);
  }
  const byId = new Map(all.map((entry) => [entry.volumeId, entry]));
  return {
    exports: all.map((entry) => (byName.get(entry.name) === null ? { ...entry, name: entry.volumeId } : entry)),
    find: (exportName) => byName.get(exportName) ?? byId.get(exportName),
  };
}

function formatBytes(bytes: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1 && value % 1024 === 0) {
    value /= 1024;
    unit++;
  }
  return `${value} ${units[unit]}`;
}
