/**
 * Constants and wire layouts of the Network Block Device protocol, as this server speaks it: fixed
 * newstyle negotiation, simple and structured replies, and the `base:allocation` metadata context
 * (NetworkBlockDevice/nbd, doc/proto.md). Every integer on
 * the wire is big-endian; offsets below are byte offsets within the message.
 */

/** Server greeting, 18 bytes: 0 'NBDMAGIC' (u64), 8 'IHAVEOPT' (u64), 16 handshake flags (u16). */
export const NBD_MAGIC = 0x4e42444d41474943n;
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
export const GREETING_BYTES = 18;

/** Handshake flags (server, u16) and client flags (client, u32, sent right after the greeting). */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;
export const CLIENT_FLAGS_BYTES = 4;

/**
 * Option request header, 16 bytes: 0 'IHAVEOPT' (u64), 8 option (u32), 12 data length (u32);
 * then `length` bytes of option data.
 */
export const OPTION_HEADER_BYTES = 16;
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
/**
 * NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT data: 0 export name length N (u32), 4 name,
 * 4+N number of queries (u32), then each query: length (u32), query string.
 */
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

/**
 * Option reply header, 20 bytes: 0 reply magic 0x0003e889045565a9 (u64), 8 option being answered
 * (u32), 12 reply type (u32), 16 data length (u32); then `length` bytes of reply data.
 */
export const NBD_REP_MAGIC = 0x0003e889045565a9n;
export const OPTION_REPLY_HEADER_BYTES = 20;
export const NBD_REP_ACK = 1;
/** Data: name length (u32), name, then a description for humans (the rest of the data). */
export const NBD_REP_SERVER = 2;
/** Data: info type (u16), then the type's payload (see NBD_INFO_*). */
export const NBD_REP_INFO = 3;
/** Data: metadata context id (u32; zero when listing), then the context's name (the rest). */
export const NBD_REP_META_CONTEXT = 4;
/** Error replies have bit 31 set; their data, if any, is a message for humans. */
export const NBD_REP_FLAG_ERROR = 0x8000_0000;
export const NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR + 1;
export const NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR + 2;
export const NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR + 3;
/** The option needs TLS first (NBD_OPT_STARTTLS). */
export const NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR + 5;
export const NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR + 6;
export const NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR + 7;

/** NBD_INFO_EXPORT payload, 12 bytes: 0 type (u16), 2 export size (u64), 10 transmission flags (u16). */
export const NBD_INFO_EXPORT = 0;
/** NBD_INFO_NAME payload: 0 type (u16), 2 canonical export name (the rest). */
export const NBD_INFO_NAME = 1;
/** NBD_INFO_DESCRIPTION payload: 0 type (u16), 2 description (the rest). */
export const NBD_INFO_DESCRIPTION = 2;
/**
 * NBD_INFO_BLOCK_SIZE payload, 14 bytes: 0 type (u16), 2 minimum block size (u32), 6 preferred block
 * size (u32), 10 maximum payload size (u32).
 */
export const NBD_INFO_BLOCK_SIZE = 3;

/**
 * Reply to NBD_OPT_EXPORT_NAME (no reply header): 0 export size (u64), 8 transmission flags (u16),
 * then 124 zero bytes unless both sides set NO_ZEROES.
 */
export const EXPORT_NAME_REPLY_BYTES = 10;
export const EXPORT_NAME_ZEROES = 124;

/** Transmission flags (u16). */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

/**
 * Request, 28 bytes: 0 magic 0x25609513 (u32), 4 command flags (u16), 6 type (u16), 8 cookie (u64,
 * opaque: echoed back as is), 16 offset (u64), 24 length (u32); NBD_CMD_WRITE is followed by
 * `length` bytes of data.
 */
export const NBD_REQUEST_MAGIC = 0x25609513;
export const REQUEST_BYTES = 28;
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;

/** Command flags (u16). */
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

/**
 * Simple reply, 16 bytes: 0 magic 0x67446698 (u32), 4 error (u32, an NBD errno, 0 on success),
 * 8 the request's cookie (u64); a successful NBD_CMD_READ is followed by exactly `length` bytes.
 */
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const SIMPLE_REPLY_BYTES = 16;

/**
 * Structured reply chunk, 20 bytes and a payload: 0 magic 0x668e33ef (u32), 4 flags (u16), 6 type
 * (u16), 8 the request's cookie (u64), 16 payload length (u32). Only once negotiated with
 * NBD_OPT_STRUCTURED_REPLY; NBD_REPLY_FLAG_DONE marks a request's last chunk.
 */
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
export const STRUCTURED_REPLY_BYTES = 20;
export const NBD_REPLY_FLAG_DONE = 1 << 0;
/** Payload: 0 offset (u64), 8 the data. */
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
/** Payload: 0 metadata context id (u32), then descriptors of 8 bytes: extent length (u32), status flags (u32). */
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
/** Payload: 0 error (u32, nonzero), 4 message length (u16), 6 message for humans. */
export const NBD_REPLY_TYPE_ERROR = (1 << 15) + 1;

/** The one metadata context this server offers, and its status flags. */
export const BASE_ALLOCATION = 'base:allocation';
/** Not allocated in the backing storage. */
export const NBD_STATE_HOLE = 1 << 0;
/** Reads as zeros. */
export const NBD_STATE_ZERO = 1 << 1;
/** The most descriptors one block status chunk may carry (the spec's SHOULD NOT exceed). */
export const MAX_STATUS_DESCRIPTORS = 1 << 20;

/** Error values of the reply (the protocol's own numbering, not the host's errno). */
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

export type NbdErrno =
  | typeof NBD_EPERM
  | typeof NBD_EIO
  | typeof NBD_ENOMEM
  | typeof NBD_EINVAL
  | typeof NBD_ENOSPC
  | typeof NBD_EOVERFLOW
  | typeof NBD_ENOTSUP
  | typeof NBD_ESHUTDOWN;

const ERRNOS: ReadonlySet<number> = new Set([
  NBD_EPERM,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_EOVERFLOW,
  NBD_ENOTSUP,
  NBD_ESHUTDOWN,
]);

export function isNbdErrno(value: unknown): value is NbdErrno {
  return typeof value === 'number' && ERRNOS.has(value);
}

/** The protocol's limit on strings (export names, descriptions, messages). */
export const MAX_STRING_BYTES = 4096;
/** The payload every server should accept without calling it a denial of service (2^25). */
export const DEFAULT_MAX_PAYLOAD_BYTES = 32 * 1024 * 1024;
