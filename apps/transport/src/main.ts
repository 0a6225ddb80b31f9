import 'reflect-metadata';
import { TransportModule } from '@cdp/transport';
import { runStandaloneService } from '@cdp/service-runtime';

runStandaloneService('transport', TransportModule, { database: false });
