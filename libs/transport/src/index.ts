export * from './transport.module';
export * from './transport.service';
