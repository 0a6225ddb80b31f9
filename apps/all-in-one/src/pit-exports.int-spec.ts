import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { type Checkpoint, type Vpg } from '@cdp/domain';
import { type PitExport } from '@cdp/recovery-orchestrator';
import { ReferenceModel, itWithTools, randomBuffer, runTool, runToolOk, seededRandom, waitFor, type ApiClient } from '@cdp/testing';
import { createProtectedVpg, startTestApp, type TestApp } from './all-in-one.test-app';

/**
 * Point-in-time exports over NBD, with real clients: a read-only export of a checkpoint equals the
 * volume at that checkpoint; a writable export takes writes into a scratch overlay that never touches
 * the journal or the replica, while replication goes on, and is gone when the export closes.
 */
const MiB = 1024 * 1024;

describe('point-in-time exports over NBD', () => {
  let testApp: TestApp;
  let api: ApiClient;
  let vpg: Vpg;
  let model: ReferenceModel;
  const random = seededRandom(808);

  const workload = async (count: number): Promise<void> => {
    const volumes = vpg.vms.flatMap((vm) => vm.volumes);
    for (let i = 0; i < count; i++) {
      const volume = volumes[i % volumes.length]!;
      const length = 1 + Math.floor(random() * 64 * 1024);
      const offset = Math.floor(random() * (volume.sizeBytes - length + 1));
      const data = randomBuffer(random, length);
      model.record({ seq: await api.write(vpg.id, volume.id, offset, data), volumeId: volume.id, offset, data });
    }
  };
  const tag = async (name: string): Promise<Checkpoint> =>
    (await api.ok<{ checkpoint: Checkpoint }>('POST', `/vpgs/${vpg.id}/checkpoints?waitMs=30000`, { name })).checkpoint;
  const expected = (checkpoint: Checkpoint, volumeId: string): Buffer => model.imagesAt([checkpoint.cut]).get(checkpoint.cut)!.get(volumeId)!;
  const copyOut = async (url: string, name: string): Promise<Buffer> => {
    const out = join(testApp.dataDir, `${name}.img`);
    await runToolOk('nbdcopy', [url, out]);
    return readFileSync(out);
  };

  beforeAll(async () => {
    testApp = await startTestApp();
    api = testApp.api;
    vpg = await createProtectedVpg(api, {
      name: 'exports',
      vms: [{ name: 'vm', volumes: [{ name: 'root', sizeBytes: 8 * MiB, blockSize: 512 }, { name: 'data', sizeBytes: 4 * MiB, blockSize: 4096 }] }],
    });
    model = new ReferenceModel(new Map(vpg.vms.flatMap((vm) => vm.volumes).map((v) => [v.id, v.sizeBytes])));
  });

  afterAll(async () => {
    await testApp?.close();
  });

  itWithTools(['nbdinfo', 'nbdcopy'], 'serves a read-only checkpoint image that equals the volume at that checkpoint', async () => {
    await workload(120);
    const first = await tag('first');
    await workload(120);
    const second = await tag('second');
    for (const checkpoint of [first, second]) {
      for (const volume of vpg.vms[0]!.volumes) {
        const opened = await api.ok<PitExport>('POST', `/vpgs/${vpg.id}/checkpoints/${checkpoint.id}/exports`, { volumeId: volume.id });
        expect(opened.writable).toBe(false);
        const info = JSON.parse((await runToolOk('nbdinfo', ['--json', opened.url])).stdout) as { exports: { 'export-size': number; is_read_only: boolean }[] };
        expect(info.exports[0]).toMatchObject({ 'export-size': volume.sizeBytes, is_read_only: true });
        expect((await copyOut(opened.url, `ro-${opened.id}`)).equals(expected(checkpoint, volume.id))).toBe(true);
        expect((await api.json('DELETE', `/exports/${opened.id}`)).status).toBe(204);
      }
    }
  });

  itWithTools(['qemu-io', 'nbdcopy', 'nbdinfo'], 'takes test-failover writes into an overlay that never reaches the journal, and forgets them on close', async () => {
    await workload(60);
    const checkpoint = await tag('before failover test');
    const volume = vpg.vms[0]!.volumes[0]!;
    const opened = await api.ok<PitExport>('POST', `/vpgs/${vpg.id}/checkpoints/${checkpoint.id}/exports`, { volumeId: volume.id, writable: true });
    expect(opened.writable).toBe(true);
    await runToolOk('qemu-io', ['-f', 'raw', opened.url, '-c', 'write -P 0x5a 1048576 65536', '-c', 'read -P 0x5a 1048576 65536']);
    // Zeroing over the test's own writes, zeroing and a discard over the checkpoint's bytes: all read as zeros.
    const zeroed = await runToolOk('qemu-io', [
      '-f', 'raw', opened.url,
      '-c', 'write -z 1064960 16384',
      '-c', 'write -z 2097152 65536',
      '-c', 'discard 3145728 65536',
      '-c', 'read -P 0 1064960 16384',
      '-c', 'read -P 0 2097152 65536',
      '-c', 'read -P 0 3145728 65536',
    ]);
    expect(zeroed.stdout).not.toMatch(/verification failed|error|failed/i);

    // Replication goes on meanwhile, and a new checkpoint recovers exactly, with none of the test's writes.
    await workload(60);
    const later = await tag('during failover test');
    const laterImage = await api.bytes(`/vpgs/${vpg.id}/checkpoints/${later.id}/volumes/${volume.id}/image`);
    expect(laterImage.data.equals(expected(later, volume.id))).toBe(true);

    // The export shows the checkpoint with the test's writes on top.
    const want = Buffer.from(expected(checkpoint, volume.id));
    want.fill(0x5a, MiB, MiB + 65536);
    want.fill(0, MiB + 16384, MiB + 32768);
    want.fill(0, 2 * MiB, 2 * MiB + 65536);
    want.fill(0, 3 * MiB, 3 * MiB + 65536);
    expect((await copyOut(opened.url, `rw-${opened.id}`)).equals(want)).toBe(true);
    expect((await api.ok<PitExport>('GET', `/exports/${opened.id}`)).overlayBytes).toBe(3 * 65536);
    // The checkpoint itself is untouched.
    const original = await api.bytes(`/vpgs/${vpg.id}/checkpoints/${checkpoint.id}/volumes/${volume.id}/image`);
    expect(original.data.equals(expected(checkpoint, volume.id))).toBe(true);

    const overlay = join(testApp.dataDir, 'recovery', 'overlays', `${opened.id}.img`);
    expect(existsSync(overlay)).toBe(true);
    // The zeroing and the discard over blocks the overlay never took left its file's holes as they were.
    expect(statSync(overlay).blocks * 512).toBeLessThanOrEqual(65536);
    expect((await api.json('DELETE', `/exports/${opened.id}`)).status).toBe(204);
    expect(existsSync(overlay)).toBe(false);
    const gone = await runTool('nbdinfo', [opened.url]);
    expect(gone.code).not.toBe(0);
  });

  itWithTools(['nbdcopy'], 'opens an export at a time between two workloads: everything acknowledged before it, nothing after', async () => {
    const volume = vpg.vms[0]!.volumes[0]!;
    await workload(80);
    const lastBefore = model.all()[model.count - 1]!.seq;
    // Capture happens before acknowledgement, on this machine's clock: wait for the clock to pass the
    // last acknowledgement, take T, and let it pass T before the next workload starts.
    const acknowledged = Date.now();
    await waitFor(() => Date.now() > acknowledged + 2, { timeoutMs: 1000, message: 'the clock did not move' });
    const at = new Date(Date.now() - 1);
    await waitFor(() => Date.now() > at.getTime() + 2, { timeoutMs: 1000, message: 'the clock did not move' });
    await workload(40);
    const firstAfter = model.all().find((w) => w.seq > lastBefore)!.seq;

    const opened = await api.ok<PitExport>('POST', `/vpgs/${vpg.id}/exports`, { volumeId: volume.id, at: at.toISOString() });
    expect(opened).toMatchObject({ checkpointId: null, at: at.toISOString(), writable: false });
    // Markers of automatic checkpoints may sit between the workloads; no write does.
    expect(opened.cut).toBeGreaterThanOrEqual(lastBefore);
    expect(opened.cut).toBeLessThan(firstAfter);
    expect(Date.parse(opened.capturedAt!)).toBeLessThanOrEqual(at.getTime());
    const want = model.imagesAt([lastBefore + 1]).get(lastBefore + 1)!.get(volume.id)!;
    expect((await copyOut(opened.url, `at-${opened.id}`)).equals(want)).toBe(true);
    expect((await api.json('DELETE', `/exports/${opened.id}`)).status).toBe(204);

    const early = await api.json<{ message: string }>('POST', `/vpgs/${vpg.id}/exports`, { volumeId: volume.id, at: '2000-01-01T00:00:00Z' });
    expect(early.status).toBeGreaterThanOrEqual(400);
    expect(early.body.message).toMatch(/before the journal's history/);
    const late = await api.json<{ message: string }>('POST', `/vpgs/${vpg.id}/exports`, { volumeId: volume.id, at: new Date(Date.now() + 3_600_000).toISOString() });
    expect(late.status).toBeGreaterThanOrEqual(400);
    expect(late.body.message).toMatch(/after the latest journaled write/);
    for (const body of [{ volumeId: volume.id, at: 'yesterday' }, { volumeId: volume.id }, { volumeId: volume.id, at: '2026-01-01T00:00:00' }]) {
      expect((await api.json('POST', `/vpgs/${vpg.id}/exports`, body)).status).toBe(400);
    }
    expect((await api.ok<{ exports: PitExport[] }>('GET', '/exports')).exports).toEqual([]);
  });

  itWithTools(['nbdinfo', 'nbdcopy', 'qemu-io'], "maps an export's allocation: holes where no write reached, which a copy skips", async () => {
    // A volume of three 64 MiB index regions with three writes, one across a region boundary.
    const sparse = await createProtectedVpg(api, { name: 'sparse exports', vms: [{ name: 'vm', volumes: [{ name: 'disk', sizeBytes: 192 * MiB, blockSize: 512 }] }] });
    const volume = sparse.vms[0]!.volumes[0]!;
    const image = Buffer.alloc(volume.sizeBytes);
    for (const [offset, length] of [[0, 65536], [70 * MiB + 512, 1024], [128 * MiB - 4096, 8192]] as const) {
      const data = randomBuffer(random, length);
      await api.write(sparse.id, volume.id, offset, data);
      data.copy(image, offset);
    }
    const checkpoint = (await api.ok<{ checkpoint: Checkpoint }>('POST', `/vpgs/${sparse.id}/checkpoints?waitMs=30000`, { name: 'sparse' })).checkpoint;
    const HOLE = 3;
    const map = async (url: string): Promise<[number, number, number][]> => {
      const extents = JSON.parse((await runToolOk('nbdinfo', ['--map', '--json', url])).stdout) as { offset: number; length: number; type: number }[];
      return extents.map(({ offset, length, type }) => [offset, length, type]);
    };

    const readOnly = await api.ok<PitExport>('POST', `/vpgs/${sparse.id}/checkpoints/${checkpoint.id}/exports`, { volumeId: volume.id });
    expect(await map(readOnly.url)).toEqual([
      [0, 65536, 0],
      [65536, 70 * MiB + 512 - 65536, HOLE],
      [70 * MiB + 512, 1024, 0],
      [70 * MiB + 1536, 58 * MiB - 5632, HOLE],
      [128 * MiB - 4096, 8192, 0],
      [128 * MiB + 4096, 64 * MiB - 4096, HOLE],
    ]);
    const out = join(testApp.dataDir, `sparse-${readOnly.id}.img`);
    await runToolOk('nbdcopy', [readOnly.url, out]);
    expect(readFileSync(out).equals(image)).toBe(true);
    // The copy skipped the holes rather than write 192 MiB of zeros.
    expect(statSync(out).blocks * 512).toBeLessThan(MiB);
    expect((await api.json('DELETE', `/exports/${readOnly.id}`)).status).toBe(204);

    // A writable export: the overlay's writes are data, zeroing over blocks it never took a hole.
    const writable = await api.ok<PitExport>('POST', `/vpgs/${sparse.id}/checkpoints/${checkpoint.id}/exports`, { volumeId: volume.id, writable: true });
    await runToolOk('qemu-io', ['-f', 'raw', writable.url, '-c', `write -P 0x77 ${100 * MiB} 4096`, '-c', 'write -z 0 32768']);
    expect(await map(writable.url)).toEqual([
      [0, 32768, HOLE],
      [32768, 32768, 0],
      [65536, 70 * MiB + 512 - 65536, HOLE],
      [70 * MiB + 512, 1024, 0],
      [70 * MiB + 1536, 30 * MiB - 1536, HOLE],
      [100 * MiB, 4096, 0],
      [100 * MiB + 4096, 28 * MiB - 8192, HOLE],
      [128 * MiB - 4096, 8192, 0],
      [128 * MiB + 4096, 64 * MiB - 4096, HOLE],
    ]);
    image.fill(0, 0, 32768);
    image.fill(0x77, 100 * MiB, 100 * MiB + 4096);
    const copied = join(testApp.dataDir, `sparse-${writable.id}.img`);
    await runToolOk('nbdcopy', [writable.url, copied]);
    expect(readFileSync(copied).equals(image)).toBe(true);
    expect((await api.json('DELETE', `/exports/${writable.id}`)).status).toBe(204);
  });

  it('rejects bad export requests and changes nothing', async () => {
    const checkpoint = (await api.ok<Checkpoint[]>('GET', `/vpgs/${vpg.id}/checkpoints?limit=1`))[0]!;
    const volumeId = vpg.vms[0]!.volumes[0]!.id;
    const cases: [string, unknown, number][] = [
      [`/vpgs/${vpg.id}/checkpoints/${checkpoint.id}/exports`, { volumeId: '00000000-0000-4000-8000-000000000000' }, 404],
      [`/vpgs/${vpg.id}/checkpoints/${checkpoint.id}/exports`, { volumeId, writable: 'yes' }, 400],
      [`/vpgs/${vpg.id}/checkpoints/${checkpoint.id}/exports`, { volumeId, extra: 1 }, 400],
      [`/vpgs/${vpg.id}/checkpoints/00000000-0000-4000-8000-000000000000/exports`, { volumeId }, 404],
      [`/vpgs/${vpg.id}/checkpoints/not-a-uuid/exports`, { volumeId }, 400],
    ];
    for (const [path, body, status] of cases) {
      expect({ path, status: (await api.json('POST', path, body)).status }).toEqual({ path, status });
    }
    expect((await api.json('DELETE', '/exports/00000000-0000-4000-8000-000000000000')).status).toBe(404);
    expect((await api.ok<{ exports: PitExport[] }>('GET', '/exports')).exports).toEqual([]);
  });
});
