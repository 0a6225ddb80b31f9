import { Body, Controller, Delete, Get, HttpCode, Param, Post } from '@nestjs/common';
import { z } from 'zod';
import { pitExportAtRequestSchema, type PitExportAtRequest } from '@cdp/contracts';
import { ZodPipe, uuidParam } from '@cdp/http-edge';
import { type NbdEndpoint } from '@cdp/nbd';
import { PitExportsService, type PitExport } from './pit-exports.service';

const openExportSchema = z.strictObject({
  volumeId: z.uuid(),
  writable: z.boolean().default(false),
});

/**
 * Point-in-time exports over NBD: open the image of a volume at a checkpoint, or at any time inside
 * the journal, as a block device
 * (read-only, or writable into a scratch overlay for a test failover), list them, close them.
 */
@Controller()
export class PitExportsController {
  constructor(private readonly exports: PitExportsService) {}

  @Post('vpgs/:vpgId/checkpoints/:checkpointId/exports')
  open(
    @Param('vpgId', uuidParam('VPG id')) vpgId: string,
    @Param('checkpointId', uuidParam('checkpoint id')) checkpointId: string,
    @Body(new ZodPipe(openExportSchema, 'body')) body: z.infer<typeof openExportSchema>,
  ): Promise<PitExport> {
    return this.exports.open(vpgId, checkpointId, body.volumeId, body.writable);
  }

  /** The volume at any time inside the journal; the answer says which seq and capture time it resolved to. */
  @Post('vpgs/:vpgId/exports')
  openAt(
    @Param('vpgId', uuidParam('VPG id')) vpgId: string,
    @Body(new ZodPipe(pitExportAtRequestSchema, 'body')) body: PitExportAtRequest,
  ): Promise<PitExport> {
    return this.exports.openAt(vpgId, body.volumeId, new Date(body.at), body.writable);
  }

  @Get('exports')
  list(): { server: NbdEndpoint; exports: PitExport[] } {
    return { server: this.exports.endpoint(), exports: this.exports.list() };
  }

  @Get('exports/:exportId')
  get(@Param('exportId', uuidParam('export id')) exportId: string): PitExport {
    return this.exports.get(exportId);
  }

  @Delete('exports/:exportId')
  @HttpCode(204)
  async close(@Param('exportId', uuidParam('export id')) exportId: string): Promise<void> {
    await this.exports.close(exportId);
  }
}
