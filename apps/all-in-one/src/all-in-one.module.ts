import { type DynamicModule, Module } from '@nestjs/common';
import { CheckpointSchedulerModule } from '@cdp/checkpoint-scheduler';
import { type AppConfig } from '@cdp/config';
import { HealthController } from '@cdp/http-edge';
import { JournalWriterModule } from '@cdp/journal-writer';
import { RecoveryOrchestratorModule } from '@cdp/recovery-orchestrator';
import { InfrastructureModule } from '@cdp/service-runtime';
import { SplitterModule } from '@cdp/splitter';
import { TransportModule } from '@cdp/transport';
import { DemoService } from './demo.service';
import { WebPageController } from './web-page.controller';

/** The five services in one process over the in-process bus, with an embedded or external Postgres. */
@Module({})
export class AllInOneModule {
  static forRoot(config: AppConfig): DynamicModule {
    return {
      module: AllInOneModule,
      imports: [
        InfrastructureModule.forRoot(config, { database: true }),
        SplitterModule,
        TransportModule,
        JournalWriterModule,
        CheckpointSchedulerModule,
        RecoveryOrchestratorModule,
      ],
      controllers: [HealthController, WebPageController],
      providers: config.demo ? [DemoService] : [],
    };
  }
}
