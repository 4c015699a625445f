// May this action run now? Calls ActionTokenService.ValidateActionToken and prints the
// decision as one JSON line, e.g. {"decision":"DECISION_ALLOW","reason":"DECISION_REASON_TOKEN_VALID"}.
//
//   MFA_ACTION_TOKEN=... node dist/validate.js ADDRESS ENVIRONMENT_ID USER_ID ACTION
//
// ACTION is an enum name such as ACTION_WAAS_SIGN. The token comes from the environment, not
// argv, so it never shows in a process list. Plaintext (`serve --dev`) unless
// MFA_TLS_CA_FILE is set; MFA_TLS_CERT_FILE and MFA_TLS_KEY_FILE add a client certificate
// for mutual TLS.
import { readFileSync } from "node:fs";
import { credentials, Metadata, type ChannelCredentials } from "@grpc/grpc-js";
import { ActionTokenServiceClient, ValidateActionTokenRequest } from "./gen/mfa/v1/action_token_service";
import { actionFromJSON, decisionReasonToJSON, decisionToJSON } from "./gen/mfa/v1/types";

function channelCredentials(): ChannelCredentials {
  const { MFA_TLS_CA_FILE: ca, MFA_TLS_CERT_FILE: cert, MFA_TLS_KEY_FILE: key } = process.env;
  if (!ca) return credentials.createInsecure();
  return credentials.createSsl(
    readFileSync(ca),
    key ? readFileSync(key) : null,
    cert ? readFileSync(cert) : null,
  );
}

function main(): void {
  const [address, environmentId, userId, action] = process.argv.slice(2);
  if (!address || !environmentId || !userId || !action) {
    console.error("usage: MFA_ACTION_TOKEN=... validate ADDRESS ENVIRONMENT_ID USER_ID ACTION");
    process.exit(2);
  }
  const client = new ActionTokenServiceClient(address, channelCredentials());
  client.validateActionToken(
    ValidateActionTokenRequest.fromPartial({
      environmentId,
      userId,
      action: actionFromJSON(action),
      token: process.env.MFA_ACTION_TOKEN ?? "",
    }),
    new Metadata(),
    { deadline: Date.now() + 10_000 },
    (error, response) => {
      client.close();
      if (error) {
        console.error(`ValidateActionToken failed: ${error.code} ${error.details}`);
        process.exit(1);
      }
      console.log(
        JSON.stringify({
          decision: decisionToJSON(response.decision),
          reason: decisionReasonToJSON(response.reason),
        }),
      );
    },
  );
}

main();
