import { join } from 'node:path';
import { type DynamicModule, Global, Inject, Injectable, Logger, Module, type OnApplicationShutdown, type Provider } from '@nestjs/common';
import { ModuleRef } from '@nestjs/core';
import { DataSource } from 'typeorm';
import { BUS, type Bus } from '@cdp/bus';
import { APP_CONFIG, type AppConfig } from '@cdp/config';
import { EmbeddedPostgresServer, createDataSource, migrations, runMigrations } from '@cdp/database';
import { eventStoreEntities } from '@cdp/event-store';
import { READINESS_CHECKS, type ReadinessCheck } from '@cdp/http-edge';
import { journalEntities } from '@cdp/journal-store';
import { createBus } from './bus.factory';
import { ServiceState, busCheck, databaseCheck } from './readiness';

export const EMBEDDED_POSTGRES = 'cdp:embedded-postgres';

export interface DatabaseHandle {
  readonly url: string;
  readonly embedded: EmbeddedPostgresServer | null;
}

export interface InfrastructureOptions {
  /** Names the process to the bus (the Kafka client id defaults to continuum-<service>). */
  readonly service: string;
  readonly database: boolean;
  /** Replaces the configured bus (tests inject faults through it). */
  readonly bus?: Bus;
}

/**
 * The infrastructure a service process runs on: its validated configuration, its bus driver, and (for
 * services that keep state in Postgres) a DataSource whose migrations have run. With no DATABASE_URL,
 * a PostgreSQL server is started under <dataDir>/postgres. Closed last, after every service has
 * stopped (services stop in beforeApplicationShutdown). Also the readiness checks of what it provides
 * (READINESS_CHECKS, for the HealthController): the service started, the bus, the database if any.
 */
@Global()
@Module({})
export class InfrastructureModule {
  static forRoot(config: AppConfig, options: InfrastructureOptions): DynamicModule {
    const providers: Provider[] = [
      { provide: APP_CONFIG, useValue: config },
      { provide: BUS, useFactory: (): Bus | Promise<Bus> => options.bus ?? createBus(config, options.service) },
      ServiceState,
      InfrastructureLifecycle,
    ];
    if (options.database) {
      providers.push(
        {
          provide: EMBEDDED_POSTGRES,
          useFactory: async (): Promise<DatabaseHandle> => {
            if (config.databaseUrl) {
              return { url: config.databaseUrl, embedded: null };
            }
            const embedded = new EmbeddedPostgresServer({ dataDir: join(config.dataDir, 'postgres'), port: config.embeddedPostgresPort });
            const started = await embedded.start();
            return { url: started.url, embedded };
          },
        },
        {
          provide: DataSource,
          inject: [EMBEDDED_POSTGRES],
          useFactory: async (database: DatabaseHandle): Promise<DataSource> => {
            const dataSource = createDataSource({
              url: database.url,
              entities: [...eventStoreEntities, ...journalEntities],
              migrations,
              applicationName: 'continuum',
            });
            await dataSource.initialize();
            await runMigrations(dataSource);
            return dataSource;
          },
        },
      );
    }
    providers.push({
      provide: READINESS_CHECKS,
      inject: [ServiceState, BUS, ...(options.database ? [DataSource] : [])],
      useFactory: (state: ServiceState, bus: Bus, dataSource?: DataSource): ReadinessCheck[] => [
        state.check(),
        busCheck(bus),
        ...(dataSource ? [databaseCheck(dataSource)] : []),
      ],
    });
    return { module: InfrastructureModule, providers, exports: providers.filter((p) => p !== InfrastructureLifecycle) };
  }
}

@Injectable()
class InfrastructureLifecycle implements OnApplicationShutdown {
  private readonly logger = new Logger('infrastructure');

  constructor(
    @Inject(BUS) private readonly bus: Bus,
    private readonly moduleRef: ModuleRef,
  ) {}

  async onApplicationShutdown(): Promise<void> {
    await this.bus.close();
    const dataSource = this.optional<DataSource>(DataSource);
    if (dataSource?.isInitialized) {
      await dataSource.destroy();
    }
    const database = this.optional<DatabaseHandle>(EMBEDDED_POSTGRES);
    if (database?.embedded) {
      await database.embedded.stop();
      this.logger.log('embedded PostgreSQL stopped');
    }
  }

  /** Services without a database have no DataSource provider; that is not an error at shutdown. */
  private optional<T>(token: string | typeof DataSource): T | undefined {
    try {
      return this.moduleRef.get<T>(token, { strict: false });
    } catch {
      return undefined;
    }
  }
}
