export * from './journal-writer.module';
export * from './journal-writer.service';
export * from './apply-plan';
