export * from './segment-log';
export * from './segment-reader';
