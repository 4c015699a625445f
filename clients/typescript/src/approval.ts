// approvalHash: what a passkey signs for an approval (docs/approvals.md, version 1).
//
//   const hash = approvalHash({
//     environmentId: request.environmentId,   // as given to Challenge
//     userId: request.userId,
//     challengeId: response.challengeId,      // from ChallengeResponse
//     expiresAt: response.expiresAt!,         // the Date, or its whole seconds
//     approval: request.approval!,
//   });                                       // equals response.approvalHash
//
// SHA-256 over the RFC 8785 canonical JSON (the `canonicalize` package) of the approval
// with the environment, user, challenge id and expiry. An implementation independent of
// the service's (Python, rfc8785); tests/test_approval_hash.py holds them to each other.
import { createHash } from "node:crypto";
import canonicalize from "canonicalize";
import { Action, actionToJSON, type Approval } from "./gen/mfa/v1/types";

export const APPROVAL_TYPE = "mfa.v1.approval";
export const APPROVAL_VERSION = 1;

export interface ApprovalBinding {
  environmentId: string;
  userId: string;
  /** The lowercase UUID text ChallengeResponse.challengeId holds. */
  challengeId: string;
  /** ChallengeResponse.expiresAt, or its seconds since the Unix epoch (whole seconds). */
  expiresAt: Date | number;
  approval: Approval;
}

const UUID_TEXT = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const LONE_SURROGATE = /\p{Surrogate}/u; // with /u a well-formed pair is one code point

function seconds(expiresAt: Date | number): number {
  const value = expiresAt instanceof Date ? expiresAt.getTime() / 1000 : expiresAt;
  if (!Number.isSafeInteger(value)) {
    throw new RangeError("expiresAt: a bound challenge expires at a whole second");
  }
  return value;
}

function actionNames(actions: Action[]): string[] {
  if (actions.length === 0) throw new RangeError("approval.actions: at least one action is required");
  const names = actions.map((action) => {
    const name = actionToJSON(action);
    if (action === Action.ACTION_UNSPECIFIED || name === "UNRECOGNIZED") {
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
  const { approval } = binding;
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
