export * from './domain.error';
export * from './vpg.model';
export * from './vpg-members';
export * from './checkpoint.model';
export * from './write.model';
export * from './vpg.decider';
export * from './checkpoint-timeline';
export * from './history-status';
