import { takeTestPostgresState } from './postgres.global-state';

/** Stops the embedded server of the integration tier and removes its directory; an external one stays. */
export default async function globalTeardown(): Promise<void> {
  await takeTestPostgresState()?.stop();
}
