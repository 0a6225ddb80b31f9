import { Inject, Injectable, Logger } from '@nestjs/common';
import { APP_CONFIG, type AppConfig, type NbdListen, StartupError } from '@cdp/config';
import { type ExportEntry, type ExportListing, type NbdEndpoint, NbdServer, type NbdTls, listenAsConfigured, loadNbdTls, nbdUri } from '@cdp/nbd';
import { nbdExportCatalog, type NbdExportCatalog } from './nbd-exports';
import { type PayloadRingStats } from './payload-ring';
import { ProtectedVolumeDevice } from './protected-volume.device';
import { type SplitterFrontEnd, SplitterService } from './splitter.service';

export interface NbdStatus {
  readonly host: string;
  /** The port actually listened on (CDP_NBD_PORT=0 picks one); null until started, after stopping, or on a Unix socket. */
  readonly port: number | null;
  /** The Unix socket listened on instead of TCP (CDP_NBD_SOCKET), else null. */
  readonly socket: string | null;
  /**
   * `off`: in the clear (nbd://); `on`: every client must start TLS (nbds://); `verify-clients`: and
   * show a certificate the configured CA signed (CDP_NBD_TLS_CERT, CDP_NBD_TLS_KEY, CDP_NBD_TLS_CA);
   * `psk`: and hold the pre-shared key of the identity it offers (CDP_NBD_TLS_PSK_FILE).
   */
  readonly tls: 'off' | 'on' | 'verify-clients' | 'psk';
  readonly exports: readonly {
    readonly name: string;
    readonly vpgId: string;
    readonly vmId: string;
    readonly volumeId: string;
    readonly sizeBytes: number;
    readonly blockSize: number;
  }[];
  /**
   * The memory large write payloads are received into (see PayloadRing): null when turned off or before
   * the first VPG opens. A `fallbacks` count that keeps growing says CDP_PAYLOAD_RING_MB is too small
   * for the load (or something downstream, the journal, holds on to writes).
   */
  readonly payloadRing: PayloadRingStats | null;
}

/**
 * Serves every protected volume over NBD (CDP_NBD_HOST:CDP_NBD_PORT, or the Unix socket CDP_NBD_SOCKET), so hypervisors and libnbd
 * tools use protected volumes as disks; every write goes through the VPG's capture. Export names are
 * `<vpg name>/<vm name>/<volume name>` or the volume's UUID, looked up on every connection, so a VPG
 * created while the server runs is reachable at once.
 *
 * The SplitterService starts it after the captures on disk are open and stops it before they close
 * (see SplitterFrontEnd).
 */
@Injectable()
export class SplitterNbdService implements SplitterFrontEnd {
  private readonly logger = new Logger('nbd');
  private readonly listen: NbdListen;
  private readonly tlsFiles: AppConfig['nbdTls'];
  private server: NbdServer | undefined;
  /** Where the server listens (the actual port, or the socket); null until started and after stopping. */
  private endpoint: NbdEndpoint | null = null;

  constructor(
    private readonly splitter: SplitterService,
    @Inject(APP_CONFIG) config: AppConfig,
  ) {
    this.listen = config.nbd;
    this.tlsFiles = config.nbdTls;
    splitter.attachFrontEnd(this);
  }

  async start(): Promise<void> {
    // Read (and checked) at every start: a renewed certificate is taken by restarting the service (a PSK
    // file is read again whenever it changes).
    let tls: NbdTls | undefined;
    try {
      tls = this.tlsFiles ? loadNbdTls(this.tlsFiles, (message) => this.logger.warn(message)) : undefined;
    } catch (err) {
      throw StartupError.of(err);
    }
    const server = new NbdServer({
      resolve: (name) => this.resolve(name),
      list: () => this.list(),
      logger: this.logger,
      tls,
    });
    try {
      this.endpoint = await listenAsConfigured(server, this.listen, { host: 'CDP_NBD_HOST', port: 'CDP_NBD_PORT', socket: 'CDP_NBD_SOCKET' }, 'protected volumes');
    } catch (err) {
      await server.close();
      throw StartupError.of(err);
    }
    this.server = server;
    const auth = tls?.psk ? ` (TLS, clients authenticated by the pre-shared keys in ${tls.psk.file})` : tls?.verifyClients ? ' (TLS, client certificates checked)' : '';
    this.logger.log(`serving protected volumes over NBD at ${this.uri('<vpg>/<vm>/<volume>') ?? ''}${auth}`);
  }

  /** Stops accepting; connections finish what is in flight (bounded by the server's grace period). */
  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    this.endpoint = null;
    await server?.close();
  }

  /** Where clients connect: the actual port (CDP_NBD_PORT=0 picks one) or the Unix socket; null before start. */
  address(): NbdEndpoint | null {
    return this.endpoint;
  }

  /** The URI a client opens for `exportName` (nbds with TLS, nbd+unix on a Unix socket); null before start. */
  uri(exportName: string): string | null {
    const endpoint = this.address();
    return endpoint && nbdUri(endpoint, this.tlsFiles !== null, exportName);
  }

  status(): NbdStatus {
    return {
      host: this.listen.host,
      port: this.endpoint && 'port' in this.endpoint ? this.endpoint.port : null,
      socket: this.listen.socket,
      tls: tlsMode(this.tlsFiles),
      exports: this.catalog().exports.map((e) => ({
        name: e.name,
        vpgId: e.vpgId,
        vmId: e.vmId,
        volumeId: e.volumeId,
        sizeBytes: e.sizeBytes,
        blockSize: e.blockSize,
      })),
      payloadRing: this.splitter.payloadRingStats(),
    };
  }

  private catalog(): NbdExportCatalog {
    return nbdExportCatalog(this.splitter.allCaptures());
  }

  private resolve(exportName: string): ExportEntry | undefined {
    const entry = this.catalog().find(exportName);
    if (entry === undefined) {
      return undefined;
    }
    return { device: new ProtectedVolumeDevice(entry.capture, entry.volumeId), description: entry.description };
  }

  private list(): ExportListing[] {
    return this.catalog().exports.map((e) => ({ name: e.name, description: e.description }));
  }
}

function tlsMode(settings: AppConfig['nbdTls']): NbdStatus['tls'] {
  if (settings === null) {
    return 'off';
  }
  return 'pskFile' in settings ? 'psk' : settings.ca === null ? 'on' : 'verify-clients';
}
