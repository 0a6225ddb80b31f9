import { Module } from '@nestjs/common';
import { SplitterNbdController } from './splitter-nbd.controller';
import { SplitterNbdService } from './splitter-nbd.service';
import { SplitterController } from './splitter.controller';
import { SplitterService } from './splitter.service';

/** Needs BUS and APP_CONFIG from the composing application. */
@Module({
  controllers: [SplitterController, SplitterNbdController],
  providers: [SplitterService, SplitterNbdService],
  exports: [SplitterService, SplitterNbdService],
})
export class SplitterModule {}
