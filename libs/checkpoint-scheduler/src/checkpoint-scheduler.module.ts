import { Module } from '@nestjs/common';
import { CheckpointSchedulerController } from './checkpoint-scheduler.controller';
import { CheckpointSchedulerService } from './checkpoint-scheduler.service';

/** Needs BUS and a migrated DataSource from the composing application. */
@Module({ controllers: [CheckpointSchedulerController], providers: [CheckpointSchedulerService], exports: [CheckpointSchedulerService] })
export class CheckpointSchedulerModule {}
