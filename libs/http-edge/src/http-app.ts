import { type Server } from 'node:http';
import { type INestApplication, Logger, RequestMethod } from '@nestjs/common';
import { json, raw, type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import { MAX_WRITE_BYTES } from '@cdp/domain';
import { ErrorResponseFilter } from './domain-error.filter';

/**
 * Common HTTP setup for every service: the /api prefix (the web page stays at /), JSON bodies up to
 * 1 MiB, raw octet-stream bodies up to the largest write, and the error filter. Body parsing is ours
 * (create the app with bodyParser: false) so the limits are explicit.
 */
export function configureHttp(app: INestApplication): void {
  app.use(parseOrReject(json({ limit: '1mb' })));
  app.use(parseOrReject(raw({ type: 'application/octet-stream', limit: MAX_WRITE_BYTES })));
  app.setGlobalPrefix('api', { exclude: [{ path: '/', method: RequestMethod.GET }] });
  app.useGlobalFilters(new ErrorResponseFilter());
}

/**
 * Body-parser failures happen in Express middleware, before Nest's exception filters: answer them here
 * in the API's error format (a malformed JSON body is a 400, an oversize one a 413).
 */
function parseOrReject(parser: RequestHandler): RequestHandler {
  return (req: Request, res: Response, next: NextFunction) => {
    parser(req, res, (err?: unknown) => {
      if (err === undefined || err === null) {
        next();
        return;
      }
      const status = typeof (err as { status?: unknown }).status === 'number' ? (err as { status: number }).status : 400;
      const type = (err as { type?: unknown }).type;
      const message =
        type === 'entity.parse.failed'
          ? 'the request body is not valid JSON'
          : type === 'entity.too.large'
            ? `the request body is larger than the limit (${String((err as { limit?: unknown }).limit)} bytes)`
            : err instanceof Error
              ? err.message
              : 'the request body could not be read';
      res.status(status).json({ error: status === 413 ? 'payload-too-large' : 'invalid-argument', message });
    });
  };
}

export async function listen(app: INestApplication, host: string, port: number): Promise<string> {
  const server = app.getHttpServer() as Server;
  // Idle keep-alive connections outlive a load balancer's usual 60 s idle timeout, so the server is
  // never the side that closes a connection a client is about to reuse ("other side closed").
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  await app.listen(port, host);
  const address = server.address();
  const actualPort = typeof address === 'object' && address !== null ? address.port : port;
  const url = `http://${host}:${actualPort}`;
  new Logger('http').log(`listening on ${url}/api`);
  return url;
}
