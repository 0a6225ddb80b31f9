import { Module } from '@nestjs/common';
import { SplitterController } from './splitter.controller';
import { SplitterService } from './splitter.service';

/** Needs BUS and APP_CONFIG from the composing application. */
@Module({ controllers: [SplitterController], providers: [SplitterService], exports: [SplitterService] })
export class SplitterModule {}
