import { type DynamicModule, type INestApplication, Logger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ConfigError, loadConfig, type AppConfig } from '@cdp/config';
import { configureHttp, listen } from '@cdp/http-edge';
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
