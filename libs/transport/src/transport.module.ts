import { Module } from '@nestjs/common';
import { TransportController } from './transport.controller';
import { TransportService } from './transport.service';

/** Needs BUS from the composing application. */
@Module({ controllers: [TransportController], providers: [TransportService], exports: [TransportService] })
export class TransportModule {}
