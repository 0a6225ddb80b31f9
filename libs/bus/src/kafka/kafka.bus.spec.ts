import { BusError } from '../bus';
import { KafkaBus, toBusError } from './kafka.bus';

// Nothing here reaches a broker: the address is never contacted, as every case fails validation first.
describe('KafkaBus without a broker', () => {
  const nonRetriable = { name: 'BusError', retriable: false };
  let bus: KafkaBus;
  beforeEach(() => {
    bus = new KafkaBus({ brokers: ['127.0.0.1:1'] });
  });
  afterEach(() => bus.close());

  it('needs a broker to bootstrap from', () => {
    expect(() => new KafkaBus({ brokers: [] })).toThrow(BusError);
  });

  it('rejects what Kafka would reject, with non-retriable BusErrors, before connecting', async () => {
    await expect(bus.ensureTopics([{ topic: 'bad topic', partitions: 1 }])).rejects.toMatchObject(nonRetriable);
    await expect(bus.ensureTopics([{ topic: 'ok', partitions: 0 }])).rejects.toMatchObject(nonRetriable);
    await expect(bus.createProducer().send('', [{ key: 'k', value: Buffer.from('v') }])).rejects.toMatchObject(
      nonRetriable,
    );
    expect(() => bus.createConsumer({ groupId: '', topics: ['t'] })).toThrow(BusError);
    expect(() => bus.createConsumer({ groupId: 'g', topics: [] })).toThrow(BusError);
    expect(() => bus.createConsumer({ groupId: 'g', topics: ['t'], maxBatchMessages: 0 })).toThrow(BusError);
  });

  it('refuses everything once closed, and stops consumers that never ran', async () => {
    const idle = bus.createConsumer({ groupId: 'g', topics: ['t'] });
    await bus.close();
    await bus.close();
    await expect(idle.run(() => Promise.resolve())).rejects.toMatchObject(nonRetriable);
    await expect(bus.createProducer().send('t', [{ key: 'k', value: Buffer.from('v') }])).rejects.toMatchObject(
      nonRetriable,
    );
    await expect(bus.ensureTopics([{ topic: 't', partitions: 1 }])).rejects.toMatchObject(nonRetriable);
    expect(() => bus.createConsumer({ groupId: 'g', topics: ['t'] })).toThrow(BusError);
    expect(await bus.health()).toEqual({ status: 'unavailable', detail: 'the bus is closed' });
  });

  it('judges retriability from the whole cause chain and keeps the cause', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED'), { name: 'KafkaJSConnectionError' });
    const exhausted = new Error('retries exhausted', { cause: refused });
    const wrapped = toBusError('sending', exhausted);
    expect(wrapped).toMatchObject({ retriable: true, cause: exhausted });
    expect(wrapped.message).toContain('KafkaJSConnectionError: connect ECONNREFUSED');
    const invalid = Object.assign(new Error('invalid'), { name: 'KafkaJSNonRetriableError', retriable: false });
    expect(toBusError('sending', invalid).retriable).toBe(false);
    const busError = new BusError('already one', true);
    expect(toBusError('sending', busError)).toBe(busError);
  });
});
