import { DomainError } from './domain.error';
import { MAX_NAME_LENGTH } from './vpg.model';

export const CHECKPOINT_KINDS = ['automatic', 'tagged', 'application-consistent'] as const;
export type CheckpointKind = (typeof CHECKPOINT_KINDS)[number];

/**
 * A named cut in a VPG's write order: every write with seq <= cut is inside, none after.
 * `capturedAt` is the splitter's clock when the marker entered the stream.
 */
export interface Checkpoint {
  readonly id: string;
  readonly vpgId: string;
  readonly cut: number;
  readonly kind: CheckpointKind;
  readonly name: string | null;
  /** For application-consistent checkpoints: the VM whose agent quiesced and asked. */
  readonly vmId: string | null;
  readonly capturedAt: string;
}

/** Tagged and application-consistent checkpoints carry a human name: 1..128 characters, no control characters. */
export function validateCheckpointName(name: unknown): string {
  if (typeof name !== 'string') {
    throw new DomainError('invalid-argument', 'checkpoint name must be a string');
  }
  const trimmed = name.trim();
  if (trimmed.length === 0) {
    throw new DomainError('invalid-argument', 'checkpoint name must not be empty');
  }
  if (trimmed.length > MAX_NAME_LENGTH) {
    throw new DomainError(
      'invalid-argument',
      `checkpoint name is ${trimmed.length} characters; at most ${MAX_NAME_LENGTH} are allowed`,
    );
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(trimmed)) {
    throw new DomainError('invalid-argument', 'checkpoint name must not contain control characters');
  }
  return trimmed;
}
