import { type MigrationClass } from '../data-source';
import { InitialSchema1795564800000 } from './1795564800000-initial-schema';

/** Every migration, oldest first. Append new ones at the end; never edit or reorder shipped ones. */
export const migrations: readonly MigrationClass[] = [InitialSchema1795564800000];
