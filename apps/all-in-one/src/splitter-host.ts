import { type DynamicModule, type INestApplicationContext, Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { type Bus } from '@cdp/bus';
import { loadConfig } from '@cdp/config';
import { InfrastructureModule } from '@cdp/service-runtime';
import { SplitterModule, SplitterService } from '@cdp/splitter';

/** One splitter process's worth of services for `host`, on a bus given to it. */
@Module({})
class SplitterHostModule {
  static forRoot(dataDir: string, host: string, bus: Bus): DynamicModule {
    const config = loadConfig({
      CDP_DATA_DIR: dataDir,
      CDP_SPLITTER_HOST: host,
      CDP_NBD_PORT: '0',
      CDP_HTTP_PORT: '0',
      // Set by the Jest configuration for every test run (see PayloadRing).
      CDP_POISON_RELEASED_PAYLOADS: process.env['CDP_POISON_RELEASED_PAYLOADS'],
    });
    return { module: SplitterHostModule, imports: [InfrastructureModule.forRoot(config, { service: `splitter-${host}`, database: false, bus }), SplitterModule] };
  }
}

export interface SplitterHost {
  readonly app: INestApplicationContext;
  readonly splitter: SplitterService;
}

/**
 * A splitter instance for another host, inside this process, sharing `bus` with the all-in-one: what
 * the tests and benchmarks of coordinated checkpoints use in place of one splitter process per host.
 */
export async function startSplitterHost(dataDir: string, host: string, bus: Bus): Promise<SplitterHost> {
  const app = await NestFactory.createApplicationContext(SplitterHostModule.forRoot(dataDir, host, bus), { logger: ['error'] });
  return { app, splitter: app.get(SplitterService) };
}

/** `bus` for several applications in one process: each closes its bus at shutdown, the owner closes this one. */
export function sharedBus(bus: Bus): Bus {
  return {
    durable: bus.durable,
    driverName: bus.driverName,
    ensureTopics: (specs) => bus.ensureTopics(specs),
    createProducer: () => bus.createProducer(),
    createConsumer: (options) => bus.createConsumer(options),
    close: () => Promise.resolve(),
  };
}
