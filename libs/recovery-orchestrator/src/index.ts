export * from './recovery-orchestrator.module';
export * from './vpg.service';
export * from './recovery.service';
export * from './pit-exports.service';
export * from './pit-export.device';
export * from './history-monitor.service';
export * from './site-alerts.service';
