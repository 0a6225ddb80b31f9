import { randomUUID } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Inject, Injectable, Logger, type BeforeApplicationShutdown, type OnApplicationBootstrap } from '@nestjs/common';
import { APP_CONFIG, type AppConfig, StartupError } from '@cdp/config';
import { DomainError, volumesOf, type Volume, type Vpg } from '@cdp/domain';
import { type PitView } from '@cdp/journal-store';
import { NbdServer, type ExportEntry, type NbdEndpoint, type NbdTls, listenAsConfigured, loadNbdTls, nbdUri } from '@cdp/nbd';
import { PitExportDevice } from './pit-export.device';
import { RecoveryService } from './recovery.service';
import { VpgService } from './vpg.service';

export interface PitExport {
  readonly id: string;
  /** The NBD export name clients ask for. */
  readonly name: string;
  readonly url: string;
  readonly vpgId: string;
  /** The checkpoint the export was opened at; null when it was opened at a time. */
  readonly checkpointId: string | null;
  /** The time asked for, when opened at a time; null for a checkpoint. */
  readonly at: string | null;
  /** The seq the view is at: every write with seq <= cut is in it. */
  readonly cut: number;
  /** When opened at a time: the newest capture time of any write in the view. */
  readonly capturedAt: string | null;
  readonly volumeId: string;
  readonly sizeBytes: number;
  readonly writable: boolean;
  readonly createdAt: string;
  /** Bytes written to the scratch overlay (writable exports). */
  readonly overlayBytes: number;
}

interface OpenExport {
  readonly info: Omit<PitExport, 'overlayBytes'>;
  readonly device: PitExportDevice;
}

/**
 * Point-in-time exports: the image of a volume at a checkpoint, served over NBD without copying it
 * first (a PitView answers reads from the journal and the replica). Read-only, or writable through a
 * scratch overlay that is deleted when the export closes (test failover). Exports live until closed
 * through the API, or until the process stops; an open export holds its VPG's history at the
 * checkpoint, so promotion of that VPG waits while it is open.
 *
 * Export names: `pit/<export id>`; `GET /api/exports` lists them with their URLs (nbds:// with TLS,
 * CDP_NBD_TLS_CERT and CDP_NBD_TLS_KEY, as for the splitter's server).
 */
@Injectable()
export class PitExportsService implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger('pit-exports');
  private readonly exports = new Map<string, OpenExport>();
  /** Made at bootstrap, once the TLS files are read. */
  private server: NbdServer | undefined;
  private readonly overlayDir: string;
  private address: NbdEndpoint | undefined;
  private readonly tls: boolean;

  constructor(
    @Inject(APP_CONFIG) private readonly config: AppConfig,
    private readonly vpgs: VpgService,
    private readonly recovery: RecoveryService,
  ) {
    this.overlayDir = join(config.dataDir, 'recovery', 'overlays');
    this.tls = config.nbdTls !== null;
  }

  async onApplicationBootstrap(): Promise<void> {
    // Overlays are scratch: whatever a previous run left behind belongs to exports that no longer exist.
    await rm(this.overlayDir, { recursive: true, force: true });
    await mkdir(this.overlayDir, { recursive: true });
    // TLS files are read here, not at construction: a bad one is a start-up failure the process reports
    // in one line (StartupError) after stopping what it started.
    let tls: NbdTls | undefined;
    try {
      tls = this.config.nbdTls ? loadNbdTls(this.config.nbdTls, (message) => this.logger.warn(message)) : undefined;
    } catch (err) {
      throw StartupError.of(err);
    }
    const server = new NbdServer({
      resolve: (name) => this.resolve(name),
      list: () => [...this.exports.values()].map((e) => ({ name: e.info.name, description: describe(e.info) })),
      logger: this.logger,
      tls,
    });
    this.server = server;
    const names = { host: 'CDP_RECOVERY_NBD_HOST', port: 'CDP_RECOVERY_NBD_PORT', socket: 'CDP_RECOVERY_NBD_SOCKET' };
    try {
      this.address = await listenAsConfigured(server, this.config.recoveryNbd, names, 'point-in-time exports');
    } catch (err) {
      throw StartupError.of(err);
    }
    this.logger.log(`serving point-in-time exports over NBD at ${nbdUri(this.address, this.tls, 'pit/<id>')}`);
  }

  async beforeApplicationShutdown(): Promise<void> {
    await this.server?.close();
    for (const id of [...this.exports.keys()]) {
      await this.close(id);
    }
  }

  /** Where clients connect. */
  endpoint(): NbdEndpoint {
    if (!this.address) {
      throw new DomainError('failed-precondition', 'the point-in-time NBD server is not listening yet');
    }
    return this.address;
  }

  async open(vpgId: string, checkpointId: string, volumeId: string, writable: boolean): Promise<PitExport> {
    const vpg = await this.vpgs.get(vpgId);
    const volume = this.volumeOf(vpg, volumeId);
    const checkpoint = await this.recovery.checkpoint(vpgId, checkpointId);
    const view = await this.recovery.openView(vpgId, volume, checkpoint.cut);
    const opened = await this.serve(view, vpgId, volume, writable, { checkpointId, at: null, capturedAt: null });
    this.logger.log(`opened export ${opened.name}: VPG ${vpg.name}, volume ${volume.name}, checkpoint ${checkpoint.name ?? checkpoint.kind} at cut ${checkpoint.cut}`);
    return opened;
  }

  /**
   * The volume as it was at a time inside the journal: after the last write captured at or before
   * `at`. A time before the journal's history or after its latest write is refused (out-of-range).
   */
  async openAt(vpgId: string, volumeId: string, at: Date, writable: boolean): Promise<PitExport> {
    const vpg = await this.vpgs.get(vpgId);
    const volume = this.volumeOf(vpg, volumeId);
    const view = await this.recovery.openViewAt(vpgId, volume, at);
    const opened = await this.serve(view, vpgId, volume, writable, { checkpointId: null, at: at.toISOString(), capturedAt: view.capturedAt ?? null });
    this.logger.log(`opened export ${opened.name}: VPG ${vpg.name}, volume ${volume.name}, at ${at.toISOString()} (cut ${view.cut})`);
    return opened;
  }

  private volumeOf(vpg: Vpg, volumeId: string): Volume {
    const volume = volumesOf(vpg).find((v) => v.id === volumeId);
    if (!volume) {
      throw new DomainError('not-found', `volume ${volumeId} is not in VPG ${vpg.name}`);
    }
    return volume;
  }

  private async serve(
    view: PitView,
    vpgId: string,
    volume: Volume,
    writable: boolean,
    point: Pick<PitExport, 'checkpointId' | 'at' | 'capturedAt'>,
  ): Promise<PitExport> {
    const id = randomUUID();
    let device: PitExportDevice;
    try {
      device = await PitExportDevice.open(view, volume.blockSize, writable ? join(this.overlayDir, `${id}.img`) : undefined);
    } catch (err) {
      await view.close();
      throw err;
    }
    const endpoint = this.endpoint();
    const name = `pit/${id}`;
    const info = {
      id,
      name,
      url: nbdUri(endpoint, this.tls, name),
      vpgId,
      ...point,
      cut: view.cut,
      volumeId: volume.id,
      sizeBytes: volume.sizeBytes,
      writable,
      createdAt: new Date().toISOString(),
    };
    this.exports.set(id, { info, device });
    return { ...info, overlayBytes: 0 };
  }

  list(): PitExport[] {
    return [...this.exports.values()].map((e) => ({ ...e.info, overlayBytes: e.device.overlayBytes }));
  }

  get(id: string): PitExport {
    const entry = this.exports.get(id);
    if (!entry) {
      throw new DomainError('not-found', `export ${id} is not open`);
    }
    return { ...entry.info, overlayBytes: entry.device.overlayBytes };
  }

  /** Closes the export: its view and lock are released, its overlay deleted. Connected clients get errors. */
  async close(id: string): Promise<void> {
    const entry = this.exports.get(id);
    if (!entry) {
      throw new DomainError('not-found', `export ${id} is not open`);
    }
    this.exports.delete(id);
    await entry.device.close();
    this.logger.log(`closed export ${entry.info.name}`);
  }

  private resolve(name: string): ExportEntry | undefined {
    const id = name.startsWith('pit/') ? name.slice(4) : name;
    const entry = this.exports.get(id);
    return entry ? { device: entry.device, description: describe(entry.info) } : undefined;
  }
}

function describe(info: Omit<PitExport, 'overlayBytes'>): string {
  const point = info.checkpointId ? `checkpoint ${info.checkpointId}` : `time ${info.at ?? ''}`;
  return `VPG ${info.vpgId} volume ${info.volumeId} at ${point} (cut ${info.cut})${info.writable ? ', writable overlay' : ''}`;
}
