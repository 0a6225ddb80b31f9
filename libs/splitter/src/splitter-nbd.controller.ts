import { Controller, Get } from '@nestjs/common';
import { type NbdStatus, SplitterNbdService } from './splitter-nbd.service';

/** Where the NBD server listens (the actual port, also when CDP_NBD_PORT=0) and what it exports. */
@Controller('splitter/nbd')
export class SplitterNbdController {
  constructor(private readonly nbd: SplitterNbdService) {}

  @Get()
  status(): NbdStatus {
    return this.nbd.status();
  }
}
