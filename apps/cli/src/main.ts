import { open, readFile, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { Command, InvalidArgumentError } from 'commander';
import { type Checkpoint, type Vpg } from '@cdp/domain';

/**
 * `continuum`: the operator's command line, over the HTTP API. VPGs, VMs and volumes can be named by
 * id or by name. Exit codes: 0 done, 1 the server refused (its message is printed), 2 bad usage or the
 * server cannot be reached.
 */
class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

const program = new Command()
  .name('continuum')
  .description('Continuous data protection: VPGs, checkpoints and point-in-time images')
  .option('--api <url>', 'where the system is reachable (its address, or its API under /api)', process.env['CDP_API_URL'] ?? 'http://127.0.0.1:8080')
  .showHelpAfterError();

/**
 * The API's base URL. `--api` (or CDP_API_URL) may name the system (http://127.0.0.1:8080) or its API
 * (…/api, as the README's curl examples set it): both mean the same place. A path in front of /api (a
 * reverse proxy's prefix) is kept.
 */
const api = (): string => {
  const given = program.opts<{ api: string }>().api;
  let url: URL;
  try {
    url = new URL(given);
  } catch {
    throw new CliError(`--api (or CDP_API_URL) must be an http:// or https:// URL, not ${JSON.stringify(given)}`, 2);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new CliError(`--api (or CDP_API_URL) must be an http:// or https:// URL, not ${JSON.stringify(given)}`, 2);
  }
  const prefix = url.pathname.replace(/\/+$/, '').replace(/\/api$/, '');
  return `${url.origin}${prefix}/api`;
};

async function request<T>(method: string, path: string, body?: unknown): Promise<T> {
  return (await requestWithHeaders<T>(method, path, body)).body;
}

async function requestWithHeaders<T>(method: string, path: string, body?: unknown): Promise<{ body: T; headers: Headers }> {
  const base = api();
  let response: Response;
  try {
    response = await fetch(`${base}${path}`, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new CliError(`cannot reach ${base}: ${err instanceof Error ? (err.cause instanceof Error ? err.cause.message : err.message) : String(err)}`, 2);
  }
  const text = await response.text();
  const parsed: unknown = text ? JSON.parse(text) : undefined;
  if (!response.ok) {
    const message = (parsed as { message?: string } | undefined)?.message ?? response.statusText;
    throw new CliError(`${response.status}: ${message}`, 1);
  }
  return { body: parsed as T, headers: response.headers };
}

async function findVpg(idOrName: string): Promise<Vpg> {
  const vpgs = await request<Vpg[]>('GET', '/vpgs');
  const vpg = vpgs.find((v) => v.id === idOrName) ?? vpgs.find((v) => v.name === idOrName);
  if (!vpg) {
    throw new CliError(`no VPG with id or name ${idOrName}`, 1);
  }
  return vpg;
}

function print(value: unknown): void {
  console.log(JSON.stringify(value, null, 2));
}

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) {
    throw new InvalidArgumentError('must be a positive integer');
  }
  return n;
}

function nonNegativeInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) {
    throw new InvalidArgumentError('must be a whole number, 0 or more');
  }
  return n;
}

const vpg = program.command('vpg').description('protection groups');
vpg
  .command('list')
  .description('list VPGs')
  .action(async () => {
    const vpgs = await request<Vpg[]>('GET', '/vpgs');
    for (const v of vpgs) {
      const volumes = v.vms.flatMap((vm) => vm.volumes.map((vol) => `${vm.name}${vm.host ? `@${vm.host}` : ''}/${vol.name}`));
      console.log(`${v.id}  ${v.name}  (${volumes.join(', ')})`);
    }
  });
vpg
  .command('show <vpg>')
  .description('a VPG and its journal status')
  .action(async (idOrName: string) => print(await request('GET', `/vpgs/${(await findVpg(idOrName)).id}`)));
vpg
  .command('alerts [vpg]')
  .description('open alerts (journal history at its alert threshold; RPO above its target; a protected site in trouble, such as a full disk), of one VPG or of all')
  .action(async (idOrName?: string) => {
    if (idOrName === undefined) {
      print(await request('GET', '/alerts'));
      return;
    }
    print((await request<{ alerts: unknown[] }>('GET', `/vpgs/${(await findVpg(idOrName)).id}`)).alerts);
  });
vpg
  .command('create <spec.json>')
  .description('create a VPG from a JSON file: {"name", "vms": [{"name", "host"?, "volumes": [{"name", "sizeBytes", "blockSize"}]}], "settings"}; "host" places a VM on the splitter with that CDP_SPLITTER_HOST')
  .action(async (file: string) => {
    let spec: unknown;
    try {
      spec = JSON.parse(await readFile(file, 'utf8'));
    } catch (err) {
      throw new CliError(`cannot read ${file}: ${err instanceof Error ? err.message : String(err)}`, 2);
    }
    print(await request('POST', '/vpgs', spec));
  });

vpg
  .command('settings <vpg>')
  .description('change a VPG\'s settings: only the options given change; prints the VPG with all its settings')
  .option('--interval <seconds>', 'automatic checkpoint interval, 1 to 60', positiveInt)
  .option('--history <seconds>', 'journal history to keep', positiveInt)
  .option('--warning <seconds>', 'history at or below this is a warning', nonNegativeInt)
  .option('--alert <seconds>', 'history at or below this is an alert', nonNegativeInt)
  .option('--rpo-alert <seconds>', 'RPO target: an alert while nothing newer is journaled (longer than the interval)', positiveInt)
  // 'none' parses to 0, which no limit can be (commander keeps the raw text when a parser returns null).
  .option('--journal-limit-mb <MiB|none>', 'most journal bytes kept (MiB), or none for no limit', (value: string) => (value === 'none' ? 0 : positiveInt(value)))
  .action(async (idOrName: string, options: { interval?: number; history?: number; warning?: number; alert?: number; rpoAlert?: number; journalLimitMb?: number }) => {
    const settings = {
      ...(options.interval === undefined ? {} : { checkpointIntervalSeconds: options.interval }),
      ...(options.history === undefined ? {} : { journalHistorySeconds: options.history }),
      ...(options.warning === undefined ? {} : { historyWarningSeconds: options.warning }),
      ...(options.alert === undefined ? {} : { historyAlertSeconds: options.alert }),
      ...(options.rpoAlert === undefined ? {} : { rpoAlertSeconds: options.rpoAlert }),
      ...(options.journalLimitMb === undefined ? {} : { journalSizeLimitMb: options.journalLimitMb === 0 ? null : options.journalLimitMb }),
    };
    if (Object.keys(settings).length === 0) {
      throw new CliError('name at least one setting to change (see --help)', 2);
    }
    print(await request('PATCH', `/vpgs/${(await findVpg(idOrName)).id}/settings`, settings));
  });

const checkpoint = program.command('checkpoint').description('checkpoints');
checkpoint
  .command('list <vpg>')
  .description('recorded checkpoints, oldest first: the newest ones, or with --from/--cursor every one in a range, a page at a time')
  .option('--from <iso-time>', 'only from this time (pages forward from it)')
  .option('--to <iso-time>', 'only up to this time')
  .option('--cursor <cursor>', 'continue after the page that printed this cursor')
  .option('--all', 'follow the pages to the end of the range')
  .option('--limit <n>', 'at most this many per page', positiveInt, 1000)
  .action(async (idOrName: string, options: { from?: string; to?: string; cursor?: string; all?: boolean; limit: number }) => {
    const target = await findVpg(idOrName);
    let cursor = options.cursor;
    for (;;) {
      const query = new URLSearchParams({ limit: String(options.limit) });
      if (options.from) query.set('from', options.from);
      if (options.to) query.set('to', options.to);
      if (cursor) query.set('cursor', cursor);
      const { body: list, headers } = await requestWithHeaders<Checkpoint[]>('GET', `/vpgs/${target.id}/checkpoints?${query.toString()}`);
      for (const c of list) {
        console.log(`${c.capturedAt}  ${c.kind.padEnd(22)}  cut ${String(c.cut).padStart(10)}  ${c.id}  ${c.name ?? ''}`);
      }
      const next = headers.get('x-next-cursor');
      if (!next) {
        break;
      }
      if (!options.all) {
        console.error(`more: --cursor ${next}`);
        break;
      }
      cursor = next;
    }
  });
checkpoint
  .command('stats <vpg>')
  .description('earliest and latest checkpoint, how many, and how many of each kind')
  .action(async (idOrName: string) => print(await request('GET', `/vpgs/${(await findVpg(idOrName)).id}/checkpoints/stats`)));
checkpoint
  .command('tag <vpg> <name>')
  .description('insert a tagged checkpoint and wait until it is recorded')
  .action(async (idOrName: string, name: string) => {
    const target = await findVpg(idOrName);
    print(await request('POST', `/vpgs/${target.id}/checkpoints`, { name }));
  });
checkpoint
  .command('app <vpg> <vm> <name>')
  .description('insert an application-consistent checkpoint on behalf of a VM (after its application is quiesced)')
  .action(async (idOrName: string, vmIdOrName: string, name: string) => {
    const target = await findVpg(idOrName);
    const vm = target.vms.find((v) => v.id === vmIdOrName || v.name === vmIdOrName);
    if (!vm) {
      throw new CliError(`VPG ${target.name} has no VM ${vmIdOrName}`, 1);
    }
    print(await request('POST', `/vpgs/${target.id}/application-checkpoints`, { name, vmId: vm.id }));
  });

function findVolume(target: Vpg, volumeRef: string): Vpg['vms'][number]['volumes'][number] & { ref: string } {
  const volume = target.vms
    .flatMap((vm) => vm.volumes.map((v) => ({ ...v, ref: `${vm.name}/${v.name}` })))
    .find((v) => v.id === volumeRef || v.ref === volumeRef);
  if (!volume) {
    throw new CliError(`VPG ${target.name} has no volume ${volumeRef}`, 1);
  }
  return volume;
}

interface PitExportInfo {
  id: string;
  url: string;
  writable: boolean;
  cut: number;
  capturedAt: string | null;
  sizeBytes: number;
  overlayBytes: number;
}

const exportsCommand = program.command('export').description('point-in-time exports over NBD');
exportsCommand
  .command('open <vpg> <checkpoint> <volume>')
  .description('serve a volume as it was at a checkpoint over NBD; volume as id or vm/volume')
  .option('--writable', 'writes go to a scratch overlay that is discarded when the export closes (test failover)')
  .action(async (idOrName: string, checkpointId: string, volumeRef: string, options: { writable?: boolean }) => {
    const target = await findVpg(idOrName);
    const volume = findVolume(target, volumeRef);
    const opened = await request<PitExportInfo>('POST', `/vpgs/${target.id}/checkpoints/${checkpointId}/exports`, {
      volumeId: volume.id,
      writable: options.writable === true,
    });
    console.log(`${opened.url}   (${volume.ref} at cut ${opened.cut}, ${opened.writable ? 'writable overlay' : 'read-only'}; close with: continuum export close ${opened.id})`);
  });
exportsCommand
  .command('at <vpg> <iso-time> <volume>')
  .description('serve a volume as it was at any time inside the journal (after the last write captured at or before it) over NBD')
  .option('--writable', 'writes go to a scratch overlay that is discarded when the export closes (test failover)')
  .action(async (idOrName: string, at: string, volumeRef: string, options: { writable?: boolean }) => {
    // The server checks the format too; this only turns an obvious typo into a usage error.
    if (Number.isNaN(Date.parse(at))) {
      throw new CliError(`${at} is not an ISO-8601 time (for example 2026-11-25T03:00:00Z)`, 2);
    }
    const target = await findVpg(idOrName);
    const volume = findVolume(target, volumeRef);
    const opened = await request<PitExportInfo>('POST', `/vpgs/${target.id}/exports`, {
      volumeId: volume.id,
      at,
      writable: options.writable === true,
    });
    console.log(
      `${opened.url}   (${volume.ref} at cut ${opened.cut}, last write captured ${opened.capturedAt ?? '?'}, ${opened.writable ? 'writable overlay' : 'read-only'}; close with: continuum export close ${opened.id})`,
    );
  });
exportsCommand
  .command('list')
  .description('open point-in-time exports')
  .action(async () => {
    const { exports } = await request<{ exports: PitExportInfo[] }>('GET', '/exports');
    for (const e of exports) {
      console.log(`${e.id}  ${e.url}  cut ${e.cut}  ${e.writable ? `writable (${e.overlayBytes} bytes in overlay)` : 'read-only'}`);
    }
  });
exportsCommand
  .command('close <export-id>')
  .description('close an export; a writable export\'s overlay is discarded')
  .action(async (exportId: string) => {
    await request('DELETE', `/exports/${exportId}`);
    console.log(`closed ${exportId}`);
  });

program
  .command('resync <vpg>')
  .description('force a resync of a VPG (or of the volumes named) whose protected volumes may have diverged; older checkpoints stay valid')
  .option('--volume <volume>', 'only this volume, as id or vm/volume (repeat for several)', (value: string, previous: string[]) => [...previous, value], [] as string[])
  .option('--reason <text>', 'why, for the logs and the status')
  .action(async (idOrName: string, options: { volume: string[]; reason?: string }) => {
    const target = await findVpg(idOrName);
    const volumeIds = options.volume.map((ref) => findVolume(target, ref).id);
    const accepted = await request<{ resyncId: string; volumeIds: string[] }>('POST', `/vpgs/${target.id}/resync`, {
      ...(volumeIds.length > 0 ? { volumeIds } : {}),
      ...(options.reason === undefined ? {} : { reason: options.reason }),
    });
    console.log(`resync ${accepted.resyncId} of ${accepted.volumeIds.length} volume(s) requested; progress: GET /api/splitter/vpgs/${target.id} (resync)`);
  });

program
  .command('image <vpg> <checkpoint> <volume>')
  .description('write the image of a volume at a checkpoint to a file (sparse: blocks of zeros are left as holes) or a device; volume as id or vm/volume')
  .requiredOption('-o, --out <file>', 'the file to write')
  .action(async (idOrName: string, checkpointId: string, volumeRef: string, options: { out: string }) => {
    const target = await findVpg(idOrName);
    const volume = findVolume(target, volumeRef);
    const response = await fetch(`${api()}/vpgs/${target.id}/checkpoints/${checkpointId}/volumes/${volume.id}/image`);
    if (!response.ok || !response.body) {
      const body = (await response.json().catch(() => ({}))) as { message?: string };
      throw new CliError(`${response.status}: ${body.message ?? response.statusText}`, 1);
    }
    const handle = await open(options.out, 'w');
    let written: { readonly total: number; readonly data: number };
    try {
      written = await writeImage(handle, Readable.fromWeb(response.body));
    } finally {
      await handle.close();
    }
    if (written.total !== volume.sizeBytes) {
      throw new CliError(`the image ended after ${written.total} of ${volume.sizeBytes} bytes; ${options.out} is incomplete`, 1);
    }
    const holes = written.total - written.data;
    console.log(
      `wrote ${volume.sizeBytes} bytes of ${volume.ref} at checkpoint ${checkpointId} to ${options.out}${holes > 0 ? ` (${holes} bytes of zeros left as holes)` : ''}`,
    );
  });

/** Zeros are looked for, and left out of a regular file, in blocks of this size (a file system's block). */
const SPARSE_BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(SPARSE_BLOCK);

/**
 * Writes the image's bytes in order. Into a regular file, runs of zero blocks are not written: the
 * file is truncated to its full size at the end, so they read as zeros and take no space (a recovered
 * volume is often mostly empty). Anything else (a block device, say, whose old contents must be
 * overwritten) gets every byte.
 */
async function writeImage(handle: FileHandle, source: AsyncIterable<Buffer>): Promise<{ total: number; data: number }> {
  const stat = await handle.stat();
  const sparse = stat.isFile();
  let position = 0;
  let data = 0;
  for await (const chunk of source) {
    let runStart = -1;
    for (let at = 0; at <= chunk.length; ) {
      const end = Math.min(chunk.length, at + SPARSE_BLOCK - ((position + at) % SPARSE_BLOCK));
      const zero = at === chunk.length || (sparse && chunk.subarray(at, end).equals(ZERO_BLOCK.subarray(0, end - at)));
      if (!zero && runStart < 0) {
        runStart = at;
      } else if (zero && runStart >= 0) {
        await writeAll(handle, chunk.subarray(runStart, at), position + runStart);
        data += at - runStart;
        runStart = -1;
      }
      if (at === chunk.length) {
        break;
      }
      at = end;
    }
    position += chunk.length;
  }
  if (sparse) {
    await handle.truncate(position);
  }
  // Durable before the command says it is written (character devices such as /dev/null cannot sync).
  if (sparse || stat.isBlockDevice()) {
    await handle.sync();
  }
  return { total: position, data };
}

async function writeAll(handle: FileHandle, bytes: Buffer, position: number): Promise<void> {
  for (let done = 0; done < bytes.length; ) {
    done += (await handle.write(bytes, done, bytes.length - done, position + done)).bytesWritten;
  }
}

program.parseAsync(process.argv).catch((err: unknown) => {
  if (err instanceof CliError) {
    console.error(`continuum: ${err.message}`);
    process.exit(err.exitCode);
  }
  console.error(err instanceof Error ? (err.stack ?? err.message) : err);
  process.exit(1);
});
