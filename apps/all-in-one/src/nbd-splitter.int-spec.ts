import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { type Checkpoint, type Volume, type Vpg } from '@cdp/domain';
import { type NbdStatus, SplitterNbdService } from '@cdp/splitter';
import { type ApiClient, type TempDir, itWithTools, runTool, runToolOk, tempDir, waitFor } from '@cdp/testing';
import { createProtectedVpg, startTestApp, type TestApp } from './all-in-one.test-app';

/**
 * Protected volumes as real disks: the splitter's NBD server driven by QEMU (qemu-io, qemu-img),
 * libnbd's tools (nbdinfo, nbdcopy) and fio, on loopback. Whatever a client writes over NBD must be
 * captured like an HTTP write: a checkpoint taken afterwards recovers each volume exactly as the
 * client reads it back. Programs come from the Debian packages qemu-utils, libnbd-bin and fio; a
 * missing one skips its test, except under CI=true, where it fails.
 */
const MiB = 1024 * 1024;

describe('protected volumes over NBD', () => {
  let testApp: TestApp;
  let api: ApiClient;
  let vpg: Vpg;
  let port: number;
  let dir: TempDir;

  beforeAll(async () => {
    dir = await tempDir('nbd-splitter-');
    testApp = await startTestApp();
    api = testApp.api;
    vpg = await createProtectedVpg(api, {
      name: 'nbd',
      vms: [
        { name: 'app-01', volumes: [{ name: 'root', sizeBytes: 16 * MiB, blockSize: 512 }] },
        { name: 'db-01', volumes: [{ name: 'data', sizeBytes: 16 * MiB, blockSize: 4096 }] },
      ],
      // Only the checkpoints this test tags.
      settings: { checkpointIntervalSeconds: 60 },
    });
    const address = testApp.app.get(SplitterNbdService).address();
    port = address && 'port' in address ? address.port : -1;
  });

  afterAll(async () => {
    await testApp?.close();
    await dir?.cleanup();
  });

  const root = (): Volume => vpg.vms[0]!.volumes[0]!;
  const data = (): Volume => vpg.vms[1]!.volumes[0]!;
  const uri = (name: string): string => `nbd://127.0.0.1:${port}/${name}`;
  const lastSeq = async (): Promise<number> => (await api.ok<{ lastSeq: number }>('GET', `/splitter/vpgs/${vpg.id}`)).lastSeq;

  async function tagCheckpoint(name: string): Promise<Checkpoint> {
    const answer = await api.ok<{ status: string; checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name });
    expect(answer.status).toBe('recorded');
    return answer.checkpoint;
  }

  async function checkpointImage(checkpoint: Checkpoint, volume: Volume): Promise<Buffer> {
    const { status, data: image } = await api.bytes(`/vpgs/${vpg.id}/checkpoints/${checkpoint.id}/volumes/${volume.id}/image`);
    expect(status).toBe(200);
    return image;
  }

  /** The whole volume as an NBD client reads it. */
  async function readOverNbd(name: string, file: string): Promise<Buffer> {
    await runToolOk('nbdcopy', [uri(name), join(dir.path, file)]);
    return readFile(join(dir.path, file));
  }

  it('says where it listens and what it exports', async () => {
    const status = await api.ok<NbdStatus>('GET', '/splitter/nbd');
    expect(status.host).toBe('127.0.0.1');
    expect(status.port).toBe(port);
    expect(status.port).not.toBe(10809);
    expect(status.exports).toEqual([
      { name: 'nbd/app-01/root', vpgId: vpg.id, vmId: vpg.vms[0]!.id, volumeId: root().id, sizeBytes: 16 * MiB, blockSize: 512 },
      { name: 'nbd/db-01/data', vpgId: vpg.id, vmId: vpg.vms[1]!.id, volumeId: data().id, sizeBytes: 16 * MiB, blockSize: 4096 },
    ]);
  });

  itWithTools(['nbdinfo'], 'nbdinfo shows size, block size and flags, by name and by UUID, and lists the exports', async () => {
    for (const [name, blockSize] of [
      ['nbd/app-01/root', 512],
      ['nbd/db-01/data', 4096],
      [data().id, 4096],
    ] as const) {
      const { stdout } = await runToolOk('nbdinfo', ['--json', uri(name)]);
      const [info] = (JSON.parse(stdout) as { exports: Record<string, unknown>[] }).exports;
      expect(info).toMatchObject({
        'export-name': name,
        'export-size': 16 * MiB,
        block_size_minimum: blockSize,
        block_size_preferred: blockSize,
        is_read_only: false,
        can_flush: true,
        can_fua: true,
        can_trim: true,
        can_zero: true,
        can_fast_zero: true,
        can_df: true,
        can_multi_conn: true,
      });
      expect(info?.['description']).toMatch(/^VPG nbd, VM (app-01|db-01), volume (root|data): 16 MiB/);
    }
    const list = await runToolOk('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`]);
    const names = (JSON.parse(list.stdout) as { exports: { 'export-name': string }[] }).exports.map((e) => e['export-name']);
    expect(names).toEqual(['nbd/app-01/root', 'nbd/db-01/data']);
  });

  itWithTools(['qemu-io', 'nbdinfo'], 'qemu-io writes patterns, FUA writes, zeroes and discards, captured and read back; nbdinfo maps them', async () => {
    const before = await lastSeq();
    const { stdout } = await runToolOk('qemu-io', [
      '-f', 'raw', uri('nbd/app-01/root'),
      '-c', 'write -P 0xab 0 64k',
      // -f: Force Unit Access, i.e. durable locally and acknowledged by the bus before it completes.
      '-c', 'write -f -P 0xcd 1M 4k',
      '-c', 'write -z 8k 4k',
      // Zeros over zeros: nothing to capture.
      '-c', 'write -z 8M 2M',
      '-c', 'write -P 0xee 3M 2M',
      // A discard leaves the bytes as they were (the client may not count on any content there).
      '-c', 'discard 3M 1536k',
      '-c', 'read -P 0xab 0 8k',
      '-c', 'read -P 0 8k 4k',
      '-c', 'read -P 0xab 12k 52k',
      '-c', 'read -P 0xcd 1M 4k',
      '-c', 'read -P 0xee 3M 2M',
      '-c', 'read -P 0 8M 2M',
      '-c', 'flush',
    ]);
    expect(stdout).not.toMatch(/verification failed|error|failed/i);
    // Records for the three writes and the zeroing over data; none for the zeroing over zeros or the discard.
    expect(await lastSeq()).toBe(before + 4);
    const status = await api.ok<{ zeroing: { requests: number; bytes: number; capturedBytes: number }; discards: { requests: number; bytes: number } }>(
      'GET',
      `/splitter/vpgs/${vpg.id}`,
    );
    expect(status.zeroing).toEqual({ requests: 2, bytes: 4096 + 2 * MiB, capturedBytes: 4096 });
    expect(status.discards).toEqual({ requests: 1, bytes: 1536 * 1024 });
    // The HTTP read path sees the same volume.
    const { data: viaHttp } = await api.bytes(`/splitter/vpgs/${vpg.id}/volumes/${root().id}/data?offset=${MiB}&length=4096`);
    expect(viaHttp.equals(Buffer.alloc(4096, 0xcd))).toBe(true);

    // Block status (base:allocation): data where writes landed (the zeroing over data wrote zeros into
    // its 64 KiB window), holes that read as zeros where none did, the zeroing over zeros included.
    const map = JSON.parse((await runToolOk('nbdinfo', ['--map', '--json', uri('nbd/app-01/root')])).stdout) as { offset: number; length: number; type: number }[];
    expect(map.map(({ offset, length, type }) => [offset, length, type])).toEqual([
      [0, 64 * 1024, 0],
      [64 * 1024, MiB - 64 * 1024, 3],
      [MiB, 4096, 0],
      [MiB + 4096, 2 * MiB - 4096, 3],
      [3 * MiB, 2 * MiB, 0],
      [5 * MiB, 11 * MiB, 3],
    ]);
  });

  itWithTools(['fio'], 'fio random writes at iodepth 16 verify with crc32c', async () => {
    const { stdout } = await runToolOk(
      'fio',
      [
        '--name=nbd-splitter',
        '--ioengine=nbd',
        `--uri=${uri('nbd/db-01/data')}`,
        '--rw=randwrite',
        '--bs=4k',
        '--iodepth=16',
        '--size=8M',
        '--verify=crc32c',
        '--verify_fatal=1',
        '--verify_state_save=0',
        '--output-format=json',
      ],
      30_000,
    );
    const report = JSON.parse(stdout.slice(stdout.indexOf('{'))) as {
      jobs: { error: number; write: { iops: number; io_bytes: number }; read: { io_bytes: number } }[];
    };
    const job = report.jobs[0]!;
    expect(job.error).toBe(0);
    expect(job.write.io_bytes).toBe(8 * MiB);
    expect(job.read.io_bytes).toBe(8 * MiB);
  });

  itWithTools(['qemu-io'], 'receives large writes into the payload ring and gets every region back once the journal has them, none damaged', async () => {
    // Under test every released region is poisoned at once (CDP_POISON_RELEASED_PAYLOADS, set by the
    // Jest config): a region given back while the log, the volume, the shipper, the bus, the transport
    // or the journal still needed it would reach the journal as a corrupt record or a wrong image.
    const ring = async (): Promise<NonNullable<NbdStatus['payloadRing']>> => {
      const status = (await api.ok<NbdStatus>('GET', '/splitter/nbd')).payloadRing;
      expect(status).not.toBeNull();
      return status!;
    };
    const writer = (): Promise<{ corruptMessages: number; gaps: number }> => api.ok('GET', '/journal-writer/status');
    const servedBefore = (await ring()).served;
    const writerBefore = await writer();
    const commands = Array.from({ length: 12 }, (_, i) => ['-c', `write -P ${0x40 + i} ${i}M 1M`]).flat();
    const { stdout } = await runToolOk('qemu-io', ['-f', 'raw', uri('nbd/db-01/data'), ...commands, '-c', 'flush']);
    expect(stdout).not.toMatch(/error|failed/i);
    expect((await ring()).served).toBeGreaterThanOrEqual(servedBefore + 12);

    const checkpoint = await tagCheckpoint('after-ring-writes');
    const image = await checkpointImage(checkpoint, data());
    for (let i = 0; i < 12; i++) {
      expect(image.subarray(i * MiB, (i + 1) * MiB).equals(Buffer.alloc(MiB, 0x40 + i))).toBe(true);
    }
    await waitFor(async () => (await ring()).liveRegions === 0, { timeoutMs: 10_000, message: 'the payload ring never got its regions back' });
    expect(await writer()).toMatchObject({ corruptMessages: writerBefore.corruptMessages, gaps: writerBefore.gaps });
  });

  itWithTools(['nbdcopy'], 'a checkpoint recovers every volume exactly as the NBD client reads it', async () => {
    const volumes = [
      [root(), 'nbd/app-01/root'],
      [data(), 'nbd/db-01/data'],
    ] as const;
    // What qemu-io and fio wrote above.
    const first = await tagCheckpoint('after qemu-io and fio');
    for (const [volume, name] of volumes) {
      const image = await checkpointImage(first, volume);
      expect(image.length).toBe(16 * MiB);
      expect(image.equals(await readOverNbd(name, `${volume.name}-1.img`))).toBe(true);
    }
    // Whole volumes rewritten by nbdcopy, which opens several connections at once (multi-conn).
    const content = randomBytes(16 * MiB);
    await writeFile(join(dir.path, 'random.img'), content);
    await runToolOk('nbdcopy', [join(dir.path, 'random.img'), uri('nbd/db-01/data')]);
    await runToolOk('nbdcopy', [join(dir.path, 'random.img'), uri(root().id)]);
    const second = await tagCheckpoint('after nbdcopy');
    for (const [volume, name] of volumes) {
      const viaNbd = await readOverNbd(name, `${volume.name}-2.img`);
      expect(viaNbd.equals(content)).toBe(true);
      expect((await checkpointImage(second, volume)).equals(viaNbd)).toBe(true);
    }
  });

  itWithTools(['qemu-img'], 'qemu-img converts a file into a protected volume; the checkpoint image compares identical', async () => {
    const zeroing = async (): Promise<{ requests: number; bytes: number; capturedBytes: number }> =>
      (await api.ok<{ zeroing: { requests: number; bytes: number; capturedBytes: number } }>('GET', `/splitter/vpgs/${vpg.id}`)).zeroing;
    // Data, a zero hole and more data: convert writes the data and zeroes the hole (WRITE_ZEROES).
    const file = join(dir.path, 'convert-source.img');
    await writeFile(file, Buffer.concat([randomBytes(5 * MiB), Buffer.alloc(6 * MiB), randomBytes(5 * MiB)]));
    const before = await zeroing();
    await runToolOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', file, uri('nbd/app-01/root')]);
    // nbdcopy filled the volume with random bytes above: the hole's 6 MiB are zeroed, all of them.
    const first = await zeroing();
    expect(first.requests).toBeGreaterThan(before.requests);
    expect(first.capturedBytes - before.capturedBytes).toBe(6 * MiB);
    const checkpoint = await tagCheckpoint('after qemu-img convert');
    const imageFile = join(dir.path, 'checkpoint.img');
    await writeFile(imageFile, await checkpointImage(checkpoint, root()));
    const compared = await runToolOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, imageFile]);
    expect(compared.stdout).toContain('Images are identical');
    // The same again: the hole is zero on the volume already, so the zeroing captures nothing.
    const seq = await lastSeq();
    await runToolOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', file, uri('nbd/app-01/root')]);
    const second = await zeroing();
    expect(second.requests).toBeGreaterThan(first.requests);
    expect(second.capturedBytes).toBe(first.capturedBytes);
    // The data was written again.
    expect(await lastSeq()).toBeGreaterThan(seq);
    const live = await runToolOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, uri('nbd/app-01/root')]);
    expect(live.stdout).toContain('Images are identical');
  });

  itWithTools(['nbdinfo'], 'an unknown export fails clearly and the server keeps serving the others', async () => {
    for (const name of ['nbd/app-01/nope', 'nbd/app-01', '00000000-0000-4000-8000-000000000000', '']) {
      const result = await runTool('nbdinfo', [uri(name)]);
      expect(result.code).not.toBe(0);
      expect(result.stderr).toMatch(/unknown|not (available|found|exist)|no such/i);
    }
    const { stdout } = await runToolOk('nbdinfo', ['--size', uri('nbd/db-01/data')]);
    expect(stdout.trim()).toBe(String(16 * MiB));
  });
});
