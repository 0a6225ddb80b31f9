import { Module } from '@nestjs/common';
import { AlertsController, VpgController } from './recovery.controller';
import { HistoryMonitorService } from './history-monitor.service';
import { PitExportsController } from './pit-exports.controller';
import { PitExportsService } from './pit-exports.service';
import { RecoveryService } from './recovery.service';
import { ResyncController } from './resync.controller';
import { ResyncService } from './resync.service';
import { SiteAlertsService } from './site-alerts.service';
import { VpgService } from './vpg.service';

/** Needs BUS, APP_CONFIG and a migrated DataSource from the composing application. */
@Module({
  controllers: [VpgController, AlertsController, PitExportsController, ResyncController],
  providers: [VpgService, RecoveryService, PitExportsService, HistoryMonitorService, ResyncService, SiteAlertsService],
  exports: [VpgService, RecoveryService, PitExportsService, HistoryMonitorService, SiteAlertsService],
})
export class RecoveryOrchestratorModule {}
