import { InProcessBus, type BusConsumer } from '@cdp/bus';
import { BATCH_HEADER_BYTES, RECORD_FLAG_FUA, RECORD_HEADER_BYTES, RecordKind, TOPICS, decodeRecord, splitRecordBatch, type WriteRecord } from '@cdp/contracts';
import { type Vpg } from '@cdp/domain';
import { NBD_EINVAL, NBD_ENOSPC, NBD_ENOTSUP, NBD_STATE_HOLE, NBD_STATE_ZERO, NbdError } from '@cdp/nbd';
import { oneVmVpg, tempDir, type TempDir } from '@cdp/testing';
import { nbdExportCatalog } from './nbd-exports';
import { ProtectedVolumeDevice } from './protected-volume.device';
import { VpgCapture, ZERO_WRITE_BYTES } from './vpg-capture';

const MiB = 1024 * 1024;

const vpg = oneVmVpg('6f1d2c3b-4a59-4e8f-9a7b-1c2d3e4f5a6c', 'device-test', '0a1b2c3d-0000-4000-8000-000000000101', [
  { id: '0a1b2c3d-0000-4000-8000-000000000111', name: 'a', index: 0, sizeBytes: 8 * MiB, blockSize: 512 },
  { id: '0a1b2c3d-0000-4000-8000-000000000112', name: 'b', index: 1, sizeBytes: 4 * MiB, blockSize: 4096 }
]);
const [volumeA, volumeB] = vpg.vms[0]!.volumes;

/** A payload as the NBD server hands it over: with the device's headroom reserved in front of it. */
function payload(length: number, fill = 0): Buffer {
  const headroom = RECORD_HEADER_BYTES + BATCH_HEADER_BYTES;
  return Buffer.alloc(headroom + length, fill).subarray(headroom);
}

describe('ProtectedVolumeDevice', () => {
  let dir: TempDir;
  let bus: InProcessBus;
  let capture: VpgCapture;
  let consumer: BusConsumer;
  const shipped: WriteRecord[] = [];

  beforeEach(async () => {
    shipped.length = 0;
    dir = await tempDir('device-');
    bus = new InProcessBus();
    consumer = bus.createConsumer({ groupId: 'test', topics: [TOPICS.protectedWrites] });
    await consumer.run((batch) => {
      for (const message of batch.messages) {
        for (const record of splitRecordBatch(message.value)) {
          const decoded = decodeRecord(record);
          if (decoded.kind === RecordKind.Write) {
            shipped.push({ ...decoded, data: Buffer.from(decoded.data) });
          }
        }
      }
      return Promise.resolve();
    });
    capture = await VpgCapture.open(vpg, dir.path, bus.createProducer(), { bootId: 'boot' });
  });

  afterEach(async () => {
    await capture.close();
    await consumer.stop();
    await bus.close();
    await dir.cleanup();
  });

  it('takes size and block size from the volume and claims flush, trim, zeroes, fast zeroes and multi-conn', () => {
    const device = new ProtectedVolumeDevice(capture, volumeB!.id);
    expect(device.size).toBe(4 * MiB);
    expect(device.blockSize).toBe(4096);
    expect(device.readOnly).toBe(false);
    expect(device.capabilities).toEqual({ flush: true, trim: true, writeZeroes: true, fastZero: true, multiConn: true });
  });

  it('captures writes and reads them back from the protected volume', async () => {
    const device = new ProtectedVolumeDevice(capture, volumeA!.id);
    await device.write(4096, payload(8192, 0x5a), false);
    await device.write(MiB, payload(512, 0x33), true);
    expect((await device.read(4096, 8192)).equals(Buffer.alloc(8192, 0x5a))).toBe(true);
    // FUA: the record was acknowledged by the bus before the write resolved.
    expect(shipped.map((r) => [r.offset, r.data.length, r.flags & RECORD_FLAG_FUA])).toEqual([
      [4096, 8192, 0],
      [MiB, 512, RECORD_FLAG_FUA],
    ]);
  });

  it('captures zeroing as writes of zeros of at most 1 MiB where the volume is not zero already, durable and shipped with FUA', async () => {
    const device = new ProtectedVolumeDevice(capture, volumeA!.id);
    await device.write(0, payload(4 * MiB, 0xff), false);
    // Not flushed: the scan must see what only the page cache holds.
    await device.write(6 * MiB + 100 * 1024, payload(512, 0x11), false);
    const before = capture.lastSeq;
    await device.writeZeroes(512, 2 * MiB + 1024, true, false);
    expect(capture.lastSeq).toBe(before + 3);
    // FUA: flushed, so the bus has acknowledged every zero write before the request completes.
    expect(shipped.slice(2).map((r) => [r.offset, r.data.length])).toEqual([
      [512, ZERO_WRITE_BYTES],
      [512 + MiB, ZERO_WRITE_BYTES],
      [512 + 2 * MiB, 1024],
    ]);
    expect(shipped.slice(2).every((r) => r.data.every((b) => b === 0))).toBe(true);

    // Zeros already (never written): nothing to capture.
    await device.writeZeroes(4 * MiB, 2 * MiB, false, false);
    expect(capture.lastSeq).toBe(before + 3);
    // One 512-byte write in [5 MiB, 7 MiB): only its 64 KiB window of the volume file is written.
    await device.writeZeroes(5 * MiB, 2 * MiB, false, false);
    expect(capture.lastSeq).toBe(before + 4);
    await device.flush();
    expect(shipped.slice(5).map((r) => [r.offset, r.data.length])).toEqual([[6 * MiB + 64 * 1024, 64 * 1024]]);

    const volume = await device.read(0, 8 * MiB);
    expect(volume.subarray(0, 512).every((b) => b === 0xff)).toBe(true);
    expect(volume.subarray(512, 512 + 2 * MiB + 1024).every((b) => b === 0)).toBe(true);
    expect(volume.subarray(512 + 2 * MiB + 1024, 4 * MiB).every((b) => b === 0xff)).toBe(true);
    expect(volume.subarray(4 * MiB).every((b) => b === 0)).toBe(true);
    expect(capture.status().zeroing).toEqual({ requests: 3, bytes: 2 * MiB + 1024 + 4 * MiB, capturedBytes: 2 * MiB + 1024 + 64 * 1024 });
  });

  it("reports the volume file's holes as zeros in block status, and zeroes fast only over holes", async () => {
    const HZ = NBD_STATE_HOLE | NBD_STATE_ZERO;
    const device = new ProtectedVolumeDevice(capture, volumeA!.id);
    expect(await device.blockStatus(0, 8 * MiB)).toEqual([{ length: 8 * MiB, flags: HZ }]);
    await device.write(MiB, payload(4096, 1), false);
    // Not flushed: the file system counts what only the page cache holds. It allocates whole 4 KiB blocks.
    await device.write(3 * MiB + 512, payload(512, 2), false);
    expect(await device.blockStatus(0, 8 * MiB)).toEqual([
      { length: MiB, flags: HZ },
      { length: 4096, flags: 0 },
      { length: 2 * MiB - 4096, flags: HZ },
      { length: 4096, flags: 0 },
      { length: 5 * MiB - 4096, flags: HZ },
    ]);
    expect(await device.blockStatus(MiB + 512, 1024)).toEqual([{ length: 1024, flags: 0 }]);
    expect(await device.blockStatus(2 * MiB, 512)).toEqual([{ length: 512, flags: HZ }]);

    const before = capture.lastSeq;
    await expect(device.writeZeroes(0, 2 * MiB, false, true)).rejects.toMatchObject({ nbdErrno: NBD_ENOTSUP });
    await expect(device.writeZeroes(3 * MiB, 4096, false, true)).rejects.toMatchObject({ nbdErrno: NBD_ENOTSUP });
    // All holes: done at once, nothing to capture.
    await device.writeZeroes(4 * MiB, 4 * MiB, false, true);
    expect(capture.lastSeq).toBe(before);
    expect(capture.status().zeroing).toMatchObject({ requests: 1, capturedBytes: 0 });
    // Not asked to be fast: captured (one 64 KiB window of zeros), and what it wrote is allocated now.
    await device.writeZeroes(0, 2 * MiB, false, false);
    expect(capture.lastSeq).toBe(before + 1);
    expect(await device.blockStatus(MiB, 64 * 1024)).toEqual([{ length: 64 * 1024, flags: 0 }]);
    expect((await device.read(MiB, 4096)).equals(Buffer.alloc(4096))).toBe(true);
  });

  it('takes a discard without changing or capturing anything', async () => {
    const device = new ProtectedVolumeDevice(capture, volumeB!.id);
    await device.write(0, payload(MiB, 0xee), false);
    const before = capture.lastSeq;
    await device.trim(4096, 64 * 1024);
    expect(capture.lastSeq).toBe(before);
    expect((await device.read(0, MiB)).equals(Buffer.alloc(MiB, 0xee))).toBe(true);
    expect(capture.status().discards).toEqual({ requests: 1, bytes: 64 * 1024 });
  });

  it('refuses zeroing and discards past the end without capturing or counting them', async () => {
    const device = new ProtectedVolumeDevice(capture, volumeB!.id);
    const before = capture.lastSeq;
    await expect(device.writeZeroes(4 * MiB - 4096, 8192, true, false)).rejects.toMatchObject({ nbdErrno: NBD_ENOSPC });
    await expect(device.trim(4 * MiB, 512)).rejects.toMatchObject({ nbdErrno: NBD_ENOSPC });
    await expect(device.writeZeroes(-1, 512, false, false)).rejects.toMatchObject({ nbdErrno: NBD_EINVAL });
    expect(capture.lastSeq).toBe(before);
    expect(capture.status()).toMatchObject({ zeroing: { requests: 0, bytes: 0, capturedBytes: 0 }, discards: { requests: 0, bytes: 0 } });
  });

  it('answers a write past the end with NBD_ENOSPC and captures nothing', async () => {
    const device = new ProtectedVolumeDevice(capture, volumeB!.id);
    const before = capture.lastSeq;
    const failure = device.write(4 * MiB - 4096, payload(8192), false);
    await expect(failure).rejects.toBeInstanceOf(NbdError);
    await expect(failure).rejects.toMatchObject({ nbdErrno: NBD_ENOSPC });
    expect(capture.lastSeq).toBe(before);
  });
});

describe('nbdExportCatalog', () => {
  const captureOf = (v: Vpg): VpgCapture => ({ vpg: v }) as VpgCapture;

  it('names exports <vpg>/<vm>/<volume> and finds them by name or volume UUID', () => {
    const catalog = nbdExportCatalog([captureOf(vpg)]);
    expect(catalog.exports.map((e) => e.name)).toEqual(['device-test/vm/a', 'device-test/vm/b']);
    expect(catalog.exports[1]!.description).toBe('VPG device-test, VM vm, volume b: 4 MiB, 4096-byte blocks');
    expect(catalog.find('device-test/vm/b')?.volumeId).toBe(volumeB!.id);
    expect(catalog.find(volumeA!.id)?.name).toBe('device-test/vm/a');
    expect(catalog.find('device-test/vm')).toBeUndefined();
    expect(catalog.find('')).toBeUndefined();
  });

  it('leaves a name two volumes spell alike to neither, and lists them by UUID', () => {
    const slashed: Vpg = {
      ...vpg,
      id: '6f1d2c3b-4a59-4e8f-9a7b-1c2d3e4f5a6d',
      name: 'device-test/vm',
      vms: [{ id: '0a1b2c3d-0000-4000-8000-000000000201', name: 'a', volumes: [{ ...volumeA!, id: '0a1b2c3d-0000-4000-8000-000000000211', name: 'x' }] }],
    };
    const plain: Vpg = { ...vpg, vms: [{ ...vpg.vms[0]!, name: 'vm/a', volumes: [{ ...volumeA!, name: 'x' }] }] };
    const catalog = nbdExportCatalog([captureOf(slashed), captureOf(plain)]);
    expect(catalog.find('device-test/vm/a/x')).toBeUndefined();
    expect(catalog.exports.map((e) => e.name)).toEqual(['0a1b2c3d-0000-4000-8000-000000000211', volumeA!.id]);
    expect(catalog.find('0a1b2c3d-0000-4000-8000-000000000211')?.vpgId).toBe(slashed.id);
  });
});
