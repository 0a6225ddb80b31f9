import { type ArgumentsHost, Catch, type ExceptionFilter, HttpException, HttpStatus, Logger } from '@nestjs/common';
import { type Response } from 'express';
import { DomainError, type DomainErrorCode } from '@cdp/domain';
import { CorruptRecordError } from '@cdp/contracts';

const STATUS: Record<DomainErrorCode, number> = {
  'invalid-argument': HttpStatus.BAD_REQUEST,
  'out-of-range': HttpStatus.BAD_REQUEST,
  'not-found': HttpStatus.NOT_FOUND,
  'already-exists': HttpStatus.CONFLICT,
  conflict: HttpStatus.CONFLICT,
  'failed-precondition': HttpStatus.PRECONDITION_FAILED,
};

/**
 * The one place where errors become HTTP responses. Domain errors keep their code in the body so
 * clients can branch on it; a corrupt journal record is a server-side data error, never data.
 */
@Catch()
export class ErrorResponseFilter implements ExceptionFilter {
  private readonly logger = new Logger('http');

  catch(error: unknown, host: ArgumentsHost): void {
    const response = host.switchToHttp().getResponse<Response>();
    if (response.headersSent) {
      // A streamed body failed half-way: the only honest signal left is to cut the connection.
      response.destroy(error instanceof Error ? error : undefined);
      return;
    }
    if (error instanceof DomainError) {
      response.status(STATUS[error.code]).json({ error: error.code, message: error.message, details: error.details });
      return;
    }
    if (error instanceof CorruptRecordError) {
      this.logger.error(`corrupt journal record: ${error.message}`);
      response.status(HttpStatus.INTERNAL_SERVER_ERROR).json({ error: 'corrupt-record', message: error.message });
      return;
    }
    if (isOutOfSpace(error)) {
      // The disk under the splitter's log or a volume is full: not a fault in the server, and the
      // caller can act on it (make room, write again), as a block device's ENOSPC says.
      response.status(HttpStatus.INSUFFICIENT_STORAGE).json({ error: 'insufficient-storage', message: error.message });
      return;
    }
    if (error instanceof HttpException) {
      const status = error.getStatus();
      const body = error.getResponse();
      const message = typeof body === 'string' ? body : ((body as { message?: unknown }).message ?? error.message);
      response.status(status).json({ error: codeForStatus(status), message });
      return;
    }
    this.logger.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
    response.status(HttpStatus.INTERNAL_SERVER_ERROR).json({ error: 'internal', message: 'internal error' });
  }
}

/** A file system's "no room" (a full disk or a used-up quota), as Node's errors and ours carry it in `code`. */
function isOutOfSpace(error: unknown): error is Error & { code: string } {
  const code = error instanceof Error ? (error as { code?: unknown }).code : undefined;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

function codeForStatus(status: number): string {
  if (status === 413) return 'payload-too-large';
  if (status === 404) return 'not-found';
  if (status === 415) return 'unsupported-media-type';
  if (status >= 400 && status < 500) return 'invalid-argument';
  return 'internal';
}
