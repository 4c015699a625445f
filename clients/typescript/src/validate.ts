// May this action run now, on this payload? Calls ActionTokenService.ValidateActionToken
// (retried under one idempotency key) and prints the decision as one JSON line, e.g.
// {"decision":"DECISION_ALLOW","reason":"DECISION_REASON_TOKEN_VALID"}.
//
//   MFA_ACTION_TOKEN=... node dist/validate.js ADDRESS ENVIRONMENT_ID USER_ID ACTION [PAYLOAD_DIGEST]
//
// ACTION is an enum name such as ACTION_WAAS_SIGN. PAYLOAD_DIGEST is the SHA-256 of the
// exact payload (hex, or base64 as grpcurl's JSON writes bytes): a token issued for one
// payload is refused for another (DECISION_REASON_PAYLOAD_MISMATCH). The token comes from
// the environment, not argv, so it never shows in a process list. Plaintext (`serve --dev`)
// unless MFA_TLS_CA_FILE is set; MFA_TLS_CERT_FILE and MFA_TLS_KEY_FILE add a client
// certificate for mutual TLS.
import { readFileSync } from "node:fs";
import { createMfaClient, type MfaClientOptions } from "./client";
import { ActionSchema, DecisionSchema } from "./gen/mfa/v1/types_pb";

const USAGE =
  "usage: MFA_ACTION_TOKEN=... validate ADDRESS ENVIRONMENT_ID USER_ID ACTION [PAYLOAD_DIGEST]";

function usage(why: string): never {
  console.error(`${why}\n${USAGE}`);
  process.exit(2);
}

/** The 32 bytes of a SHA-256 given as 64 hex digits or as base64. */
function digest(text: string): Buffer {
  const bytes = /^[0-9a-fA-F]{64}$/.test(text) ? Buffer.from(text, "hex") : Buffer.from(text, "base64");
  if (bytes.length !== 32 || (bytes.toString("hex") !== text.toLowerCase() && bytes.toString("base64") !== text)) {
    usage(`PAYLOAD_DIGEST: a SHA-256 (32 bytes) in hex or base64, not ${JSON.stringify(text)}`);
  }
  return bytes;
}

function connection(address: string): MfaClientOptions {
  const { MFA_TLS_CA_FILE: ca, MFA_TLS_CERT_FILE: cert, MFA_TLS_KEY_FILE: key } = process.env;
  if (!ca) return { address, insecure: true };
  const read = (path: string | undefined) => (path ? readFileSync(path) : undefined);
  return { address, tls: { ca: read(ca), cert: read(cert), key: read(key) } };
}

async function main(): Promise<void> {
  const [address, environmentId, userId, actionName, payloadDigest, ...rest] = process.argv.slice(2);
  if (!address || !environmentId || !userId || !actionName || rest.length > 0) usage("wrong arguments");
  const action = ActionSchema.values.find((value) => value.name === actionName);
  if (!action) usage(`ACTION: one of ${ActionSchema.values.map((value) => value.name).join(", ")}`);
  const digestBytes = payloadDigest ? digest(payloadDigest) : undefined;
  const client = createMfaClient(connection(address));
  try {
    const validation = await client.actionTokens.validate({
      environmentId,
      userId,
      action: action.number,
      token: process.env.MFA_ACTION_TOKEN ?? "",
      payloadDigest: digestBytes,
    });
    const decision = DecisionSchema.value[validation.decision]?.name ?? String(validation.decision);
    console.log(JSON.stringify({ decision, reason: validation.reasonName }));
  } catch (error) {
    console.error(`ValidateActionToken failed: ${error instanceof Error ? error.message : String(error)}`);
    process.exitCode = 1;
  } finally {
    client.close();
  }
}

void main();
