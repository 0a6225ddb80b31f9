import { type DynamicModule, type INestApplication, Logger, Module, type Type } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ConfigError, StartupError, loadConfig, type AppConfig } from '@cdp/config';
import { HealthController, configureHttp, listen } from '@cdp/http-edge';
import { DataDirInUseError, DataDirLock } from './data-dir.lock';
import { InfrastructureModule } from './infrastructure.module';
import { QuietNestLogger } from './quiet.logger';
import { ServiceState } from './readiness';

export interface RunningService {
  readonly app: INestApplication;
  readonly url: string;
  readonly config: AppConfig;
}

/**
 * Starts one service process: configuration validated once (every bad variable named, exit code 2),
 * the data directory locked to this process (exit code 2 if another one holds it), the Nest
 * application composed by `compose`, HTTP on the configured address, and a graceful shutdown on
 * SIGINT/SIGTERM that exits 0.
 */
export async function runService(name: string, compose: (config: AppConfig) => DynamicModule): Promise<RunningService> {
  let config: AppConfig;
  let lock: DataDirLock;
  try {
    config = loadConfig(process.env);
    lock = DataDirLock.acquire(config.dataDir);
  } catch (err) {
    if (err instanceof ConfigError || err instanceof DataDirInUseError) {
      process.stderr.write(`${name}: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  const logger = new Logger(name);
  let app: INestApplication;
  try {
    // forceCloseConnections: by the time Nest closes the HTTP server the services have stopped, so a
    // kept-alive client connection (idle for up to the 65 s keep-alive) must not hold the exit back.
    app = await NestFactory.create(compose(config), { bodyParser: false, logger: new QuietNestLogger(), forceCloseConnections: true });
  } catch (err) {
    lock.release();
    throw err;
  }
  configureHttp(app);
  const close = async (): Promise<void> => {
    try {
      await app.close();
    } finally {
      lock.release();
    }
  };
  // A signal closes the application (services stop, then bus, database and embedded PostgreSQL) and
  // exits 0; a second signal during that ends the process at once.
  const shutdown = (signal: NodeJS.Signals): void => {
    logger.log(`${signal}: shutting down`);
    close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error(`shutdown failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', shutdown);
  process.once('SIGINT', shutdown);
  let url: string;
  try {
    url = await listen(app, config.http.host, config.http.port);
  } catch (err) {
    // Everything has started by now (services, embedded PostgreSQL): stop it all cleanly before failing.
    await close();
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      process.stderr.write(`${name}: ${config.http.host}:${config.http.port} is already in use; set CDP_HTTP_PORT to a free port\n`);
      process.exit(2);
    }
    if (err instanceof StartupError) {
      process.stderr.write(`${name}: ${err.message}\n`);
      process.exit(2);
    }
    throw err;
  }
  app.get(ServiceState).markStarted();
  logger.log(`data dir ${config.dataDir}, ${config.bus.driver} bus`);
  return { app, url, config };
}

/**
 * One of the five services as a process of its own: its module, the infrastructure it needs, and the
 * health endpoints. With CDP_BUS=kafka the five such processes form the pipeline; on the default
 * in-process bus a standalone service only talks to itself (the all-in-one app composes all five).
 */
export function runStandaloneService(name: string, service: Type<unknown>, options: { readonly database: boolean }): void {
  @Module({})
  class StandaloneServiceModule {}

  runService(name, (config) => ({
    module: StandaloneServiceModule,
    imports: [InfrastructureModule.forRoot(config, { service: name, database: options.database }), service],
    controllers: [HealthController],
  })).catch((err: unknown) => {
    process.stderr.write(`${name}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}
