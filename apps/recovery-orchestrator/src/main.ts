import 'reflect-metadata';
import { RecoveryOrchestratorModule } from '@cdp/recovery-orchestrator';
import { runStandaloneService } from '@cdp/service-runtime';

runStandaloneService('recovery-orchestrator', RecoveryOrchestratorModule, { database: true });
