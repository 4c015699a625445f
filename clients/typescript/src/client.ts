// createMfaClient: one HTTP/2 connection to mfa-service (gRPC, Connect-ES) and a promise
// client per service, with a default deadline on every unary call, MfaServiceError for
// every failure, and ValidateActionToken retried under one idempotency key.
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type { MessageInitShape } from "@bufbuild/protobuf";
import {
  type CallOptions,
  type Client,
  Code,
  type Interceptor,
  type Transport,
  createClient,
} from "@connectrpc/connect";
import { Http2SessionManager, createGrpcTransport } from "@connectrpc/connect-node";
import { MfaServiceError } from "./errors";
import {
  ActionTokenService,
  type ValidateActionTokenRequestSchema,
} from "./gen/mfa/v1/action_token_service_pb";
import { AdminService } from "./gen/mfa/v1/admin_service_pb";
import { MfaService } from "./gen/mfa/v1/mfa_service_pb";
import { Decision, DecisionReason, DecisionReasonSchema } from "./gen/mfa/v1/types_pb";

export const DEFAULT_TIMEOUT_MS = 5_000;
export const DEFAULT_VALIDATE_ATTEMPTS = 3;
export const DEFAULT_BACKOFF_MS = 50;
const MAX_BACKOFF_MS = 1_000;
// The answer may have been lost after the server decided: safe to resend only with the
// same idempotency key, which makes the server answer as it did the first time.
const RETRYABLE: ReadonlySet<Code> = new Set([Code.Unavailable, Code.DeadlineExceeded]);

/** PEM text or bytes, as node:tls takes them. */
export type Pem = string | Buffer;

export interface TlsOptions {
  /** The CA certificates that sign the server's certificate (default: Node's own roots). */
  ca?: Pem;
  /** This caller's certificate chain and key, for mutual TLS. */
  cert?: Pem;
  key?: Pem;
  /** The name the server's certificate must carry, when it is not the address's host. */
  serverName?: string;
}

export interface MfaClientOptions {
  /** "host:port" (e.g. "mfa.internal:50051"), or an http:// or https:// URL. */
  address: string;
  /** Plaintext HTTP/2 (h2c), for `mfa-service serve --dev` only. Excludes `tls`. */
  insecure?: boolean;
  /** TLS (the default unless `insecure`), with a client certificate for mutual TLS. */
  tls?: TlsOptions;
  /** The deadline of each unary call (each attempt of `validate`) unless the call gives
   * its own `timeoutMs` (0: none). Server streams have none. Default 5000. */
  timeoutMs?: number;
  /** Attempts of `actionTokens.validate` (default 3) and the base of their backoff (ms). */
  validateAttempts?: number;
  backoffMs?: number;
  /** Run around every call, e.g. to add metadata such as mfa-client-ip. */
  interceptors?: Interceptor[];
}

/** A ValidateActionToken decision: `allowed` only on DECISION_ALLOW. */
export interface Validation {
  decision: Decision;
  reason: DecisionReason;
  allowed: boolean;
  /** e.g. "DECISION_REASON_TOKEN_ALREADY_USED" */
  reasonName: string;
  /** The key the decision was asked under: resend it to get this decision again. */
  idempotencyKey: string;
}

/** The JSON Web Key Set (RFC 7517) whose keys sign action tokens. */
export interface Jwks {
  keys: Array<Record<string, unknown> & { kid: string; kty: string }>;
}

export interface ActionTokenHelpers {
  /**
   * May `action` run now? Consumes a single-use `token` on ALLOW.
   *
   * Each attempt has its own deadline (`options.timeoutMs`, else the client's). UNAVAILABLE
   * and DEADLINE_EXCEEDED are retried with jittered backoff under one idempotency key (a
   * new UUID unless given), so a retry after a lost answer gets the first decision rather
   * than TOKEN_ALREADY_USED. Any other failure throws MfaServiceError at once.
   */
  validate(
    request: MessageInitShape<typeof ValidateActionTokenRequestSchema>,
    options?: CallOptions,
  ): Promise<Validation>;
  /** GetJwks, parsed. */
  jwks(options?: CallOptions): Promise<Jwks>;
}

export interface MfaClient {
  /** mfa.v1.MfaService: the user flows (the API backend). */
  readonly mfa: Client<typeof MfaService>;
  /** mfa.v1.AdminService: environments, settings, resets, the audit log (the dashboard). */
  readonly admin: Client<typeof AdminService>;
  /** mfa.v1.ActionTokenService (the wallet signer): `validateActionToken` is one attempt,
   * `validate` the keyed retries. */
  readonly actionTokens: Client<typeof ActionTokenService> & ActionTokenHelpers;
  /** Close the connection (calls in flight fail with CANCELED or UNAVAILABLE). */
  close(): void;
}

function baseUrl({ address, insecure, tls }: MfaClientOptions): string {
  if (insecure && tls) throw new TypeError("MfaClientOptions: insecure excludes tls");
  if (/^https?:\/\//.test(address)) {
    if (address.startsWith("http:") !== Boolean(insecure)) {
      throw new TypeError("MfaClientOptions: an http:// address is plaintext (insecure: true), https:// is TLS");
    }
    return address;
  }
  return `${insecure ? "http" : "https"}://${address}`;
}

/**
 * Every unary call gets the default deadline unless it has its own (server streams get
 * none: WatchAuditEvents runs until the caller stops it), and every failure, of a unary
 * call or in the middle of a stream, becomes an MfaServiceError.
 */
function withDefaults(transport: Transport, timeoutMs: number): Transport {
  return {
    async unary(method, signal, timeout, header, input, contextValues) {
      try {
        return await transport.unary(method, signal, timeout ?? timeoutMs, header, input, contextValues);
      } catch (error) {
        throw MfaServiceError.from(error);
      }
    },
    async stream(method, signal, timeout, header, input, contextValues) {
      let response;
      try {
        response = await transport.stream(method, signal, timeout, header, input, contextValues);
      } catch (error) {
        throw MfaServiceError.from(error);
      }
      const messages = response.message;
      async function* typed() {
        try {
          yield* messages;
        } catch (error) {
          throw MfaServiceError.from(error);
        }
      }
      return { ...response, message: typed() };
    },
  };
}

/** A client of mfa-service over one HTTP/2 connection (gRPC). Close it when done. */
export function createMfaClient(options: MfaClientOptions): MfaClient {
  const url = baseUrl(options);
  const { ca, cert, key, serverName } = options.tls ?? {};
  const sessionManager = new Http2SessionManager(url, {}, { ca, cert, key, servername: serverName });
  const transport = withDefaults(
    createGrpcTransport({ baseUrl: url, sessionManager, interceptors: options.interceptors }),
    options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
  );
  const attempts = options.validateAttempts ?? DEFAULT_VALIDATE_ATTEMPTS;
  if (!Number.isSafeInteger(attempts) || attempts < 1) {
    throw new RangeError("MfaClientOptions.validateAttempts: at least 1");
  }
  const backoffMs = options.backoffMs ?? DEFAULT_BACKOFF_MS;
  const stub = createClient(ActionTokenService, transport);

  async function validate(
    request: MessageInitShape<typeof ValidateActionTokenRequestSchema>,
    callOptions?: CallOptions,
  ): Promise<Validation> {
    const idempotencyKey = request.idempotencyKey || randomUUID();
    for (let attempt = 1; ; attempt++) {
      try {
        const { decision, reason } = await stub.validateActionToken({ ...request, idempotencyKey }, callOptions);
        const reasonName = DecisionReasonSchema.value[reason]?.name ?? String(reason);
        return { decision, reason, allowed: decision === Decision.ALLOW, reasonName, idempotencyKey };
      } catch (error) {
        if (!(error instanceof MfaServiceError) || !RETRYABLE.has(error.code) || attempt >= attempts) {
          throw error;
        }
      }
      // Full jitter, so the replicas of a caller do not retry in step.
      const delay = Math.random() * Math.min(MAX_BACKOFF_MS, backoffMs * 2 ** attempt);
      try {
        await sleep(delay, undefined, { signal: callOptions?.signal });
      } catch (error) {
        throw MfaServiceError.from(error); // aborted while waiting: CANCELED
      }
    }
  }

  async function jwks(callOptions?: CallOptions): Promise<Jwks> {
    const { jwksJson } = await stub.getJwks({}, callOptions);
    return JSON.parse(jwksJson) as Jwks;
  }

  return {
    mfa: createClient(MfaService, transport),
    admin: createClient(AdminService, transport),
    actionTokens: Object.assign(stub, { validate, jwks }),
    close: () => sessionManager.abort(),
  };
}
