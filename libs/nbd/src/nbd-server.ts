import { chmod, lstat, stat, unlink } from 'node:fs/promises';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { dirname } from 'node:path';
import { type ExportEntry, type ExportListing } from './block-device';
import { type ConnectionContext, NbdConnection, type NbdLogger } from './nbd-connection';
import { type NbdTls } from './nbd-tls';
import { type NbdEndpoint } from './nbd-uri';
import { DEFAULT_MAX_PAYLOAD_BYTES } from './protocol';

export interface NbdServerOptions {
  /** The export a client asks for by name ('' is the default export), or undefined if there is none. */
  readonly resolve: (exportName: string) => ExportEntry | undefined;
  /** Answers NBD_OPT_LIST; without it the option is refused with NBD_REP_ERR_POLICY. */
  readonly list?: () => readonly ExportListing[];
  /**
   * Largest READ or WRITE payload accepted, advertised as the maximum payload in NBD_INFO_BLOCK_SIZE.
   * Default 32 MiB, the size the spec says no server should treat as abusive.
   */
  readonly maxRequestBytes?: number;
  /**
   * Per connection: once this many payload bytes are held for unanswered requests (writes received,
   * reads under way, replies not yet taken by the kernel), no further request is read until some are
   * answered. TCP flow control then slows the client down. Default 64 MiB.
   */
  readonly maxInFlightBytes?: number;
  /** Per connection, the same for the number of unanswered requests. Default 1024. */
  readonly maxInFlightRequests?: number;
  /** A client that has not chosen an export by then is disconnected. Default 30 s. */
  readonly handshakeTimeoutMs?: number;
  /** How long `close()` lets in-flight requests finish before dropping connections. Default 10 s. */
  readonly closeGraceMs?: number;
  readonly logger?: NbdLogger;
  /**
   * Require TLS of every client (NBD_OPT_STARTTLS before any other option but NBD_OPT_ABORT, the
   * spec's FORCEDTLS mode); see `loadNbdTls`. Without it the server speaks in the clear and refuses
   * NBD_OPT_STARTTLS.
   */
  readonly tls?: NbdTls;
}

export interface NbdServerStats {
  /** Connections open now, in the handshake or in transmission. */
  readonly open: number;
  /** Of those, the ones in the transmission phase. */
  readonly transmitting: number;
  /** Connections accepted since the server started. */
  readonly accepted: number;
}

const silent: NbdLogger = { log: () => undefined, warn: () => undefined, error: () => undefined };

/**
 * A Network Block Device server (fixed newstyle negotiation; simple or structured replies, block status
 * through `base:allocation`) over TCP or a Unix domain socket. Exports are
 * looked up by name on every NBD_OPT_GO, NBD_OPT_INFO and NBD_OPT_EXPORT_NAME, so the set can change
 * while the server runs.
 */
export class NbdServer {
  private readonly server: Server;
  private readonly connections = new Set<NbdConnection>();
  private readonly ctx: ConnectionContext;
  private readonly closeGraceMs: number;
  private accepted = 0;
  private closing: Promise<void> | undefined;

  constructor(options: NbdServerOptions) {
    const maxRequestBytes = options.maxRequestBytes ?? DEFAULT_MAX_PAYLOAD_BYTES;
    // The maximum payload is a u32 on the wire and must be at least the largest preferred block size.
    if (!Number.isInteger(maxRequestBytes) || maxRequestBytes < 4096 || maxRequestBytes > 0xffff_ffff) {
      throw new RangeError(`maxRequestBytes must be an integer from 4096 to 2^32-1, not ${maxRequestBytes}`);
    }
    this.ctx = {
      resolve: options.resolve,
      list: options.list,
      maxRequestBytes,
      maxInFlightBytes: options.maxInFlightBytes ?? 64 * 1024 * 1024,
      maxInFlightRequests: options.maxInFlightRequests ?? 1024,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 30_000,
      logger: options.logger ?? silent,
      shuttingDown: () => this.closing !== undefined,
      tls: options.tls,
    };
    this.closeGraceMs = options.closeGraceMs ?? 10_000;
    // Half-open: a client that shuts down its sending side between requests still gets its replies.
    this.server = createServer({ allowHalfOpen: true }, (socket) => this.accept(socket));
    this.server.on('error', (err) => this.ctx.logger.error(`nbd server: ${err.message}`));
  }

  /** Starts listening; port 0 picks a free one. Loopback unless told otherwise. */
  async listen(port: number, host = '127.0.0.1'): Promise<{ port: number }> {
    await this.listenOn({ port, host });
    return { port: (this.server.address() as AddressInfo).port };
  }

  /**
   * Starts listening on a Unix domain socket at `path` instead of TCP: for clients on the same host
   * (a hypervisor beside the splitter), where file permissions decide who may connect. The socket is
   * made mode 0660 (its owner and group may connect); the file goes when the server closes. A socket
   * file left by a process that died is replaced; anything else at `path` (a live server's socket, a
   * file that is not a socket) is refused, never removed.
   */
  async listenOnPath(path: string): Promise<void> {
    // bind() would say EACCES for a directory that does not exist, which sends people the wrong way.
    const parent = dirname(path);
    if (!(await stat(parent).catch(() => null))?.isDirectory()) {
      throw new Error(`cannot put a socket at ${path}: ${parent} is not an existing directory`);
    }
    const existing = await lstat(path).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') {
        return null;
      }
      throw err;
    });
    if (existing) {
      if (!existing.isSocket()) {
        throw new Error(`${path} exists and is not a socket: not replaced`);
      }
      if (await answers(path)) {
        throw new Error(`another server is listening on ${path}`);
      }
      await unlink(path);
    }
    await this.listenOn({ path });
    await chmod(path, 0o660);
  }

  private listenOn(options: { port: number; host: string } | { path: string }): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.server.once('error', onError);
      this.server.listen(options, () => {
        this.server.off('error', onError);
        resolve();
      });
    });
  }

  get stats(): NbdServerStats {
    let transmitting = 0;
    for (const connection of this.connections) {
      if (connection.transmitting) {
        transmitting++;
      }
    }
    return { open: this.connections.size, transmitting, accepted: this.accepted };
  }

  /**
   * Stops accepting, drops connections still in the handshake, lets those in transmission answer what
   * is in flight (at most `closeGraceMs`), and resolves once every socket and the listener are closed.
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    const listenerClosed = this.server.listening
      ? new Promise<void>((resolve) => this.server.close(() => resolve()))
      : Promise.resolve();
    for (const connection of this.connections) {
      connection.shutdown(this.closeGraceMs);
    }
    await Promise.all([listenerClosed, ...[...this.connections].map((c) => c.done)]);
  }

  private accept(socket: Socket): void {
    if (this.closing !== undefined) {
      socket.destroy();
      return;
    }
    this.accepted++;
    const connection = new NbdConnection(socket, this.ctx, this.accepted);
    this.connections.add(connection);
    void connection.done.then(() => this.connections.delete(connection));
  }
}

/** Where a server is told to listen: TCP, or the Unix socket that replaces it (null: TCP). */
export interface NbdListenSettings {
  readonly host: string;
  readonly port: number;
  readonly socket: string | null;
}

/**
 * Starts `server` where `listen` says and returns where clients reach it (the actual port: 0 picks
 * one). A failure is an Error saying what was to be served, why it could not be, and which of the
 * settings `names` to change: the caller reports it to an operator as it is.
 */
export async function listenAsConfigured(
  server: NbdServer,
  listen: NbdListenSettings,
  names: { readonly host: string; readonly port: string; readonly socket: string },
  what: string,
): Promise<NbdEndpoint> {
  const { host, port, socket } = listen;
  try {
    if (socket === null) {
      return { host, port: (await server.listen(port, host)).port };
    }
    await server.listenOnPath(socket);
    return { socket };
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new Error(
      socket === null
        ? `cannot serve ${what} over NBD on ${host}:${port} (${(err as NodeJS.ErrnoException).code ?? message}); set ${names.port} to a free port (0 picks one) or ${names.host}`
        : `cannot serve ${what} over NBD on the Unix socket ${socket} (${message}); set ${names.socket} to another path`,
      { cause: err },
    );
  }
}

/**
 * Whether a server accepts connections on the Unix socket at `path`: false only when the kernel says
 * nobody listens there (a socket file its server left behind). Any other failure (no permission to
 * connect, say) is thrown: that socket may well be someone's.
 */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const probe = connect({ path });
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ECONNREFUSED') {
        resolve(false);
      } else {
        reject(new Error(`cannot tell whether a server listens on ${path}: ${err.message}`, { cause: err }));
      }
    });
  });
}
