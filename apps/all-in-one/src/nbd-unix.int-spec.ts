import { randomBytes } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Checkpoint, type Vpg } from '@cdp/domain';
import { type PitExport } from '@cdp/recovery-orchestrator';
import { type NbdStatus, SplitterNbdService } from '@cdp/splitter';
import { type TempDir, itWithTools, runToolOk, tempDir } from '@cdp/testing';
import { createProtectedVpg, startTestApp, type TestApp } from './all-in-one.test-app';

/**
 * Both NBD servers of the all-in-one on Unix sockets (CDP_NBD_SOCKET, CDP_RECOVERY_NBD_SOCKET), as a
 * splitter beside its hypervisor runs them: a volume written and a checkpoint read back over
 * nbd+unix://, the URIs the API hands out, and the sockets gone once the application stops.
 */
const MiB = 1024 * 1024;

describe('NBD on Unix sockets in the all-in-one', () => {
  let dir: TempDir;
  let testApp: TestApp | undefined;

  beforeAll(async () => {
    dir = await tempDir('nbd-unix-');
  });

  afterAll(async () => {
    await testApp?.close();
    await dir?.cleanup();
  });

  itWithTools(['nbdcopy'], 'protects volumes and serves checkpoints over nbd+unix://', async () => {
    const volumes = join(dir.path, 'volumes.sock');
    const exports = join(dir.path, 'exports.sock');
    testApp = await startTestApp({ env: { CDP_NBD_SOCKET: volumes, CDP_RECOVERY_NBD_SOCKET: exports } });
    const api = testApp.api;
    const vpg: Vpg = await createProtectedVpg(api, { name: 'local', vms: [{ name: 'vm', volumes: [{ name: 'disk', sizeBytes: 8 * MiB, blockSize: 4096 }] }] });
    const status = await api.ok<NbdStatus>('GET', '/splitter/nbd');
    expect(status).toMatchObject({ socket: volumes, port: null, tls: 'off' });
    const volumeUri = testApp.app.get(SplitterNbdService).uri('local/vm/disk');
    expect(volumeUri).toBe(`nbd+unix:///local/vm/disk?socket=${volumes}`);

    const content = Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(2 * MiB), randomBytes(3 * MiB)]);
    const source = join(dir.path, 'source.img');
    await writeFile(source, content);
    await runToolOk('nbdcopy', [source, volumeUri!]);
    const checkpoint = (await api.ok<{ checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'over a unix socket' })).checkpoint;
    const opened = await api.ok<PitExport>('POST', `/vpgs/${vpg.id}/checkpoints/${checkpoint.id}/exports`, { volumeId: vpg.vms[0]!.volumes[0]!.id });
    expect(opened.url).toBe(`nbd+unix:///${opened.name}?socket=${exports}`);
    expect((await api.ok<{ server: unknown }>('GET', '/exports')).server).toEqual({ socket: exports });
    const out = join(dir.path, 'recovered.img');
    await runToolOk('nbdcopy', [opened.url, out]);
    expect((await readFile(out)).equals(content)).toBe(true);
    expect((await api.json('DELETE', `/exports/${opened.id}`)).status).toBe(204);

    await testApp.close();
    testApp = undefined;
    for (const path of [volumes, exports]) {
      await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
    }
  });
});
