import { Module } from '@nestjs/common';
import { VpgController } from './recovery.controller';
import { RecoveryService } from './recovery.service';
import { VpgService } from './vpg.service';

/** Needs BUS, APP_CONFIG and a migrated DataSource from the composing application. */
@Module({ controllers: [VpgController], providers: [VpgService, RecoveryService], exports: [VpgService, RecoveryService] })
export class RecoveryOrchestratorModule {}
