import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { type Checkpoint, type Vpg } from '@cdp/domain';
import { randomBuffer, seededRandom, waitFor, type ApiClient } from '@cdp/testing';
import { createProtectedVpg, startTestApp, type TestApp } from './all-in-one.test-app';

const MiB = 1024 * 1024;
const ROOT = join(__dirname, '..', '..', '..');

/**
 * An operator-forced resync through the HTTP API of the whole system: a volume written behind the
 * splitter's back is brought back, the checkpoint after the resync recovers it bit-exact, and the one
 * before it still recovers what it held.
 */
describe('forced resync over HTTP', () => {
  let testApp: TestApp;
  let api: ApiClient;
  let vpg: Vpg;

  const volumeFile = (index: number): string => join(testApp.dataDir, 'splitter', vpg.id, 'volumes', `${index}.img`);
  const progressFile = (): string => join(testApp.dataDir, 'splitter', vpg.id, 'resync.json');
  const splitterStatus = async (): Promise<{ lastSeq: number; resync: { id: string } | null }> =>
    api.ok<{ lastSeq: number; resync: { id: string } | null }>('GET', `/splitter/vpgs/${vpg.id}`);
  const tag = async (name: string): Promise<Checkpoint> => {
    const answer = await api.ok<{ status: string; checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name });
    expect(answer.status).toBe('recorded');
    return answer.checkpoint;
  };
  const image = async (checkpoint: Checkpoint, volumeIndex: number): Promise<Buffer> => {
    const volume = vpg.vms[0]!.volumes[volumeIndex]!;
    const answer = await api.bytes(`/vpgs/${vpg.id}/checkpoints/${checkpoint.id}/volumes/${volume.id}/image`);
    expect(answer.status).toBe(200);
    return answer.data;
  };

  /** Complete when its durable progress says so and the splitter no longer shows it running. */
  const resyncCompleted = async (resyncId: string): Promise<void> => {
    const completed = (): boolean => {
      try {
        const progress = JSON.parse(readFileSync(progressFile(), 'utf8')) as { id: string; completedAt: string | null };
        return progress.id === resyncId && progress.completedAt !== null;
      } catch {
        return false;
      }
    };
    await waitFor(async () => completed() && (await splitterStatus()).resync === null, { timeoutMs: 20_000, message: `resync ${resyncId} never completed` });
  };

  beforeAll(async () => {
    testApp = await startTestApp();
    api = testApp.api;
    vpg = await createProtectedVpg(api, {
      name: 'resync',
      vms: [{ name: 'vm', volumes: [{ name: 'root', sizeBytes: 6 * MiB }, { name: 'data', sizeBytes: 2 * MiB }] }],
      settings: { checkpointIntervalSeconds: 1 },
    });
  });

  afterAll(async () => {
    await testApp?.close();
  });

  it('refuses bad requests and changes nothing', async () => {
    const root = vpg.vms[0]!.volumes[0]!;
    const refused: [string, unknown, number][] = [
      [`/vpgs/${vpg.id}/resync`, { volumeIds: ['not-a-uuid'] }, 400],
      [`/vpgs/${vpg.id}/resync`, { volumeIds: [root.id, randomUUID()] }, 400],
      [`/vpgs/${vpg.id}/resync`, { volumeIds: [] }, 400],
      [`/vpgs/${vpg.id}/resync`, { reason: 'x'.repeat(501) }, 400],
      [`/vpgs/${vpg.id}/resync`, { reason: 42 }, 400],
      [`/vpgs/${vpg.id}/resync`, { everything: true }, 400],
      [`/vpgs/${randomUUID()}/resync`, {}, 404],
      ['/vpgs/not-a-vpg/resync', {}, 400],
    ];
    for (const [path, body, status] of refused) {
      const answer = await api.json<{ message: string }>('POST', path, body);
      expect({ path, body, status: answer.status }).toEqual({ path, body, status });
      expect(answer.body.message).toEqual(expect.any(String));
    }
    expect((await splitterStatus()).resync).toBeNull();
    expect(() => readFileSync(progressFile())).toThrow(/ENOENT/);
  });

  it('brings a diverged volume back: the checkpoint after recovers it, the one before its old content', async () => {
    const random = seededRandom(5150);
    const [root, data] = vpg.vms[0]!.volumes;
    await api.write(vpg.id, root!.id, 0, randomBuffer(random, 64 * 1024));
    await api.write(vpg.id, root!.id, 5 * MiB, randomBuffer(random, 64 * 1024));
    await api.write(vpg.id, data!.id, 4096, randomBuffer(random, 8192));
    const before = await tag('before the restore');
    const rootBefore = readFileSync(volumeFile(0));
    const dataBefore = readFileSync(volumeFile(1));

    // A restore from backup on the protected site, behind the splitter's back.
    const fd = openSync(volumeFile(0), 'r+');
    writeSync(fd, randomBuffer(random, 3 * MiB), 0, 3 * MiB, MiB + 123);
    closeSync(fd);
    const rootDiverged = readFileSync(volumeFile(0));
    expect(rootDiverged.equals(rootBefore)).toBe(false);

    const accepted = await api.json<{ resyncId: string; volumeIds: string[] }>('POST', `/vpgs/${vpg.id}/resync`, { volumeIds: [root!.id], reason: 'restored from backup' });
    expect(accepted.status).toBe(202);
    expect(accepted.body.volumeIds).toEqual([root!.id]);
    await resyncCompleted(accepted.body.resyncId);

    const after = await tag('after the resync');
    expect(after.cut).toBeGreaterThan(before.cut);
    expect((await image(after, 0)).equals(rootDiverged)).toBe(true);
    expect((await image(after, 1)).equals(dataBefore)).toBe(true);
    expect((await image(before, 0)).equals(rootBefore)).toBe(true);
    expect((await image(before, 1)).equals(dataBefore)).toBe(true);
    // No checkpoint was recorded inside the resync: each one between the two recovers the root volume
    // either as it was before the restore or as it is now, never a mix of resynced and older regions.
    const rootBeforeImage = await image(before, 0);
    const checkpoints = await api.ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints?limit=10000`);
    for (const checkpoint of checkpoints.filter((c) => c.cut > before.cut && c.cut < after.cut)) {
      const got = await image(checkpoint, 0);
      expect({ cut: checkpoint.cut, consistent: got.equals(rootBeforeImage) || got.equals(rootDiverged) }).toEqual({ cut: checkpoint.cut, consistent: true });
    }
  });

  it('is requested from the command line, volumes named as vm/volume', async () => {
    // Not spawnSync: the server answering the CLI runs in this process.
    const cli = (...args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> =>
      new Promise((resolve, reject) => {
        const child = spawn(process.execPath, ['-r', join(ROOT, 'tools', 'register.cjs'), join(ROOT, 'apps', 'cli', 'src', 'main.ts'), '--api', api.baseUrl, ...args], {
          stdio: ['ignore', 'pipe', 'pipe'],
          timeout: 60_000,
        });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
        child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
        child.on('error', reject);
        child.on('close', (status) => resolve({ status, stdout, stderr }));
      });
    const unknown = await cli('resync', 'resync', '--volume', 'vm/nothing');
    expect(unknown.status).toBe(1);
    expect(unknown.stderr).toContain('has no volume vm/nothing');
    const done = await cli('resync', 'resync', '--volume', 'vm/data', '--reason', 'from the cli');
    expect(done.stderr).toBe('');
    expect(done.status).toBe(0);
    const resyncId = /resync ([0-9a-f-]{36}) of 1 volume/.exec(done.stdout)?.[1];
    expect(resyncId).toEqual(expect.any(String));
    await resyncCompleted(resyncId!);
  });
});
