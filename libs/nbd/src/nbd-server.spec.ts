import { waitFor } from '@cdp/testing';
import { type BlockDevice, type BlockExtent, type ExportEntry, NbdError } from './block-device';
import { MemoryBlockDevice } from './memory-block-device';
import { type NbdLogger } from './nbd-connection';
import { NbdServer, type NbdServerOptions } from './nbd-server';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EOVERFLOW,
  NBD_ENOTSUP,
  NBD_EPERM,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_STATE_HOLE,
  NBD_STATE_ZERO,
} from './protocol';
import { NbdTestClient, type ReplyChunk, infoRequest, metaRequest, request } from './testing/nbd-test-client';

const MiB = 1024 * 1024;

interface Harness {
  server: NbdServer;
  port: number;
  logged: string[];
  closedExports: string[];
}

function recordingLogger(into: string[]): NbdLogger {
  return {
    log: () => undefined,
    warn: (m) => into.push(`warn: ${m}`),
    error: (m) => into.push(`error: ${m}`),
  };
}

async function start(exports: Record<string, () => BlockDevice>, options: Partial<NbdServerOptions> = {}): Promise<Harness> {
  const logged: string[] = [];
  const closedExports: string[] = [];
  const server = new NbdServer({
    resolve: (name): ExportEntry | undefined => {
      const make = exports[name];
      return make === undefined
        ? undefined
        : { device: make(), description: `the ${name} disk`, onClose: () => closedExports.push(name) };
    },
    list: () => Object.keys(exports).map((name) => ({ name, description: `the ${name} disk` })),
    logger: recordingLogger(logged),
    ...options,
  });
  const { port } = await server.listen(0);
  return { server, port, logged, closedExports };
}

/** A memory device whose operations can be held back and released by the test. */
class GatedDevice extends MemoryBlockDevice {
  readonly pending: (() => void)[] = [];
  gated = true;
  writes = 0;
  override async write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    this.writes++;
    if (this.gated) {
      await new Promise<void>((resolve) => this.pending.push(resolve));
    }
    return super.write(offset, data, fua);
  }
  release(): void {
    this.gated = false;
    for (const resolve of this.pending.splice(0)) {
      resolve();
    }
  }
}

describe('NbdServer handshake', () => {
  let h: Harness;
  const shared = new MemoryBlockDevice({ size: MiB });
  beforeAll(async () => {
    h = await start({
      disk: () => shared,
      ro: () => new MemoryBlockDevice({ size: MiB, readOnly: true, blockSize: 4096 }),
      durable: () => new MemoryBlockDevice({ size: MiB, capabilities: { flush: true } }),
    });
  });
  afterAll(() => h.server.close());

  it('greets with NBDMAGIC, IHAVEOPT and the fixed-newstyle and no-zeroes flags', async () => {
    const client = await NbdTestClient.connect(h.port);
    const greeting = await client.read(18);
    expect(greeting.subarray(0, 8).toString('latin1')).toBe('NBDMAGIC');
    expect(greeting.subarray(8, 16).toString('latin1')).toBe('IHAVEOPT');
    expect(greeting.readUInt16BE(16)).toBe(0b11);
    client.destroy();
  });

  it('answers NBD_OPT_GO with the export size, honest flags and block sizes', async () => {
    const client = await NbdTestClient.open(h.port);
    const go = await client.negotiate(NBD_OPT_GO, 'disk', [NBD_INFO_BLOCK_SIZE]);
    expect(go?.size).toBe(BigInt(MiB));
    expect(go?.flags).toBe(NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_CAN_MULTI_CONN);
    expect(go?.blockSize).toEqual({ min: 512, preferred: 512, max: 32 * MiB });
    const reply = await client.call(NBD_CMD_READ, 0, 512, {}, 512);
    expect(reply.error).toBe(0);
    client.destroy();
  });

  it('advertises read-only, flush and FUA only when the device has them', async () => {
    const client = await NbdTestClient.open(h.port);
    const ro = await client.negotiate(NBD_OPT_INFO, 'ro', []);
    expect(ro?.flags).toBe(NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_CAN_MULTI_CONN);
    expect(ro?.blockSize).toEqual({ min: 4096, preferred: 4096, max: 32 * MiB });
    const durable = await client.negotiate(NBD_OPT_INFO, 'durable', []);
    expect(durable?.flags).toBe(NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA);
    client.destroy();
  });

  it('sends the name and description only when asked, and releases an INFO export at once', async () => {
    const client = await NbdTestClient.open(h.port);
    const before = h.closedExports.length;
    const plain = await client.negotiate(NBD_OPT_INFO, 'disk', []);
    expect(plain?.replies.map((r) => (r.type === NBD_REP_INFO ? r.data.readUInt16BE(0) : -1))).toEqual([
      NBD_INFO_EXPORT,
      NBD_INFO_BLOCK_SIZE,
      -1,
    ]);
    const asked = await client.negotiate(NBD_OPT_INFO, 'disk', [NBD_INFO_DESCRIPTION, 0x7777, NBD_INFO_NAME]);
    const strings = asked?.replies
      .filter((r) => r.type === NBD_REP_INFO && r.data.readUInt16BE(0) >= NBD_INFO_NAME && r.data.readUInt16BE(0) <= NBD_INFO_DESCRIPTION)
      .map((r) => [r.data.readUInt16BE(0), r.data.subarray(2).toString('utf8')]);
    expect(strings).toEqual(
      expect.arrayContaining([
        [NBD_INFO_NAME, 'disk'],
        [NBD_INFO_DESCRIPTION, 'the disk disk'],
      ]),
    );
    expect(h.closedExports.length).toBe(before + 2);
    client.destroy();
  });

  it('refuses unknown exports with NBD_REP_ERR_UNKNOWN and carries on', async () => {
    const client = await NbdTestClient.open(h.port);
    client.sendOption(NBD_OPT_GO, infoRequest('nope', []));
    const [reply] = await client.readOptionReplies();
    expect(reply?.type).toBe(NBD_REP_ERR_UNKNOWN);
    expect(await client.negotiate(NBD_OPT_GO, 'disk', [])).toBeDefined();
    client.destroy();
  });

  it('answers options it does not implement with NBD_REP_ERR_UNSUP', async () => {
    const client = await NbdTestClient.open(h.port);
    for (const option of [NBD_OPT_STARTTLS, 11, 0x1234_5678]) {
      client.sendOption(option, Buffer.from('ignored'));
      const reply = await client.readOptionReply();
      expect(reply).toMatchObject({ option, type: NBD_REP_ERR_UNSUP });
    }
    expect(await client.negotiate(NBD_OPT_GO, 'disk', [])).toBeDefined();
    client.destroy();
  });

  it('rejects malformed NBD_OPT_GO data with NBD_REP_ERR_INVALID', async () => {
    const client = await NbdTestClient.open(h.port);
    const overrun = infoRequest('disk', []);
    overrun.writeUInt32BE(1000, 0);
    const trailing = Buffer.concat([infoRequest('disk', []), Buffer.from([0])]);
    const badUtf8 = infoRequest('disk', []);
    badUtf8[4] = 0xff;
    for (const data of [Buffer.alloc(3), overrun, trailing, badUtf8]) {
      client.sendOption(NBD_OPT_GO, data);
      expect((await client.readOptionReply()).type).toBe(NBD_REP_ERR_INVALID);
    }
    client.destroy();
  });

  it('lists exports, and refuses NBD_OPT_LIST with data', async () => {
    const client = await NbdTestClient.open(h.port);
    client.sendOption(NBD_OPT_LIST);
    const replies = await client.readOptionReplies();
    expect(replies.at(-1)?.type).toBe(NBD_REP_ACK);
    const servers = replies
      .filter((r) => r.type === NBD_REP_SERVER)
      .map((r) => {
        const n = r.data.readUInt32BE(0);
        return [r.data.subarray(4, 4 + n).toString(), r.data.subarray(4 + n).toString()];
      });
    expect(servers).toEqual([
      ['disk', 'the disk disk'],
      ['ro', 'the ro disk'],
      ['durable', 'the durable disk'],
    ]);
    client.sendOption(NBD_OPT_LIST, Buffer.from('x'));
    expect((await client.readOptionReply()).type).toBe(NBD_REP_ERR_INVALID);
    client.destroy();
  });

  it('acknowledges NBD_OPT_ABORT and closes', async () => {
    const client = await NbdTestClient.open(h.port);
    client.sendOption(NBD_OPT_ABORT);
    expect((await client.readOptionReply()).type).toBe(NBD_REP_ACK);
    expect(await client.closesWithin(2000)).toBe(true);
  });

  it('ends NBD_OPT_EXPORT_NAME with 124 zero bytes unless NO_ZEROES was agreed', async () => {
    const withZeroes = await NbdTestClient.open(h.port, NBD_FLAG_C_FIXED_NEWSTYLE);
    withZeroes.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
    const reply = await withZeroes.read(134);
    expect(reply.readBigUInt64BE(0)).toBe(BigInt(MiB));
    expect(reply.subarray(10).equals(Buffer.alloc(124))).toBe(true);
    expect((await withZeroes.call(NBD_CMD_READ, 0, 512, {}, 512)).error).toBe(0);
    withZeroes.destroy();

    const noZeroes = await NbdTestClient.open(h.port);
    noZeroes.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
    expect((await noZeroes.read(10)).readUInt16BE(8) & NBD_FLAG_HAS_FLAGS).toBe(NBD_FLAG_HAS_FLAGS);
    const read = await noZeroes.call(NBD_CMD_READ, 0, 512, { cookie: 77n }, 512);
    expect(read).toMatchObject({ error: 0, cookie: 77n });
    noZeroes.destroy();
  });

  it('disconnects on an unknown NBD_OPT_EXPORT_NAME, unknown client flags, bad magic and overlong options', async () => {
    const unknown = await NbdTestClient.open(h.port);
    unknown.sendOption(NBD_OPT_EXPORT_NAME, Buffer.from('nope'));
    expect(await unknown.closesWithin(2000)).toBe(true);

    const flags = await NbdTestClient.open(h.port, 0x8000_0001);
    expect(await flags.closesWithin(2000)).toBe(true);

    const magic = await NbdTestClient.open(h.port);
    magic.send(Buffer.alloc(16, 0x41));
    expect(await magic.closesWithin(2000)).toBe(true);

    const overlong = await NbdTestClient.open(h.port);
    const header = Buffer.alloc(16);
    header.write('IHAVEOPT', 0, 'latin1');
    header.writeUInt32BE(NBD_OPT_GO, 8);
    header.writeUInt32BE(0xffff_ffff, 12);
    overlong.send(header);
    expect(await overlong.closesWithin(2000)).toBe(true);
    await waitFor(() => h.server.stats.open === 0, { timeoutMs: 2000, message: 'connections closed' });
  });
});

describe('NbdServer transmission', () => {
  let h: Harness;
  let disk: MemoryBlockDevice;
  let failing: MemoryBlockDevice;
  let flushes = 0;
  const fuaWrites: boolean[] = [];
  const failure: { error: Error } = { error: new Error('disk on fire') };

  beforeAll(async () => {
    disk = new MemoryBlockDevice({ size: MiB });
    failing = new MemoryBlockDevice({ size: MiB });
    failing.read = () => Promise.reject(failure.error);
    const durable = new MemoryBlockDevice({ size: MiB, capabilities: { flush: true, trim: true, writeZeroes: true } });
    durable.flush = () => {
      flushes++;
      return Promise.resolve();
    };
    const write = durable.write.bind(durable);
    durable.write = (offset, data, fua) => {
      fuaWrites.push(fua);
      return write(offset, data, fua);
    };
    h = await start(
      {
        disk: () => disk,
        failing: () => failing,
        durable: () => durable,
        ro: () => new MemoryBlockDevice({ size: MiB, readOnly: true }),
        odd: () => new MemoryBlockDevice({ size: 4096 + 1000, blockSize: 4096 }),
      },
      { maxRequestBytes: 64 * 1024 },
    );
  });
  afterAll(() => h.server.close());

  it('writes and reads back, and keeps cookies opaque', async () => {
    const client = await NbdTestClient.go(h.port, 'disk');
    const data = Buffer.alloc(4096, 0xab);
    const cookie = 0xdead_beef_cafe_f00dn;
    expect(await client.call(NBD_CMD_WRITE, 8192, 4096, { data, cookie })).toMatchObject({ error: 0, cookie });
    const read = await client.call(NBD_CMD_READ, 8192, 4096, { cookie: 2n }, 4096);
    expect(read.data?.equals(data)).toBe(true);
    expect(disk.bytes.subarray(8192, 8192 + 4096).equals(data)).toBe(true);
    client.destroy();
  });

  it('answers every bad request with the spec error and keeps the connection usable', async () => {
    const client = await NbdTestClient.go(h.port, 'disk');
    const cases: [string, Buffer, number][] = [
      ['read past the end', request(NBD_CMD_READ, MiB - 512, 1024), NBD_EINVAL],
      ['read at a huge offset', request(NBD_CMD_READ, 0xffff_ffff_ffff_fe00n, 512), NBD_EINVAL],
      ['write past the end', request(NBD_CMD_WRITE, MiB, 512, { data: Buffer.alloc(512) }), NBD_ENOSPC],
      ['zero-length read', request(NBD_CMD_READ, 0, 0), NBD_EINVAL],
      ['zero-length write', request(NBD_CMD_WRITE, 0, 0), NBD_EINVAL],
      ['zero-length trim', request(NBD_CMD_TRIM, 0, 0), NBD_EINVAL],
      ['unaligned read', request(NBD_CMD_READ, 100, 512), NBD_EINVAL],
      ['unaligned write', request(NBD_CMD_WRITE, 0, 100, { data: Buffer.alloc(100) }), NBD_EINVAL],
      ['oversize read', request(NBD_CMD_READ, 0, 128 * 1024), NBD_EOVERFLOW],
      ['oversize write', request(NBD_CMD_WRITE, 0, 128 * 1024, { data: Buffer.alloc(128 * 1024, 1) }), NBD_EOVERFLOW],
      ['NBD_CMD_CACHE, not advertised', request(NBD_CMD_CACHE, 0, 512), NBD_EINVAL],
      ['unknown command', request(99, 0, 512), NBD_EINVAL],
      ['FUA not negotiated', request(NBD_CMD_READ, 0, 512, { flags: NBD_CMD_FLAG_FUA }), NBD_EINVAL],
      ['DF not negotiated', request(NBD_CMD_READ, 0, 512, { flags: NBD_CMD_FLAG_DF }), NBD_EINVAL],
      ['NO_HOLE on a write', request(NBD_CMD_WRITE, 0, 512, { flags: NBD_CMD_FLAG_NO_HOLE, data: Buffer.alloc(512) }), NBD_EINVAL],
      ['flush with an offset', request(NBD_CMD_FLUSH, 512, 0), NBD_EINVAL],
    ];
    for (const [what, bytes, errno] of cases) {
      client.send(bytes);
      const reply = await client.readReply();
      expect([what, reply.error]).toEqual([what, errno]);
    }
    // The oversize write's payload was skipped, not written and not taken for requests.
    expect(disk.bytes.subarray(0, 512).equals(Buffer.alloc(512))).toBe(true);
    expect((await client.call(NBD_CMD_READ, 0, 512, {}, 512)).error).toBe(0);
    expect((await client.call(NBD_CMD_FLUSH, 0, 0)).error).toBe(0);
    client.destroy();
  });

  it('refuses writes, trims and zeroing on a read-only export with NBD_EPERM', async () => {
    const client = await NbdTestClient.go(h.port, 'ro');
    expect((await client.call(NBD_CMD_WRITE, 0, 512, { data: Buffer.alloc(512, 1) })).error).toBe(NBD_EPERM);
    expect((await client.call(NBD_CMD_TRIM, 0, 512)).error).toBe(NBD_EPERM);
    expect((await client.call(NBD_CMD_WRITE_ZEROES, 0, 512)).error).toBe(NBD_EPERM);
    expect((await client.call(NBD_CMD_READ, 0, 512, {}, 512)).error).toBe(0);
    client.destroy();
  });

  it('serves the partial last block of an export whose size is not a whole number of blocks', async () => {
    const client = await NbdTestClient.go(h.port, 'odd');
    expect((await client.call(NBD_CMD_READ, 4096, 1000, {}, 1000)).error).toBe(0);
    expect((await client.call(NBD_CMD_READ, 4096, 512)).error).toBe(NBD_EINVAL);
    client.destroy();
  });

  it('passes FUA to the device, flushes after a FUA trim, and accepts NO_HOLE on write zeroes', async () => {
    const client = await NbdTestClient.go(h.port, 'durable');
    await client.call(NBD_CMD_WRITE, 0, 512, { data: Buffer.alloc(512, 7), flags: NBD_CMD_FLAG_FUA });
    await client.call(NBD_CMD_WRITE, 512, 512, { data: Buffer.alloc(512, 7) });
    expect(fuaWrites).toEqual([true, false]);
    const before = flushes;
    expect((await client.call(NBD_CMD_TRIM, 0, 512, { flags: NBD_CMD_FLAG_FUA })).error).toBe(0);
    expect((await client.call(NBD_CMD_FLUSH, 0, 0)).error).toBe(0);
    expect(flushes).toBe(before + 2);
    const zero = await client.call(NBD_CMD_WRITE_ZEROES, 512, 512, { flags: NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FUA });
    expect(zero.error).toBe(0);
    expect((await client.call(NBD_CMD_READ, 512, 512, {}, 512)).data?.equals(Buffer.alloc(512))).toBe(true);
    client.destroy();
  });

  it('maps device failures: NBD_EIO (logged), a carried nbd errno, host ENOSPC', async () => {
    const client = await NbdTestClient.go(h.port, 'failing');
    failure.error = new Error('disk on fire');
    expect((await client.call(NBD_CMD_READ, 0, 512)).error).toBe(NBD_EIO);
    expect(h.logged.some((line) => line.includes('disk on fire'))).toBe(true);
    failure.error = new NbdError(NBD_EPERM, 'no');
    expect((await client.call(NBD_CMD_READ, 0, 512)).error).toBe(NBD_EPERM);
    failure.error = Object.assign(new Error('full'), { code: 'ENOSPC' });
    expect((await client.call(NBD_CMD_READ, 0, 512)).error).toBe(NBD_ENOSPC);
    failing.read = () => Promise.resolve(Buffer.alloc(100));
    expect((await client.call(NBD_CMD_READ, 0, 512)).error).toBe(NBD_EIO);
    failing.read = () => {
      throw new Error('thrown, not rejected');
    };
    expect((await client.call(NBD_CMD_READ, 0, 512)).error).toBe(NBD_EIO);
    client.destroy();
  });

  it('pipelines: many requests in one write, replies out of order, each whole', async () => {
    const slow = new MemoryBlockDevice({ size: MiB });
    const read = slow.read.bind(slow);
    // Later requests finish first.
    slow.read = async (offset, length) => {
      await new Promise((resolve) => setTimeout(resolve, 40 - offset / 4096));
      return read(offset, length);
    };
    for (let i = 0; i < 32; i++) {
      slow.bytes.fill(i, i * 4096, (i + 1) * 4096);
    }
    const p = await start({ slow: () => slow });
    const client = await NbdTestClient.go(p.port, 'slow');
    client.send(Buffer.concat(Array.from({ length: 32 }, (_, i) => request(NBD_CMD_READ, i * 4096, 4096, { cookie: BigInt(i) }))));
    const order: number[] = [];
    for (let n = 0; n < 32; n++) {
      const reply = await client.readReply(4096);
      const i = Number(reply.cookie);
      order.push(i);
      expect(reply.data?.equals(Buffer.alloc(4096, i))).toBe(true);
    }
    expect(order).not.toEqual([...order].sort((a, b) => a - b));
    client.destroy();
    await p.server.close();
  });

  it('stops reading a flood of writes beyond the in-flight budget, then catches up', async () => {
    const gated = new GatedDevice({ size: 4 * MiB });
    const p = await start({ gated: () => gated }, { maxInFlightBytes: 64 * 1024 });
    const client = await NbdTestClient.go(p.port, 'gated');
    const data = Buffer.alloc(4096, 9);
    client.send(Buffer.concat(Array.from({ length: 256 }, (_, i) => request(NBD_CMD_WRITE, i * 4096, 4096, { data, cookie: BigInt(i) }))));
    await waitFor(() => gated.writes >= 16, { timeoutMs: 2000, message: 'writes reached the device' });
    await new Promise((resolve) => setTimeout(resolve, 50));
    // 64 KiB of 4 KiB writes, plus the one that crossed the line.
    expect(gated.writes).toBeLessThanOrEqual(17);
    gated.release();
    const cookies = new Set<bigint>();
    for (let n = 0; n < 256; n++) {
      const reply = await client.readReply();
      expect(reply.error).toBe(0);
      cookies.add(reply.cookie);
    }
    expect(cookies.size).toBe(256);
    expect(gated.bytes.subarray(0, 256 * 4096).equals(Buffer.alloc(256 * 4096, 9))).toBe(true);
    client.destroy();
    await p.server.close();
  });

  it('on NBD_CMD_DISC answers what is in flight, then closes and releases the export', async () => {
    const gated = new GatedDevice({ size: MiB });
    const p = await start({ gated: () => gated });
    const client = await NbdTestClient.go(p.port, 'gated');
    client.send(request(NBD_CMD_WRITE, 0, 512, { data: Buffer.alloc(512, 3), cookie: 5n }));
    client.send(request(NBD_CMD_DISC, 0, 0));
    await waitFor(() => gated.writes === 1, { timeoutMs: 2000, message: 'write reached the device' });
    expect(p.closedExports).toEqual([]);
    gated.release();
    expect(await client.readReply()).toMatchObject({ error: 0, cookie: 5n });
    expect(await client.closesWithin(2000)).toBe(true);
    await waitFor(() => p.closedExports.length === 1, { timeoutMs: 2000, message: 'export released' });
    await p.server.close();
  });

  it('survives clients vanishing mid-header and mid-payload while another connection works', async () => {
    const steady = await NbdTestClient.go(h.port, 'disk');
    const before = h.closedExports.length;
    const midHeader = await NbdTestClient.go(h.port, 'disk');
    midHeader.send(request(NBD_CMD_WRITE, 0, 4096).subarray(0, 13));
    const midPayload = await NbdTestClient.go(h.port, 'disk');
    midPayload.send(request(NBD_CMD_WRITE, 0, 4096, { data: Buffer.alloc(4096, 1) }).subarray(0, 28 + 1000));
    const badMagic = await NbdTestClient.go(h.port, 'disk');
    badMagic.send(request(NBD_CMD_READ, 0, 512, { magic: 0x12345678 }));
    expect(await badMagic.closesWithin(2000)).toBe(true);
    const halfClosed = await NbdTestClient.go(h.port, 'disk');
    halfClosed.send(request(NBD_CMD_WRITE, 0, 4096).subarray(0, 20));
    halfClosed.socket.end();
    expect(await halfClosed.closesWithin(2000)).toBe(true);
    midHeader.destroy();
    midPayload.destroy();
    await waitFor(() => h.closedExports.length === before + 4, { timeoutMs: 2000, message: 'exports released' });
    expect(disk.bytes.subarray(0, 4096).includes(1)).toBe(false);
    expect((await steady.call(NBD_CMD_READ, 0, 512, {}, 512)).error).toBe(0);
    steady.destroy();
  });
});

describe('NbdServer structured replies and block status', () => {
  let h: Harness;
  let disk: MemoryBlockDevice;
  const extents: { answer: readonly BlockExtent[]; asked: [number, number][] } = { answer: [], asked: [] };
  const zeroings: boolean[] = [];

  beforeAll(async () => {
    disk = new MemoryBlockDevice({ size: MiB });
    // A device that says what the test tells it to, and records what it was asked.
    const mapped = new MemoryBlockDevice({ size: MiB, blockSize: 4096 });
    mapped.blockStatus = (offset, length) => {
      extents.asked.push([offset, length]);
      return Promise.resolve(extents.answer);
    };
    const plain = new MemoryBlockDevice({ size: MiB });
    Object.defineProperty(plain, 'blockStatus', { value: undefined });
    const fast = new MemoryBlockDevice({ size: MiB, capabilities: { writeZeroes: true, fastZero: true } });
    fast.writeZeroes = (offset, length, _fua, isFast) => {
      zeroings.push(isFast);
      if (isFast && offset > 0) {
        return Promise.reject(new NbdError(NBD_ENOTSUP, 'zeroing there would cost as much as writing'));
      }
      disk.bytes.fill(0, offset, offset + length);
      return Promise.resolve();
    };
    h = await start({ disk: () => disk, mapped: () => mapped, plain: () => plain, fast: () => fast }, { maxRequestBytes: 64 * 1024 });
  });
  afterAll(() => h.server.close());

  /** Negotiates structured replies and, unless told otherwise, base:allocation; enters transmission. */
  async function structured(name: string, selectFor: string | null = name): Promise<{ client: NbdTestClient; flags: number; contextId: number }> {
    const client = await NbdTestClient.open(h.port);
    client.sendOption(NBD_OPT_STRUCTURED_REPLY);
    expect((await client.readOptionReply()).type).toBe(NBD_REP_ACK);
    let contextId = 0;
    if (selectFor !== null) {
      client.sendOption(NBD_OPT_SET_META_CONTEXT, metaRequest(selectFor, ['base:allocation']));
      const replies = await client.readOptionReplies();
      expect(replies.map((r) => r.type)).toEqual([NBD_REP_META_CONTEXT, NBD_REP_ACK]);
      contextId = (replies[0] as { data: Buffer }).data.readUInt32BE(0);
      expect((replies[0] as { data: Buffer }).data.subarray(4).toString()).toBe('base:allocation');
    }
    const go = await client.negotiate(NBD_OPT_GO, name, []);
    if (!go) {
      throw new Error(`GO ${name} refused`);
    }
    return { client, flags: go.flags, contextId };
  }

  function descriptors(chunk: ReplyChunk): { id: number; extents: [number, number][] } {
    const out: [number, number][] = [];
    for (let at = 4; at < chunk.payload.length; at += 8) {
      out.push([chunk.payload.readUInt32BE(at), chunk.payload.readUInt32BE(at + 4)]);
    }
    return { id: chunk.payload.readUInt32BE(0), extents: out };
  }

  function errorOf(chunk: ReplyChunk): { errno: number; message: string } {
    expect(chunk).toMatchObject({ simple: false, type: NBD_REPLY_TYPE_ERROR, flags: NBD_REPLY_FLAG_DONE });
    const length = chunk.payload.readUInt16BE(4);
    expect(chunk.payload.length).toBe(6 + length);
    return { errno: chunk.payload.readUInt32BE(0), message: chunk.payload.subarray(6).toString('utf8') };
  }

  it('negotiates structured replies, then lists and selects base:allocation; refuses what is malformed or early', async () => {
    const client = await NbdTestClient.open(h.port);
    // Metadata contexts before structured replies, and the option with data: invalid.
    for (const option of [NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT]) {
      client.sendOption(option, metaRequest('disk', []));
      expect((await client.readOptionReply()).type).toBe(NBD_REP_ERR_INVALID);
    }
    client.sendOption(NBD_OPT_STRUCTURED_REPLY, Buffer.from([1]));
    expect((await client.readOptionReply()).type).toBe(NBD_REP_ERR_INVALID);
    client.sendOption(NBD_OPT_STRUCTURED_REPLY);
    expect(await client.readOptionReply()).toMatchObject({ option: NBD_OPT_STRUCTURED_REPLY, type: NBD_REP_ACK });

    const list = async (queries: string[]): Promise<string[]> => {
      client.sendOption(NBD_OPT_LIST_META_CONTEXT, metaRequest('disk', queries));
      const replies = await client.readOptionReplies();
      expect(replies[replies.length - 1]?.type).toBe(NBD_REP_ACK);
      return replies.filter((r) => r.type === NBD_REP_META_CONTEXT).map((r) => `${r.data.readUInt32BE(0)} ${r.data.subarray(4).toString()}`);
    };
    expect(await list([])).toEqual(['0 base:allocation']);
    expect(await list(['base:'])).toEqual(['0 base:allocation']);
    expect(await list(['qemu:dirty-bitmap:a', 'base:allocation'])).toEqual(['0 base:allocation']);
    expect(await list(['qemu:allocation-depth', 'base:nothing'])).toEqual([]);

    const overrun = metaRequest('disk', ['base:allocation']);
    overrun.writeUInt32BE(1000, 0);
    const queryOverrun = metaRequest('disk', ['base:allocation']);
    queryOverrun.writeUInt32BE(2, 8);
    const badUtf8 = metaRequest('disk', ['base:allocation']);
    badUtf8[badUtf8.length - 1] = 0xff;
    for (const data of [Buffer.alloc(7), overrun, queryOverrun, Buffer.concat([metaRequest('disk', []), Buffer.from([0])]), badUtf8]) {
      client.sendOption(NBD_OPT_SET_META_CONTEXT, data);
      expect((await client.readOptionReply()).type).toBe(NBD_REP_ERR_INVALID);
    }
    // The `base:` wildcard selects nothing when setting; the full name does.
    client.sendOption(NBD_OPT_SET_META_CONTEXT, metaRequest('disk', ['base:']));
    expect((await client.readOptionReplies()).map((r) => r.type)).toEqual([NBD_REP_ACK]);
    client.sendOption(NBD_OPT_SET_META_CONTEXT, metaRequest('disk', ['x-other:thing', 'base:allocation']));
    const set = await client.readOptionReplies();
    expect(set.map((r) => r.type)).toEqual([NBD_REP_META_CONTEXT, NBD_REP_ACK]);
    expect(set[0]?.data.readUInt32BE(0)).not.toBe(0);
    const go = await client.negotiate(NBD_OPT_GO, 'disk', []);
    expect((go?.flags ?? 0) & NBD_FLAG_SEND_DF).toBe(NBD_FLAG_SEND_DF);
    client.destroy();
  });

  it('answers a read with one data chunk at its offset, success of other commands with simple replies', async () => {
    const { client, flags } = await structured('disk', null);
    expect(flags & NBD_FLAG_SEND_DF).toBe(NBD_FLAG_SEND_DF);
    const data = Buffer.alloc(8192, 0x5c);
    client.sendRequest(NBD_CMD_WRITE, 4096, 8192, { data, cookie: 7n });
    expect(await client.readChunk()).toMatchObject({ simple: true, cookie: 7n, payload: Buffer.alloc(4) });
    for (const readFlags of [0, NBD_CMD_FLAG_DF]) {
      client.sendRequest(NBD_CMD_READ, 4096, 8192, { cookie: 0x1_0000_0002n, flags: readFlags });
      const chunk = await client.readChunk();
      expect(chunk).toMatchObject({ simple: false, flags: NBD_REPLY_FLAG_DONE, type: NBD_REPLY_TYPE_OFFSET_DATA, cookie: 0x1_0000_0002n });
      expect(chunk.payload.readBigUInt64BE(0)).toBe(4096n);
      expect(chunk.payload.subarray(8).equals(data)).toBe(true);
    }
    client.sendRequest(NBD_CMD_FLUSH, 0, 0, { cookie: 9n });
    expect(await client.readChunk()).toMatchObject({ simple: true, cookie: 9n });
    client.destroy();
  });

  it('sends errors as error chunks that say why, for reads too, and keeps the connection usable', async () => {
    const { client } = await structured('disk', null);
    const cases: [Buffer, number, string][] = [
      [request(NBD_CMD_READ, MiB - 512, 1024), NBD_EINVAL, 'past the end'],
      [request(NBD_CMD_READ, 100, 512), NBD_EINVAL, 'not aligned'],
      [request(NBD_CMD_READ, 0, 128 * 1024), NBD_EOVERFLOW, 'maximum payload'],
      [request(NBD_CMD_READ, 0, 512, { flags: NBD_CMD_FLAG_REQ_ONE }), NBD_EINVAL, 'flags'],
      [request(NBD_CMD_WRITE, MiB, 512, { data: Buffer.alloc(512) }), NBD_ENOSPC, 'past the end'],
      [request(NBD_CMD_WRITE_ZEROES, 0, 512, { flags: NBD_CMD_FLAG_FAST_ZERO }), NBD_EINVAL, 'flags'],
      // No metadata context was selected on this connection.
      [request(NBD_CMD_BLOCK_STATUS, 0, 512), NBD_EINVAL, 'metadata context'],
    ];
    for (const [bytes, errno, words] of cases) {
      client.send(bytes);
      const { errno: got, message } = errorOf(await client.readChunk());
      expect([words, got]).toEqual([words, errno]);
      expect(message).toContain(words);
    }
    client.sendRequest(NBD_CMD_READ, 0, 512);
    expect((await client.readChunk()).type).toBe(NBD_REPLY_TYPE_OFFSET_DATA);
    client.destroy();
  });

  it('reports the device\'s extents for base:allocation: cut at the request, merged, one for REQ_ONE', async () => {
    const { client, contextId } = await structured('mapped');
    const status = async (offset: number, length: number, flags = 0): Promise<{ id: number; extents: [number, number][] }> => {
      client.sendRequest(NBD_CMD_BLOCK_STATUS, offset, length, { flags, cookie: 3n });
      const chunk = await client.readChunk();
      expect(chunk).toMatchObject({ simple: false, flags: NBD_REPLY_FLAG_DONE, type: NBD_REPLY_TYPE_BLOCK_STATUS, cookie: 3n });
      return descriptors(chunk);
    };
    const HZ = NBD_STATE_HOLE | NBD_STATE_ZERO;
    extents.answer = [
      { length: 8192, flags: 0 },
      { length: 4096, flags: HZ },
      { length: 4096, flags: HZ },
      { length: 65536, flags: 0 },
    ];
    expect(await status(0, 32768)).toEqual({ id: contextId, extents: [[8192, 0], [8192, HZ], [16384, 0]] });
    expect(extents.asked.pop()).toEqual([0, 32768]);
    expect(await status(0, 32768, NBD_CMD_FLAG_REQ_ONE)).toEqual({ id: contextId, extents: [[8192, 0]] });
    extents.answer = [{ length: MiB, flags: HZ }];
    expect(await status(4096, 4096, NBD_CMD_FLAG_REQ_ONE)).toEqual({ id: contextId, extents: [[4096, HZ]] });
    // Block status is no payload: a range larger than the maximum request is fine.
    expect(await status(0, MiB)).toEqual({ id: contextId, extents: [[MiB, HZ]] });
    // A device that answers for less than asked is passed on as it is; the client asks again.
    extents.answer = [{ length: 4096, flags: 0 }];
    expect(await status(0, MiB)).toEqual({ id: contextId, extents: [[4096, 0]] });

    // A broken answer is the server's failure, not a malformed reply.
    for (const answer of [[], [{ length: 0, flags: 0 }], [{ length: 4096, flags: -1 }]]) {
      extents.answer = answer;
      client.sendRequest(NBD_CMD_BLOCK_STATUS, 0, 4096);
      expect(errorOf(await client.readChunk()).errno).toBe(NBD_EIO);
    }
    expect(h.logged.filter((line) => line.includes('block status failed')).length).toBe(3);
    for (const [offset, length] of [[MiB - 4096, 8192], [100, 4096], [0, 0]] as const) {
      client.sendRequest(NBD_CMD_BLOCK_STATUS, offset, length);
      expect(errorOf(await client.readChunk()).errno).toBe(NBD_EINVAL);
    }
    client.destroy();
  });

  it('reports zeros from the memory device, and a device without block status as all data', async () => {
    disk.bytes.fill(0);
    disk.bytes.fill(1, 4096, 4096 + 512);
    const { client, contextId } = await structured('disk');
    client.sendRequest(NBD_CMD_BLOCK_STATUS, 0, 16384);
    expect(descriptors(await client.readChunk())).toEqual({ id: contextId, extents: [[4096, NBD_STATE_ZERO], [512, 0], [11776, NBD_STATE_ZERO]] });
    client.destroy();
    const other = await structured('plain');
    other.client.sendRequest(NBD_CMD_BLOCK_STATUS, 0, MiB);
    expect(descriptors(await other.client.readChunk())).toEqual({ id: other.contextId, extents: [[MiB, 0]] });
    other.client.destroy();
  });

  it('answers block status only on the export the context was selected for', async () => {
    const { client } = await structured('disk', 'mapped');
    client.sendRequest(NBD_CMD_BLOCK_STATUS, 0, 4096);
    expect(errorOf(await client.readChunk()).errno).toBe(NBD_EINVAL);
    client.destroy();
  });

  it('advertises fast zeroing only for a device that offers it, and passes the flag on', async () => {
    const { client, flags } = await structured('fast', null);
    expect(flags & NBD_FLAG_SEND_FAST_ZERO).toBe(NBD_FLAG_SEND_FAST_ZERO);
    zeroings.length = 0;
    client.sendRequest(NBD_CMD_WRITE_ZEROES, 0, 512, { flags: NBD_CMD_FLAG_FAST_ZERO });
    expect((await client.readChunk()).simple).toBe(true);
    client.sendRequest(NBD_CMD_WRITE_ZEROES, 512, 512, { flags: NBD_CMD_FLAG_FAST_ZERO });
    expect(errorOf(await client.readChunk())).toEqual({ errno: NBD_ENOTSUP, message: 'zeroing there would cost as much as writing' });
    client.sendRequest(NBD_CMD_WRITE_ZEROES, 512, 512);
    expect((await client.readChunk()).simple).toBe(true);
    expect(zeroings).toEqual([true, true, false]);
    client.destroy();
    const plain = await structured('disk', null);
    expect(plain.flags & NBD_FLAG_SEND_FAST_ZERO).toBe(0);
    plain.client.destroy();
  });
});

describe('NbdServer write buffers lent by the device', () => {
  /** A memory device that lends payload buffers out of one arena and counts where each one went. */
  class LendingDevice extends MemoryBlockDevice {
    readonly arena = Buffer.alloc(64 * 1024);
    readonly lent = new Set<Buffer>();
    written = 0;
    discarded = 0;
    refuse = false;
    /** Lends a buffer this much too long: a device bug the server must not trust. */
    wrongBy = 0;
    allocateWrite(length: number): Buffer | undefined {
      if (this.refuse || this.lent.size > 0) {
        return undefined;
      }
      const data = this.arena.subarray(16, 16 + length + this.wrongBy);
      this.lent.add(data);
      return data;
    }
    discardWrite(data: Buffer): void {
      expect(this.lent.delete(data)).toBe(true);
      this.discarded++;
    }
    override write(offset: number, data: Buffer, fua: boolean): Promise<void> {
      if (this.lent.delete(data)) {
        this.written++;
      }
      return super.write(offset, data, fua);
    }
  }

  it('receives payloads into them, hands each back once: to write, or to discardWrite when the client vanishes mid-payload', async () => {
    const device = new LendingDevice({ size: MiB });
    const p = await start({ lending: () => device });
    const client = await NbdTestClient.go(p.port, 'lending');
    const data = Buffer.alloc(4096, 0x5a);
    expect((await client.call(NBD_CMD_WRITE, 4096, 4096, { data })).error).toBe(0);
    expect(device.written).toBe(1);
    expect(device.arena.subarray(16, 16 + 4096).equals(data)).toBe(true);
    expect(device.bytes.subarray(4096, 8192).equals(data)).toBe(true);
    // Refused: the server allocates the payload itself, and the write is the same.
    device.refuse = true;
    expect((await client.call(NBD_CMD_WRITE, 0, 512, { data: Buffer.alloc(512, 7) })).error).toBe(0);
    expect(device.bytes.subarray(0, 512).equals(Buffer.alloc(512, 7))).toBe(true);
    expect(device.written).toBe(1);
    device.refuse = false;
    // A request the server refuses (past the end) has its payload skipped, never lent.
    expect((await client.call(NBD_CMD_WRITE, MiB, 512, { data: Buffer.alloc(512) })).error).toBe(NBD_ENOSPC);
    // A buffer of the wrong size is handed back, logged, and the write made from the server's own.
    device.wrongBy = 512;
    expect((await client.call(NBD_CMD_WRITE, 8192, 512, { data: Buffer.alloc(512, 9) })).error).toBe(0);
    expect(device.bytes.subarray(8192, 8192 + 512).equals(Buffer.alloc(512, 9))).toBe(true);
    expect(device.discarded).toBe(1);
    expect(p.logged.some((line) => /lent a 1024-byte buffer for a 512-byte write/.test(line))).toBe(true);
    device.wrongBy = 0;
    client.send(request(NBD_CMD_WRITE, 0, 4096, { data: Buffer.alloc(4096, 1) }).subarray(0, 28 + 1000));
    await waitFor(() => device.lent.size === 1, { timeoutMs: 2000, message: 'the payload buffer lent' });
    client.destroy();
    await waitFor(() => device.discarded === 2, { timeoutMs: 2000, message: 'the cut-off payload handed back' });
    expect(device.lent.size).toBe(0);
    expect(device.bytes.subarray(0, 512).equals(Buffer.alloc(512, 7))).toBe(true);
    await p.server.close();
  });
});

describe('NbdServer lifecycle', () => {
  it('close() drops handshakes, drains transmissions and leaves nothing open', async () => {
    const gated = new GatedDevice({ size: MiB });
    const p = await start({ gated: () => gated });
    const waiting = await NbdTestClient.open(p.port);
    const busy = await NbdTestClient.go(p.port, 'gated');
    busy.send(request(NBD_CMD_WRITE, 0, 512, { data: Buffer.alloc(512), cookie: 1n }));
    await waitFor(() => gated.writes === 1, { timeoutMs: 2000, message: 'write reached the device' });
    expect(p.server.stats).toEqual({ open: 2, transmitting: 1, accepted: 2 });
    const closing = p.server.close();
    expect(await waiting.closesWithin(2000)).toBe(true);
    gated.release();
    expect(await busy.readReply()).toMatchObject({ error: 0, cookie: 1n });
    await closing;
    expect(p.server.stats.open).toBe(0);
    expect(p.closedExports).toEqual(['gated']);
    await expect(NbdTestClient.connect(p.port)).rejects.toThrow();
  });

  it('drops a client that never picks an export', async () => {
    const p = await start({}, { handshakeTimeoutMs: 100 });
    const idle = await NbdTestClient.connect(p.port);
    expect(await idle.closesWithin(2000)).toBe(true);
    await p.server.close();
  });

  it('refuses NBD_OPT_LIST when it has no list, and bad settings', async () => {
    const server = new NbdServer({ resolve: () => undefined });
    const { port } = await server.listen(0);
    const client = await NbdTestClient.open(port);
    client.sendOption(NBD_OPT_LIST);
    expect((await client.readOptionReply()).type).toBe(NBD_REP_ERR_POLICY);
    client.send(Buffer.alloc(16));
    expect(await client.closesWithin(2000)).toBe(true);
    await server.close();
    expect(() => new NbdServer({ resolve: () => undefined, maxRequestBytes: 100 })).toThrow(RangeError);
  });
});
