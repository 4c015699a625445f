// The one error type the client throws: a failed call, with the google.rpc.Status details
// the service attaches (mfa_service/api/errors.py) decoded.
//
//   Error
//   └── MfaServiceError   every failed call: the service's refusals (ErrorInfo.reason set),
//                         and the transport's own failures (no reason: UNAVAILABLE when
//                         nothing answered, DEADLINE_EXCEEDED, CANCELED by an AbortSignal)
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb";
import { ErrorReason, ErrorReasonSchema } from "./gen/mfa/v1/types_pb";

/** A request field the service refused, and why (google.rpc.BadRequest). */
export interface FieldViolation {
  /** The field's proto path, e.g. "payload_digest" or "actions[0]". */
  field: string;
  description: string;
}

const REQUEST_ID_HEADER = "x-request-id";

/** The gRPC name of a status code, e.g. "PERMISSION_DENIED" for Code.PermissionDenied. */
export function codeName(code: Code): string {
  return code === Code.Canceled
    ? "CANCELLED" // gRPC's spelling (Code's member is "Canceled")
    : Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** A call to mfa-service failed. */
export class MfaServiceError extends Error {
  override readonly name = "MfaServiceError";
  /** The gRPC status code (Connect's Code: the same numbers, e.g. Code.PermissionDenied). */
  readonly code: Code;
  /** The status message, as the service wrote it. */
  readonly rawMessage: string;
  /**
   * ErrorInfo.reason, the mfa.v1.ErrorReason name (e.g. "ERROR_REASON_LOCKED_OUT"); empty
   * when the failure came from the transport rather than the service.
   */
  readonly reason: string;
  /** `reason` as this client's ErrorReason enum (UNSPECIFIED when empty or unknown to it). */
  readonly errorReason: ErrorReason;
  /** The id of the call in the service's logs (ErrorInfo metadata, or the x-request-id trailer). */
  readonly requestId: string;
  /** With INVALID_ARGUMENT: the fields refused (google.rpc.BadRequest). */
  readonly fieldViolations: FieldViolation[];
  /** With RESOURCE_EXHAUSTED (a lockout): when to try again (google.rpc.RetryInfo), in ms. */
  readonly retryAfterMs: number | undefined;

  constructor(error: ConnectError) {
    super("", { cause: error });
    const info = error.findDetails(ErrorInfoSchema)[0];
    const retry = error.findDetails(RetryInfoSchema)[0]?.retryDelay;
    this.code = error.code;
    this.rawMessage = error.rawMessage;
    this.reason = info?.reason ?? "";
    this.errorReason = ErrorReasonSchema.values.find((v) => v.name === this.reason)?.number ?? ErrorReason.UNSPECIFIED;
    this.requestId = info?.metadata.request_id ?? error.metadata.get(REQUEST_ID_HEADER) ?? "";
    this.fieldViolations = error
      .findDetails(BadRequestSchema)
      .flatMap((bad) => bad.fieldViolations.map(({ field, description }) => ({ field, description })));
    this.retryAfterMs = retry && Number(retry.seconds) * 1000 + Math.round(retry.nanos / 1e6);
    const where = this.requestId ? ` (request id ${this.requestId})` : "";
    const why = this.reason ? ` ${this.reason}` : "";
    this.message = `${codeName(this.code)}${why}: ${this.rawMessage}${where}`;
  }

  /** Any failure of a call (a ConnectError, an abort, ...) as an MfaServiceError. */
  static from(reason: unknown): MfaServiceError {
    return reason instanceof MfaServiceError ? reason : new MfaServiceError(ConnectError.from(reason));
  }
}
