export * from './journal.entities';
export * from './journal.store';
export * from './journal.reader';
export * from './extent-map';
export * from './journal.promoter';
export * from './replica';
export * from './pit-view';
