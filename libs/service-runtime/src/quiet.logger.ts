import { ConsoleLogger } from '@nestjs/common';

/** Nest's start-up chatter (every module loaded, every route mapped) buries what an operator needs. */
const FRAMEWORK_CONTEXTS = new Set(['InstanceLoader', 'RoutesResolver', 'RouterExplorer', 'NestFactory', 'NestApplication']);

/** Drops Nest's own informational lines; keeps ours, and every warning and error from anyone. */
export class QuietNestLogger extends ConsoleLogger {
  override log(message: unknown, context?: string): void {
    if (context !== undefined && FRAMEWORK_CONTEXTS.has(context)) {
      return;
    }
    super.log(message, context);
  }
}
