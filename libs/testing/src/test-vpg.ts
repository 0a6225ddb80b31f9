import { type Volume, type Vpg } from '@cdp/domain';

/**
 * A VPG definition for tests that build the splitter's side on its own (no orchestrator to create
 * one): one VM, named 'vm', holding `volumes`, with default settings and a fixed creation time.
 */
export function oneVmVpg(id: string, name: string, vmId: string, volumes: readonly Volume[]): Vpg {
  return {
    id,
    name,
    createdAt: new Date(0).toISOString(),
    settings: { journalHistorySeconds: 3600, checkpointIntervalSeconds: 5, historyWarningSeconds: 1800, historyAlertSeconds: 600 },
    vms: [{ id: vmId, name: 'vm', volumes: [...volumes] }],
  };
}
