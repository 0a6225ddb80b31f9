import { validateCheckpointName } from './checkpoint.model';
import { DomainError } from './domain.error';
import { MAX_WRITE_BYTES, type Volume } from './vpg.model';
import { validateWriteRange } from './write.model';

const volume: Volume = { id: 'v', name: 'disk', index: 0, sizeBytes: 1 << 20, blockSize: 512 };

describe('validateWriteRange', () => {
  it('accepts any non-empty range inside the volume, aligned or not', () => {
    expect(() => validateWriteRange(volume, 0, 1)).not.toThrow();
    expect(() => validateWriteRange(volume, 511, 2)).not.toThrow();
    expect(() => validateWriteRange(volume, (1 << 20) - 1, 1)).not.toThrow();
  });

  it.each([
    [-1, 512, /non-negative/],
    [0.5, 512, /non-negative integer/],
    [0, 0, /positive/],
    [(1 << 20) - 511, 512, /past the end/],
    [0, MAX_WRITE_BYTES + 1, /exceeds the maximum/],
  ])('rejects offset %p length %p', (offset, length, message) => {
    expect(() => validateWriteRange(volume, offset, length)).toThrow(DomainError);
    expect(() => validateWriteRange(volume, offset, length)).toThrow(message);
  });
});

describe('validateCheckpointName', () => {
  it('trims and accepts 1 to 128 characters', () => {
    expect(validateCheckpointName('  before upgrade ')).toBe('before upgrade');
    expect(validateCheckpointName('x'.repeat(128))).toHaveLength(128);
  });

  it.each([[''], ['   '], ['x'.repeat(129)], ['tab\there'], [42], [null]])('rejects %p', (name) => {
    expect(() => validateCheckpointName(name)).toThrow(DomainError);
  });
});
