import { join } from 'node:path';
import { ApiClient } from './http-client';
import { startService, type ServiceProcess } from './service.process';

/** The five services, each an app in apps/ of the same name. */
export const PIPELINE_SERVICES = ['recovery-orchestrator', 'journal-writer', 'transport', 'splitter', 'checkpoint-scheduler'] as const;
export type PipelineService = (typeof PIPELINE_SERVICES)[number];

const USES_DATABASE: Record<PipelineService, boolean> = {
  'recovery-orchestrator': true,
  'journal-writer': true,
  transport: false,
  splitter: false,
  'checkpoint-scheduler': true,
};

export interface PipelineOptions {
  /** host:port of the Kafka-protocol broker. */
  readonly broker: string;
  readonly databaseUrl: string;
  /** Each service gets <root>/<service> as its data directory; the journal is <root>/journal, shared. */
  readonly root: string;
  /** Extra environment for every service (e.g. CDP_KAFKA_TOPIC_CREATION for a broker without CreateTopics). */
  readonly env?: Readonly<Record<string, string>>;
}

/**
 * The five services as separate OS processes over one Kafka-protocol broker and one PostgreSQL
 * database, as an operator runs them: each with its own data directory, the journal writer and the
 * recovery orchestrator sharing the journal directory. `kill` and `start` let a test crash and restart
 * one service; `api` reaches a service over HTTP.
 */
export class ServicePipeline {
  private readonly running = new Map<PipelineService, ServiceProcess>();

  constructor(private readonly options: PipelineOptions) {}

  /** Starts every service that is not running, all at once. */
  async startAll(): Promise<void> {
    await Promise.all(PIPELINE_SERVICES.filter((s) => !this.running.has(s)).map((s) => this.start(s)));
  }

  async start(service: PipelineService): Promise<ServiceProcess> {
    if (this.running.has(service)) throw new Error(`${service} is already running`);
    const started = await startService(service, this.env(service));
    this.running.set(service, started);
    return started;
  }

  /** kill -9: no shutdown hook runs, nothing is flushed or committed on the way out. */
  async kill(service: PipelineService): Promise<void> {
    const process = this.process(service);
    this.running.delete(service);
    await process.kill('SIGKILL');
  }

  isRunning(service: PipelineService): boolean {
    return this.running.has(service);
  }

  process(service: PipelineService): ServiceProcess {
    const process = this.running.get(service);
    if (process === undefined) throw new Error(`${service} is not running`);
    return process;
  }

  api(service: PipelineService): ApiClient {
    return new ApiClient(this.process(service).url);
  }

  /** Stops every running service gracefully (SIGTERM); resolves with each one's exit code and output. */
  async stopAll(): Promise<Map<PipelineService, { readonly code: number | null; readonly output: string }>> {
    const entries = [...this.running];
    this.running.clear();
    const results = await Promise.all(entries.map(async ([service, p]) => [service, { code: await p.stop(), output: p.output() }] as const));
    return new Map(results);
  }

  /** Everything each running service printed, for a failure message. */
  output(): string {
    return [...this.running].map(([service, p]) => `----- ${service} -----\n${p.output()}`).join('\n');
  }

  private env(service: PipelineService): Record<string, string> {
    return {
      CDP_BUS: 'kafka',
      CDP_KAFKA_BROKERS: this.options.broker,
      CDP_DATA_DIR: join(this.options.root, service),
      CDP_JOURNAL_DIR: join(this.options.root, 'journal'),
      ...(USES_DATABASE[service] ? { DATABASE_URL: this.options.databaseUrl } : {}),
      ...this.options.env,
    };
  }
}
