import { Module } from '@nestjs/common';
import { JournalWriterController } from './journal-writer.controller';
import { JournalWriterService } from './journal-writer.service';

/** Needs BUS, APP_CONFIG and a migrated DataSource from the composing application. */
@Module({ controllers: [JournalWriterController], providers: [JournalWriterService], exports: [JournalWriterService] })
export class JournalWriterModule {}
