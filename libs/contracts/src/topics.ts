/**
 * Bus topics. Every message is keyed by VPG id, so one VPG's messages share one partition and keep
 * their order. Partition counts are deployment settings; these are the defaults.
 */
export const TOPICS = {
  /** splitter -> transport: record batches (record-batch.codec.ts), in seq order. */
  protectedWrites: 'cdp.protected.writes',
  /** transport -> journal writer: the same record batches at the recovery site. */
  recoveryWrites: 'cdp.recovery.writes',
  /** scheduler, orchestrator, journal writer -> splitter: JSON commands (commands.ts). */
  commands: 'cdp.commands',
  /** domain events for every consumer (events.ts), JSON. */
  events: 'cdp.events',
  /** journal writer -> splitter: how far each VPG is durable and indexed, so the splitter can trim its log. */
  journalProgress: 'cdp.journal.progress',
  /** splitters -> checkpoint scheduler: coordinated checkpoint reports (commands.ts, barrierHeldSchema). */
  barrier: 'cdp.checkpoint.barrier',
} as const;

export type TopicName = (typeof TOPICS)[keyof typeof TOPICS];

export const DEFAULT_PARTITIONS = 8;
