// The user's MFA screens. Every call goes to this app's own backend (/api/...), which
// takes the user and the session from its signed cookie and calls mfa-service.
import { api, showScreen } from "/shared/common.js";

const $ = (id) => document.getElementById(id);
let me = { signed_in: false };

// --- plain words --------------------------------------------------------------------

const KINDS = { totp: "Authenticator app", passkey: "Passkey", recovery_code: "Recovery code" };

// What a refusal means to the user; `reason` stays machine-readable in data-reason.
const REASONS = {
  ERROR_REASON_VERIFICATION_FAILED: {
    totp: "That code is not right. Check the code your app shows now and try again.",
    recovery_code: "That recovery code is not right, or it was already used.",
    passkey: "That passkey could not be checked for this account and this site.",
    default: "That did not match. Try again.",
  },
  ERROR_REASON_RECOVERY_REQUIRED:
    "After too many failed attempts, your app and passkeys are blocked. Use one of your recovery codes.",
  ERROR_REASON_CHALLENGE_NOT_FOUND: "This request expired. Try again.",
  ERROR_REASON_ENROLLMENT_NOT_FOUND: "This setup expired. Go back and start again.",
  ERROR_REASON_METHOD_DISABLED: "This app does not offer this kind of sign-in method right now.",
  ERROR_REASON_NOT_ENROLLED: "You have no sign-in method of this kind.",
  ERROR_REASON_STEP_UP_REQUIRED: "Confirm it's you first.",
  ERROR_REASON_CREDENTIAL_ALREADY_REGISTERED: "This passkey is already on your account.",
  ERROR_REASON_DEVICE_LIMIT_REACHED: "You have the most sign-in methods allowed. Remove one first.",
  ERROR_REASON_DEVICE_NOT_FOUND: "This sign-in method is no longer on your account.",
  ERROR_REASON_TOO_MANY_CHALLENGES: "Too many requests at once. Wait a moment and try again.",
  ERROR_REASON_APPROVAL_MISMATCH: "The approval did not match this transfer. Nothing was signed.",
  ERROR_REASON_APPROVAL_REQUIRED: "This transfer needs your approval of its details. Review it again.",
  ERROR_REASON_METHOD_NOT_ALLOWED: "This needs another kind of sign-in method, such as a passkey.",
  ERROR_REASON_PASSKEY_NOT_CONFIGURED: "Passkeys are not set up for this app yet.",
  ERROR_REASON_INVALID_ARGUMENT: "Something in the form is not right.",
  APPROVAL_NOT_VERIFIED:
    "The wallet could not confirm that your passkey approved exactly this transfer, so it did not sign it.",
  DECISION_REASON_MFA_REQUIRED: "Transfers now need your second step. Review the transfer again.",
  DECISION_REASON_ENROLLMENT_REQUIRED: "Set up a second step before you send transfers.",
  DECISION_REASON_PAYLOAD_MISMATCH: "The transfer is not the one you approved, so it was not signed.",
  DECISION_REASON_TOKEN_EXPIRED: "Your approval expired. Review the transfer again.",
  DECISION_REASON_TOKEN_ALREADY_USED: "This approval was already used. Review the transfer again.",
  DECISION_REASON_SESSION_MISMATCH: "This approval belongs to another sign-in.",
  DECISION_REASON_TOKEN_REVOKED: "This approval was withdrawn. Review the transfer again.",
  DECISION_REASON_METHOD_NOT_ALLOWED: "Transfers need another kind of sign-in method, such as a passkey.",
  DECISION_REASON_APPROVAL_REQUIRED: "Transfers need your approval of their details. Review it again.",
  SESSION_MFA_PENDING: "Confirm it's you first.",
  SIGNED_OUT: "You were signed out. Sign in again.",
  CSRF: "This request did not come from this page. Reload the page and try again.",
  NotAllowedError: "The passkey request was cancelled or timed out.",
  InvalidStateError: "This device already has a passkey for your account.",
  SecurityError: "Passkeys do not work on this address. Open the app at its usual address.",
};

function reasonOf(error) {
  return error.reason || error.name || "Error";
}

function sentence(error, method) {
  const known = REASONS[reasonOf(error)];
  if (typeof known === "string") return known;
  if (known) return known[method] || known.default;
  if (reasonOf(error).startsWith("DECISION_REASON_")) return "The wallet refused to sign this transfer.";
  if (error.httpStatus >= 500) return "The service is not answering right now. Try again in a moment.";
  return "Something went wrong. Try again.";
}

function formatTime(iso) {
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

function announce(text) {
  $("announce").textContent = text;
}

// --- forms and their field errors -----------------------------------------------------

function clearErrors(container) {
  for (const field of container.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
  for (const message of container.querySelectorAll(".field-error")) message.textContent = "";
}

// Show `message` beside the input `id`, mark it invalid and put the focus on it.
function fieldError(id, message) {
  const input = $(id);
  input.setAttribute("aria-invalid", "true");
  $(`${id}-error`).textContent = message;
  input.focus();
}

// The API's field errors (`fields`: field -> message) beside the inputs `ids` maps them to;
// false when none of them belongs to this form.
function fieldErrors(error, ids) {
  let shown = false;
  for (const [field, message] of Object.entries(error.fields || {}).reverse()) {
    if (ids[field]) {
      fieldError(ids[field], message);
      shown = true;
    }
  }
  return shown;
}

// An alert element's refusal: the sentence, and the reason in data-reason for tests.
function alertError(element, error, method) {
  element.dataset.reason = reasonOf(error);
  element.textContent = sentence(error, method);
}

function clearAlert(element) {
  element.textContent = "";
  delete element.dataset.reason;
}

function show(id) {
  showScreen($(id));
}

// Run `work` once at a time from a form or button: its buttons are disabled meanwhile.
function busy(container, work) {
  return async (event) => {
    event?.preventDefault();
    if (container.dataset.busy) return;
    container.dataset.busy = "1";
    const buttons = [...container.querySelectorAll("button")];
    for (const button of buttons) button.disabled = true;
    try {
      await work();
    } finally {
      for (const button of buttons) button.disabled = false;
      delete container.dataset.busy;
    }
  };
}

// --- where the user is ----------------------------------------------------------------

async function refresh() {
  me = await api.get("/api/me");
  route();
}

function route() {
  $("who").hidden = !me.signed_in;
  $("who-name").textContent = me.signed_in ? me.user : "";
  if (!me.signed_in) return show("screen-signin");
  if (me.session_mfa_pending) {
    if (me.locked_until) return showLocked({ until: me.locked_until });
    return startLogin();
  }
  if (!me.methods.length && me.enrollment_required) return startChoose(false);
  return showHome();
}

// The user's methods, the default first, then recovery codes (always offered: a code
// answers a challenge of any method).
function methods() {
  const own = [...me.methods].sort((a, b) => (b === me.default_method) - (a === me.default_method));
  // After 100 failures in a row only a recovery code verifies (ERROR_REASON_RECOVERY_REQUIRED).
  return me.recovery_required ? ["recovery_code", ...own] : [...own, "recovery_code"];
}

// Refusals that move the user elsewhere; true when handled.
function rerouted(error) {
  if (error.reason === "ERROR_REASON_LOCKED_OUT") {
    showLocked({ retryAfter: error.retryAfter });
    return true;
  }
  if (error.reason === "SIGNED_OUT" || error.reason === "SESSION_MFA_PENDING") {
    announce(sentence(error));
    refresh();
    return true;
  }
  return false;
}

// --- sign-in ----------------------------------------------------------------------------

$("signin-form").addEventListener("submit", busy($("signin-form"), async () => {
  clearErrors($("signin-form"));
  const user = $("signin-user").value.trim();
  if (!user) return fieldError("signin-user", "Enter your user name.");
  try {
    me = await api.post("/api/signin", { user });
  } catch (error) {
    if (!fieldErrors(error, { user: "signin-user" })) fieldError("signin-user", sentence(error));
    return;
  }
  $("signin-user").value = "";
  route();
}));

$("signout").addEventListener("click", async () => {
  me = await api.post("/api/signout");
  announce("You are signed out.");
  route();
});

// --- the factor panel: one, moved into the screen that asks --------------------------

const factor = { methods: [], method: "", begin: null, finish: null };

const FACTOR_WORDS = {
  totp: {
    intro: "Open your authenticator app and enter the 6-digit code it shows for Acme Wallet.",
    label: "6-digit code",
    hint: "",
    inputmode: "numeric",
    autocomplete: "one-time-code",
  },
  recovery_code: {
    intro: "Enter one of the recovery codes you saved when you set up your second step.",
    label: "Recovery code",
    hint: "Each code works once. Spaces and dashes don't matter.",
    inputmode: "text",
    autocomplete: "off",
  },
  passkey: { intro: "Use the passkey on this device, your phone or your security key." },
};

// Ask for a factor on `screen`: `begin(method)` gives a fresh challenge, `finish(proof)`
// spends it; `why` says what it is for.
function askFactor(screen, { methods: offered, begin, finish, why }) {
  const panel = $("factor");
  $(screen).querySelector(".factor-slot").append(panel);
  panel.hidden = false;
  Object.assign(factor, { methods: offered, begin, finish });
  if (why !== undefined) $("stepup-why").textContent = why;
  show(screen);
  setMethod(offered[0], false);
}

function setMethod(method, focus = true) {
  factor.method = method;
  const words = FACTOR_WORDS[method];
  const panel = $("factor");
  panel.dataset.method = method;
  clearErrors(panel);
  clearAlert($("factor-error"));
  $("factor-intro").textContent = words.intro;
  const code = method !== "passkey";
  $("factor-code-form").hidden = !code;
  $("factor-passkey").hidden = code;
  if (code) {
    const input = $("factor-code");
    input.value = "";
    input.inputMode = words.inputmode;
    input.autocomplete = words.autocomplete;
    $("factor-code-label").textContent = words.label;
    $("factor-code-hint").textContent = words.hint;
  }
  for (const [id, option] of [["use-totp", "totp"], ["use-passkey", "passkey"], ["use-recovery", "recovery_code"]]) {
    $(id).hidden = option === method || !factor.methods.includes(option);
  }
  if (focus) (code ? $("factor-code") : $("factor-passkey")).focus();
}

$("use-totp").addEventListener("click", () => setMethod("totp"));
$("use-passkey").addEventListener("click", () => setMethod("passkey"));
$("use-recovery").addEventListener("click", () => setMethod("recovery_code"));

async function answerFactor() {
  const method = factor.method;
  clearErrors($("factor"));
  clearAlert($("factor-error"));
  let proof;
  try {
    if (method === "passkey") {
      const challenge = await factor.begin(method);
      const credential = await navigator.credentials.get({
        publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(challenge.options),
      });
      proof = { challenge_id: challenge.challenge_id, method, credential: credential.toJSON() };
    } else {
      const code = $("factor-code").value.trim();
      if (!code) return fieldError("factor-code", `Enter your ${FACTOR_WORDS[method].label.toLowerCase()}.`);
      const challenge = await factor.begin(method);
      proof = { challenge_id: challenge.challenge_id, method, code };
    }
    await factor.finish(proof);
  } catch (error) {
    if (rerouted(error)) return;
    if (method !== "passkey") {
      $("factor-code").value = "";
      if (fieldErrors(error, { code: "factor-code" })) return;
    }
    alertError($("factor-error"), error, method);
    (method === "passkey" ? $("factor-passkey") : $("factor-code")).focus();
  }
}

$("factor-code-form").addEventListener("submit", busy($("factor"), answerFactor));
$("factor-passkey").addEventListener("click", busy($("factor"), answerFactor));

// --- session MFA at sign-in ----------------------------------------------------------------

function startLogin() {
  askFactor("screen-mfa-login", {
    methods: methods(),
    begin: (method) => api.post("/api/challenge", { method }),
    finish: async (proof) => {
      me = await api.post("/api/session/verify", proof);
      announce("You're in.");
      route();
    },
  });
}

function showLocked({ retryAfter, until }) {
  const text = $("locked-text");
  delete text.dataset.retryAfter;
  if (retryAfter !== null && retryAfter !== undefined) {
    text.dataset.retryAfter = String(retryAfter);
    const minutes = Math.round(retryAfter / 60);
    text.textContent = retryAfter < 90
      ? `You can try again in ${retryAfter} seconds.`
      : `You can try again in ${minutes} minutes.`;
  } else {
    text.textContent = `You can try again at ${formatTime(until)}.`;
  }
  show("screen-locked");
}

$("locked-retry").addEventListener("click", refresh);

// --- onboarding: choose, set up, recovery codes ----------------------------------------------

let adding = false; // adding a method next to others (a step-up), not the first one

function startChoose(add) {
  adding = add;
  $("choose-title").textContent = add ? "Add a sign-in method" : "Protect your account with a second step";
  $("choose-intro").hidden = add;
  $("choose-cancel").textContent = add ? "Cancel" : "Not now";
  $("choose-cancel").hidden = !add && me.enrollment_required; // required: no way around
  show("screen-choose");
}

$("setup-start").addEventListener("click", () => startChoose(false));
$("choose-cancel").addEventListener("click", () => (adding ? showDevices() : showHome()));
$("choose-totp").addEventListener("click", () => chosen("totp"));
$("choose-passkey").addEventListener("click", () => chosen("passkey"));

// Adding next to an existing factor needs a step-up; the first factor does not.
function chosen(method) {
  if (!adding) return method === "totp" ? startTotp({}) : startPasskey(null);
  askFactor("screen-stepup", {
    methods: methods(),
    why: `To add ${method === "totp" ? "an authenticator app" : "a passkey"}, confirm it's you ` +
      "with a method you already have, so that nobody else can add theirs to your account.",
    begin: (m) => api.post("/api/challenge", { method: m }),
    finish: async (proof) => {
      const started = await api.post("/api/enroll/start", { method, step_up: proof });
      return method === "totp" ? showTotp(started) : startPasskey(started);
    },
  });
}

let enrollment = null; // the setup in progress: its id (and a passkey's options)

async function startTotp(request) {
  try {
    showTotp(await api.post("/api/enroll/start", { method: "totp", ...request }));
  } catch (error) {
    if (!rerouted(error)) announce(sentence(error));
  }
}

function showTotp(started) {
  enrollment = started;
  $("totp-qr").src = started.qr;
  $("totp-secret").textContent = started.secret;
  $("totp-code").value = "";
  clearAlert($("totp-error"));
  clearErrors($("totp-form"));
  show("screen-totp");
}

$("totp-back").addEventListener("click", () => startChoose(adding));
$("totp-form").addEventListener("submit", busy($("totp-form"), async () => {
  clearErrors($("totp-form"));
  clearAlert($("totp-error"));
  const code = $("totp-code").value.trim();
  if (!code) return fieldError("totp-code", "Enter the 6-digit code your app shows.");
  try {
    const done = await api.post("/api/enroll/finish", {
      enrollment_id: enrollment.enrollment_id, code, name: $("totp-name").value,
    });
    await enrolled(done);
  } catch (error) {
    if (rerouted(error)) return;
    if (fieldErrors(error, { code: "totp-code", name: "totp-name", alias: "totp-name" })) return;
    if (error.reason === "ERROR_REASON_VERIFICATION_FAILED") {
      return fieldError("totp-code", "That code is not right. Check that your app's time is correct and enter the code it shows now.");
    }
    alertError($("totp-error"), error, "totp");
  }
}));

function startPasskey(started) {
  enrollment = started;
  clearAlert($("passkey-error"));
  clearErrors($("passkey-form"));
  show("screen-passkey");
}

$("passkey-back").addEventListener("click", () => startChoose(adding));
$("passkey-form").addEventListener("submit", busy($("passkey-form"), async () => {
  clearErrors($("passkey-form"));
  clearAlert($("passkey-error"));
  try {
    const started = enrollment ?? await api.post("/api/enroll/start", { method: "passkey" });
    enrollment = null; // a passkey ceremony per enrollment
    const credential = await navigator.credentials.create({
      publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(started.options),
    });
    await enrolled(await api.post("/api/enroll/finish", {
      enrollment_id: started.enrollment_id, credential: credential.toJSON(), name: $("passkey-name").value,
    }));
  } catch (failure) {
    if (rerouted(failure)) return;
    if (fieldErrors(failure, { name: "passkey-name", alias: "passkey-name" })) return;
    alertError($("passkey-error"), failure, "passkey");
    $("passkey-create").focus();
  }
}));

// A new factor is on the account: the first comes with recovery codes to save.
async function enrolled(done) {
  const name = done.device.name;
  $("totp-name").value = "";
  $("passkey-name").value = "";
  if (done.recovery_codes.length) {
    return showCodes(done.recovery_codes, async () => {
      announce(`${name} is set up.`);
      await refresh();
    });
  }
  me = await api.get("/api/me");
  await showDevices(`${name} is added.`);
}

let downloadUrl = null;

function showCodes(codes, after) {
  const list = $("recovery-codes");
  list.replaceChildren(...codes.map((code) => {
    const item = document.createElement("li");
    item.textContent = code;
    return item;
  }));
  const text = `Acme Wallet recovery codes for ${me.user}\n` +
    "Each code signs you in once if you lose your second step.\n\n" + codes.join("\n") + "\n";
  if (downloadUrl) URL.revokeObjectURL(downloadUrl);
  downloadUrl = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
  $("codes-download").href = downloadUrl;
  $("codes-copy").onclick = async () => {
    try {
      await navigator.clipboard.writeText(codes.join("\n"));
      announce("The codes are copied.");
    } catch {
      announce("Copying did not work here: select the codes and copy them, or download them.");
    }
  };
  $("codes-saved").checked = false;
  clearErrors($("codes-form"));
  codesDone = after;
  show("screen-codes");
}

let codesDone = null;

$("codes-form").addEventListener("submit", busy($("codes-form"), async () => {
  clearErrors($("codes-form"));
  if (!$("codes-saved").checked) {
    return fieldError("codes-saved", "Tick the box once you have saved the codes.");
  }
  try {
    me = await api.post("/api/recovery-codes/acknowledge");
  } catch (error) {
    if (!rerouted(error)) fieldError("codes-saved", sentence(error));
    return;
  }
  $("recovery-codes").replaceChildren(); // shown once
  URL.revokeObjectURL(downloadUrl);
  downloadUrl = null;
  $("codes-download").href = "#";
  await codesDone();
}));

// --- home and the transfer approval -------------------------------------------------------

function showHome() {
  const enrolled = me.methods.length > 0;
  $("setup-card").hidden = enrolled;
  // GetStatus lists the actions that need a token for this user now: none without a factor.
  $("sign-mode").textContent = !enrolled
    ? "You have no second step yet, so transfers are not confirmed. Set one up to protect them."
    : me.sign_protected
      ? "You will confirm each transfer with your second step."
      : "This app does not ask for a second step for transfers.";
  $("home-security").textContent = enrolled
    ? `Your second step: ${me.methods.map((m) => KINDS[m].toLowerCase()).join(" and ")}. ` +
      `${me.recovery_codes_remaining} recovery codes left.` +
      (me.recovery_codes_unacknowledged
        ? " You did not confirm that you saved them: if you did not, get new ones."
        : "")
    : "You have no second step yet.";
  show("screen-home");
}

$("open-devices").addEventListener("click", () => showDevices());

const TRANSFER_FIELDS = { amount: "amount", asset: "asset", to: "to", network: "network" };

$("transfer-form").addEventListener("submit", busy($("transfer-form"), async () => {
  clearErrors($("transfer-form"));
  const transfer = Object.fromEntries(Object.keys(TRANSFER_FIELDS).map((id) => [id, $(id).value.trim()]));
  let started;
  try {
    started = await api.post("/api/approval/start", { ...transfer, method: methods()[0] });
  } catch (error) {
    if (rerouted(error)) return;
    if (!fieldErrors(error, TRANSFER_FIELDS)) fieldError("amount", sentence(error));
    return;
  }
  if (!started.protected) return sign(started.message, "", started.display_text);
  $("approval-text").textContent = started.display_text; // text, never markup
  let first = started;
  askFactor("screen-approve", {
    methods: methods(),
    // A challenge per attempt, bound to this transfer; the words must stay the same.
    begin: async (method) => {
      const challenge = first?.method === method
        ? first
        : await api.post("/api/approval/start", { ...transfer, method });
      first = null;
      if (challenge.display_text !== started.display_text) throw new Error("the transfer changed");
      return challenge;
    },
    finish: async (proof) => {
      const issued = await api.post("/api/approval/issue", proof);
      await sign(started.message, issued.token, started.display_text);
    },
  });
}));

$("approval-cancel").addEventListener("click", () => {
  announce("Nothing was signed.");
  showHome();
});

// The signer's answer, in words, in #sign-outcome (data-state ok or error).
async function sign(message, token, shown) {
  const outcome = $("sign-outcome");
  for (const key of Object.keys(outcome.dataset)) delete outcome.dataset[key];
  let state = "ok";
  try {
    const signed = await api.post("/api/approval/sign", { message, token });
    outcome.dataset.signature = signed.signature;
    outcome.dataset.checked = signed.checked;
    outcome.textContent = {
      passkey: `Signed. Your passkey approved "${signed.display_text}", and the wallet checked that approval before it signed.`,
      service: `Signed. You approved "${signed.display_text}" with a code.`,
      none: `Signed: "${shown}". ${me.methods.length
        ? "This app does not ask for a second step for transfers, so you were not asked for one."
        : "You have no second step yet, so you were not asked for one."}`,
    }[signed.checked];
  } catch (error) {
    if (error.reason === "SIGNED_OUT") return rerouted(error);
    state = "error";
    outcome.dataset.reason = reasonOf(error);
    outcome.textContent = `Not signed. ${sentence(error)}`;
  }
  $("result-title").textContent = state === "ok" ? "Transfer signed" : "Transfer not signed";
  outcome.dataset.state = state;
  show("screen-result");
}

$("result-home").addEventListener("click", showHome);

// --- devices ---------------------------------------------------------------------------------

let renaming = null;

async function showDevices(status = "", state = "ok") {
  let devices;
  try {
    me = await api.get("/api/me");
    ({ devices } = await api.get("/api/devices"));
  } catch (error) {
    if (!rerouted(error)) announce(sentence(error));
    return;
  }
  $("device-list").replaceChildren(...devices.map(deviceItem));
  $("codes-left").textContent = `${me.recovery_codes_remaining} of 10 recovery codes left. ` +
    "New codes replace all the old ones.";
  $("rename-form").hidden = true;
  const box = $("devices-status");
  box.textContent = status;
  if (status) box.dataset.state = state;
  else delete box.dataset.state;
  show("screen-devices");
}

function button(text, hiddenText, onClick, className = "secondary") {
  const element = document.createElement("button");
  element.type = "button";
  element.className = className;
  element.append(text);
  const extra = document.createElement("span");
  extra.className = "visually-hidden";
  extra.textContent = ` ${hiddenText}`;
  element.append(extra);
  element.addEventListener("click", onClick);
  return element;
}

function deviceItem(device) {
  const item = document.createElement("li");
  item.dataset.kind = device.kind;
  item.dataset.default = String(device.is_default);
  const name = document.createElement("p");
  name.className = "name";
  name.textContent = device.name;
  if (device.is_default) {
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "Default";
    name.append(" ", badge);
  }
  const meta = document.createElement("p");
  meta.className = "meta";
  meta.textContent = [
    KINDS[device.kind] || "Sign-in method",
    device.last_used ? `last used ${formatTime(device.last_used)}` : "not used yet",
    device.added ? `added ${formatTime(device.added)}` : "",
  ].filter(Boolean).join(" · ");
  item.append(name, meta);
  item.append(button("Rename", device.name, () => startRename(device)));
  if (!device.is_default) {
    item.append(button("Make default", device.name, () => makeDefault(device)));
  }
  item.append(button("Remove", device.name, () => startRemove(device), "danger"));
  return item;
}

function startRename(device) {
  renaming = device;
  $("rename-label").textContent = `New name for "${device.name}"`;
  $("rename-name").value = device.name;
  clearErrors($("rename-form"));
  $("rename-form").hidden = false;
  $("rename-name").focus();
}

$("rename-cancel").addEventListener("click", () => {
  $("rename-form").hidden = true;
  renaming = null;
});

$("rename-form").addEventListener("submit", busy($("rename-form"), async () => {
  clearErrors($("rename-form"));
  const name = $("rename-name").value.trim();
  if (!name) return fieldError("rename-name", "Enter a name.");
  try {
    await api.post("/api/devices/rename", { device: renaming.id, name });
  } catch (error) {
    if (!rerouted(error) && !fieldErrors(error, { name: "rename-name", alias: "rename-name" })) {
      fieldError("rename-name", sentence(error));
    }
    return;
  }
  await showDevices(`Renamed to "${name}".`);
}));

async function makeDefault(device) {
  try {
    await api.post("/api/devices/default", { device: device.id });
  } catch (error) {
    if (!rerouted(error)) await showDevices(sentence(error), "error");
    return;
  }
  await showDevices(`"${device.name}" is now your default.`);
}

function startRemove(device) {
  askFactor("screen-stepup", {
    methods: methods(),
    why: `To remove "${device.name}", confirm it's you, so that someone using your ` +
      "unlocked device cannot take away your protection.",
    begin: (method) => api.post("/api/challenge", { method }),
    finish: async (proof) => {
      await api.post("/api/devices/remove", { device: device.id, ...proof });
      me = await api.get("/api/me");
      if (!me.methods.length) {
        announce(`"${device.name}" is removed. You have no second step any more.`);
        return showHome();
      }
      await showDevices(`"${device.name}" is removed.`);
    },
  });
}

$("add-factor").addEventListener("click", () => startChoose(true));
$("devices-home").addEventListener("click", showHome);
$("stepup-cancel").addEventListener("click", () => showDevices());

$("regenerate-codes").addEventListener("click", () => {
  askFactor("screen-stepup", {
    methods: methods(),
    why: "To get new recovery codes, confirm it's you. Your current codes will stop working.",
    begin: (method) => api.post("/api/challenge", { method }),
    finish: async (proof) => {
      const { recovery_codes: codes } = await api.post("/api/recovery-codes/regenerate", proof);
      showCodes(codes, () => showDevices("Your new recovery codes are saved. The old ones no longer work."));
    },
  });
});

// --- start --------------------------------------------------------------------------------

const warning = $("warning");
if (location.hostname === "127.0.0.1") {
  warning.textContent = `Open http://localhost:${location.port}/ instead: passkeys here work for "localhost" only.`;
  warning.hidden = false;
} else if (!window.PublicKeyCredential?.parseCreationOptionsFromJSON) {
  warning.textContent = "This browser is too old for passkeys here. Use a current browser, or an authenticator app.";
  warning.hidden = false;
}

refresh().catch(() => {
  warning.textContent = "The app is not answering. Reload the page in a moment.";
  warning.hidden = false;
});
