export * from './splitter.module';
export * from './splitter.service';
export * from './vpg-capture';
export * from './protected-volume';
