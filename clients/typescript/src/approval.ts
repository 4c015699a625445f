// approvalHash: what a passkey signs for an approval (docs/approvals.md, version 1).
//
//   const hash = approvalHash({
//     environmentId: request.environmentId,   // as given to Challenge
//     userId: request.userId,
//     challengeId: response.challengeId,      // from ChallengeResponse
//     expiresAt: response.expiresAt!,         // the Timestamp, a Date, or whole seconds
//     approval: request.approval!,            // the message, or its init shape
//   });                                       // equals response.approvalHash
//
// SHA-256 over the RFC 8785 canonical JSON (the `canonicalize` package) of the approval
// with the environment, user, challenge id and expiry. An implementation independent of
// the service's (Python, rfc8785); tests/test_approval_hash.py holds them to each other.
import { createHash } from "node:crypto";
import { create, isMessage, type MessageInitShape } from "@bufbuild/protobuf";
import { type Timestamp, TimestampSchema } from "@bufbuild/protobuf/wkt";
import canonicalize from "canonicalize";
import { Action, ActionSchema, ApprovalSchema } from "./gen/mfa/v1/types_pb";

export const APPROVAL_TYPE = "mfa.v1.approval";
export const APPROVAL_VERSION = 1;

export interface ApprovalBinding {
  environmentId: string;
  userId: string;
  /** The lowercase UUID text ChallengeResponse.challengeId holds. */
  challengeId: string;
  /** ChallengeResponse.expiresAt, as a Date, or its seconds since the Unix epoch (whole seconds). */
  expiresAt: Timestamp | Date | number;
  /** The Approval given to Challenge. */
  approval: MessageInitShape<typeof ApprovalSchema>;
}

const UUID_TEXT = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const LONE_SURROGATE = /\p{Surrogate}/u; // with /u a well-formed pair is one code point

function seconds(expiresAt: Timestamp | Date | number): number {
  const [value, nanos] = isMessage(expiresAt, TimestampSchema)
    ? [Number(expiresAt.seconds), expiresAt.nanos]
    : [expiresAt instanceof Date ? expiresAt.getTime() / 1000 : expiresAt, 0];
  if (!Number.isSafeInteger(value) || nanos !== 0) {
    throw new RangeError("expiresAt: a bound challenge expires at a whole second");
  }
  return value;
}

function actionNames(actions: Action[]): string[] {
  if (actions.length === 0) throw new RangeError("approval.actions: at least one action is required");
  const names = actions.map((action) => {
    const name = ActionSchema.value[action]?.name;
    if (action === Action.UNSPECIFIED || name === undefined) {
      throw new RangeError(`approval.actions: ${action} is not an action`);
    }
    return name;
  });
  if (new Set(names).size !== names.length) {
    throw new RangeError("approval.actions: must not list an action twice");
  }
  return names.sort(); // enum names are ASCII: code unit order is code point order
}

function text(field: string, value: string): string {
  if (LONE_SURROGATE.test(value)) throw new RangeError(`${field}: not valid Unicode text`);
  return value;
}

/** The RFC 8785 JSON whose SHA-256 is the approval hash (UTF-8 when hashed). */
export function approvalEncoding(binding: ApprovalBinding): string {
  const approval = create(ApprovalSchema, binding.approval);
  if (approval.payloadDigest.length !== 32) {
    throw new RangeError("approval.payloadDigest: the SHA-256 of the payload (32 bytes)");
  }
  if (!UUID_TEXT.test(binding.challengeId)) {
    throw new RangeError("challengeId: the lowercase UUID text ChallengeResponse.challengeId holds");
  }
  const encoded = canonicalize({
    type: APPROVAL_TYPE,
    version: APPROVAL_VERSION,
    environment_id: text("environmentId", binding.environmentId),
    user_id: text("userId", binding.userId),
    challenge_id: binding.challengeId,
    expires_at: seconds(binding.expiresAt),
    actions: actionNames(approval.actions),
    payload_digest: Buffer.from(approval.payloadDigest).toString("hex"),
    display_text: text("approval.displayText", approval.displayText),
    single_use: approval.singleUse,
    session_id: text("approval.sessionId", approval.sessionId),
  });
  if (encoded === undefined) throw new Error("canonicalize returned nothing");
  return encoded;
}

/** The 32-byte approval hash: ChallengeResponse.approvalHash, the passkey's challenge. */
export function approvalHash(binding: ApprovalBinding): Buffer {
  return createHash("sha256").update(approvalEncoding(binding), "utf8").digest();
}
