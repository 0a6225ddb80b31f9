import { Controller, Get } from '@nestjs/common';
import { JournalWriterService, type JournalWriterStatus } from './journal-writer.service';

@Controller('journal-writer')
export class JournalWriterController {
  constructor(private readonly writer: JournalWriterService) {}

  @Get('status')
  status(): JournalWriterStatus {
    return this.writer.status();
  }
}
