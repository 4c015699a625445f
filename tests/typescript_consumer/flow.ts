// A Node service's use of the packed @mfa-service/client (tests/test_typescript_package.py):
// it protects an action, enrolls a user's authenticator app, earns an action token for a
// payload and has it validated (through a proxy that loses the first answer), meets the
// service's refusals, resets the user, and prints what it saw as one JSON object.
//
//   node dist/flow.js '{"address": ..., "lossyAddress": ..., "environmentId": ...,
//                       "userId": ..., "now": SECONDS}'
//
// `now` is the server's (fake) clock: TOTP codes are computed for it (RFC 6238).
import { createHash, createHmac } from "node:crypto";
import {
  Action,
  AuditEventType,
  codeName,
  createMfaClient,
  ErrorReason,
  Method,
  MfaServiceError,
  type MfaClient,
} from "@mfa-service/client";

interface Config {
  address: string;
  lossyAddress: string;
  environmentId: string;
  userId: string;
  now: number;
}

const BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/** RFC 6238 (SHA-1, 6 digits, 30 s): the code of the step `steps` after `at`'s. */
function totp(secret: string, at: number, steps = 0): string {
  const bits = [...secret.replace(/=+$/, "")].map((c) => BASE32.indexOf(c).toString(2).padStart(5, "0")).join("");
  const key = Buffer.from((bits.match(/.{8}/g) ?? []).map((byte) => parseInt(byte, 2)));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(at / 30) + steps));
  const mac = createHmac("sha1", key).update(counter).digest();
  const offset = (mac[mac.length - 1] ?? 0) & 0xf;
  return String((mac.readUInt32BE(offset) & 0x7fffffff) % 1_000_000).padStart(6, "0");
}

/** What a refused call threw; a call that succeeds, or fails otherwise, fails the program. */
async function refused(call: Promise<unknown>) {
  try {
    await call;
  } catch (error) {
    if (!(error instanceof MfaServiceError)) throw error;
    return {
      code: codeName(error.code),
      reason: error.reason,
      errorReason: ErrorReason[error.errorReason],
      fieldViolations: error.fieldViolations.map((violation) => violation.field),
      retryAfterMs: error.retryAfterMs ?? null,
      hasRequestId: error.requestId !== "",
    };
  }
  throw new Error("the call was expected to be refused");
}

async function flow(client: MfaClient, lossy: MfaClient, config: Config) {
  const { environmentId, userId, now } = config;
  const user = { environmentId, userId };
  const settings = await client.admin.updateSettings({
    settings: { environmentId, protectedActions: [Action.WAAS_SIGN], lockout: { maxFailedAttempts: 2 } },
    updateMask: { paths: ["protected_actions", "lockout.max_failed_attempts"] },
  });

  const enrollment = await client.mfa.enroll({ ...user, method: Method.TOTP });
  if (enrollment.details.case !== "totp") throw new Error("a TOTP enrollment has TOTP details");
  const secret = enrollment.details.value.secret;
  const enrolled = await client.mfa.completeEnrollment({
    ...user,
    enrollmentId: enrollment.enrollmentId,
    totpCode: totp(secret, now),
  });

  const challenge = () => client.mfa.challenge({ ...user, method: Method.TOTP });
  const issue = async (code: string, payloadDigest?: Uint8Array) =>
    client.mfa.issueActionToken({
      ...user,
      challengeId: (await challenge()).challengeId,
      proof: { kind: { case: "totpCode", value: code } },
      actions: [Action.WAAS_SIGN],
      singleUse: true,
      payloadDigest,
    });
  const next = totp(secret, now, 1); // the enrollment spent this step's code (skew 1)
  const wrong = String((Number(next) + 1) % 1_000_000).padStart(6, "0");
  const wrongCode = await refused(issue(wrong));

  const digest = createHash("sha256").update("hello").digest();
  const { token } = await issue(next, digest);
  const sign = { ...user, action: Action.WAAS_SIGN, token, payloadDigest: digest };
  // Through the proxy: the first attempt's answer never arrives before its deadline.
  const validated = await lossy.actionTokens.validate(sign);
  const again = await client.actionTokens.validate(sign); // another key: the token is spent
  const badDigest = await refused(client.actionTokens.validate({ ...sign, payloadDigest: digest.subarray(1) }));

  const failures = [await refused(issue(wrong)), await refused(issue(wrong))];
  const lockedOut = await refused(issue(next));
  const reset = await client.admin.resetUserMfa({ ...user, reason: "ticket-42" });
  const afterReset = await client.actionTokens.validate({ ...user, action: Action.WAAS_SIGN });
  const jwks = await client.actionTokens.jwks();

  // A server stream: the audit log from the start (no deadline), stopped by an AbortSignal.
  const stop = new AbortController();
  const events: string[] = [];
  for await (const { event } of client.admin.watchAuditEvents({ environmentId }, { signal: stop.signal })) {
    events.push(AuditEventType[event?.type ?? AuditEventType.UNSPECIFIED] ?? "");
    if (event?.type === AuditEventType.USER_RESET) {
      stop.abort(); // ends the call: a loop left by break would leave it open
      break;
    }
  }
  const unknownEnvironment = await refused(
    (async () => {
      for await (const _ of client.admin.watchAuditEvents({ environmentId: environmentId.toUpperCase() }));
    })(),
  );

  return {
    protectedActions: settings.settings?.protectedActions.map((action) => Action[action]),
    recoveryCodes: enrolled.recoveryCodes.length,
    wrongCode,
    validated: { allowed: validated.allowed, reason: validated.reasonName, keyed: validated.idempotencyKey !== "" },
    again: again.reasonName,
    badDigest,
    failures: failures.map((failure) => failure.reason),
    lockedOut,
    devicesRemoved: reset.devicesRemoved,
    afterReset: afterReset.reasonName,
    jwksKeyIds: jwks.keys.map((key) => key.kid),
    events,
    unknownEnvironment,
  };
}

async function main(): Promise<void> {
  const config = JSON.parse(process.argv[2] ?? "") as Config;
  const client = createMfaClient({ address: config.address, insecure: true });
  const lossy = createMfaClient({ address: config.lossyAddress, insecure: true, timeoutMs: 1_000 });
  try {
    console.log(JSON.stringify(await flow(client, lossy, config)));
  } finally {
    client.close();
    lossy.close();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
