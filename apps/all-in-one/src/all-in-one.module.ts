import { type DynamicModule, Module } from '@nestjs/common';
import { type Bus } from '@cdp/bus';
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

/** The five services in one process over the configured bus (in-process by default), with an embedded or external Postgres. */
@Module({})
export class AllInOneModule {
  /** `bus` replaces the in-process bus (tests inject faults through it). */
  static forRoot(config: AppConfig, options: { readonly bus?: Bus } = {}): DynamicModule {
    return {
      module: AllInOneModule,
      imports: [
        InfrastructureModule.forRoot(config, { service: 'all-in-one', database: true, ...(options.bus ? { bus: options.bus } : {}) }),
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
