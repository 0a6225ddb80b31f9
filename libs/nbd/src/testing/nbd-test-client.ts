import { connect, type Socket } from 'node:net';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_OPTS_MAGIC,
  NBD_OPT_GO,
  NBD_REP_ACK,
  NBD_REP_INFO,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
} from '../protocol';

export interface OptionReply {
  readonly option: number;
  readonly type: number;
  readonly data: Buffer;
}

export interface SimpleReply {
  readonly error: number;
  readonly cookie: bigint;
  readonly data: Buffer | undefined;
}

/** A structured reply chunk (or, where the server may use one, a simple reply: `simple` true). */
export interface ReplyChunk {
  readonly simple: boolean;
  readonly flags: number;
  readonly type: number;
  readonly cookie: bigint;
  /** The chunk's payload; for a simple reply, its error in the first four bytes. */
  readonly payload: Buffer;
}

export interface Negotiated {
  readonly size: bigint;
  readonly flags: number;
  readonly blockSize?: { min: number; preferred: number; max: number };
  readonly replies: readonly OptionReply[];
}

/**
 * A deliberately small NBD client for tests, written from the protocol constants: it drives a real
 * server over a real socket and lets a test send anything, valid or not, byte by byte.
 */
export class NbdTestClient {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: (() => void) | undefined;
  private ended = false;
  readonly closed: Promise<void>;

  private constructor(readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
      this.wake();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.ended = true;
        this.wake();
        resolve();
      }),
    );
    socket.on('end', () => {
      this.ended = true;
      this.wake();
    });
  }

  static connect(port: number): Promise<NbdTestClient> {
    return new Promise((resolve, reject) => {
      const socket = connect({ port, host: '127.0.0.1' });
      socket.setNoDelay(true);
      socket.once('error', reject);
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new NbdTestClient(socket));
      });
    });
  }

  /** Connects and reads the greeting; returns the handshake flags. */
  static async open(port: number, clientFlags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES): Promise<NbdTestClient> {
    const client = await NbdTestClient.connect(port);
    await client.read(18);
    client.send(u32(clientFlags));
    return client;
  }

  /** Opens a connection and enters transmission with NBD_OPT_GO. */
  static async go(port: number, name: string, infos: readonly number[] = [NBD_INFO_BLOCK_SIZE]): Promise<NbdTestClient> {
    const client = await NbdTestClient.open(port);
    const negotiated = await client.negotiate(NBD_OPT_GO, name, infos);
    if (negotiated === undefined) {
      client.destroy();
      throw new Error(`export '${name}' refused`);
    }
    return client;
  }

  send(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  destroy(): void {
    this.socket.destroy();
  }

  get isEnded(): boolean {
    return this.ended;
  }

  /** Exactly n bytes; rejects if the connection ends first or nothing arrives in time. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered < n) {
      if (this.ended) {
        throw new Error(`connection ended with ${this.buffered} of ${n} bytes`);
      }
      const left = deadline - Date.now();
      if (left <= 0) {
        throw new Error(`timed out with ${this.buffered} of ${n} bytes`);
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    const all = this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }

  /** Whatever has arrived and not been read yet. */
  takeBuffered(): Buffer {
    const all = Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    return all;
  }

  /** Resolves true once the server has closed the connection (after any bytes still buffered). */
  async closesWithin(timeoutMs: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), timeoutMs);
    });
    const ended = new Promise<true>((resolve) => {
      const check = (): void => {
        if (this.ended) {
          resolve(true);
        } else {
          this.socket.once('end', check);
          this.socket.once('close', check);
        }
      };
      check();
    });
    const result = await Promise.race([ended, timeout]);
    clearTimeout(timer);
    return result;
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    const header = Buffer.allocUnsafe(16);
    header.writeBigUInt64BE(NBD_OPTS_MAGIC, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    this.send(Buffer.concat([header, data]));
  }

  async readOptionReply(): Promise<OptionReply> {
    const header = await this.read(20);
    const length = header.readUInt32BE(16);
    const data = length > 0 ? await this.read(length) : Buffer.alloc(0);
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data: Buffer.from(data) };
  }

  /** Reads option replies up to and including the first that is not NBD_REP_INFO / NBD_REP_SERVER. */
  async readOptionReplies(): Promise<OptionReply[]> {
    const replies: OptionReply[] = [];
    for (;;) {
      const reply = await this.readOptionReply();
      replies.push(reply);
      if (reply.type === NBD_REP_ACK || (reply.type & 0x8000_0000) !== 0) {
        return replies;
      }
    }
  }

  /** NBD_OPT_INFO or NBD_OPT_GO; undefined when the server answers with an error. */
  async negotiate(option: number, name: string, infos: readonly number[]): Promise<Negotiated | undefined> {
    this.sendOption(option, infoRequest(name, infos));
    const replies = await this.readOptionReplies();
    const last = replies[replies.length - 1];
    if (last?.type !== NBD_REP_ACK) {
      return undefined;
    }
    let size = -1n;
    let flags = -1;
    let blockSize: Negotiated['blockSize'];
    for (const reply of replies) {
      if (reply.type !== NBD_REP_INFO) {
        continue;
      }
      const type = reply.data.readUInt16BE(0);
      if (type === NBD_INFO_EXPORT) {
        size = reply.data.readBigUInt64BE(2);
        flags = reply.data.readUInt16BE(10);
      } else if (type === NBD_INFO_BLOCK_SIZE) {
        blockSize = { min: reply.data.readUInt32BE(2), preferred: reply.data.readUInt32BE(6), max: reply.data.readUInt32BE(10) };
      }
    }
    return { size, flags, blockSize, replies };
  }

  sendRequest(type: number, offset: number | bigint, length: number, options: RequestOptions = {}): void {
    this.send(request(type, offset, length, options));
  }

  async readReply(dataLength = 0): Promise<SimpleReply> {
    const header = await this.read(16);
    const magic = header.readUInt32BE(0);
    if (magic !== NBD_SIMPLE_REPLY_MAGIC) {
      throw new Error(`bad reply magic 0x${magic.toString(16)}`);
    }
    const error = header.readUInt32BE(4);
    const cookie = header.readBigUInt64BE(8);
    const data = error === 0 && dataLength > 0 ? Buffer.from(await this.read(dataLength)) : undefined;
    return { error, cookie, data };
  }

  /**
   * The next reply once structured replies are negotiated: a chunk, or a simple reply (which carries
   * no data then).
   */
  async readChunk(): Promise<ReplyChunk> {
    const magic = (await this.read(4)).readUInt32BE(0);
    if (magic === NBD_SIMPLE_REPLY_MAGIC) {
      const rest = await this.read(12);
      return { simple: true, flags: 0, type: 0, cookie: rest.readBigUInt64BE(4), payload: Buffer.from(rest.subarray(0, 4)) };
    }
    if (magic !== NBD_STRUCTURED_REPLY_MAGIC) {
      throw new Error(`bad reply magic 0x${magic.toString(16)}`);
    }
    const header = Buffer.from(await this.read(16));
    const length = header.readUInt32BE(12);
    const payload = length > 0 ? Buffer.from(await this.read(length)) : Buffer.alloc(0);
    return { simple: false, flags: header.readUInt16BE(0), type: header.readUInt16BE(2), cookie: header.readBigUInt64BE(4), payload };
  }

  /** One request, one reply (no pipelining). */
  async call(type: number, offset: number | bigint, length: number, options: RequestOptions = {}, readLength = 0): Promise<SimpleReply> {
    this.sendRequest(type, offset, length, options);
    return this.readReply(readLength);
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }
}

export interface RequestOptions {
  readonly flags?: number;
  readonly cookie?: bigint;
  readonly data?: Buffer;
  readonly magic?: number;
}

/** A request as the wire carries it (28-byte header, then the data if any). */
export function request(type: number, offset: number | bigint, length: number, options: RequestOptions = {}): Buffer {
  const header = Buffer.allocUnsafe(28);
  header.writeUInt32BE(options.magic ?? NBD_REQUEST_MAGIC, 0);
  header.writeUInt16BE(options.flags ?? 0, 4);
  header.writeUInt16BE(type, 6);
  header.writeBigUInt64BE(options.cookie ?? 1n, 8);
  header.writeBigUInt64BE(BigInt(offset), 16);
  header.writeUInt32BE(length, 24);
  return options.data === undefined ? header : Buffer.concat([header, options.data]);
}

/** NBD_OPT_INFO / NBD_OPT_GO data: name length (u32), name, count (u16), types (u16 each). */
export function infoRequest(name: string, infos: readonly number[]): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const out = Buffer.allocUnsafe(4 + nameBytes.length + 2 + 2 * infos.length);
  out.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(out, 4);
  out.writeUInt16BE(infos.length, 4 + nameBytes.length);
  infos.forEach((info, i) => out.writeUInt16BE(info, 6 + nameBytes.length + 2 * i));
  return out;
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data: name length, name, count, then length + query each (all u32 lengths). */
export function metaRequest(name: string, queries: readonly string[]): Buffer {
  const parts = [u32(Buffer.byteLength(name)), Buffer.from(name, 'utf8'), u32(queries.length)];
  for (const query of queries) {
    parts.push(u32(Buffer.byteLength(query)), Buffer.from(query, 'utf8'));
  }
  return Buffer.concat(parts);
}

export function u32(value: number): Buffer {
  const out = Buffer.allocUnsafe(4);
  out.writeUInt32BE(value, 0);
  return out;
}
