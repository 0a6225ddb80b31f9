import { type Socket } from 'node:net';
import { type BlockDevice, type ExportEntry, type ExportListing } from './block-device';
import {
  CLIENT_FLAGS_BYTES,
  EXPORT_NAME_REPLY_BYTES,
  EXPORT_NAME_ZEROES,
  GREETING_BYTES,
  MAX_STRING_BYTES,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REP_SERVER,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  REQUEST_BYTES,
  SIMPLE_REPLY_BYTES,
  isNbdErrno,
} from './protocol';

export interface NbdLogger {
  log(message: string): void;
  warn(message: string): void;
  error(message: string): void;
}

/** What a connection needs from its server; shared by every connection of one server. */
export interface ConnectionContext {
  readonly resolve: (exportName: string) => ExportEntry | undefined;
  readonly list: (() => readonly ExportListing[]) | undefined;
  readonly maxRequestBytes: number;
  readonly maxInFlightBytes: number;
  readonly maxInFlightRequests: number;
  readonly handshakeTimeoutMs: number;
  readonly logger: NbdLogger;
  readonly shuttingDown: () => boolean;
}

/**
 * Option data is bounded by what a valid option we support can hold: NBD_OPT_GO is a 4-byte name
 * length, a name of at most 4096 bytes, a 2-byte count and 2 bytes per information request. Clients
 * send a handful of those, so 64 KiB leaves room for every honest client while a hostile length
 * (up to 4 GiB) is refused before anything is allocated.
 */
export const MAX_OPTION_BYTES = 64 * 1024;

const State = {
  ClientFlags: 0,
  OptionHeader: 1,
  OptionData: 2,
  RequestHeader: 3,
  Payload: 4,
  Discard: 5,
  /** After NBD_CMD_DISC, end of input, a protocol error or shutdown: input is ignored. */
  Done: 6,
} as const;
type State = (typeof State)[keyof typeof State];

const HEADER_BYTES: Record<State, number> = {
  [State.ClientFlags]: CLIENT_FLAGS_BYTES,
  [State.OptionHeader]: OPTION_HEADER_BYTES,
  [State.OptionData]: 0,
  [State.RequestHeader]: REQUEST_BYTES,
  [State.Payload]: 0,
  [State.Discard]: 0,
  [State.Done]: 0,
};

const TWO_32 = 0x1_0000_0000;
const EMPTY = Buffer.alloc(0);
const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * One client connection: the fixed newstyle handshake, then the transmission phase. Input is parsed
 * chunk by chunk as it arrives, with no concatenation: a fixed-size header is read straight from the
 * chunk when it is whole there and otherwise collected in a 28-byte staging buffer; option data and
 * write payloads are copied once into a buffer of exactly their size, allocated only after the
 * length has been checked. Each request is dispatched to the device as soon as it is whole, so many
 * are in flight at once and replies go out in completion order.
 */
export class NbdConnection {
  private state: State = State.ClientFlags;
  private readonly stage = Buffer.allocUnsafe(REQUEST_BYTES);
  private staged = 0;
  private noZeroes = false;

  private option = 0;
  private optionData: Buffer = EMPTY;
  private optionFilled = 0;

  private entry: ExportEntry | undefined;
  private device: BlockDevice | undefined;
  private flags = 0;

  /** The write whose payload is arriving (State.Payload) or being skipped (State.Discard). */
  private payload: Buffer = EMPTY;
  private payloadFilled = 0;
  /** The payload buffer came from the device's allocateWrite: it goes back to the device either way. */
  private payloadLent = false;
  private payloadOffset = 0;
  private payloadFua = false;
  private discardRemaining = 0;
  private pendingErrno = 0;
  private cookieHi = 0;
  private cookieLo = 0;

  private inFlight = 0;
  /** Payload bytes held for requests that have not been answered yet (writes received, reads asked). */
  private inFlightBytes = 0;
  /** Input not yet parsed because the in-flight budget was exhausted; the socket is paused meanwhile. */
  private stash: Buffer | undefined;
  private corked = false;
  private closed = false;
  private ending = false;
  private handshakeTimer: NodeJS.Timeout | undefined;
  readonly done: Promise<void>;

  constructor(
    private readonly socket: Socket,
    private readonly ctx: ConnectionContext,
    readonly id: number,
  ) {
    this.done = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onEnd());
    socket.on('drain', () => this.maybeResume());
    socket.on('error', (err) => this.ctx.logger.log(`nbd connection ${this.id}: ${err.message}`));
    socket.on('close', () => this.onClose());
    this.handshakeTimer = setTimeout(() => this.abort('no export chosen in time'), ctx.handshakeTimeoutMs);

    const greeting = Buffer.allocUnsafe(GREETING_BYTES);
    greeting.writeBigUInt64BE(NBD_MAGIC, 0);
    greeting.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
    greeting.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
    socket.write(greeting);
  }

  get transmitting(): boolean {
    return this.device !== undefined && !this.closed;
  }

  /**
   * Server shutdown. During the handshake the connection is dropped; in transmission no further
   * request is read, the ones in flight are answered, then the connection closes (the spec's
   * "wait for inflight requests, then hard disconnect"). After `graceMs` it is dropped regardless.
   */
  shutdown(graceMs: number): void {
    if (this.closed) {
      return;
    }
    if (this.device === undefined) {
      this.socket.destroy();
      return;
    }
    this.finishAndClose();
    const timer = setTimeout(() => this.socket.destroy(), graceMs);
    void this.done.then(() => clearTimeout(timer));
  }

  private onData(chunk: Buffer): void {
    if (this.stash !== undefined) {
      // Still paused for the budget; Node may deliver one chunk already read before pause() took.
      this.stash = Buffer.concat([this.stash, chunk]);
      return;
    }
    this.parse(chunk);
  }

  private parse(chunk: Buffer): void {
    let pos = 0;
    const end = chunk.length;
    while (pos < end) {
      switch (this.state) {
        case State.Done:
          return;
        case State.Payload: {
          const take = Math.min(this.payload.length - this.payloadFilled, end - pos);
          chunk.copy(this.payload, this.payloadFilled, pos, pos + take);
          this.payloadFilled += take;
          pos += take;
          if (this.payloadFilled === this.payload.length) {
            this.state = State.RequestHeader;
            this.startWrite();
          }
          break;
        }
        case State.Discard: {
          const take = Math.min(this.discardRemaining, end - pos);
          this.discardRemaining -= take;
          pos += take;
          if (this.discardRemaining === 0) {
            this.state = State.RequestHeader;
            this.reply(this.pendingErrno, this.cookieHi, this.cookieLo, undefined);
          }
          break;
        }
        case State.OptionData: {
          const take = Math.min(this.optionData.length - this.optionFilled, end - pos);
          chunk.copy(this.optionData, this.optionFilled, pos, pos + take);
          this.optionFilled += take;
          pos += take;
          if (this.optionFilled === this.optionData.length) {
            const data = this.optionData;
            this.optionData = EMPTY;
            this.state = State.OptionHeader;
            this.handleOption(this.option, data);
          }
          break;
        }
        case State.ClientFlags:
        case State.OptionHeader:
        case State.RequestHeader: {
          if (this.state === State.RequestHeader && this.staged === 0 && this.overBudget()) {
            this.stash = chunk.subarray(pos);
            this.socket.pause();
            return;
          }
          const need = HEADER_BYTES[this.state];
          let src: Buffer;
          let at: number;
          if (this.staged === 0 && end - pos >= need) {
            src = chunk;
            at = pos;
            pos += need;
          } else {
            const take = Math.min(need - this.staged, end - pos);
            chunk.copy(this.stage, this.staged, pos, pos + take);
            this.staged += take;
            pos += take;
            if (this.staged < need) {
              return;
            }
            this.staged = 0;
            src = this.stage;
            at = 0;
          }
          if (this.state === State.RequestHeader) {
            this.onRequest(src, at);
          } else if (this.state === State.OptionHeader) {
            this.onOptionHeader(src, at);
          } else {
            this.onClientFlags(src.readUInt32BE(at));
          }
          break;
        }
      }
    }
  }

  private onClientFlags(clientFlags: number): void {
    // Only the two flags we advertise may come back; anything else MUST drop the connection. A client
    // without C_FIXED_NEWSTYLE is served the same way: it only ever sends NBD_OPT_EXPORT_NAME.
    if ((clientFlags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) {
      this.abort(`unknown client flags 0x${clientFlags.toString(16)}`);
      return;
    }
    this.noZeroes = (clientFlags & NBD_FLAG_C_NO_ZEROES) !== 0;
    this.state = State.OptionHeader;
  }

  private onOptionHeader(b: Buffer, at: number): void {
    if (b.readBigUInt64BE(at) !== NBD_OPTS_MAGIC) {
      this.abort('bad option magic');
      return;
    }
    const option = b.readUInt32BE(at + 8);
    const length = b.readUInt32BE(at + 12);
    if (length > MAX_OPTION_BYTES) {
      this.abort(`option ${option} claims ${length} bytes of data (at most ${MAX_OPTION_BYTES})`);
      return;
    }
    if (length === 0) {
      this.handleOption(option, EMPTY);
      return;
    }
    this.option = option;
    this.optionData = Buffer.allocUnsafe(length);
    this.optionFilled = 0;
    this.state = State.OptionData;
  }

  private handleOption(option: number, data: Buffer): void {
    if (this.ctx.shuttingDown()) {
      if (option === NBD_OPT_ABORT) {
        this.optionReply(option, NBD_REP_ACK, EMPTY);
        this.finishAndClose();
      } else if (option === NBD_OPT_EXPORT_NAME) {
        this.abort('server is shutting down');
      } else {
        this.optionError(option, NBD_REP_ERR_SHUTDOWN, 'server is shutting down');
      }
      return;
    }
    switch (option) {
      case NBD_OPT_EXPORT_NAME:
        this.exportName(data);
        return;
      case NBD_OPT_ABORT:
        // Any data is ignored, as the spec asks.
        this.optionReply(option, NBD_REP_ACK, EMPTY);
        this.finishAndClose();
        return;
      case NBD_OPT_LIST:
        this.listExports(data);
        return;
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        this.infoOrGo(option, data);
        return;
      default:
        // STARTTLS, STRUCTURED_REPLY, the metadata contexts, extended headers, and anything newer.
        this.optionError(option, NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  private exportName(data: Buffer): void {
    const name = decodeName(data);
    const entry = name === undefined ? undefined : this.lookup(name);
    if (entry === undefined) {
      // This option cannot be answered with an error: the spec says to end the session.
      this.abort(`NBD_OPT_EXPORT_NAME for an unknown export`);
      return;
    }
    const flags = transmissionFlags(entry.device);
    const reply = Buffer.alloc(EXPORT_NAME_REPLY_BYTES + (this.noZeroes ? 0 : EXPORT_NAME_ZEROES));
    reply.writeBigUInt64BE(BigInt(entry.device.size), 0);
    reply.writeUInt16BE(flags, 8);
    this.socket.write(reply);
    this.enterTransmission(entry, flags);
  }

  /**
   * NBD_OPT_INFO / NBD_OPT_GO data: 0 name length N (u32), 4 name (N bytes), 4+N number of
   * information requests K (u16), 6+N K information types (u16 each); nothing may follow.
   */
  private infoOrGo(option: number, data: Buffer): void {
    if (data.length < 6) {
      this.optionError(option, NBD_REP_ERR_INVALID, 'option data is too short');
      return;
    }
    const nameLength = data.readUInt32BE(0);
    if (nameLength > data.length - 6) {
      this.optionError(option, NBD_REP_ERR_INVALID, 'export name overruns the option');
      return;
    }
    const count = data.readUInt16BE(4 + nameLength);
    if (data.length !== 6 + nameLength + 2 * count) {
      this.optionError(option, NBD_REP_ERR_INVALID, 'information requests do not match the option length');
      return;
    }
    const name = decodeName(data.subarray(4, 4 + nameLength));
    if (name === undefined) {
      this.optionError(option, NBD_REP_ERR_INVALID, 'export name is not a valid string');
      return;
    }
    let wantName = false;
    let wantDescription = false;
    for (let i = 0; i < count; i++) {
      // Unknown information types are ignored, as the spec requires.
      const type = data.readUInt16BE(6 + nameLength + 2 * i);
      wantName ||= type === NBD_INFO_NAME;
      wantDescription ||= type === NBD_INFO_DESCRIPTION;
    }
    const entry = this.lookup(name);
    if (entry === undefined) {
      this.optionError(option, NBD_REP_ERR_UNKNOWN, `no export named '${name}'`);
      return;
    }
    const device = entry.device;
    const flags = transmissionFlags(device);
    const exportInfo = Buffer.allocUnsafe(12);
    exportInfo.writeUInt16BE(NBD_INFO_EXPORT, 0);
    exportInfo.writeBigUInt64BE(BigInt(device.size), 2);
    exportInfo.writeUInt16BE(flags, 10);
    this.optionReply(option, NBD_REP_INFO, exportInfo);
    // Sent whether or not it was asked for (the spec allows unrequested information): requests are
    // held to these sizes either way, so a client that cannot read it still learns why it gets
    // NBD_EINVAL for unaligned requests.
    const blockInfo = Buffer.allocUnsafe(14);
    blockInfo.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
    blockInfo.writeUInt32BE(device.blockSize, 2);
    blockInfo.writeUInt32BE(device.blockSize, 6);
    blockInfo.writeUInt32BE(this.ctx.maxRequestBytes, 10);
    this.optionReply(option, NBD_REP_INFO, blockInfo);
    if (wantName) {
      this.optionReply(option, NBD_REP_INFO, typedString(NBD_INFO_NAME, name));
    }
    if (wantDescription && entry.description !== undefined) {
      this.optionReply(option, NBD_REP_INFO, typedString(NBD_INFO_DESCRIPTION, entry.description));
    }
    this.optionReply(option, NBD_REP_ACK, EMPTY);
    if (option === NBD_OPT_GO) {
      this.enterTransmission(entry, flags);
    } else {
      this.release(entry);
    }
  }

  /** NBD_REP_SERVER data: 0 name length N (u32), 4 name (N bytes), 4+N description (the rest). */
  private listExports(data: Buffer): void {
    if (data.length !== 0) {
      this.optionError(NBD_OPT_LIST, NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
      return;
    }
    if (this.ctx.list === undefined) {
      this.optionError(NBD_OPT_LIST, NBD_REP_ERR_POLICY, 'this server does not list its exports');
      return;
    }
    let exports: readonly ExportListing[];
    try {
      exports = this.ctx.list();
    } catch (err) {
      this.ctx.logger.error(`nbd connection ${this.id}: listing exports failed: ${describe(err)}`);
      this.optionError(NBD_OPT_LIST, NBD_REP_ERR_POLICY, 'exports cannot be listed now');
      return;
    }
    for (const { name, description } of exports) {
      const nameBytes = Buffer.from(name, 'utf8');
      const descriptionBytes = Buffer.from(description ?? '', 'utf8').subarray(0, MAX_STRING_BYTES);
      const server = Buffer.allocUnsafe(4 + nameBytes.length + descriptionBytes.length);
      server.writeUInt32BE(nameBytes.length, 0);
      nameBytes.copy(server, 4);
      descriptionBytes.copy(server, 4 + nameBytes.length);
      this.optionReply(NBD_OPT_LIST, NBD_REP_SERVER, server);
    }
    this.optionReply(NBD_OPT_LIST, NBD_REP_ACK, EMPTY);
  }

  private lookup(name: string): ExportEntry | undefined {
    let entry: ExportEntry | undefined;
    try {
      entry = this.ctx.resolve(name);
    } catch (err) {
      this.ctx.logger.error(`nbd connection ${this.id}: resolving export '${name}' failed: ${describe(err)}`);
      return undefined;
    }
    if (entry === undefined) {
      return undefined;
    }
    const problem = deviceProblem(entry.device, this.ctx.maxRequestBytes);
    if (problem !== undefined) {
      this.ctx.logger.error(`nbd connection ${this.id}: export '${name}' cannot be served: ${problem}`);
      this.release(entry);
      return undefined;
    }
    return entry;
  }

  private enterTransmission(entry: ExportEntry, flags: number): void {
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    this.entry = entry;
    this.device = entry.device;
    this.flags = flags;
    this.state = State.RequestHeader;
  }

  private onRequest(b: Buffer, at: number): void {
    if (b.readUInt32BE(at) !== NBD_REQUEST_MAGIC) {
      this.abort('bad request magic');
      return;
    }
    const commandFlags = b.readUInt16BE(at + 4);
    const type = b.readUInt16BE(at + 6);
    // The cookie is opaque: kept as two words and echoed back, never interpreted.
    const cookieHi = b.readUInt32BE(at + 8);
    const cookieLo = b.readUInt32BE(at + 12);
    // Above 2^53 the sum loses precision but stays above any export size, which is all we ask of it.
    const offset = b.readUInt32BE(at + 16) * TWO_32 + b.readUInt32BE(at + 20);
    const length = b.readUInt32BE(at + 24);
    if (type === NBD_CMD_DISC) {
      this.finishAndClose();
      return;
    }
    const errno = this.check(type, commandFlags, offset, length);
    if (type === NBD_CMD_WRITE) {
      this.cookieHi = cookieHi;
      this.cookieLo = cookieLo;
      if (errno !== 0) {
        // The payload follows whatever we think of the request. It is skipped without being stored
        // (however large the client says it is), then the error is sent: the stream stays in step
        // and the connection stays usable, which the spec prefers to a disconnect.
        if (length === 0) {
          this.reply(errno, cookieHi, cookieLo, undefined);
        } else {
          this.pendingErrno = errno;
          this.discardRemaining = length;
          this.state = State.Discard;
        }
        return;
      }
      const device = this.device as BlockDevice;
      let lent = device.allocateWrite?.(length);
      if (lent !== undefined && lent.length !== length) {
        // A device bug; filling a buffer of another size would put the stream out of step.
        this.ctx.logger.error(`nbd connection ${this.id}: the device lent a ${lent.length}-byte buffer for a ${length}-byte write; not used`);
        device.discardWrite?.(lent);
        lent = undefined;
      }
      this.payloadLent = lent !== undefined;
      this.payload = lent ?? Buffer.allocUnsafe((device.writeHeadroom ?? 0) + length).subarray(device.writeHeadroom ?? 0);
      this.payloadFilled = 0;
      this.payloadOffset = offset;
      this.payloadFua = (commandFlags & NBD_CMD_FLAG_FUA) !== 0;
      this.inFlightBytes += length;
      this.state = State.Payload;
      return;
    }
    if (errno !== 0) {
      this.reply(errno, cookieHi, cookieLo, undefined);
      return;
    }
    this.dispatch(type, commandFlags, offset, length, cookieHi, cookieLo);
  }

  /** Returns 0 when the request may go to the device, or the NBD error to answer it with. */
  private check(type: number, commandFlags: number, offset: number, length: number): number {
    const device = this.device as BlockDevice;
    // FUA is valid on every command once negotiated; NO_HOLE only on WRITE_ZEROES. DF, REQ_ONE and
    // FAST_ZERO belong to extensions we do not advertise, so they are invalid like unknown flags.
    let allowed = (this.flags & NBD_FLAG_SEND_FUA) !== 0 ? NBD_CMD_FLAG_FUA : 0;
    if (type === NBD_CMD_WRITE_ZEROES) {
      allowed |= NBD_CMD_FLAG_NO_HOLE;
    }
    const writes = type === NBD_CMD_WRITE || type === NBD_CMD_TRIM || type === NBD_CMD_WRITE_ZEROES;
    if (type === NBD_CMD_FLUSH) {
      // Offset and length are reserved and MUST be zero.
      return (commandFlags & ~allowed) !== 0 || offset !== 0 || length !== 0 ? NBD_EINVAL : 0;
    }
    if (!writes && type !== NBD_CMD_READ) {
      return NBD_EINVAL;
    }
    if (writes && device.readOnly) {
      return NBD_EPERM;
    }
    if (
      (type === NBD_CMD_TRIM && (this.flags & NBD_FLAG_SEND_TRIM) === 0) ||
      (type === NBD_CMD_WRITE_ZEROES && (this.flags & NBD_FLAG_SEND_WRITE_ZEROES) === 0) ||
      (commandFlags & ~allowed) !== 0
    ) {
      return NBD_EINVAL;
    }
    // The spec leaves zero-length requests unspecified (but says not to disconnect); refusing them
    // keeps backends from ever seeing an empty range.
    if (length === 0) {
      return NBD_EINVAL;
    }
    // Only READ and WRITE carry the length as a payload; TRIM and WRITE_ZEROES may cover more.
    if ((type === NBD_CMD_READ || type === NBD_CMD_WRITE) && length > this.ctx.maxRequestBytes) {
      return NBD_EOVERFLOW;
    }
    if (offset > device.size || length > device.size - offset) {
      // The spec's choice: ENOSPC for writing past the end, EINVAL for reading or trimming there.
      return type === NBD_CMD_WRITE || type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
    }
    const blockSize = device.blockSize;
    if (offset % blockSize !== 0 || (length % blockSize !== 0 && offset + length !== device.size)) {
      return NBD_EINVAL;
    }
    return 0;
  }

  private startWrite(): void {
    const data = this.payload;
    this.payload = EMPTY;
    this.payloadLent = false;
    const device = this.device as BlockDevice;
    const cookieHi = this.cookieHi;
    const cookieLo = this.cookieLo;
    this.inFlight++;
    let done: Promise<void>;
    try {
      done = device.write(this.payloadOffset, data, this.payloadFua);
    } catch (err) {
      this.settle(this.errnoFor(err, 'write'), cookieHi, cookieLo, undefined, data.length);
      return;
    }
    done.then(
      () => this.settle(0, cookieHi, cookieLo, undefined, data.length),
      (err: unknown) => this.settle(this.errnoFor(err, 'write'), cookieHi, cookieLo, undefined, data.length),
    );
  }

  private dispatch(
    type: number,
    commandFlags: number,
    offset: number,
    length: number,
    cookieHi: number,
    cookieLo: number,
  ): void {
    const device = this.device as BlockDevice;
    const fua = (commandFlags & NBD_CMD_FLAG_FUA) !== 0;
    const cost = type === NBD_CMD_READ ? length : 0;
    this.inFlight++;
    this.inFlightBytes += cost;
    let done: Promise<Buffer | void>;
    try {
      switch (type) {
        case NBD_CMD_READ:
          done = device.read(offset, length);
          break;
        case NBD_CMD_FLUSH:
          // Without a volatile cache there is nothing to flush; a client that flushes anyway (it should
          // not, the flag is not advertised) is told that everything is durable, which is true.
          done = (this.flags & NBD_FLAG_SEND_FLUSH) !== 0 ? device.flush() : Promise.resolve();
          break;
        case NBD_CMD_TRIM:
          done = trimThenFlush(device, offset, length, fua && (this.flags & NBD_FLAG_SEND_FLUSH) !== 0);
          break;
        default:
          done = (device.writeZeroes as NonNullable<BlockDevice['writeZeroes']>).call(device, offset, length, fua);
      }
    } catch (err) {
      this.settle(this.errnoFor(err, commandName(type)), cookieHi, cookieLo, undefined, cost);
      return;
    }
    done.then(
      (data) => {
        if (type !== NBD_CMD_READ) {
          this.settle(0, cookieHi, cookieLo, undefined, cost);
        } else if (data instanceof Buffer && data.length === length) {
          this.settle(0, cookieHi, cookieLo, data, cost, device.release && (() => device.release?.(data)));
        } else {
          // A reply with the wrong amount of data would desynchronise the client's stream.
          const got = data instanceof Buffer ? `${data.length} bytes` : 'no buffer';
          this.ctx.logger.error(`nbd connection ${this.id}: device read of ${length} bytes returned ${got}`);
          this.settle(NBD_EIO, cookieHi, cookieLo, undefined, cost);
        }
      },
      (err: unknown) => this.settle(this.errnoFor(err, commandName(type)), cookieHi, cookieLo, undefined, cost),
    );
  }

  private errnoFor(err: unknown, what: string): number {
    if (typeof err === 'object' && err !== null) {
      const carried = (err as { nbdErrno?: unknown }).nbdErrno;
      if (isNbdErrno(carried)) {
        return carried;
      }
      const code = (err as { code?: unknown }).code;
      // The spec asks for host ENOSPC, EDQUOT and EFBIG to reach the client as NBD_ENOSPC.
      if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') {
        return NBD_ENOSPC;
      }
    }
    this.ctx.logger.error(`nbd connection ${this.id}: ${what} failed: ${describe(err)}`);
    return NBD_EIO;
  }

  private settle(errno: number, cookieHi: number, cookieLo: number, data: Buffer | undefined, cost: number, sent?: () => void): void {
    this.inFlight--;
    this.inFlightBytes -= cost;
    this.reply(errno, cookieHi, cookieLo, data, sent);
    if (this.inFlight === 0) {
      if (this.closed) {
        this.releaseExport();
        return;
      }
      if (this.ending) {
        this.endSocket();
        return;
      }
    }
    this.maybeResume();
  }

  /**
   * Writes one simple reply, header and data together. Replies of one event-loop turn are corked and
   * leave in one writev; since nothing else writes between the two calls, a reply is never split by
   * another. `sent` runs once the socket is done with `data` (written, or dropped with the connection).
   */
  private reply(errno: number, cookieHi: number, cookieLo: number, data: Buffer | undefined, sent?: () => void): void {
    const socket = this.socket;
    if (this.closed || !socket.writable) {
      sent?.();
      return;
    }
    const header = Buffer.allocUnsafe(SIMPLE_REPLY_BYTES);
    header.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
    header.writeUInt32BE(errno, 4);
    header.writeUInt32BE(cookieHi, 8);
    header.writeUInt32BE(cookieLo, 12);
    if (!this.corked) {
      this.corked = true;
      socket.cork();
      process.nextTick(uncork, this);
    }
    socket.write(header);
    if (errno === 0 && data !== undefined) {
      // The callback runs after the write completes or fails, never while the socket still holds it.
      socket.write(data, sent);
    } else {
      sent?.();
    }
  }

  uncork(): void {
    this.corked = false;
    this.socket.uncork();
  }

  private optionReply(option: number, type: number, data: Buffer): void {
    if (!this.socket.writable) {
      return;
    }
    const header = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES);
    header.writeBigUInt64BE(NBD_REP_MAGIC, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(type, 12);
    header.writeUInt32BE(data.length, 16);
    this.socket.write(data.length === 0 ? header : Buffer.concat([header, data]));
  }

  private optionError(option: number, type: number, message: string): void {
    this.optionReply(option, type, Buffer.from(message, 'utf8'));
  }

  private overBudget(): boolean {
    return (
      this.inFlight >= this.ctx.maxInFlightRequests ||
      this.inFlightBytes + this.socket.writableLength > this.ctx.maxInFlightBytes
    );
  }

  private maybeResume(): void {
    const stash = this.stash;
    if (stash === undefined || this.closed || this.overBudget()) {
      return;
    }
    this.stash = undefined;
    this.parse(stash);
    if (this.stash === undefined && !this.closed) {
      this.socket.resume();
    }
  }

  /** End of the client's input. Between requests that is a disconnect without NBD_CMD_DISC. */
  private onEnd(): void {
    const midMessage =
      this.staged !== 0 ||
      this.state === State.Payload ||
      this.state === State.Discard ||
      this.state === State.OptionData ||
      this.stash !== undefined;
    if (midMessage) {
      this.abort('the client went away in the middle of a message');
      return;
    }
    this.finishAndClose();
  }

  /** No more input; answer what is in flight, then close (NBD_CMD_DISC, NBD_OPT_ABORT, shutdown). */
  private finishAndClose(): void {
    if (this.ending || this.closed) {
      return;
    }
    this.ending = true;
    this.state = State.Done;
    this.stash = undefined;
    clearTimeout(this.handshakeTimer);
    if (this.inFlight === 0) {
      this.endSocket();
    }
  }

  private endSocket(): void {
    // end() flushes what is queued (and uncorks); then the socket is destroyed so that a client
    // that never closes its side cannot hold the handle open.
    this.socket.end(() => this.socket.destroy());
  }

  /** A protocol violation: hard disconnect. */
  private abort(reason: string): void {
    if (this.closed) {
      return;
    }
    this.ctx.logger.warn(`nbd connection ${this.id}: disconnecting: ${reason}`);
    this.state = State.Done;
    this.socket.destroy();
  }

  private onClose(): void {
    this.closed = true;
    this.state = State.Done;
    this.stash = undefined;
    if (this.payloadLent) {
      // A write cut off mid-payload: it never reaches the device, which gets its buffer back.
      this.payloadLent = false;
      this.device?.discardWrite?.(this.payload);
    }
    this.payload = EMPTY;
    this.optionData = EMPTY;
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    if (this.inFlight === 0) {
      this.releaseExport();
    }
  }

  private releaseExport(): void {
    const entry = this.entry;
    this.entry = undefined;
    if (entry !== undefined) {
      this.release(entry);
    }
  }

  private release(entry: ExportEntry): void {
    try {
      entry.onClose?.();
    } catch (err) {
      this.ctx.logger.error(`nbd connection ${this.id}: export onClose failed: ${describe(err)}`);
    }
  }
}

function uncork(connection: NbdConnection): void {
  connection.uncork();
}

async function trimThenFlush(device: BlockDevice, offset: number, length: number, flush: boolean): Promise<void> {
  await (device.trim as NonNullable<BlockDevice['trim']>).call(device, offset, length);
  if (flush) {
    await device.flush();
  }
}

/**
 * The transmission flags, from what the device says it can do. NBD_FLAG_CAN_MULTI_CONN promises that
 * a flush or FUA reply makes writes from every connection durable and visible to all of them. This
 * server keeps no cache or per-connection state of its own, so that holds exactly when the backend
 * says so (`capabilities.multiConn`): a device shared by all connections whose flush covers every
 * completed write (our volume backends serialise per volume), but never a per-connection overlay.
 */
export function transmissionFlags(device: BlockDevice): number {
  const caps = device.capabilities ?? {};
  let flags = NBD_FLAG_HAS_FLAGS;
  if (device.readOnly) {
    flags |= NBD_FLAG_READ_ONLY;
  } else {
    if (caps.flush === true) {
      flags |= NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA;
    }
    if (caps.trim === true && typeof device.trim === 'function') {
      flags |= NBD_FLAG_SEND_TRIM;
    }
    if (caps.writeZeroes === true && typeof device.writeZeroes === 'function') {
      flags |= NBD_FLAG_SEND_WRITE_ZEROES;
    }
  }
  if (caps.multiConn === true) {
    flags |= NBD_FLAG_CAN_MULTI_CONN;
  }
  return flags;
}

function deviceProblem(device: BlockDevice, maxRequestBytes: number): string | undefined {
  if (!Number.isSafeInteger(device.size) || device.size < 0) {
    return `size ${device.size} is not a byte count`;
  }
  if (device.blockSize !== 512 && device.blockSize !== 4096) {
    return `block size ${String(device.blockSize)} is neither 512 nor 4096`;
  }
  if (maxRequestBytes < device.blockSize) {
    return `the maximum request (${maxRequestBytes} bytes) is smaller than a block`;
  }
  return undefined;
}

function decodeName(bytes: Buffer): string | undefined {
  if (bytes.length > MAX_STRING_BYTES) {
    return undefined;
  }
  try {
    return utf8.decode(bytes);
  } catch {
    return undefined;
  }
}

/** An information reply carrying a string: 0 type (u16), 2 the string. */
function typedString(type: number, value: string): Buffer {
  const bytes = Buffer.from(value, 'utf8').subarray(0, MAX_STRING_BYTES);
  const out = Buffer.allocUnsafe(2 + bytes.length);
  out.writeUInt16BE(type, 0);
  bytes.copy(out, 2);
  return out;
}

function commandName(type: number): string {
  switch (type) {
    case NBD_CMD_READ:
      return 'read';
    case NBD_CMD_FLUSH:
      return 'flush';
    case NBD_CMD_TRIM:
      return 'trim';
    default:
      return 'write zeroes';
  }
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
