export * from './recovery-orchestrator.module';
export * from './vpg.service';
export * from './recovery.service';
