import { join } from 'node:path';
import { ConfigError, loadConfig } from './app.config';

describe('loadConfig', () => {
  it('applies defaults when nothing is set', () => {
    const config = loadConfig({});
    expect(config.databaseUrl).toBeNull();
    expect(config.http).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(config.demo).toBe(false);
    expect(config.payloadRingBytes).toBe(256 * 1024 * 1024);
    expect(config.poisonReleasedPayloads).toBe(false);
    expect(config.splitterLogLimitBytes).toBe(8192 * 1024 * 1024);
    expect(config.splitterFlushLinkWaitMs).toBe(10_000);
  });

  it('takes the flush link wait in seconds, 0 to wait for the bus however long', () => {
    expect(loadConfig({ CDP_SPLITTER_FLUSH_LINK_WAIT_S: '0' }).splitterFlushLinkWaitMs).toBeUndefined();
    expect(loadConfig({ CDP_SPLITTER_FLUSH_LINK_WAIT_S: '30' }).splitterFlushLinkWaitMs).toBe(30_000);
    for (const bad of ['-1', '2.5', 'soon', '86401']) {
      expect(() => loadConfig({ CDP_SPLITTER_FLUSH_LINK_WAIT_S: bad })).toThrow(/CDP_SPLITTER_FLUSH_LINK_WAIT_S/);
    }
  });

  it('takes the splitter log limit in MiB, 0 for none, and refuses one too small to shrink by whole segments', () => {
    expect(loadConfig({ CDP_SPLITTER_LOG_LIMIT_MB: '0' }).splitterLogLimitBytes).toBeUndefined();
    expect(loadConfig({ CDP_SPLITTER_LOG_LIMIT_MB: '256' }).splitterLogLimitBytes).toBe(256 * 1024 * 1024);
    for (const bad of ['255', '1', '-1', '1.5', 'lots', '1048577']) {
      expect(() => loadConfig({ CDP_SPLITTER_LOG_LIMIT_MB: bad })).toThrow(/CDP_SPLITTER_LOG_LIMIT_MB/);
    }
  });

  it('takes the payload ring size in MiB, 0 to turn it off, and refuses what Node cannot allocate', () => {
    expect(loadConfig({ CDP_PAYLOAD_RING_MB: '0' }).payloadRingBytes).toBe(0);
    expect(loadConfig({ CDP_PAYLOAD_RING_MB: '4096' }).payloadRingBytes).toBe(4096 * 1024 * 1024);
    for (const bad of ['4097', '-1', '1.5', 'lots']) {
      expect(() => loadConfig({ CDP_PAYLOAD_RING_MB: bad })).toThrow(/CDP_PAYLOAD_RING_MB/);
    }
    expect(loadConfig({ CDP_POISON_RELEASED_PAYLOADS: '1' }).poisonReleasedPayloads).toBe(true);
    expect(() => loadConfig({ CDP_POISON_RELEASED_PAYLOADS: 'sometimes' })).toThrow(/CDP_POISON_RELEASED_PAYLOADS/);
  });

  it('takes TLS for the NBD servers as a certificate and key, and optionally a CA for clients; refuses half of it', () => {
    expect(loadConfig({}).nbdTls).toBeNull();
    expect(loadConfig({ CDP_NBD_TLS_CERT: '/etc/cdp/nbd.pem', CDP_NBD_TLS_KEY: '/etc/cdp/nbd.key' }).nbdTls).toEqual({
      cert: '/etc/cdp/nbd.pem',
      key: '/etc/cdp/nbd.key',
      ca: null,
    });
    expect(loadConfig({ CDP_NBD_TLS_CERT: '/c.pem', CDP_NBD_TLS_KEY: '/k.pem', CDP_NBD_TLS_CA: '/ca.pem' }).nbdTls).toEqual({ cert: '/c.pem', key: '/k.pem', ca: '/ca.pem' });
    expect(() => loadConfig({ CDP_NBD_TLS_CERT: '/c.pem' })).toThrow(/CDP_NBD_TLS_CERT, CDP_NBD_TLS_KEY: set both/);
    expect(() => loadConfig({ CDP_NBD_TLS_KEY: '/k.pem' })).toThrow(/set both/);
    expect(() => loadConfig({ CDP_NBD_TLS_CA: '/ca.pem' })).toThrow(/CDP_NBD_TLS_CA: .*needs CDP_NBD_TLS_CERT/);
  });

  it('takes a Unix socket for either NBD server instead of TCP, never beside it', () => {
    expect(loadConfig({}).nbd.socket).toBeNull();
    expect(loadConfig({ CDP_NBD_SOCKET: '/run/cdp/nbd.sock' }).nbd).toEqual({ host: '127.0.0.1', port: 10809, socket: '/run/cdp/nbd.sock' });
    expect(loadConfig({ CDP_RECOVERY_NBD_SOCKET: 'exports.sock' }).recoveryNbd.socket).toBe(join(process.cwd(), 'exports.sock'));
    expect(() => loadConfig({ CDP_NBD_SOCKET: '/run/cdp/nbd.sock', CDP_NBD_PORT: '10900' })).toThrow(/CDP_NBD_SOCKET: a Unix socket replaces TCP; unset CDP_NBD_PORT or CDP_NBD_SOCKET/);
    expect(() => loadConfig({ CDP_RECOVERY_NBD_SOCKET: '/r.sock', CDP_RECOVERY_NBD_HOST: '0.0.0.0' })).toThrow(/unset CDP_RECOVERY_NBD_HOST or CDP_RECOVERY_NBD_SOCKET/);
    expect(() => loadConfig({ CDP_NBD_SOCKET: '/run/a.sock', CDP_RECOVERY_NBD_SOCKET: '/run/../run/a.sock' })).toThrow(/the two NBD servers need two sockets/);
    expect(() => loadConfig({ CDP_NBD_SOCKET: `/${'d'.repeat(110)}.sock` })).toThrow(/CDP_NBD_SOCKET: a Unix socket path must be at most 107 bytes long/);
  });

  it('takes pre-shared keys for NBD TLS instead of certificates, never beside them', () => {
    expect(loadConfig({ CDP_NBD_TLS_PSK_FILE: '/etc/cdp/keys.psk' }).nbdTls).toEqual({ pskFile: '/etc/cdp/keys.psk' });
    expect(loadConfig({ CDP_NBD_TLS_PSK_FILE: 'keys.psk' }).nbdTls).toEqual({ pskFile: join(process.cwd(), 'keys.psk') });
    expect(() => loadConfig({ CDP_NBD_TLS_PSK_FILE: '/k.psk', CDP_NBD_TLS_CERT: '/c.pem', CDP_NBD_TLS_KEY: '/k.pem' })).toThrow(
      /CDP_NBD_TLS_PSK_FILE: pre-shared keys replace certificates; unset CDP_NBD_TLS_CERT, CDP_NBD_TLS_KEY or CDP_NBD_TLS_PSK_FILE/,
    );
    let error: unknown;
    try {
      loadConfig({ CDP_NBD_TLS_PSK_FILE: '/k.psk', CDP_NBD_TLS_CA: '/ca.pem' });
    } catch (err) {
      error = err;
    }
    // One problem, the PSK one: the CA is not also reported as lacking a certificate.
    expect((error as Error).message).toMatch(/unset CDP_NBD_TLS_CA or CDP_NBD_TLS_PSK_FILE/);
    expect((error as Error).message).not.toMatch(/needs CDP_NBD_TLS_CERT/);
  });

  it('names every bad variable in one error', () => {
    let error: unknown;
    try {
      loadConfig({ CDP_HTTP_PORT: 'eighty', DATABASE_URL: 'mysql://x', CDP_DEMO: 'maybe' });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const message = (error as ConfigError).message;
    for (const name of ['CDP_HTTP_PORT', 'DATABASE_URL', 'CDP_DEMO']) {
      expect(message).toContain(name);
    }
  });
});

describe('loadConfig: bus and journal', () => {
  it('defaults to the in-process bus and the journal under the data directory', () => {
    const config = loadConfig({ CDP_DATA_DIR: '/srv/cdp' });
    expect(config.bus).toEqual({ driver: 'in-process' });
    expect(config.journalDir).toBe('/srv/cdp/journal');
  });

  it('reads the Kafka settings, with their defaults', () => {
    const config = loadConfig({ CDP_BUS: 'kafka', CDP_KAFKA_BROKERS: 'kafka-0:9092, 10.0.0.2:9093,[::1]:9094', CDP_JOURNAL_DIR: '/shared/journal' });
    expect(config.bus).toEqual({
      driver: 'kafka',
      brokers: ['kafka-0:9092', '10.0.0.2:9093', '[::1]:9094'],
      clientId: null,
      replicationFactor: null,
      topicCreation: 'create',
      compression: 'none',
      idempotent: true,
      sessionTimeoutMs: 30_000,
      maxWaitMs: 1_000,
    });
    expect(config.journalDir).toBe('/shared/journal');
  });

  it('takes every Kafka setting', () => {
    const config = loadConfig({
      CDP_BUS: 'kafka',
      CDP_KAFKA_BROKERS: '127.0.0.1:9092',
      CDP_KAFKA_CLIENT_ID: 'site-a.splitter',
      CDP_KAFKA_REPLICATION_FACTOR: '3',
      CDP_KAFKA_TOPIC_CREATION: 'broker-auto-creates',
      CDP_KAFKA_COMPRESSION: 'gzip',
      CDP_KAFKA_IDEMPOTENT: 'false',
      CDP_KAFKA_SESSION_TIMEOUT_MS: '6000',
      CDP_KAFKA_MAX_WAIT_MS: '100',
    });
    expect(config.bus).toMatchObject({
      clientId: 'site-a.splitter',
      replicationFactor: 3,
      topicCreation: 'broker-auto-creates',
      compression: 'gzip',
      idempotent: false,
      sessionTimeoutMs: 6_000,
      maxWaitMs: 100,
    });
  });

  it('names every bad Kafka variable, and the missing brokers, in one error', () => {
    let error: unknown;
    try {
      loadConfig({
        CDP_BUS: 'kafka',
        CDP_KAFKA_REPLICATION_FACTOR: '0',
        CDP_KAFKA_TOPIC_CREATION: 'sometimes',
        CDP_KAFKA_COMPRESSION: 'zstd',
        CDP_KAFKA_CLIENT_ID: 'a b',
        CDP_HTTP_PORT: 'eighty',
      });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems.join('\n');
    for (const name of ['CDP_KAFKA_BROKERS', 'CDP_KAFKA_REPLICATION_FACTOR', 'CDP_KAFKA_TOPIC_CREATION', 'CDP_KAFKA_COMPRESSION', 'CDP_KAFKA_CLIENT_ID', 'CDP_HTTP_PORT']) {
      expect(problems).toContain(name);
    }
  });

  it('refuses an unknown driver and brokers that are not host:port', () => {
    expect(() => loadConfig({ CDP_BUS: 'rabbitmq' })).toThrow(/CDP_BUS/);
    expect(() => loadConfig({ CDP_BUS: 'kafka', CDP_KAFKA_BROKERS: 'kafka-0' })).toThrow(/CDP_KAFKA_BROKERS: must be/);
    expect(() => loadConfig({ CDP_BUS: 'kafka', CDP_KAFKA_BROKERS: ' , ' })).toThrow(/CDP_KAFKA_BROKERS/);
  });
});
