import 'reflect-metadata';
import { CheckpointSchedulerModule } from '@cdp/checkpoint-scheduler';
import { runStandaloneService } from '@cdp/service-runtime';

runStandaloneService('checkpoint-scheduler', CheckpointSchedulerModule, { database: true });
