import 'reflect-metadata';
import { JournalWriterModule } from '@cdp/journal-writer';
import { runStandaloneService } from '@cdp/service-runtime';

runStandaloneService('journal-writer', JournalWriterModule, { database: true });
