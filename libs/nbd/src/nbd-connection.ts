import { type Socket } from 'node:net';
import { TLSSocket, type TLSSocketOptions, type TlsOptions } from 'node:tls';
import { type BlockDevice, type BlockExtent, type ExportEntry, type ExportListing } from './block-device';
import { type NbdTls, type PskKeys } from './nbd-tls';
import {
  BASE_ALLOCATION,
  CLIENT_FLAGS_BYTES,
  EXPORT_NAME_REPLY_BYTES,
  EXPORT_NAME_ZEROES,
  GREETING_BYTES,
  MAX_STATUS_DESCRIPTORS,
  MAX_STRING_BYTES,
  NBD_CMD_BLOCK_STATUS,
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
  NBD_EPERM,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_NO_ZEROES,
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
  NBD_MAGIC,
  NBD_OPTS_MAGIC,
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
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_MAGIC,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  OPTION_HEADER_BYTES,
  OPTION_REPLY_HEADER_BYTES,
  REQUEST_BYTES,
  SIMPLE_REPLY_BYTES,
  STRUCTURED_REPLY_BYTES,
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
  /** TLS, required of every client (NBD_OPT_STARTTLS first), when set. */
  readonly tls: NbdTls | undefined;
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
  /** NBD_OPT_STARTTLS was answered: the next bytes are the client's TLS handshake, not options. */
  StartingTls: 7,
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
  [State.StartingTls]: 0,
};

const TWO_32 = 0x1_0000_0000;
/** The id of `base:allocation` in this server's NBD_OPT_SET_META_CONTEXT replies (0 means none selected). */
const ALLOCATION_CONTEXT_ID = 1;
const EMPTY = Buffer.alloc(0);
const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * One client connection: the fixed newstyle handshake, then the transmission phase. Input is parsed
 * chunk by chunk as it arrives, with no concatenation: a fixed-size header is read straight from the
 * chunk when it is whole there and otherwise collected in a 28-byte staging buffer; option data and
 * write payloads are copied once into a buffer of exactly their size, allocated only after the
 * length has been checked. Each request is dispatched to the device as soon as it is whole, so many
 * are in flight at once and replies go out in completion order.
 *
 * Replies are simple until the client negotiates structured replies (NBD_OPT_STRUCTURED_REPLY). Then a
 * read is answered with one data chunk (never split, so NBD_FLAG_SEND_DF holds for free), an error
 * with an error chunk that says why in words, block status with one chunk for `base:allocation`, and
 * the success of anything else with a simple reply, as the spec allows.
 */
export class NbdConnection {
  private state: State = State.ClientFlags;
  /** The plain socket until NBD_OPT_STARTTLS, then the TLS socket over it. */
  private socket: Socket;
  private tlsActive = false;
  /** The PSK identity whose key the handshake uses, or why the one offered has none. */
  private pskIdentity: string | undefined;
  private pskRefused: string | undefined;
  /** Decrypted input not parsed yet (see onSecureData). */
  private secureChunks: Buffer[] = [];
  private readonly stage = Buffer.allocUnsafe(REQUEST_BYTES);
  private staged = 0;
  private noZeroes = false;

  private option = 0;
  private optionData: Buffer = EMPTY;
  private optionFilled = 0;

  private entry: ExportEntry | undefined;
  private device: BlockDevice | undefined;
  private flags = 0;
  /** NBD_OPT_STRUCTURED_REPLY was acknowledged. */
  private structured = false;
  /** What the last NBD_OPT_SET_META_CONTEXT selected, and for which export name. */
  private metaSelection: { readonly exportName: string; readonly allocation: boolean } | undefined;
  /** In transmission: the id block status replies carry, 0 when the client selected no context. */
  private allocationId = 0;

  /** The write whose payload is arriving (State.Payload) or being skipped (State.Discard). */
  private payload: Buffer = EMPTY;
  private payloadFilled = 0;
  /** The payload buffer came from the device's allocateWrite: it goes back to the device either way. */
  private payloadLent = false;
  private payloadOffset = 0;
  private payloadFua = false;
  private discardRemaining = 0;
  private pendingErrno = 0;
  private pendingProblem = '';
  /** Why `check` refused the request it last refused (sent to clients that take structured replies). */
  private problem = '';
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
  private signalClosed: () => void = () => undefined;
  /** Resolves once the connection's socket (the TLS socket and the TCP socket under it, if TLS) has closed. */
  readonly done: Promise<void>;

  constructor(
    socket: Socket,
    private readonly ctx: ConnectionContext,
    readonly id: number,
  ) {
    this.socket = socket;
    this.done = new Promise((resolve) => {
      this.signalClosed = resolve;
    });
    socket.setNoDelay(true);
    this.listenTo(socket);
    this.handshakeTimer = setTimeout(() => this.abort('no export chosen in time'), ctx.handshakeTimeoutMs);

    const greeting = Buffer.allocUnsafe(GREETING_BYTES);
    greeting.writeBigUInt64BE(NBD_MAGIC, 0);
    greeting.writeBigUInt64BE(NBD_OPTS_MAGIC, 8);
    greeting.writeUInt16BE(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, 16);
    socket.write(greeting);
  }

  private listenTo(socket: Socket, secure = false): void {
    socket.on('data', secure ? (chunk: Buffer) => this.onSecureData(chunk) : (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onEnd());
    socket.on('drain', () => this.maybeResume());
    socket.on('error', (err) => this.onSocketError(err));
    socket.on('close', () => this.onClose());
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

  /**
   * Over TLS every record arrives as its own 'data' event, each a separate call from native code after
   * which Node runs the microtasks: the capture's batch (one log append per event-loop turn) would
   * end after every request. So decrypted chunks are collected and parsed together once the socket's
   * read is done (setImmediate runs right after the poll phase that delivered them). Measured with
   * fio 4 KiB random writes over TLS on the all-in-one: the log append was a third of the event loop.
   */
  private onSecureData(chunk: Buffer): void {
    this.secureChunks.push(chunk);
    if (this.secureChunks.length === 1) {
      setImmediate(flushSecure, this);
    }
  }

  /** Parses the chunks `onSecureData` collected, in order (also before the end of input or a close is handled). */
  flushSecureChunks(): void {
    const chunks = this.secureChunks;
    if (chunks.length === 0) {
      return;
    }
    this.secureChunks = [];
    for (const chunk of chunks) {
      if (this.closed) {
        return;
      }
      this.onData(chunk);
    }
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
        case State.StartingTls:
          // The client must wait for the option's reply before its TLS handshake.
          this.abort('bytes after NBD_OPT_STARTTLS before its reply');
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
            this.reply(this.pendingErrno, this.cookieHi, this.cookieLo, undefined, undefined, -1, this.pendingProblem);
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
    if (this.ctx.tls !== undefined && !this.tlsActive && option !== NBD_OPT_STARTTLS && option !== NBD_OPT_ABORT) {
      // FORCEDTLS: nothing about the exports before TLS, not even whether they exist.
      if (option === NBD_OPT_EXPORT_NAME) {
        this.abort('NBD_OPT_EXPORT_NAME before TLS, which this server requires');
      } else {
        this.optionError(option, NBD_REP_ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first');
      }
      return;
    }
    switch (option) {
      case NBD_OPT_EXPORT_NAME:
        this.exportName(data);
        return;
      case NBD_OPT_STARTTLS:
        this.startTls(data);
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
      case NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) {
          this.optionError(option, NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
          return;
        }
        this.structured = true;
        this.optionReply(option, NBD_REP_ACK, EMPTY);
        return;
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        this.metaContext(option, data);
        return;
      default:
        // Extended headers, and anything newer.
        this.optionError(option, NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  /**
   * NBD_OPT_STARTTLS: acknowledged in the clear, then the TLS handshake runs over the same socket and
   * the negotiation starts again inside it. What was negotiated before (structured replies, metadata
   * contexts) is forgotten, as the spec asks: an attacker could have injected it.
   */
  private startTls(data: Buffer): void {
    const tls = this.ctx.tls;
    if (tls === undefined) {
      this.optionError(NBD_OPT_STARTTLS, NBD_REP_ERR_UNSUP, 'this server does not offer TLS');
      return;
    }
    if (this.tlsActive) {
      this.optionError(NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, 'TLS is on already');
      return;
    }
    if (data.length !== 0) {
      this.optionError(NBD_OPT_STARTTLS, NBD_REP_ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
      return;
    }
    this.state = State.StartingTls;
    this.structured = false;
    this.metaSelection = undefined;
    const plain = this.socket;
    const header = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES);
    header.writeBigUInt64BE(NBD_REP_MAGIC, 0);
    header.writeUInt32BE(NBD_OPT_STARTTLS, 8);
    header.writeUInt32BE(NBD_REP_ACK, 12);
    header.writeUInt32BE(0, 16);
    // The TLS socket takes the connection over once the acknowledgement is on its way, never before:
    // anything queued in the clear after that point would land inside the TLS stream.
    plain.write(header, (err) => {
      if (err || this.closed) {
        return;
      }
      plain.removeAllListeners('data');
      plain.removeAllListeners('end');
      plain.removeAllListeners('drain');
      const psk = tls.psk;
      // Node takes `pskCallback` on a server-side TLSSocket as on a server; its typings list it on servers only.
      const options: TLSSocketOptions & Pick<TlsOptions, 'pskCallback'> = psk
        ? { isServer: true, secureContext: tls.secureContext, pskCallback: (_socket, identity) => this.pskKey(psk, identity) }
        : { isServer: true, secureContext: tls.secureContext, requestCert: tls.verifyClients, rejectUnauthorized: tls.verifyClients };
      const secure = new TLSSocket(plain, options);
      this.socket = secure;
      this.listenTo(secure, true);
      secure.once('secure', () => {
        this.tlsActive = true;
        this.state = State.OptionHeader;
      });
    });
  }

  /** The key of the identity a client offered, remembered (or why there is none) for the handshake's outcome. */
  private pskKey(psk: PskKeys, identity: string): Buffer | null {
    const found = psk.lookup(identity);
    if ('key' in found) {
      this.pskIdentity = identity;
      return found.key;
    }
    this.pskRefused = found.refused;
    return null;
  }

  /**
   * Why a TLS handshake failed, in words an operator can act on where the cause is the client's
   * credentials (OpenSSL's own words otherwise). Authentication failures are warnings: someone may be
   * trying keys.
   */
  private onSocketError(err: Error & { code?: string }): void {
    if (this.tlsActive || this.state !== State.StartingTls) {
      this.ctx.logger.log(`nbd connection ${this.id}: ${err.message}`);
      return;
    }
    const psk = this.ctx.tls?.psk;
    if (this.pskRefused !== undefined) {
      this.ctx.logger.warn(`nbd connection ${this.id}: TLS refused: ${this.pskRefused}`);
    } else if (psk && this.pskIdentity !== undefined && err.code === 'ERR_SSL_BINDER_DOES_NOT_VERIFY') {
      this.ctx.logger.warn(`nbd connection ${this.id}: TLS refused: the client's key for PSK identity '${this.pskIdentity}' is not the one in ${psk.file}`);
    } else if (psk && this.pskIdentity === undefined && err.code === 'ERR_SSL_NO_SUITABLE_SIGNATURE_ALGORITHM') {
      // Without a PSK the handshake falls back to certificates, which this server has none of.
      this.ctx.logger.warn(`nbd connection ${this.id}: TLS refused: the client offered no pre-shared key (this server authenticates clients by PSK only)`);
    } else {
      this.ctx.logger.warn(`nbd connection ${this.id}: TLS handshake failed: ${err.message.trim()}`);
    }
  }

  /**
   * The one context offered is `base:allocation`, on every export: a device that cannot tell reports
   * its bytes allocated and of unknown content, which the spec allows for any block. So the export
   * name is recorded (block status works only when NBD_OPT_GO names the same export) but not looked
   * up: resolving an export can cost its backend work.
   */
  private metaContext(option: number, data: Buffer): void {
    const setting = option === NBD_OPT_SET_META_CONTEXT;
    if (setting) {
      // A SET replaces the selection even when it fails.
      this.metaSelection = undefined;
    }
    if (!this.structured) {
      this.optionError(option, NBD_REP_ERR_INVALID, 'metadata contexts need structured replies: send NBD_OPT_STRUCTURED_REPLY first');
      return;
    }
    const parsed = parseMetaRequest(data);
    if (typeof parsed === 'string') {
      this.optionError(option, NBD_REP_ERR_INVALID, parsed);
      return;
    }
    const { exportName, queries } = parsed;
    // Listing: no query lists everything, and the `base:` wildcard every context of that namespace.
    // Setting: only the full name selects. Queries of other namespaces are ignored, as the spec says.
    const matches = setting
      ? queries.includes(BASE_ALLOCATION)
      : queries.length === 0 || queries.some((query) => query === 'base:' || query === BASE_ALLOCATION);
    if (matches) {
      const reply = Buffer.allocUnsafe(4 + BASE_ALLOCATION.length);
      reply.writeUInt32BE(setting ? ALLOCATION_CONTEXT_ID : 0, 0);
      reply.write(BASE_ALLOCATION, 4, 'utf8');
      this.optionReply(option, NBD_REP_META_CONTEXT, reply);
    }
    if (setting) {
      this.metaSelection = { exportName, allocation: matches };
    }
    this.optionReply(option, NBD_REP_ACK, EMPTY);
  }

  private exportName(data: Buffer): void {
    const name = decodeName(data);
    const entry = name === undefined ? undefined : this.lookup(name);
    if (entry === undefined) {
      // This option cannot be answered with an error: the spec says to end the session.
      this.abort(`NBD_OPT_EXPORT_NAME for an unknown export`);
      return;
    }
    const flags = transmissionFlags(entry.device, this.structured);
    const reply = Buffer.alloc(EXPORT_NAME_REPLY_BYTES + (this.noZeroes ? 0 : EXPORT_NAME_ZEROES));
    reply.writeBigUInt64BE(BigInt(entry.device.size), 0);
    reply.writeUInt16BE(flags, 8);
    this.socket.write(reply);
    this.enterTransmission(entry, flags, name as string);
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
    const flags = transmissionFlags(device, this.structured);
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
      this.enterTransmission(entry, flags, name);
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

  private enterTransmission(entry: ExportEntry, flags: number, exportName: string): void {
    clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    this.entry = entry;
    this.device = entry.device;
    this.flags = flags;
    const selection = this.metaSelection;
    this.allocationId = selection !== undefined && selection.allocation && selection.exportName === exportName ? ALLOCATION_CONTEXT_ID : 0;
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
          this.reply(errno, cookieHi, cookieLo, undefined, undefined, -1, this.problem);
        } else {
          this.pendingErrno = errno;
          this.pendingProblem = this.problem;
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
      this.reply(errno, cookieHi, cookieLo, undefined, undefined, -1, this.problem);
      return;
    }
    this.dispatch(type, commandFlags, offset, length, cookieHi, cookieLo);
  }

  /**
   * Returns 0 when the request may go to the device, or the NBD error to answer it with (and then
   * says why in `problem`).
   */
  private check(type: number, commandFlags: number, offset: number, length: number): number {
    const device = this.device as BlockDevice;
    // FUA is valid on every command once negotiated; the others only on their own command and once
    // advertised (DF with structured replies, FAST_ZERO with the device's fast zeroing). Anything
    // else is invalid, like an unknown flag.
    let allowed = (this.flags & NBD_FLAG_SEND_FUA) !== 0 ? NBD_CMD_FLAG_FUA : 0;
    if (type === NBD_CMD_WRITE_ZEROES) {
      allowed |= NBD_CMD_FLAG_NO_HOLE | ((this.flags & NBD_FLAG_SEND_FAST_ZERO) !== 0 ? NBD_CMD_FLAG_FAST_ZERO : 0);
    } else if (type === NBD_CMD_READ) {
      allowed |= (this.flags & NBD_FLAG_SEND_DF) !== 0 ? NBD_CMD_FLAG_DF : 0;
    } else if (type === NBD_CMD_BLOCK_STATUS) {
      allowed |= NBD_CMD_FLAG_REQ_ONE;
    }
    if ((commandFlags & ~allowed) !== 0) {
      return this.refuse(NBD_EINVAL, `command flags 0x${commandFlags.toString(16)} are not valid on ${commandName(type)} here`);
    }
    const writes = type === NBD_CMD_WRITE || type === NBD_CMD_TRIM || type === NBD_CMD_WRITE_ZEROES;
    if (type === NBD_CMD_FLUSH) {
      // Offset and length are reserved and MUST be zero.
      return offset !== 0 || length !== 0 ? this.refuse(NBD_EINVAL, 'a flush carries no offset or length') : 0;
    }
    if (!writes && type !== NBD_CMD_READ && type !== NBD_CMD_BLOCK_STATUS) {
      return this.refuse(NBD_EINVAL, `command ${type} is not supported`);
    }
    if (writes && device.readOnly) {
      return this.refuse(NBD_EPERM, 'the export is read-only');
    }
    if (
      (type === NBD_CMD_TRIM && (this.flags & NBD_FLAG_SEND_TRIM) === 0) ||
      (type === NBD_CMD_WRITE_ZEROES && (this.flags & NBD_FLAG_SEND_WRITE_ZEROES) === 0)
    ) {
      return this.refuse(NBD_EINVAL, `${commandName(type)} was not advertised for this export`);
    }
    if (type === NBD_CMD_BLOCK_STATUS && this.allocationId === 0) {
      return this.refuse(NBD_EINVAL, 'block status needs a metadata context selected (NBD_OPT_SET_META_CONTEXT) for this export');
    }
    // The spec leaves zero-length requests unspecified (but says not to disconnect); refusing them
    // keeps backends from ever seeing an empty range.
    if (length === 0) {
      return this.refuse(NBD_EINVAL, `a ${commandName(type)} of zero bytes`);
    }
    // Only READ and WRITE carry the length as a payload; the others may cover more.
    if ((type === NBD_CMD_READ || type === NBD_CMD_WRITE) && length > this.ctx.maxRequestBytes) {
      return this.refuse(NBD_EOVERFLOW, `a ${commandName(type)} of ${length} bytes is larger than the maximum payload (${this.ctx.maxRequestBytes})`);
    }
    if (offset > device.size || length > device.size - offset) {
      // The spec's choice: ENOSPC for writing past the end, EINVAL for reading or trimming there.
      return this.refuse(
        type === NBD_CMD_WRITE || type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL,
        `${commandName(type)} of [${offset}, ${offset + length}) goes past the end of the export (${device.size} bytes)`,
      );
    }
    const blockSize = device.blockSize;
    if (offset % blockSize !== 0 || (length % blockSize !== 0 && offset + length !== device.size)) {
      return this.refuse(NBD_EINVAL, `${commandName(type)} of [${offset}, ${offset + length}) is not aligned to the export's ${blockSize}-byte blocks`);
    }
    return 0;
  }

  private refuse(errno: number, problem: string): number {
    this.problem = problem;
    return errno;
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
      this.settleFailed(err, 'write', cookieHi, cookieLo, data.length);
      return;
    }
    done.then(
      () => this.settle(0, cookieHi, cookieLo, undefined, data.length),
      (err: unknown) => this.settleFailed(err, 'write', cookieHi, cookieLo, data.length),
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
    const what = commandName(type);
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
        case NBD_CMD_BLOCK_STATUS:
          done = this.blockStatus(device, offset, length, (commandFlags & NBD_CMD_FLAG_REQ_ONE) !== 0);
          break;
        default: {
          const fast = (commandFlags & NBD_CMD_FLAG_FAST_ZERO) !== 0;
          done = (device.writeZeroes as NonNullable<BlockDevice['writeZeroes']>).call(device, offset, length, fua, fast);
        }
      }
    } catch (err) {
      this.settleFailed(err, what, cookieHi, cookieLo, cost);
      return;
    }
    done.then(
      (data) => {
        if (type === NBD_CMD_BLOCK_STATUS) {
          this.settle(0, cookieHi, cookieLo, data as Buffer, cost, undefined, -1);
        } else if (type !== NBD_CMD_READ) {
          this.settle(0, cookieHi, cookieLo, undefined, cost);
        } else if (data instanceof Buffer && data.length === length) {
          this.settle(0, cookieHi, cookieLo, data, cost, device.release && (() => device.release?.(data)), offset);
        } else {
          // A reply with the wrong amount of data would desynchronise the client's stream.
          const got = data instanceof Buffer ? `${data.length} bytes` : 'no buffer';
          this.ctx.logger.error(`nbd connection ${this.id}: device read of ${length} bytes returned ${got}`);
          this.settle(NBD_EIO, cookieHi, cookieLo, undefined, cost, undefined, -1, 'read failed on the server');
        }
      },
      (err: unknown) => this.settleFailed(err, what, cookieHi, cookieLo, cost),
    );
  }

  /**
   * The payload of a NBD_REPLY_TYPE_BLOCK_STATUS chunk for [offset, offset + length): the device's
   * extents, checked, cut at the end of the range (one extent only for REQ_ONE), neighbours with the
   * same flags merged. A device without block status reports the range allocated.
   */
  private async blockStatus(device: BlockDevice, offset: number, length: number, reqOne: boolean): Promise<Buffer> {
    const extents: readonly BlockExtent[] = device.blockStatus ? await device.blockStatus(offset, length) : [{ length, flags: 0 }];
    const lengths: number[] = [];
    const flags: number[] = [];
    let covered = 0;
    for (const extent of extents) {
      if (!Number.isSafeInteger(extent.length) || extent.length <= 0 || !Number.isInteger(extent.flags) || extent.flags < 0 || extent.flags > 0xffff_ffff) {
        throw new Error(`block status of [${offset}, ${offset + length}) returned an extent of ${extent.length} bytes with flags ${extent.flags}`);
      }
      const take = Math.min(extent.length, length - covered);
      const last = flags.length - 1;
      if (last >= 0 && flags[last] === extent.flags) {
        lengths[last] = (lengths[last] as number) + take;
      } else {
        lengths.push(take);
        flags.push(extent.flags);
      }
      covered += take;
      // REQ_ONE: one extent, within the request (a shorter answer than the device could give is allowed).
      if (covered === length || reqOne || lengths.length === MAX_STATUS_DESCRIPTORS) {
        break;
      }
    }
    if (lengths.length === 0) {
      throw new Error(`block status of [${offset}, ${offset + length}) returned no extent`);
    }
    const count = lengths.length;
    const payload = Buffer.allocUnsafe(4 + 8 * count);
    payload.writeUInt32BE(this.allocationId, 0);
    for (let i = 0; i < count; i++) {
      payload.writeUInt32BE(lengths[i] as number, 4 + 8 * i);
      payload.writeUInt32BE(flags[i] as number, 8 + 8 * i);
    }
    return payload;
  }

  private errnoFor(err: unknown, what: string): { readonly errno: number; readonly problem: string } {
    if (typeof err === 'object' && err !== null) {
      const carried = (err as { nbdErrno?: unknown }).nbdErrno;
      if (isNbdErrno(carried)) {
        // Errors that carry an NBD errno are the backend's answers to the client: their words go too.
        return { errno: carried, problem: describe(err) };
      }
      const code = (err as { code?: unknown }).code;
      // The spec asks for host ENOSPC, EDQUOT and EFBIG to reach the client as NBD_ENOSPC.
      if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') {
        return { errno: NBD_ENOSPC, problem: `${what} failed: no space left on the server (${String(code)})` };
      }
    }
    // Anything else is the server's failure; its details (paths, say) stay in the server's log.
    this.ctx.logger.error(`nbd connection ${this.id}: ${what} failed: ${describe(err)}`);
    return { errno: NBD_EIO, problem: `${what} failed on the server` };
  }

  private settleFailed(err: unknown, what: string, cookieHi: number, cookieLo: number, cost: number): void {
    const { errno, problem } = this.errnoFor(err, what);
    this.settle(errno, cookieHi, cookieLo, undefined, cost, undefined, -1, problem);
  }

  private settle(
    errno: number,
    cookieHi: number,
    cookieLo: number,
    data: Buffer | undefined,
    cost: number,
    sent?: () => void,
    readOffset = -1,
    problem = '',
  ): void {
    this.inFlight--;
    this.inFlightBytes -= cost;
    this.reply(errno, cookieHi, cookieLo, data, sent, readOffset, problem);
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
   * Writes one reply, header and data together. Replies of one event-loop turn are corked and leave
   * in one writev; since nothing else writes between the two calls, a reply is never split by
   * another. `sent` runs once the socket is done with `data` (written, or dropped with the connection).
   *
   * Simple replies until structured replies are negotiated. Then: an error is an error chunk with
   * `problem` as its message; `data` with a `readOffset` (0 or more) is a read's, sent as one
   * NBD_REPLY_TYPE_OFFSET_DATA chunk; `data` without one is a block status payload; success without
   * data stays a simple reply (never for a read: a read always has data).
   */
  private reply(errno: number, cookieHi: number, cookieLo: number, data: Buffer | undefined, sent?: () => void, readOffset = -1, problem = ''): void {
    const socket = this.socket;
    if (this.closed || !socket.writable) {
      sent?.();
      return;
    }
    if (!this.corked) {
      this.corked = true;
      socket.cork();
      process.nextTick(uncork, this);
    }
    if (!this.structured || (errno === 0 && data === undefined)) {
      const header = Buffer.allocUnsafe(SIMPLE_REPLY_BYTES);
      header.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
      header.writeUInt32BE(errno, 4);
      header.writeUInt32BE(cookieHi, 8);
      header.writeUInt32BE(cookieLo, 12);
      socket.write(header);
      if (errno === 0 && data !== undefined) {
        // The callback runs after the write completes or fails, never while the socket still holds it.
        socket.write(data, sent);
      } else {
        sent?.();
      }
      return;
    }
    if (errno !== 0) {
      const message = Buffer.from(problem, 'utf8').subarray(0, MAX_STRING_BYTES);
      const chunk = structuredHeader(NBD_REPLY_TYPE_ERROR, cookieHi, cookieLo, 6 + message.length, 6 + message.length);
      chunk.writeUInt32BE(errno, STRUCTURED_REPLY_BYTES);
      chunk.writeUInt16BE(message.length, STRUCTURED_REPLY_BYTES + 4);
      message.copy(chunk, STRUCTURED_REPLY_BYTES + 6);
      socket.write(chunk);
      sent?.();
      return;
    }
    const payload = data as Buffer;
    if (readOffset < 0) {
      socket.write(structuredHeader(NBD_REPLY_TYPE_BLOCK_STATUS, cookieHi, cookieLo, payload.length, 0));
      socket.write(payload, sent);
      return;
    }
    const header = structuredHeader(NBD_REPLY_TYPE_OFFSET_DATA, cookieHi, cookieLo, 8 + payload.length, 8);
    header.writeUInt32BE(Math.floor(readOffset / TWO_32), STRUCTURED_REPLY_BYTES);
    header.writeUInt32BE(readOffset % TWO_32, STRUCTURED_REPLY_BYTES + 4);
    socket.write(header);
    socket.write(payload, sent);
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
    this.flushSecureChunks();
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
    if (this.closed) {
      // The TCP socket under a TLS socket closes too.
      return;
    }
    // What arrived before the close is taken, as it would have been in the clear.
    this.flushSecureChunks();
    this.closed = true;
    this.signalClosed();
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

function flushSecure(connection: NbdConnection): void {
  connection.flushSecureChunks();
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
export function transmissionFlags(device: BlockDevice, structured = false): number {
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
      if (caps.fastZero === true) {
        flags |= NBD_FLAG_SEND_FAST_ZERO;
      }
    }
  }
  if (structured) {
    // Reads are always answered in one chunk, so "don't fragment" costs nothing to honour; the spec
    // asks a server that supports it to say so, and only once structured replies are agreed.
    flags |= NBD_FLAG_SEND_DF;
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
    case NBD_CMD_WRITE:
      return 'write';
    case NBD_CMD_FLUSH:
      return 'flush';
    case NBD_CMD_TRIM:
      return 'trim';
    case NBD_CMD_WRITE_ZEROES:
      return 'write zeroes';
    case NBD_CMD_BLOCK_STATUS:
      return 'block status';
    default:
      return `command ${type}`;
  }
}

/**
 * A structured reply chunk's 20-byte header with room for `extra` bytes of payload after it (the
 * fixed part the caller fills in), flagged as the request's last chunk: every reply here is one chunk.
 */
function structuredHeader(type: number, cookieHi: number, cookieLo: number, payloadLength: number, extra: number): Buffer {
  const chunk = Buffer.allocUnsafe(STRUCTURED_REPLY_BYTES + extra);
  chunk.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  chunk.writeUInt16BE(NBD_REPLY_FLAG_DONE, 4);
  chunk.writeUInt16BE(type, 6);
  chunk.writeUInt32BE(cookieHi, 8);
  chunk.writeUInt32BE(cookieLo, 12);
  chunk.writeUInt32BE(payloadLength, 16);
  return chunk;
}

/**
 * NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data: 0 export name length N (u32), 4 name,
 * 4+N number of queries (u32), then each query: length (u32), string. Returns why it is malformed
 * when it is: the lengths must account for every byte, and every string be valid UTF-8 of at most
 * 4096 bytes.
 */
function parseMetaRequest(data: Buffer): { readonly exportName: string; readonly queries: readonly string[] } | string {
  if (data.length < 8) {
    return 'option data is too short';
  }
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 8) {
    return 'export name overruns the option';
  }
  const exportName = decodeName(data.subarray(4, 4 + nameLength));
  if (exportName === undefined) {
    return 'export name is not a valid string';
  }
  const count = data.readUInt32BE(4 + nameLength);
  const queries: string[] = [];
  let at = 8 + nameLength;
  for (let i = 0; i < count; i++) {
    if (data.length - at < 4) {
      return `query ${i + 1} of ${count} overruns the option`;
    }
    const length = data.readUInt32BE(at);
    if (length > data.length - at - 4) {
      return `query ${i + 1} of ${count} overruns the option`;
    }
    const query = decodeName(data.subarray(at + 4, at + 4 + length));
    if (query === undefined) {
      return `query ${i + 1} is not a valid string`;
    }
    queries.push(query);
    at += 4 + length;
  }
  if (at !== data.length) {
    return 'bytes follow the last query';
  }
  return { exportName, queries };
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
