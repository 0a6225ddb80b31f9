import { type INestApplication, Logger, RequestMethod } from '@nestjs/common';
import { json, raw } from 'express';
import { MAX_WRITE_BYTES } from '@cdp/domain';
import { ErrorResponseFilter } from './domain-error.filter';

/**
 * Common HTTP setup for every service: the /api prefix, JSON bodies up to 1 MiB, raw octet-stream
 * bodies up to the largest write, and the error filter. Body parsing is ours (bodyParser: false at
 * creation) so the limits are explicit.
 */
export function configureHttp(app: INestApplication): void {
  app.use(json({ limit: '1mb' }));
  app.use(raw({ type: 'application/octet-stream', limit: MAX_WRITE_BYTES }));
  // The operator's web page lives at /, everything else under /api.
  app.setGlobalPrefix('api', { exclude: [{ path: '/', method: RequestMethod.GET }] });
  app.useGlobalFilters(new ErrorResponseFilter());
  app.enableShutdownHooks();
}

export async function listen(app: INestApplication, host: string, port: number): Promise<string> {
  await app.listen(port, host);
  const address = app.getHttpServer().address() as { port: number } | string | null;
  const actualPort = typeof address === 'object' && address !== null ? address.port : port;
  const url = `http://${host}:${actualPort}`;
  new Logger('http').log(`listening on ${url}/api`);
  return url;
}
