import { type Checkpoint, type Volume } from '@cdp/domain';
import { type ApiClient } from './http-client';
import { type ReferenceModel } from './reference-model';

/**
 * Recovers every volume at every checkpoint through the public API and compares it byte for byte with
 * the reference model. Throws naming the first checkpoint, volume and byte that differ. Returns how
 * many images were compared.
 */
export async function expectCheckpointsRecoverBitExact(
  api: ApiClient,
  vpgId: string,
  volumes: readonly Volume[],
  checkpoints: readonly Checkpoint[],
  model: ReferenceModel,
): Promise<number> {
  const expected = model.imagesAt(checkpoints.map((c) => c.cut));
  let compared = 0;
  for (const checkpoint of checkpoints) {
    for (const volume of volumes) {
      const { status, data } = await api.bytes(`/vpgs/${vpgId}/checkpoints/${checkpoint.id}/volumes/${volume.id}/image`);
      const label = `checkpoint ${checkpoint.name ?? checkpoint.kind} (cut ${checkpoint.cut}), volume ${volume.name}`;
      if (status !== 200) {
        throw new Error(`${label}: image request answered ${status}: ${data.toString('utf8').slice(0, 300)}`);
      }
      const want = expected.get(checkpoint.cut)?.get(volume.id);
      if (!want) {
        throw new Error(`${label}: the model has no image`);
      }
      if (!data.equals(want)) {
        throw new Error(`${label}: differs from the model, first at byte ${firstDifference(data, want)}`);
      }
      compared++;
    }
  }
  return compared;
}

function firstDifference(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) {
      return i;
    }
  }
  return n;
}
