import { Body, Controller, Param, Post, Query } from '@nestjs/common';
import { z } from 'zod';
import { applicationCheckpointRequestSchema, taggedCheckpointRequestSchema, type ApplicationCheckpointRequest, type TaggedCheckpointRequest } from '@cdp/contracts';
import { ZodPipe, uuidParam } from '@cdp/http-edge';
import { CheckpointSchedulerService, type CheckpointRequestResult } from './checkpoint-scheduler.service';

const waitQuerySchema = z.strictObject({
  waitMs: z.string().regex(/^\d+$/, 'waitMs must be a non-negative integer').transform(Number).refine((n) => n <= 60_000, 'waitMs is at most 60000').optional(),
});

/**
 * Tagged checkpoints (a person or a script names a moment) and application-consistent ones (an
 * in-guest agent has quiesced its application). By default the reply waits up to 10 s for the
 * checkpoint to be recorded, so a 201 with status "recorded" means it is recoverable.
 */
@Controller('vpgs/:vpgId')
export class CheckpointSchedulerController {
  constructor(private readonly scheduler: CheckpointSchedulerService) {}

  @Post('checkpoints')
  tagged(
    @Param('vpgId', uuidParam('VPG id')) vpgId: string,
    @Body(new ZodPipe(taggedCheckpointRequestSchema, 'body')) body: TaggedCheckpointRequest,
    @Query(new ZodPipe(waitQuerySchema, 'query')) query: z.infer<typeof waitQuerySchema>,
  ): Promise<CheckpointRequestResult> {
    return this.scheduler.request(vpgId, 'tagged', body.name, null, query.waitMs ?? 10_000);
  }

  @Post('application-checkpoints')
  application(
    @Param('vpgId', uuidParam('VPG id')) vpgId: string,
    @Body(new ZodPipe(applicationCheckpointRequestSchema, 'body')) body: ApplicationCheckpointRequest,
    @Query(new ZodPipe(waitQuerySchema, 'query')) query: z.infer<typeof waitQuerySchema>,
  ): Promise<CheckpointRequestResult> {
    return this.scheduler.request(vpgId, 'application-consistent', body.name, body.vmId, query.waitMs ?? 10_000);
  }
}
