import { type DynamicModule, type INestApplication, Logger, Module, type Type } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ConfigError, loadConfig, type AppConfig } from '@cdp/config';
import { HealthController, configureHttp, listen } from '@cdp/http-edge';
import { InfrastructureModule } from './infrastructure.module';
import { QuietNestLogger } from './quiet.logger';

export interface RunningService {
  readonly app: INestApplication;
  readonly url: string;
  readonly config: AppConfig;
}

/**
 * Starts one service process: configuration validated once (every bad variable named, exit code 2),
 * the Nest application composed by `compose`, HTTP on the configured address, graceful shutdown on
 * SIGINT/SIGTERM.
 */
export async function runService(name: string, compose: (config: AppConfig) => DynamicModule): Promise<RunningService> {
  let config: AppConfig;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`${name}: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const app = await NestFactory.create(compose(config), { bodyParser: false, logger: new QuietNestLogger() });
  configureHttp(app);
  const logger = new Logger(name);
  // A signal closes the application (services stop, then bus, database and embedded PostgreSQL) and
  // exits 0; a second signal during that ends the process at once.
  const shutdown = (signal: NodeJS.Signals): void => {
    logger.log(`${signal}: shutting down`);
    app.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error(`shutdown failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', shutdown);
  process.once('SIGINT', shutdown);
  const url = await listen(app, config.http.host, config.http.port);
  logger.log(`data dir ${config.dataDir}`);
  return { app, url, config };
}

/**
 * One of the five services as a process of its own: its module, the infrastructure it needs, and the
 * health endpoint. Until the Kafka bus driver lands, such a process runs on the in-process bus and so
 * only talks to itself; the all-in-one app composes all five.
 */
export function runStandaloneService(name: string, service: Type<unknown>, options: { readonly database: boolean }): void {
  @Module({})
  class StandaloneServiceModule {}

  runService(name, (config) => ({
    module: StandaloneServiceModule,
    imports: [InfrastructureModule.forRoot(config, { database: options.database }), service],
    controllers: [HealthController],
  })).catch((err: unknown) => {
    process.stderr.write(`${name}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}
