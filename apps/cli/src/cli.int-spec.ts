import { spawnSync } from 'node:child_process';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Checkpoint, type Vpg } from '@cdp/domain';
import { ApiClient, createTestDatabase, startAllInOne, tempDir, waitFor, type AllInOneProcess, type TempDir } from '@cdp/testing';

const ROOT = join(__dirname, '..', '..', '..');

/** The command line as an operator uses it, against a running all-in-one process. */
describe('continuum CLI', () => {
  let system: AllInOneProcess;
  let database: { url: string; drop(): Promise<void> };
  let dir: TempDir;

  const cli = (...args: string[]): { status: number | null; stdout: string; stderr: string } => {
    const result = spawnSync(process.execPath, ['-r', join(ROOT, 'tools', 'register.cjs'), join(ROOT, 'apps', 'cli', 'src', 'main.ts'), ...args], {
      env: { ...process.env, CDP_API_URL: system.url },
      encoding: 'utf8',
      timeout: 60_000,
    });
    return { status: result.status, stdout: result.stdout, stderr: result.stderr };
  };

  beforeAll(async () => {
    database = await createTestDatabase();
    dir = await tempDir('cli-');
    system = await startAllInOne({ CDP_DATA_DIR: join(dir.path, 'data'), DATABASE_URL: database.url });
  });

  afterAll(async () => {
    await system?.stop();
    await database?.drop();
    await dir?.cleanup();
  });

  it('creates a VPG, tags a checkpoint, lists it and writes a volume image to a file', async () => {
    const spec = join(dir.path, 'vpg.json');
    writeFileSync(spec, JSON.stringify({ name: 'cli-vpg', vms: [{ name: 'vm1', volumes: [{ name: 'disk', sizeBytes: 65536 }] }] }));
    const created = cli('vpg', 'create', spec);
    expect(created.stderr).toBe('');
    expect(created.status).toBe(0);
    const vpg = JSON.parse(created.stdout) as Vpg;
    expect(cli('vpg', 'list').stdout).toContain('cli-vpg');

    const api = new ApiClient(system.url);
    await waitFor(async () => (await api.json('GET', `/splitter/vpgs/${vpg.id}`)).status === 200, { timeoutMs: 10_000, message: 'splitter never protected the VPG' });
    const data = Buffer.alloc(4096, 0xab);
    await api.write(vpg.id, vpg.vms[0]!.volumes[0]!.id, 1000, data);

    const tagged = cli('checkpoint', 'tag', 'cli-vpg', 'from the cli');
    expect(tagged.status).toBe(0);
    const result = JSON.parse(tagged.stdout) as { status: string; checkpoint: Checkpoint };
    expect(result.status).toBe('recorded');
    expect(cli('checkpoint', 'list', 'cli-vpg').stdout).toContain('from the cli');
    const stats = cli('checkpoint', 'stats', 'cli-vpg');
    expect(stats.status).toBe(0);
    const counted = JSON.parse(stats.stdout) as { count: number; byKind: Record<string, number>; latest: Checkpoint | null };
    expect(counted.byKind).toMatchObject({ tagged: 1, 'application-consistent': 0 });
    expect(counted.count).toBeGreaterThanOrEqual(1);
    expect(counted.latest).not.toBeNull();
    // Every checkpoint up to the tagged one, a page of one at a time.
    const paged = cli('checkpoint', 'list', 'cli-vpg', '--from', '2000-01-01T00:00:00Z', '--to', result.checkpoint.capturedAt, '--limit', '1', '--all');
    expect(paged.status).toBe(0);
    const lines = paged.stdout.trim().split('\n');
    expect(lines[lines.length - 1]).toContain('from the cli');
    const onePage = cli('checkpoint', 'list', 'cli-vpg', '--from', '2000-01-01T00:00:00Z', '--limit', '1');
    expect(onePage.stdout.trim().split('\n')).toHaveLength(1);
    if (lines.length > 1) {
      expect(onePage.stderr).toMatch(/more: --cursor \S+/);
    }
    const badCursor = cli('checkpoint', 'list', 'cli-vpg', '--cursor', 'nonsense');
    expect(badCursor.status).toBe(1);
    expect(badCursor.stderr).toContain('cursor');
    // An in-guest agent's request, from the command line: the whole VPG, marked with the VM that asked.
    const app = cli('checkpoint', 'app', 'cli-vpg', 'vm1', 'quiesced');
    expect(app.status).toBe(0);
    const appResult = JSON.parse(app.stdout) as { status: string; checkpoint: Checkpoint };
    expect(appResult.status).toBe('recorded');
    expect(appResult.checkpoint).toMatchObject({ kind: 'application-consistent', name: 'quiesced', vmId: vpg.vms[0]!.id });
    expect(cli('checkpoint', 'app', 'cli-vpg', 'no-such-vm', 'x').status).toBe(1);
    const alerts = cli('vpg', 'alerts');
    expect(alerts.status).toBe(0);
    expect(JSON.parse(alerts.stdout)).toEqual([]);

    const out = join(dir.path, 'disk.img');
    const image = cli('image', 'cli-vpg', result.checkpoint.id, 'vm1/disk', '-o', out);
    expect(image.status).toBe(0);
    const expected = Buffer.alloc(65536);
    data.copy(expected, 1000);
    expect(readFileSync(out).equals(expected)).toBe(true);
    // Sparse: only the two 4 KiB blocks the write touched hold data; the zeros are holes.
    expect(statSync(out).blocks * 512).toBeLessThanOrEqual(8192);
    expect(image.stdout).toContain('(57344 bytes of zeros left as holes)');
    // Over an existing file with other contents: every byte is the image's.
    writeFileSync(out, Buffer.alloc(100_000, 0xee));
    expect(cli('image', 'cli-vpg', result.checkpoint.id, 'vm1/disk', '-o', out).status).toBe(0);
    expect(readFileSync(out).equals(expected)).toBe(true);
    // Not a regular file (a device): every byte written, nothing truncated.
    const toDevice = cli('image', 'cli-vpg', result.checkpoint.id, 'vm1/disk', '-o', '/dev/null');
    expect(toDevice.status).toBe(0);
    expect(toDevice.stdout).not.toContain('holes');

    // The same checkpoint as a block device: open, list, close.
    const opened = cli('export', 'open', 'cli-vpg', result.checkpoint.id, 'vm1/disk');
    expect(opened.status).toBe(0);
    const url = /^(nbd:\/\/\S+)/.exec(opened.stdout)?.[1];
    expect(url).toMatch(/^nbd:\/\/127\.0\.0\.1:\d+\/pit\//);
    const exportId = /export close (\S+)\)/.exec(opened.stdout)?.[1];
    expect(cli('export', 'list').stdout).toContain(url);
    expect(cli('export', 'close', exportId!).status).toBe(0);
    expect(cli('export', 'list').stdout).not.toContain(url);
    expect(cli('export', 'close', exportId!).status).toBe(1);
  });

  it('changes a VPG\'s settings, only those named, and refuses bad ones', () => {
    const changed = cli('vpg', 'settings', 'cli-vpg', '--interval', '30', '--journal-limit-mb', '1024', '--rpo-alert', '600');
    expect(changed.stderr).toBe('');
    expect(changed.status).toBe(0);
    const settings = (JSON.parse(changed.stdout) as Vpg).settings;
    expect(settings).toMatchObject({ checkpointIntervalSeconds: 30, journalSizeLimitMb: 1024, rpoAlertSeconds: 600, journalHistorySeconds: 14_400 });
    const unlimited = cli('vpg', 'settings', 'cli-vpg', '--journal-limit-mb', 'none');
    expect(unlimited.stderr).toBe('');
    expect((JSON.parse(unlimited.stdout) as Vpg).settings).toEqual({ ...settings, journalSizeLimitMb: null });
    const none = cli('vpg', 'settings', 'cli-vpg');
    expect(none.status).toBe(2);
    expect(none.stderr).toContain('at least one setting');
    const bad = cli('vpg', 'settings', 'cli-vpg', '--interval', '61');
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain('checkpointIntervalSeconds');
    expect(cli('vpg', 'settings', 'cli-vpg', '--journal-limit-mb', 'lots').status).not.toBe(0);
  });

  it('says what is wrong and exits non-zero on bad usage', () => {
    const unknown = cli('checkpoint', 'tag', 'no-such-vpg', 'x');
    expect(unknown.status).toBe(1);
    expect(unknown.stderr).toContain('no VPG with id or name no-such-vpg');
    const empty = cli('checkpoint', 'tag', 'cli-vpg', '');
    expect(empty.status).toBe(1);
    expect(empty.stderr).toContain('must not be empty');
    const badLimit = cli('checkpoint', 'list', 'cli-vpg', '--limit', 'many');
    expect(badLimit.status).not.toBe(0);
    expect(badLimit.stderr).toContain('must be a positive integer');
    const unreachable = spawnSync(process.execPath, ['-r', join(ROOT, 'tools', 'register.cjs'), join(ROOT, 'apps', 'cli', 'src', 'main.ts'), '--api', 'http://127.0.0.1:1', 'vpg', 'list'], { encoding: 'utf8' });
    expect(unreachable.status).toBe(2);
    expect(unreachable.stderr).toContain('cannot reach');
    for (const bad of ['ftp://127.0.0.1:1', 'not a url']) {
      const refused = cli('--api', bad, 'vpg', 'list');
      expect(refused.status).toBe(2);
      expect(refused.stderr).toContain('must be an http:// or https:// URL');
    }
  });

  it('takes for --api the address of the system or of its API (the README sets $API to the latter)', () => {
    for (const given of [system.url, `${system.url}/`, `${system.url}/api`, `${system.url}/api/`]) {
      const listed = cli('--api', given, 'vpg', 'list');
      expect(listed.stderr).toBe('');
      expect(listed.status).toBe(0);
      expect(listed.stdout).toContain('cli-vpg');
    }
  });
});
