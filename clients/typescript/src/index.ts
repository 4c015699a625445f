// @mfa-service/client: a promise client of mfa-service for Node services.
//
//   const client = createMfaClient({ address: "127.0.0.1:50051", insecure: true });
//   const validation = await client.actionTokens.validate({ environmentId, userId,
//     action: Action.WAAS_SIGN, token, payloadDigest });   // retried under one key
//
// Every failed call throws MfaServiceError (code, reason, field violations, retry delay).
export {
  createMfaClient,
  DEFAULT_BACKOFF_MS,
  DEFAULT_TIMEOUT_MS,
  DEFAULT_VALIDATE_ATTEMPTS,
  type ActionTokenHelpers,
  type Jwks,
  type MfaClient,
  type MfaClientOptions,
  type Pem,
  type TlsOptions,
  type Validation,
} from "./client";
export { codeName, MfaServiceError, type FieldViolation } from "./errors";
// The approval hash (docs/approvals.md): what a passkey signs for an approval.
export { approvalEncoding, approvalHash, type ApprovalBinding } from "./approval";
// The mfa.v1 messages (types and schemas), enums and service descriptors (protoc-gen-es).
export * from "./gen/mfa/v1/action_token_service_pb";
export * from "./gen/mfa/v1/admin_service_pb";
export * from "./gen/mfa/v1/mfa_service_pb";
export * from "./gen/mfa/v1/types_pb";
// Status codes (the same numbers as gRPC's) and call options, from Connect.
export { Code, type CallOptions, type Interceptor } from "@connectrpc/connect";
