import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { type BlockDevice } from './block-device';
import { MemoryBlockDevice } from './memory-block-device';
import { NbdServer } from './nbd-server';
import { type TempDir, type TestCertificates, itWithTools, makeTestCertificates, runTool, runToolOk, tempDir, waitFor } from '@cdp/testing';
import { loadNbdTls } from './nbd-tls';
import { NBD_OPT_GO, NBD_OPT_LIST, NBD_OPT_STARTTLS, NBD_OPT_STRUCTURED_REPLY, NBD_REP_ACK, NBD_REP_ERR_TLS_REQD } from './protocol';
import { NbdTestClient, infoRequest } from './testing/nbd-test-client';

/**
 * Real NBD clients (QEMU, libnbd's tools, fio) against this server on loopback, each with its own
 * in-memory export. Programs come from the Debian packages qemu-utils (qemu-io, qemu-img),
 * libnbd-bin (nbdinfo, nbdcopy) and fio.
 */
const MiB = 1024 * 1024;

describe('NbdServer with real clients', () => {
  let server: NbdServer;
  let port: number;
  let dir: TempDir;
  const problems: string[] = [];
  const devices = new Map<string, BlockDevice>();

  function exportUri(name: string): string {
    return `nbd://127.0.0.1:${port}/${name}`;
  }

  function memory(name: string, size: number, blockSize: 512 | 4096 = 512, readOnly = false): MemoryBlockDevice {
    const device = new MemoryBlockDevice({ size, blockSize, readOnly });
    devices.set(name, device);
    return device;
  }

  beforeAll(async () => {
    dir = await tempDir('cdp-nbd');
    server = new NbdServer({
      resolve: (name) => {
        const device = devices.get(name);
        return device === undefined ? undefined : { device, description: `test export ${name}` };
      },
      list: () => [...devices.keys()].map((name) => ({ name, description: `test export ${name}` })),
      logger: { log: () => undefined, warn: (m) => problems.push(m), error: (m) => problems.push(m) },
    });
    ({ port } = await server.listen(0));
  });

  afterAll(async () => {
    await server.close();
    await dir.cleanup();
  });

  afterEach(() => {
    // A real client must never make the server see a protocol violation or a device error.
    expect(problems).toEqual([]);
  });

  itWithTools(['qemu-io'], 'qemu-io writes patterns and reads them back', async () => {
    const device = memory('qemu', 16 * MiB);
    const { stdout } = await runToolOk('qemu-io', [
      '-f', 'raw', exportUri('qemu'),
      '-c', 'write -P 0xab 0 64k',
      '-c', 'write -P 0xcd 1M 4k',
      '-c', 'write -z 8k 4k',
      '-c', 'read -P 0xab 0 8k',
      '-c', 'read -P 0 8k 4k',
      '-c', 'read -P 0xcd 1M 4k',
      '-c', 'read -v 1M 32',
      '-c', 'flush',
    ]);
    expect(stdout).not.toMatch(/verification failed|error|failed/i);
    expect(stdout).toContain('00100000:  cd cd cd cd cd cd cd cd cd cd cd cd cd cd cd cd');
    expect(device.bytes.subarray(0, 8192).equals(Buffer.alloc(8192, 0xab))).toBe(true);
    expect(device.bytes.subarray(8192, 12288).equals(Buffer.alloc(4096))).toBe(true);
    expect(device.bytes.subarray(MiB, MiB + 4096).equals(Buffer.alloc(4096, 0xcd))).toBe(true);
  });

  itWithTools(['nbdinfo'], 'nbdinfo reports size, block sizes and flags, and lists exports', async () => {
    memory('info', 8 * MiB, 4096);
    memory('info-ro', 2 * MiB, 512, true);
    const { stdout } = await runToolOk('nbdinfo', ['--json', exportUri('info')]);
    const [info] = (JSON.parse(stdout) as { exports: Record<string, unknown>[] }).exports;
    expect(info).toMatchObject({
      'export-name': 'info',
      description: 'test export info',
      'export-size': 8 * MiB,
      block_size_minimum: 4096,
      block_size_preferred: 4096,
      block_size_maximum: 32 * MiB,
      is_read_only: false,
      can_flush: false,
      can_fua: false,
      can_trim: true,
      can_zero: true,
      can_multi_conn: true,
    });
    const ro = await runToolOk('nbdinfo', ['--json', exportUri('info-ro')]);
    expect((JSON.parse(ro.stdout) as { exports: Record<string, unknown>[] }).exports[0]).toMatchObject({
      is_read_only: true,
      can_trim: false,
      can_zero: false,
    });
    const list = await runToolOk('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`]);
    const names = (JSON.parse(list.stdout) as { exports: { 'export-name': string }[] }).exports.map((e) => e['export-name']);
    expect(names).toEqual(expect.arrayContaining(['info', 'info-ro']));
  });

  itWithTools(['nbdcopy'], 'nbdcopy copies a random file in and out unchanged', async () => {
    memory('copy', 16 * MiB);
    const source = join(dir.path, 'copy-source.bin');
    const back = join(dir.path, 'copy-back.bin');
    const content = randomBytes(16 * MiB);
    await writeFile(source, content);
    await runToolOk('nbdcopy', [source, exportUri('copy')]);
    await runToolOk('nbdcopy', [exportUri('copy'), back]);
    expect((await readFile(back)).equals(content)).toBe(true);
  });

  itWithTools(['qemu-img'], 'qemu-img converts a file into the export and compares them identical', async () => {
    const device = memory('img', 8 * MiB, 4096);
    const image = join(dir.path, 'image.raw');
    // Data, a zero hole and more data, so that convert uses both writes and zeroing.
    const content = Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(2 * MiB), randomBytes(3 * MiB)]);
    device.bytes.fill(0x5a);
    await writeFile(image, content);
    await runToolOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image, exportUri('img')]);
    const { stdout } = await runToolOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, exportUri('img')]);
    expect(stdout).toContain('Images are identical');
    expect(device.bytes.equals(content)).toBe(true);
  });

  itWithTools(['nbdinfo', 'qemu-img'], 'nbdinfo and qemu-img map the export through base:allocation', async () => {
    const device = memory('map', 8 * MiB, 4096);
    device.bytes.fill(7, MiB, 2 * MiB);
    device.bytes.fill(9, 5 * MiB, 5 * MiB + 4096);
    const { stdout } = await runToolOk('nbdinfo', ['--map', '--json', exportUri('map')]);
    const map = (JSON.parse(stdout) as { offset: number; length: number; type: number }[]).map(({ offset, length, type }) => [offset, length, type]);
    expect(map).toEqual([
      [0, MiB, 2],
      [MiB, MiB, 0],
      [2 * MiB, 3 * MiB, 2],
      [5 * MiB, 4096, 0],
      [5 * MiB + 4096, 3 * MiB - 4096, 2],
    ]);
    const info = await runToolOk('nbdinfo', ['--json', exportUri('map')]);
    expect((JSON.parse(info.stdout) as { exports: Record<string, unknown>[] }).exports[0]).toMatchObject({ can_df: true, can_fast_zero: false });
    const qemu = await runToolOk('qemu-img', ['map', '--output=json', '-f', 'raw', exportUri('map')]);
    const zeros = (JSON.parse(qemu.stdout) as { start: number; length: number; zero: boolean }[]).filter((e) => e.zero).map((e) => [e.start, e.length]);
    expect(zeros).toEqual([
      [0, MiB],
      [2 * MiB, 3 * MiB],
      [5 * MiB + 4096, 3 * MiB - 4096],
    ]);
  });

  itWithTools(['fio'], 'fio random writes at iodepth 16 verify with crc32c', async () => {
    memory('fio', 32 * MiB);
    const { stdout } = await runToolOk('fio', [
      '--name=nbd-verify',
      '--ioengine=nbd',
      `--uri=${exportUri('fio')}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      '--size=32m',
      '--verify=crc32c',
      '--verify_fatal=1',
      // Otherwise fio leaves a verify state file in the working directory.
      '--verify_state_save=0',
      '--output-format=json',
    ]);
    // fio prints a line about the connection before its JSON.
    const report = JSON.parse(stdout.slice(stdout.indexOf('{'))) as {
      jobs: { error: number; write: { iops: number; io_bytes: number }; read: { io_bytes: number } }[];
    };
    const job = report.jobs[0];
    expect(job?.error).toBe(0);
    expect(job?.write.io_bytes).toBe(32 * MiB);
    // Every block written was read back and its checksum matched (verify_fatal stops at the first miss).
    expect(job?.read.io_bytes).toBe(32 * MiB);
    expect(job?.write.iops).toBeGreaterThan(0);
  });
});

/**
 * TLS (NBD_OPT_STARTTLS, required of every client) with libnbd's and QEMU's x509 credentials: the
 * server's certificate checked by the client, and with a CA configured, the client's by the server.
 */
describe('NbdServer over TLS with real clients', () => {
  let dir: TempDir;
  let certs: TestCertificates;
  const problems: string[] = [];
  const servers: NbdServer[] = [];
  const disk = new MemoryBlockDevice({ size: 4 * MiB });

  beforeAll(async () => {
    dir = await tempDir('cdp-nbd-tls');
  });

  afterAll(async () => {
    await Promise.all(servers.map((s) => s.close()));
    await dir.cleanup();
  });

  async function serve(verifyClients: boolean): Promise<number> {
    certs ??= await makeTestCertificates(join(dir.path, 'certs'));
    const server = new NbdServer({
      resolve: (name) => (name === 'disk' ? { device: disk } : undefined),
      list: () => [{ name: 'disk' }],
      logger: { log: (m) => problems.push(m), warn: (m) => problems.push(m), error: (m) => problems.push(m) },
      tls: loadNbdTls({ cert: certs.serverCert, key: certs.serverKey, ca: verifyClients ? certs.caCert : null }),
    });
    servers.push(server);
    return (await server.listen(0)).port;
  }

  itWithTools(['openssl', 'nbdinfo', 'nbdcopy', 'qemu-io'], 'serves clients that start TLS and check the certificate; refuses everything else before it', async () => {
    const port = await serve(false);
    const uri = (params: string): string => `nbds://127.0.0.1:${port}/disk?${params}`;
    const content = randomBytes(4 * MiB);
    const source = join(dir.path, 'tls-source.bin');
    await writeFile(source, content);
    await runToolOk('nbdcopy', [source, uri(`tls-certificates=${certs.clientDirNoCert}`)]);
    expect(disk.bytes.equals(content)).toBe(true);
    const info = await runToolOk('nbdinfo', ['--json', uri(`tls-certificates=${certs.clientDirNoCert}`)]);
    expect((JSON.parse(info.stdout) as { exports: Record<string, unknown>[] }).exports[0]).toMatchObject({ 'export-size': 4 * MiB, can_df: true });
    // QEMU: its x509 credentials object, TLS required by the image options.
    const qemu = await runToolOk('qemu-io', [
      '--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${certs.clientDirNoCert}`,
      '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=disk,tls-creds=tls0`,
      '-c', 'write -P 0x3c 1M 64k',
      '-c', 'read -P 0x3c 1M 64k',
    ]);
    expect(qemu.stdout).not.toMatch(/verification failed|error|failed/i);
    expect(disk.bytes.subarray(MiB, MiB + 65536).equals(Buffer.alloc(65536, 0x3c))).toBe(true);

    // In the clear: refused with the reason, never told which exports exist.
    const plain = await runTool('nbdinfo', [`nbd://127.0.0.1:${port}/disk`]);
    expect(plain.code).not.toBe(0);
    expect(`${plain.stdout}${plain.stderr}`).toMatch(/TLS/);
    const client = await NbdTestClient.open(port);
    for (const option of [NBD_OPT_LIST, NBD_OPT_STRUCTURED_REPLY]) {
      client.sendOption(option);
      expect((await client.readOptionReply()).type).toBe(NBD_REP_ERR_TLS_REQD);
    }
    client.sendOption(NBD_OPT_GO, infoRequest('disk', []));
    const go = await client.readOptionReply();
    expect(go.type).toBe(NBD_REP_ERR_TLS_REQD);
    expect(go.data.toString()).toContain('NBD_OPT_STARTTLS');
    // STARTTLS with data is malformed; a client that does not wait for the answer before its handshake is dropped.
    client.sendOption(NBD_OPT_STARTTLS, Buffer.from('x'));
    expect((await client.readOptionReply()).type).not.toBe(NBD_REP_ACK);
    client.sendOption(NBD_OPT_STARTTLS);
    client.send(Buffer.from('not a TLS handshake'));
    expect((await client.readOptionReply()).type).toBe(NBD_REP_ACK);
    expect(await client.closesWithin(2000)).toBe(true);
    // A client that does not trust the server's CA gives up in its handshake.
    const untrusted = await runTool('nbdinfo', [uri(`tls-certificates=${certs.wrongCaDir}`)]);
    expect(untrusted.code).not.toBe(0);
    await waitFor(() => servers[0]!.stats.open === 0, { timeoutMs: 5000, message: 'connections closed' });
  });

  itWithTools(['openssl', 'nbdinfo'], 'with a CA for clients, serves only clients whose certificate it signed', async () => {
    const port = await serve(true);
    const uri = (clientDir: string): string => `nbds://127.0.0.1:${port}/disk?tls-certificates=${clientDir}`;
    const ok = await runToolOk('nbdinfo', ['--size', uri(certs.clientDir)]);
    expect(ok.stdout.trim()).toBe(String(4 * MiB));
    for (const refused of [certs.clientDirNoCert, certs.strangerDir]) {
      const result = await runTool('nbdinfo', ['--size', uri(refused)]);
      expect(result.code).not.toBe(0);
    }
    expect(problems.some((line) => /certificate|handshake|alert/i.test(line))).toBe(true);
  });

  itWithTools(['openssl'], 'refuses at start a key that does not match its certificate', async () => {
    certs ??= await makeTestCertificates(join(dir.path, 'certs'));
    const clientKey = join(certs.clientDir, 'client-key.pem');
    expect(() => loadNbdTls({ cert: certs.serverCert, key: clientKey })).toThrow(/the NBD TLS files are not usable .*key values mismatch/);
  });

  itWithTools(['openssl', 'nbdinfo'], 'forgets clients that give up in the TLS handshake or send garbage in it, and serves the others', async () => {
    const port = await serve(false);
    const uri = `nbds://127.0.0.1:${port}/disk?tls-certificates=${certs.clientDirNoCert}`;
    const server = servers[servers.length - 1]!;
    const startTls = async (): Promise<NbdTestClient> => {
      const client = await NbdTestClient.open(port);
      client.sendOption(NBD_OPT_STARTTLS);
      expect((await client.readOptionReply()).type).toBe(NBD_REP_ACK);
      return client;
    };
    // Half a ClientHello, then gone; garbage where the handshake should be; silence, then gone.
    const halfHello = await startTls();
    halfHello.send(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00]));
    halfHello.destroy();
    const garbage = await startTls();
    garbage.send(Buffer.alloc(64, 0x41));
    expect(await garbage.closesWithin(5000)).toBe(true);
    const silent = await startTls();
    expect((await runToolOk('nbdinfo', ['--size', uri])).stdout.trim()).toBe(String(4 * MiB));
    silent.destroy();
    await waitFor(() => server.stats.open === 0, { timeoutMs: 5000, message: 'every connection forgotten' });
  });
});

/**
 * TLS with pre-shared keys instead of certificates: the key file in GnuTLS's psktool format, which
 * libnbd (`tls-psk-file`) and QEMU (`tls-creds-psk`, `keys.psk` in its directory) read as the server does.
 */
describe('NbdServer over TLS with pre-shared keys, with real clients', () => {
  const KEY_ALICE = randomBytes(32).toString('hex');
  const KEY_BOB = randomBytes(32).toString('hex');
  let dir: TempDir;
  let server: NbdServer;
  let port: number;
  let serverKeys: string;
  const warnings: string[] = [];
  const disk = new MemoryBlockDevice({ size: 4 * MiB });

  /** A client's key file (libnbd wants a file; QEMU a directory holding `keys.psk`). */
  async function clientKeys(name: string, line: string): Promise<string> {
    const clientDir = join(dir.path, name);
    await mkdir(clientDir, { recursive: true });
    await writeFile(join(clientDir, 'keys.psk'), `${line}\n`, { mode: 0o600 });
    return clientDir;
  }

  beforeAll(async () => {
    dir = await tempDir('cdp-nbd-psk');
    serverKeys = join(dir.path, 'server-keys.psk');
    await writeFile(serverKeys, `alice:${KEY_ALICE}\n`, { mode: 0o600 });
    server = new NbdServer({
      resolve: (name) => (name === 'disk' ? { device: disk } : undefined),
      list: () => [{ name: 'disk' }],
      logger: { log: () => undefined, warn: (m) => warnings.push(m), error: (m) => warnings.push(m) },
      tls: loadNbdTls({ pskFile: serverKeys }),
    });
    ({ port } = await server.listen(0));
  });

  afterAll(async () => {
    await server.close();
    await dir.cleanup();
  });

  const uri = (identity: string, clientDir: string): string => `nbds://${identity}@127.0.0.1:${port}/disk?tls-psk-file=${join(clientDir, 'keys.psk')}`;

  /** Runs the client, expects it refused, and returns the warning the server logged for it. */
  async function refused(args: string[]): Promise<string> {
    const before = warnings.length;
    const result = await runTool('nbdinfo', args);
    expect(result.code).not.toBe(0);
    await waitFor(() => warnings.length > before, { timeoutMs: 5000, message: 'the refusal logged' });
    return warnings.slice(before).join('\n');
  }

  itWithTools(['nbdinfo', 'nbdcopy', 'qemu-io'], 'serves clients that hold their identity\'s key; refuses wrong keys, unknown identities and clients without a key, saying which', async () => {
    const alice = await clientKeys('alice', `alice:${KEY_ALICE}`);
    const content = randomBytes(4 * MiB);
    const source = join(dir.path, 'psk-source.bin');
    await writeFile(source, content);
    await runToolOk('nbdcopy', [source, uri('alice', alice)]);
    expect(disk.bytes.equals(content)).toBe(true);
    const info = await runToolOk('nbdinfo', ['--json', uri('alice', alice)]);
    expect((JSON.parse(info.stdout) as { protocol: string; exports: Record<string, unknown>[] }).exports[0]).toMatchObject({ 'export-size': 4 * MiB });
    const qemu = await runToolOk('qemu-io', [
      '--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${alice},username=alice`,
      '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=disk,tls-creds=tls0`,
      '-c', 'write -P 0x5a 2M 64k',
      '-c', 'read -P 0x5a 2M 64k',
    ]);
    expect(qemu.stdout).not.toMatch(/error|failed/i);
    expect(disk.bytes.subarray(2 * MiB, 2 * MiB + 65536).equals(Buffer.alloc(65536, 0x5a))).toBe(true);
    expect(warnings).toEqual([]);

    const wrongKey = await clientKeys('wrong-key', `alice:${KEY_BOB}`);
    expect(await refused(['--size', uri('alice', wrongKey)])).toMatch(`TLS refused: the client's key for PSK identity 'alice' is not the one in ${serverKeys}`);
    const bob = await clientKeys('bob', `bob:${KEY_BOB}`);
    expect(await refused(['--size', uri('bob', bob)])).toMatch(`TLS refused: the PSK identity 'bob' is not in ${serverKeys}`);
    const certs = await makeTestCertificates(join(dir.path, 'certs'));
    expect(await refused(['--size', `nbds://127.0.0.1:${port}/disk?tls-certificates=${certs.clientDirNoCert}`])).toMatch(
      'TLS refused: the client offered no pre-shared key (this server authenticates clients by PSK only)',
    );
    // In the clear: nothing but the demand for TLS.
    const plain = await runTool('nbdinfo', [`nbd://127.0.0.1:${port}/disk`]);
    expect(plain.code).not.toBe(0);
    await waitFor(() => server.stats.open === 0, { timeoutMs: 5000, message: 'connections closed' });
  });

  itWithTools(['nbdinfo'], 'takes keys added, changed and revoked in its file without a restart', async () => {
    const alice = await clientKeys('alice-2', `alice:${KEY_ALICE}`);
    const bob = await clientKeys('bob-2', `bob:${KEY_BOB}`);
    // A new file renamed over the old one: bob added, alice revoked.
    await writeFile(`${serverKeys}.new`, `bob:${KEY_BOB}\n`, { mode: 0o600 });
    await rename(`${serverKeys}.new`, serverKeys);
    expect((await runToolOk('nbdinfo', ['--size', uri('bob', bob)])).stdout.trim()).toBe(String(4 * MiB));
    expect(await refused(['--size', uri('alice', alice)])).toMatch(`the PSK identity 'alice' is not in ${serverKeys}`);
    // A file broken by an edit lets nobody in until it is mended.
    await writeFile(serverKeys, `bob:${KEY_BOB}\nalice ${KEY_ALICE}\n`);
    expect(await refused(['--size', uri('bob', bob)])).toMatch(`TLS refused: the NBD TLS PSK file ${serverKeys}, line 2: expected 'identity:hexkey'`);
    await writeFile(serverKeys, `bob:${KEY_BOB}\nalice:${KEY_ALICE}\n`);
    expect((await runToolOk('nbdinfo', ['--size', uri('alice', alice)])).stdout.trim()).toBe(String(4 * MiB));
  });
});

/**
 * A Unix domain socket instead of TCP, for clients on the same host (a hypervisor beside the
 * splitter): libnbd's `nbd+unix://` URIs, QEMU's unix server address, fio; and what the listener does
 * with whatever is at its path already.
 */
describe('NbdServer on a Unix socket, with real clients', () => {
  let dir: TempDir;
  const servers: NbdServer[] = [];
  const disk = new MemoryBlockDevice({ size: 16 * MiB });

  function newServer(): NbdServer {
    const server = new NbdServer({ resolve: (name) => (name === 'disk' ? { device: disk } : undefined), list: () => [{ name: 'disk' }] });
    servers.push(server);
    return server;
  }

  beforeAll(async () => {
    dir = await tempDir('cdp-nbd-unix');
  });

  afterAll(async () => {
    await Promise.all(servers.map((s) => s.close()));
    await dir.cleanup();
  });

  itWithTools(['nbdinfo', 'nbdcopy', 'qemu-io', 'fio'], 'serves nbd+unix:// clients, QEMU and fio; the socket is 0660 and goes when the server closes', async () => {
    const path = join(dir.path, 'nbd.sock');
    const server = newServer();
    await server.listenOnPath(path);
    expect((await stat(path)).mode & 0o777).toBe(0o660);
    const uri = `nbd+unix:///disk?socket=${path}`;
    const content = randomBytes(4 * MiB);
    const source = join(dir.path, 'source.bin');
    await writeFile(source, content);
    await runToolOk('nbdcopy', [source, uri]);
    expect(disk.bytes.subarray(0, 4 * MiB).equals(content)).toBe(true);
    expect((await runToolOk('nbdinfo', ['--size', uri])).stdout.trim()).toBe(String(16 * MiB));
    const qemu = await runToolOk('qemu-io', [
      '--image-opts', `driver=nbd,server.type=unix,server.path=${path},export=disk`,
      '-c', 'write -P 0x77 8M 64k',
      '-c', 'read -P 0x77 8M 64k',
    ]);
    expect(qemu.stdout).not.toMatch(/error|failed/i);
    const fio = await runToolOk('fio', [
      '--name=unix-verify', '--ioengine=nbd', `--uri=${uri}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', '--size=8m',
      '--verify=crc32c', '--verify_fatal=1', '--verify_state_save=0', '--output-format=json',
    ]);
    const job = (JSON.parse(fio.stdout.slice(fio.stdout.indexOf('{'))) as { jobs: { error: number; read: { io_bytes: number } }[] }).jobs[0];
    expect(job?.error).toBe(0);
    expect(job?.read.io_bytes).toBe(8 * MiB);
    await server.close();
    await expect(stat(path)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  itWithTools(['nbdinfo'], 'speaks TLS over the socket as over TCP (nbds+unix://)', async () => {
    const keys = join(dir.path, 'keys.psk');
    await writeFile(keys, `local:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    const path = join(dir.path, 'tls.sock');
    const server = new NbdServer({ resolve: (name) => (name === 'disk' ? { device: disk } : undefined), tls: loadNbdTls({ pskFile: keys }) });
    servers.push(server);
    await server.listenOnPath(path);
    const info = await runToolOk('nbdinfo', [`nbds+unix://local@/disk?socket=${path}&tls-psk-file=${keys}`]);
    expect(info.stdout).toMatch(/with TLS/);
    const plain = await runTool('nbdinfo', [`nbd+unix:///disk?socket=${path}`]);
    expect(plain.code).not.toBe(0);
  });

  it('replaces a socket file its server left behind; refuses a live server\'s socket, a file that is not a socket (leaving both) and a path without its directory', async () => {
    // A socket file nobody listens on: what a process killed while it listened leaves.
    const stale = join(dir.path, 'stale.sock');
    const killed = spawnSync(process.execPath, ['-e', `require('node:net').createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    expect(killed.signal).toBe('SIGKILL');
    expect((await stat(stale)).isSocket()).toBe(true);
    const server = newServer();
    await server.listenOnPath(stale);
    expect((await runToolOk('nbdinfo', ['--size', `nbd+unix:///disk?socket=${stale}`])).stdout.trim()).toBe(String(16 * MiB));
    // Its socket is live now: another server may not take it.
    await expect(newServer().listenOnPath(stale)).rejects.toThrow(`another server is listening on ${stale}`);
    expect((await runToolOk('nbdinfo', ['--size', `nbd+unix:///disk?socket=${stale}`])).stdout.trim()).toBe(String(16 * MiB));
    const file = join(dir.path, 'not-a-socket');
    await writeFile(file, 'precious');
    await expect(newServer().listenOnPath(file)).rejects.toThrow(`${file} exists and is not a socket: not replaced`);
    expect(await readFile(file, 'utf8')).toBe('precious');
    // A directory that is not there, or is a file (bind() says EACCES for the first, which misleads).
    await expect(newServer().listenOnPath(join(dir.path, 'missing', 'nbd.sock'))).rejects.toThrow(`${join(dir.path, 'missing')} is not an existing directory`);
    await expect(newServer().listenOnPath(join(file, 'nbd.sock'))).rejects.toThrow(`${file} is not an existing directory`);
  });
});
