import { type PipeTransform } from '@nestjs/common';
import { z } from 'zod';
import { DomainError } from '@cdp/domain';

/** Validates a request part against a contracts schema; every problem is listed in the 400 reply. */
export class ZodPipe<S extends z.ZodType> implements PipeTransform<unknown, z.infer<S>> {
  constructor(
    private readonly schema: S,
    private readonly what = 'request',
  ) {}

  transform(value: unknown): z.infer<S> {
    const parsed = this.schema.safeParse(value);
    if (!parsed.success) {
      const problems = parsed.error.issues.map((i) => `${i.path.length > 0 ? i.path.join('.') : this.what}: ${i.message}`);
      throw new DomainError('invalid-argument', `invalid ${this.what}: ${problems.join('; ')}`, { problems });
    }
    return parsed.data;
  }
}

const uuid = z.uuid({ message: 'must be a UUID' });

/** Path parameters that name a VPG, volume or checkpoint must be UUIDs; anything else is a 400, not a 404. */
export const uuidParam = (what: string): ZodPipe<typeof uuid> => new ZodPipe(uuid, what);
