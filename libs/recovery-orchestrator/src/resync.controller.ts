import { Body, Controller, HttpCode, Param, Post } from '@nestjs/common';
import { z } from 'zod';
import { RESYNC_REASON_MAX_LENGTH } from '@cdp/contracts';
import { ZodPipe, uuidParam } from '@cdp/http-edge';
import { ResyncService, type ResyncAccepted } from './resync.service';

const resyncRequestSchema = z.strictObject({
  volumeIds: z.array(z.uuid()).min(1, 'volumeIds, when given, names at least one volume').max(1024).optional(),
  reason: z.string().max(RESYNC_REASON_MAX_LENGTH, `reason is at most ${RESYNC_REASON_MAX_LENGTH} characters`).optional(),
});

/**
 * Forces a resync of a VPG (every volume, or the ones named): for a volume that may have diverged from
 * the replication stream. Answers 202 once the splitters have been sent the command; its progress is
 * in the splitter's VPG status (`resync`). See docs/architecture.md, "Resync and checkpoints".
 */
@Controller('vpgs')
export class ResyncController {
  constructor(private readonly resyncs: ResyncService) {}

  @Post(':vpgId/resync')
  @HttpCode(202)
  request(
    @Param('vpgId', uuidParam('VPG id')) vpgId: string,
    @Body(new ZodPipe(resyncRequestSchema, 'body')) body: z.infer<typeof resyncRequestSchema>,
  ): Promise<ResyncAccepted> {
    return this.resyncs.request(vpgId, body);
  }
}
