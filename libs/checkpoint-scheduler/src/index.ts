export * from './checkpoint-scheduler.module';
export * from './checkpoint-scheduler.service';
