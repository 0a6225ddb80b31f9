export * from './checkpoint-scheduler.module';
export * from './checkpoint-scheduler.service';
export * from './automatic-checkpoint.timer';
