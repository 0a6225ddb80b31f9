import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Checkpoint, type Vpg } from '@cdp/domain';
import { type PitExport } from '@cdp/recovery-orchestrator';
import { type NbdStatus } from '@cdp/splitter';
import { type TempDir, type TestCertificates, itWithTools, makeTestCertificates, runTool, runToolOk, tempDir } from '@cdp/testing';
import { createProtectedVpg, startTestApp, type TestApp } from './all-in-one.test-app';

/**
 * Both NBD servers of the all-in-one with TLS (CDP_NBD_TLS_CERT, CDP_NBD_TLS_KEY, CDP_NBD_TLS_CA):
 * a protected volume written and a checkpoint read back over nbds:// with client certificates, and
 * nothing for a client in the clear or without a certificate the CA signed. Then the same with
 * pre-shared keys (CDP_NBD_TLS_PSK_FILE), and nothing for a client with another key.
 */
const MiB = 1024 * 1024;

describe('NBD over TLS in the all-in-one', () => {
  let dir: TempDir;
  let certs: TestCertificates;
  let testApp: TestApp | undefined;

  beforeAll(async () => {
    dir = await tempDir('nbd-tls-');
  });

  afterAll(async () => {
    await testApp?.close();
    await dir?.cleanup();
  });

  itWithTools(['openssl', 'nbdcopy', 'nbdinfo'], 'protects volumes and serves checkpoints over TLS, to clients whose certificate the CA signed', async () => {
    certs = await makeTestCertificates(join(dir.path, 'certs'));
    testApp = await startTestApp({ env: { CDP_NBD_TLS_CERT: certs.serverCert, CDP_NBD_TLS_KEY: certs.serverKey, CDP_NBD_TLS_CA: certs.caCert } });
    const api = testApp.api;
    const vpg: Vpg = await createProtectedVpg(api, { name: 'tls', vms: [{ name: 'vm', volumes: [{ name: 'disk', sizeBytes: 8 * MiB, blockSize: 4096 }] }] });
    const status = await api.ok<NbdStatus>('GET', '/splitter/nbd');
    expect(status.tls).toBe('verify-clients');
    const volumeUri = (clientDir: string): string => `nbds://127.0.0.1:${status.port}/tls/vm/disk?tls-certificates=${clientDir}`;

    const content = Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(2 * MiB), randomBytes(3 * MiB)]);
    const source = join(dir.path, 'source.img');
    await writeFile(source, content);
    await runToolOk('nbdcopy', [source, volumeUri(certs.clientDir)]);
    const checkpoint = (await api.ok<{ checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'over tls' })).checkpoint;

    const opened = await api.ok<PitExport>('POST', `/vpgs/${vpg.id}/checkpoints/${checkpoint.id}/exports`, { volumeId: vpg.vms[0]!.volumes[0]!.id });
    expect(opened.url).toMatch(/^nbds:\/\/127\.0\.0\.1:\d+\/pit\//);
    const out = join(dir.path, 'recovered.img');
    await runToolOk('nbdcopy', [`${opened.url}?tls-certificates=${certs.clientDir}`, out]);
    expect((await readFile(out)).equals(content)).toBe(true);

    // In the clear, without a client certificate, with one another CA signed: nothing.
    const port = /:(\d+)\//.exec(opened.url)![1]!;
    for (const uri of [
      `nbd://127.0.0.1:${status.port}/tls/vm/disk`,
      `nbd://127.0.0.1:${port}/${opened.name}`,
      volumeUri(certs.clientDirNoCert),
      volumeUri(certs.strangerDir),
      `${opened.url}?tls-certificates=${certs.strangerDir}`,
    ]) {
      const refused = await runTool('nbdinfo', ['--size', uri]);
      expect({ uri, code: refused.code === 0 ? 0 : 'refused' }).toEqual({ uri, code: 'refused' });
    }
    expect((await api.json('DELETE', `/exports/${opened.id}`)).status).toBe(204);
  });

  itWithTools(['nbdcopy', 'nbdinfo'], 'with pre-shared keys instead of certificates: volumes and checkpoints to clients that hold a key', async () => {
    await testApp?.close();
    testApp = undefined;
    const key = randomBytes(32).toString('hex');
    const keys = join(dir.path, 'keys.psk');
    await writeFile(keys, `site-a:${key}\n`, { mode: 0o600 });
    const stranger = join(dir.path, 'stranger.psk');
    await writeFile(stranger, `site-a:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    testApp = await startTestApp({ env: { CDP_NBD_TLS_PSK_FILE: keys } });
    const api = testApp.api;
    const vpg: Vpg = await createProtectedVpg(api, { name: 'psk', vms: [{ name: 'vm', volumes: [{ name: 'disk', sizeBytes: 8 * MiB, blockSize: 4096 }] }] });
    const status = await api.ok<NbdStatus>('GET', '/splitter/nbd');
    expect(status.tls).toBe('psk');
    const content = randomBytes(8 * MiB);
    const source = join(dir.path, 'psk-source.img');
    await writeFile(source, content);
    await runToolOk('nbdcopy', [source, `nbds://site-a@127.0.0.1:${status.port}/psk/vm/disk?tls-psk-file=${keys}`]);
    const checkpoint = (await api.ok<{ checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name: 'over psk' })).checkpoint;
    const opened = await api.ok<PitExport>('POST', `/vpgs/${vpg.id}/checkpoints/${checkpoint.id}/exports`, { volumeId: vpg.vms[0]!.volumes[0]!.id });
    expect(opened.url).toMatch(/^nbds:\/\/127\.0\.0\.1:\d+\/pit\//);
    // The identity goes where URLs put a user name.
    const withIdentity = (url: string, file: string): string => `${url.replace('nbds://', 'nbds://site-a@')}?tls-psk-file=${file}`;
    const out = join(dir.path, 'psk-recovered.img');
    await runToolOk('nbdcopy', [withIdentity(opened.url, keys), out]);
    expect((await readFile(out)).equals(content)).toBe(true);
    for (const uri of [withIdentity(opened.url, stranger), `nbds://site-a@127.0.0.1:${status.port}/psk/vm/disk?tls-psk-file=${stranger}`]) {
      const refused = await runTool('nbdinfo', ['--size', uri]);
      expect({ uri, code: refused.code === 0 ? 0 : 'refused' }).toEqual({ uri, code: 'refused' });
    }
    expect((await api.json('DELETE', `/exports/${opened.id}`)).status).toBe(204);
  });
});
