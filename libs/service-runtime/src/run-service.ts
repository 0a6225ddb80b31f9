import { type DynamicModule, type INestApplication, Logger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ConfigError, loadConfig, type AppConfig } from '@cdp/config';
import { configureHttp, listen } from '@cdp/http-edge';

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
  const app = await NestFactory.create(compose(config), { bodyParser: false, logger: ['log', 'warn', 'error'] });
  configureHttp(app);
  const url = await listen(app, config.http.host, config.http.port);
  new Logger(name).log(`data dir ${config.dataDir}`);
  return { app, url, config };
}
