import 'reflect-metadata';
import { SplitterModule } from '@cdp/splitter';
import { runStandaloneService } from '@cdp/service-runtime';

runStandaloneService('splitter', SplitterModule, { database: false });
