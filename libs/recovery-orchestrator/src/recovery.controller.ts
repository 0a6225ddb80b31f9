import { Body, Controller, Get, Param, Patch, Post, Query, Req, Res } from '@nestjs/common';
import { type Request } from 'express';
import { type Response } from 'express';
import { z } from 'zod';
import { changeVpgSettingsRequestSchema, createVpgRequestSchema, type ChangeVpgSettingsRequest, type CreateVpgRequest } from '@cdp/contracts';
import { DomainError, rpoStatus, volumesOf, type Checkpoint, type HistoryStatus, type RpoStatus, type Vpg } from '@cdp/domain';
import { decodeCursor, type CheckpointStats, type JournalStatus, type TimelineResult } from '@cdp/journal-store';
import { ZodPipe, uuidParam } from '@cdp/http-edge';
import { HistoryMonitorService, type HistoryAlert, type RpoAlert } from './history-monitor.service';
import { RecoveryService } from './recovery.service';
import { SiteAlertsService, type SiteAlert } from './site-alerts.service';
import { VpgService } from './vpg.service';

const isoDate = z.iso.datetime({ offset: true }).transform((s) => new Date(s));
const checkpointQuerySchema = z
  .strictObject({
    from: isoDate.optional(),
    to: isoDate.optional(),
    cursor: z.string().min(1).max(200).optional(),
    limit: z.string().regex(/^\d+$/, 'limit must be a positive integer').transform(Number).refine((n) => n >= 1 && n <= 10_000, 'limit is 1 to 10000').optional(),
  })
  .refine((q) => !q.from || !q.to || q.from.getTime() <= q.to.getTime(), { message: 'from must not be after to', path: ['from'] });

/** An open alert: a VPG's journal history at its alert threshold, its RPO above target, or a protected site in trouble. */
export type Alert = HistoryAlert | RpoAlert | SiteAlert;

/** Both kinds of open alert, of one VPG or of all, oldest first. */
async function openAlerts(monitor: HistoryMonitorService, site: SiteAlertsService, vpgId?: string): Promise<Alert[]> {
  const [history, sites] = await Promise.all([monitor.alerts(vpgId), site.alerts(vpgId)]);
  // ISO 8601 times in UTC sort as strings; the sort is stable, so ties keep each list's own order.
  return [...history, ...sites].sort((a, b) => (a.raisedAt < b.raisedAt ? -1 : a.raisedAt > b.raisedAt ? 1 : 0));
}

/** Open alerts of every VPG (a VPG's own are in GET /vpgs/:id). */
@Controller('alerts')
export class AlertsController {
  constructor(
    private readonly monitor: HistoryMonitorService,
    private readonly site: SiteAlertsService,
  ) {}

  @Get()
  list(): Promise<Alert[]> {
    return openAlerts(this.monitor, this.site);
  }
}

@Controller('vpgs')
export class VpgController {
  constructor(
    private readonly vpgs: VpgService,
    private readonly recovery: RecoveryService,
    private readonly monitor: HistoryMonitorService,
    private readonly site: SiteAlertsService,
  ) {}

  @Post()
  create(@Body(new ZodPipe(createVpgRequestSchema, 'body')) body: CreateVpgRequest): Promise<Vpg> {
    return this.vpgs.create(body);
  }

  @Get()
  list(): Promise<Vpg[]> {
    return this.vpgs.list();
  }

  @Get(':vpgId')
  async get(
    @Param('vpgId', uuidParam('VPG id')) vpgId: string,
  ): Promise<{ vpg: Vpg; journal: JournalStatus; history: HistoryStatus; rpo: RpoStatus; alerts: Alert[] }> {
    const vpg = await this.vpgs.get(vpgId);
    const [journal, alerts] = await Promise.all([this.recovery.status(vpgId), openAlerts(this.monitor, this.site, vpgId)]);
    const now = new Date();
    const newestAt = journal.lastCapturedAt === null ? null : new Date(journal.lastCapturedAt);
    const rpo = rpoStatus({ newestAt, protectedSince: new Date(vpg.createdAt), now, settings: vpg.settings });
    return { vpg, journal, history: this.recovery.history(vpg, journal, now), rpo, alerts };
  }

  /** Changes the settings named in the body; returns the VPG with all its settings. */
  @Patch(':vpgId/settings')
  changeSettings(
    @Param('vpgId', uuidParam('VPG id')) vpgId: string,
    @Body(new ZodPipe(changeVpgSettingsRequestSchema, 'body')) body: ChangeVpgSettingsRequest,
  ): Promise<Vpg> {
    return this.vpgs.changeSettings(vpgId, body);
  }

  /** The recovery slider: at most 180 checkpoints over the last 24 hours, tagged ones marked. */
  @Get(':vpgId/timeline')
  async timeline(
    @Param('vpgId', uuidParam('VPG id')) vpgId: string,
    // It takes no parameters: one given (a window, a time) is refused rather than silently ignored.
    @Query(new ZodPipe(z.strictObject({}), 'query')) _query: Record<string, never>,
  ): Promise<TimelineResult> {
    await this.vpgs.get(vpgId);
    return this.recovery.timeline(vpgId, new Date());
  }

  /**
   * Checkpoints in time order. With `from` or `cursor`: the manual list, every checkpoint in [from, to]
   * a page of `limit` at a time; when there is more, the `x-next-cursor` header (and a `Link` with
   * rel="next") says where the next page starts. Without either: the newest `limit`.
   */
  @Get(':vpgId/checkpoints')
  async checkpoints(
    @Param('vpgId', uuidParam('VPG id')) vpgId: string,
    @Query(new ZodPipe(checkpointQuerySchema, 'query')) query: z.infer<typeof checkpointQuerySchema>,
    @Req() request: Request,
    @Res({ passthrough: true }) response: Response,
  ): Promise<Checkpoint[]> {
    if (query.cursor !== undefined) {
      // Refused before anything is read, with the same error whatever the VPG.
      decodeCursor(query.cursor);
    }
    await this.vpgs.get(vpgId);
    const limit = query.limit ?? 1000;
    if (query.from === undefined && query.cursor === undefined) {
      return this.recovery.checkpoints(vpgId, { to: query.to, limit });
    }
    const page = await this.recovery.checkpointPage(vpgId, { from: query.from, to: query.to, after: query.cursor, limit });
    if (page.next !== null) {
      const url = new URL(request.originalUrl, 'http://host');
      url.searchParams.set('cursor', page.next);
      response.set({ 'x-next-cursor': page.next, link: `<${url.pathname}${url.search}>; rel="next"` });
    }
    return page.checkpoints;
  }

  /** Earliest, latest, count, and count per kind. */
  @Get(':vpgId/checkpoints/stats')
  async checkpointStats(@Param('vpgId', uuidParam('VPG id')) vpgId: string): Promise<CheckpointStats> {
    await this.vpgs.get(vpgId);
    return this.recovery.checkpointStats(vpgId);
  }

  @Get(':vpgId/checkpoints/:checkpointId')
  async checkpoint(
    @Param('vpgId', uuidParam('VPG id')) vpgId: string,
    @Param('checkpointId', uuidParam('checkpoint id')) checkpointId: string,
  ): Promise<Checkpoint> {
    await this.vpgs.get(vpgId);
    return this.recovery.checkpoint(vpgId, checkpointId);
  }

  /** The volume's bytes at the checkpoint, streamed as application/octet-stream (save it to a file). */
  @Get(':vpgId/checkpoints/:checkpointId/volumes/:volumeId/image')
  async image(
    @Param('vpgId', uuidParam('VPG id')) vpgId: string,
    @Param('checkpointId', uuidParam('checkpoint id')) checkpointId: string,
    @Param('volumeId', uuidParam('volume id')) volumeId: string,
    @Res() response: Response,
  ): Promise<void> {
    const vpg = await this.vpgs.get(vpgId);
    const volume = volumesOf(vpg).find((v) => v.id === volumeId);
    if (!volume) {
      throw new DomainError('not-found', `volume ${volumeId} is not in VPG ${vpg.name}`);
    }
    const checkpoint = await this.recovery.checkpoint(vpgId, checkpointId);
    const chunks = this.recovery.image(vpgId, volume, checkpoint.cut);
    try {
      // Read the first chunk before sending headers, so that an error found early is a proper reply.
      let next = await chunks.next();
      response.status(200).set({
        'content-type': 'application/octet-stream',
        'content-length': String(volume.sizeBytes),
        'x-checkpoint-cut': String(checkpoint.cut),
      });
      while (!next.done) {
        await writeChunk(response, next.value);
        next = await chunks.next();
      }
      response.end();
    } finally {
      // However the stream ends (done, failed, or the client went away), the reader's lock and
      // connection are released now, not when a timeout notices.
      await chunks.return(undefined);
    }
  }
}

class ClientGoneError extends Error {
  override readonly name = 'ClientGoneError';
}

/** Writes with back-pressure; rejects as soon as the client has gone (Node then emits neither 'drain' nor 'error'). */
function writeChunk(response: Response, chunk: Buffer): Promise<void> {
  if (response.destroyed || response.writableEnded) {
    return Promise.reject(new ClientGoneError('the client went away'));
  }
  return new Promise((resolve, reject) => {
    if (response.write(chunk)) {
      resolve();
      return;
    }
    const cleanup = (): void => {
      response.off('drain', onDrain);
      response.off('close', onGone);
      response.off('error', onGone);
    };
    const onDrain = (): void => {
      cleanup();
      resolve();
    };
    const onGone = (): void => {
      cleanup();
      reject(new ClientGoneError('the client went away'));
    };
    response.on('drain', onDrain);
    response.on('close', onGone);
    response.on('error', onGone);
  });
}
