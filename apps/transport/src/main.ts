import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { HealthController } from '@cdp/http-edge';
import { TransportModule } from '@cdp/transport';
import { InfrastructureModule, runService } from '@cdp/service-runtime';

/**
 * The transport as a process of its own. Until the Kafka bus driver lands, a separate process runs on the
 * in-process bus and so only talks to itself; the all-in-one app composes all five services.
 */
@Module({})
class ServiceModule {}

runService('transport', (config) => ({
  module: ServiceModule,
  imports: [InfrastructureModule.forRoot(config, { database: false }), TransportModule],
  controllers: [HealthController],
})).catch((err: unknown) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : err);
  process.exit(1);
});
