import { Controller, Get } from '@nestjs/common';

/** Liveness: the process answers. Readiness checks come with the services that own dependencies. */
@Controller('health')
export class HealthController {
  @Get()
  health(): { status: 'ok' } {
    return { status: 'ok' };
  }
}
