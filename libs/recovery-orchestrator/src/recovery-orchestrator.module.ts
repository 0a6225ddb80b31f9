import { Module } from '@nestjs/common';
import { VpgController } from './recovery.controller';
import { PitExportsController } from './pit-exports.controller';
import { PitExportsService } from './pit-exports.service';
import { RecoveryService } from './recovery.service';
import { VpgService } from './vpg.service';

/** Needs BUS, APP_CONFIG and a migrated DataSource from the composing application. */
@Module({
  controllers: [VpgController, PitExportsController],
  providers: [VpgService, RecoveryService, PitExportsService],
  exports: [VpgService, RecoveryService, PitExportsService],
})
export class RecoveryOrchestratorModule {}
