export * from './splitter.module';
export * from './splitter.service';
export * from './vpg-capture';
export * from './protected-volume';
export * from './splitter-nbd.service';
export * from './protected-volume.device';
export * from './nbd-exports';
export * from './payload-ring';
