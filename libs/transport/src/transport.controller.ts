import { Controller, Get } from '@nestjs/common';
import { TransportService, type TransportStatus } from './transport.service';

@Controller('transport')
export class TransportController {
  constructor(private readonly transport: TransportService) {}

  @Get('status')
  status(): TransportStatus {
    return this.transport.status();
  }
}
