import 'reflect-metadata';
import { runService } from '@cdp/service-runtime';
import { SplitterNbdService } from '@cdp/splitter';
import { AllInOneModule } from './all-in-one.module';

async function main(): Promise<void> {
  const { app, url, config } = await runService('all-in-one', (c) => AllInOneModule.forRoot(c));
  // The actual port (CDP_NBD_PORT=0 picks a free one), or the Unix socket.
  const volumes = app.get(SplitterNbdService).uri('<vpg>/<vm>/<volume>');
  console.log(
    [
      '',
      'Continuum all-in-one is running.',
      `  web page      ${url}/`,
      `  HTTP API      ${url}/api   (e.g. curl ${url}/api/vpgs)`,
      `  block devices ${volumes ?? 'not served'}`,
      `  data          ${config.dataDir}`,
      `  database      ${config.databaseUrl ? 'external PostgreSQL (DATABASE_URL)' : `embedded PostgreSQL under ${config.dataDir}/postgres`}`,
      `  demo          ${config.demo ? 'on: a demo VPG takes writes; checkpoints every 5 s' : 'off (CDP_DEMO=true to turn on)'}`,
      'Stop with Ctrl-C.',
      '',
    ].join('\n'),
  );
}

main().catch((err: unknown) => {
  console.error(err instanceof Error ? (err.stack ?? err.message) : err);
  process.exit(1);
});
