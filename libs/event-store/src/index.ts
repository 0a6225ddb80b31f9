export * from './entities';
export * from './concurrency.error';
export * from './event-store';
export * from './handle-command';
export * from './event-relay';
export * from './vpg.projection';
