import { Body, Controller, Get, HttpCode, Param, Post, Put, Query, StreamableFile } from '@nestjs/common';
import { z } from 'zod';
import { writeQuerySchema } from '@cdp/contracts';
import { DomainError, MAX_WRITE_BYTES } from '@cdp/domain';
import { ZodPipe, uuidParam } from '@cdp/http-edge';
import { SplitterService } from './splitter.service';
import { type CaptureStatus } from './vpg-capture';

const readQuerySchema = z.strictObject({
  offset: z.string().regex(/^\d+$/, 'offset must be a non-negative integer').transform(Number),
  length: z
    .string()
    .regex(/^\d+$/, 'length must be a positive integer')
    .transform(Number)
    .refine((n) => n > 0 && n <= MAX_WRITE_BYTES, `length must be from 1 to ${MAX_WRITE_BYTES}`),
});

/**
 * The splitter's block API over HTTP: write and read protected volumes, flush. (The NBD front end, for
 * real hypervisors, is built on the same VpgCapture.)
 */
@Controller('splitter/vpgs')
export class SplitterController {
  constructor(private readonly splitter: SplitterService) {}

  @Get()
  list(): CaptureStatus[] {
    return this.splitter.statuses();
  }

  @Get(':vpgId')
  status(@Param('vpgId', uuidParam('VPG id')) vpgId: string): CaptureStatus {
    return this.splitter.capture(vpgId).status();
  }

  @Put(':vpgId/volumes/:volumeId/data')
  async write(
    @Param('vpgId', uuidParam('VPG id')) vpgId: string,
    @Param('volumeId', uuidParam('volume id')) volumeId: string,
    @Query(new ZodPipe(writeQuerySchema, 'query')) query: z.infer<typeof writeQuerySchema>,
    @Body() body: unknown,
  ): Promise<{ seq: number | null }> {
    if (!Buffer.isBuffer(body)) {
      throw new DomainError('invalid-argument', 'the body must be the bytes to write, sent as application/octet-stream');
    }
    const seq = await this.splitter.capture(vpgId).write(volumeId, query.offset, body, query.fua);
    return { seq };
  }

  @Get(':vpgId/volumes/:volumeId/data')
  read(
    @Param('vpgId', uuidParam('VPG id')) vpgId: string,
    @Param('volumeId', uuidParam('volume id')) volumeId: string,
    @Query(new ZodPipe(readQuerySchema, 'query')) query: z.infer<typeof readQuerySchema>,
  ): StreamableFile {
    const volume = this.splitter.capture(vpgId).volumeById(volumeId);
    if (query.offset + query.length > volume.volume.sizeBytes) {
      throw new DomainError('out-of-range', `read past the end of volume ${volume.volume.name} (${volume.volume.sizeBytes} bytes)`);
    }
    return new StreamableFile(volume.read(query.offset, query.length), { type: 'application/octet-stream' });
  }

  @Post(':vpgId/flush')
  @HttpCode(200)
  async flush(@Param('vpgId', uuidParam('VPG id')) vpgId: string): Promise<{ flushedThroughSeq: number }> {
    const capture = this.splitter.capture(vpgId);
    const seq = capture.lastSeq;
    await capture.flush();
    return { flushedThroughSeq: seq };
  }
}
