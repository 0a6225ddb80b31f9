import { type MigrationClass } from '../data-source';
import { InitialSchema1795564800000 } from './1795564800000-initial-schema';
import { CheckpointCatalog1795651200000 } from './1795651200000-checkpoint-catalog';
import { CompactJournalIndex1795737600000 } from './1795737600000-compact-journal-index';
import { JournalOutbox1795824000000 } from './1795824000000-journal-outbox';
import { JournalMembers1796083200000 } from './1796083200000-journal-members';
import { CheckpointListCovering1796169600000 } from './1796169600000-checkpoint-list-covering';
import { CheckpointHours1796256000000 } from './1796256000000-checkpoint-hours';
import { CheckpointHourOffsets1796342400000 } from './1796342400000-checkpoint-hour-offsets';
import { SiteAlerts1796428800000 } from './1796428800000-site-alerts';
import { RpoAlerts1796515200000 } from './1796515200000-rpo-alerts';
import { DirtyRegionAlerts1796601600000 } from './1796601600000-dirty-region-alerts';
import { JournalSyncs1796688000000 } from './1796688000000-journal-syncs';

/** Every migration, oldest first. Append new ones at the end; never edit or reorder shipped ones. */
export const migrations: readonly MigrationClass[] = [InitialSchema1795564800000, CheckpointCatalog1795651200000, CompactJournalIndex1795737600000, JournalOutbox1795824000000, JournalMembers1796083200000, CheckpointListCovering1796169600000, CheckpointHours1796256000000, CheckpointHourOffsets1796342400000, SiteAlerts1796428800000, RpoAlerts1796515200000, DirtyRegionAlerts1796601600000, JournalSyncs1796688000000];
