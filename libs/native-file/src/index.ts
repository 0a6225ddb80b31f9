export * from './native-file';
