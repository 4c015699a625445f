// The Settings › Security page: one environment's MFA settings, its audit log and the
// user lookup with "Reset MFA". Talks only to this app's own JSON API (app.py).
//
// Settings inputs carry the service's field path in data-field (checkbox groups in
// data-member-of + data-member); an error element names the path it is for in
// data-error-for, and its id is in the aria-describedby of the controls it describes.
// Save sends only what differs from what was loaded.

import { api, ApiError, showScreen } from "/shared/common.js";

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

// Actions that can have a policy: the four the seed names (labelled by their checkboxes
// above) and the credential changes, which are always protected.
const POLICY_ACTIONS = [
  "ACTION_WAAS_EXPORT",
  "ACTION_WAAS_REFRESH",
  "ACTION_WAAS_SIGN",
  "ACTION_WAAS_RESHARE",
  "ACTION_CREDENTIAL_LINK",
  "ACTION_CREDENTIAL_UNLINK",
  "ACTION_RECOVERY_CODES_REGENERATE",
];
const WORDS = {
  ACTION_CREDENTIAL_LINK: "Adding another MFA device",
  ACTION_CREDENTIAL_UNLINK: "Removing an MFA device",
  ACTION_RECOVERY_CODES_REGENERATE: "Replacing recovery codes",
  METHOD_RECOVERY_CODE: "Recovery code",
};
const PROBLEMS = {
  ERROR_REASON_ENVIRONMENT_NOT_FOUND: "This environment does not exist. Pick another one.",
  ERROR_REASON_ENVIRONMENT_ALREADY_EXISTS: "An environment with this ID exists already.",
  ERROR_REASON_DATABASE_UNAVAILABLE:
    "mfa-service cannot reach its database right now. Try again in a moment.",
  ERROR_REASON_CALLER_NOT_AUTHORIZED:
    "This dashboard's service identity may not do this: it needs the admin role (and mfa for the user lookup).",
  CSRF: "This request did not come from this page. Reload the page and try again.",
};

const state = {
  environment: "",
  loaded: null, // the settings as last loaded or saved
  snapshot: null, // the form as it was filled from them
  auditPages: [""], // page tokens of the pages seen, the last one shown
  auditNext: "",
  environmentsNext: "",
  user: null,
};

// --- words -------------------------------------------------------------------------

// A label of the page for an enum name or a field path, else plain words made of it.
function labelFor(name) {
  const label = $(`[data-label-for="${name}"]`);
  if (label) return label.textContent.trim();
  if (WORDS[name]) return WORDS[name];
  const option = $(`option[value="${name}"]`);
  if (option) return option.textContent.trim();
  const words = name
    .replace(/^(ACTION|METHOD|DECISION_REASON|DECISION|AUDIT_EVENT_TYPE|ERROR_REASON)_/, "")
    .replaceAll("_", " ")
    .toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function fieldLabel(path) {
  const control = $(`[data-field="${path}"]`);
  if (!control) return null;
  if (control.tagName === "FIELDSET") return $("legend", control).textContent.trim();
  const label = control.id && $(`label[for="${control.id}"]`);
  return label ? label.textContent.trim() : null;
}

// The service's messages name fields and enum values; the operator reads labels.
function plain(message) {
  return message
    .replace(/\b(?:ACTION|METHOD|USER_VERIFICATION|ATTESTATION|DECISION_REASON|DECISION)_[A-Z_]+\b/g, labelFor)
    .replace(/\b(?:settings\.)?[a-z]+(?:[._][a-z]+)+\b/g, (path) => {
      const label = fieldLabel(path.replace(/^settings\./, ""));
      return label ? `“${label}”` : path;
    });
}

function problem(error) {
  if (!(error instanceof ApiError)) return `Something went wrong: ${error.message}`;
  const known = PROBLEMS[error.reason];
  if (known) return known;
  if (error.httpStatus === 503 || error.httpStatus === 504) {
    return "mfa-service did not answer. Try again in a moment.";
  }
  return `Something went wrong (${error.httpStatus}): ${plain(error.message)}`;
}

function when(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

function timeElement(iso) {
  const element = document.createElement("time");
  element.dateTime = iso || "";
  element.textContent = iso ? when(iso) : "Never";
  return element;
}

function setStatus(element, outcome, message, reason = "") {
  element.className = `alert ${outcome === "ok" ? "ok" : outcome === "error" ? "error" : "info"}`;
  if (outcome === "ok" || outcome === "error") element.dataset.state = outcome;
  else delete element.dataset.state;
  if (reason) element.dataset.reason = reason;
  else delete element.dataset.reason;
  element.textContent = message;
}

// An event handler whose failure is said on the page, never left unhandled.
function guarded(handler) {
  return async (...args) => {
    try {
      await handler(...args);
    } catch (error) {
      setStatus($("#page-status"), "error", problem(error), error.reason || "");
    }
  };
}

function clearStatus(element) {
  delete element.dataset.state;
  delete element.dataset.reason;
  element.textContent = "";
}

// --- field errors ------------------------------------------------------------------

function clearErrors(root) {
  for (const element of $$("[data-error-for]", root)) element.textContent = "";
  for (const element of $$("[aria-invalid]", root)) element.removeAttribute("aria-invalid");
}

// The error element for a path as the service or this backend names it:
// "settings.passkey.allowed_origins[2]" -> "passkey.allowed_origins", and a policy's
// "action_policies.ACTION_WAAS_SIGN.action" falls back to the policy itself.
function errorElement(root, path) {
  let key = path.replace(/^settings\./, "").replace(/\[\d+\]/g, "");
  while (key) {
    const element = $(`[data-error-for="${key}"]`, root);
    if (element) return element;
    key = key.includes(".") ? key.slice(0, key.lastIndexOf(".")) : "";
  }
  return null;
}

// Show each message beside its field (aria-invalid, described by the message), open a
// closed disclosure that holds one, focus the first; return the messages placed nowhere.
function showFieldErrors(root, fields) {
  const unplaced = [];
  const invalid = [];
  for (const [path, message] of Object.entries(fields)) {
    const element = errorElement(root, path);
    if (!element) {
      unplaced.push(plain(`${path}: ${message}`));
      continue;
    }
    element.textContent = element.textContent
      ? `${element.textContent} ${plain(message)}`
      : plain(message);
    for (const described of $$(`[aria-describedby~="${element.id}"]`, root)) {
      const controls = described.tagName === "FIELDSET" ? $$("input, select, textarea", described) : [described];
      for (const control of controls) {
        control.setAttribute("aria-invalid", "true");
        invalid.push(control);
      }
    }
    for (let up = element.closest("details"); up; up = up.parentElement.closest("details")) up.open = true;
  }
  const first = invalid.sort((a, b) =>
    a.compareDocumentPosition(b) & Node.DOCUMENT_POSITION_FOLLOWING ? -1 : 1,
  )[0];
  if (first) first.focus();
  return unplaced;
}

// --- the settings form -------------------------------------------------------------

const form = () => $("#settings-form");
const scalarControls = () => $$("input[data-field], select[data-field], textarea[data-field]", form());

function buildPolicies() {
  const template = $("#policy-template");
  const list = $("#policy-list");
  for (const action of POLICY_ACTIONS) {
    const node = template.content.firstElementChild.cloneNode(true);
    const id = `policy-${action}`;
    const key = `action_policies.${action}`;
    node.id = id;
    node.dataset.policy = action;
    $("legend", node).textContent = labelFor(action);
    const methods = $("[data-policy-methods]", node);
    methods.setAttribute("aria-describedby", `${id}-methods-hint ${id}-methods-error`);
    $("[data-policy-methods-hint]", node).id = `${id}-methods-hint`;
    for (const box of $$("[data-policy-method]", node)) {
      box.id = `${id}-${box.dataset.policyMethod}`;
      box.nextElementSibling.htmlFor = box.id;
    }
    const approval = $("[data-policy-approval]", node);
    approval.id = `${id}-approval`;
    approval.nextElementSibling.htmlFor = approval.id;
    $("[data-policy-approval-hint]", node).id = `${id}-approval-hint`;
    const ttl = $("[data-policy-ttl]", node);
    ttl.id = `${id}-ttl`;
    ttl.previousElementSibling.htmlFor = ttl.id;
    $("[data-policy-ttl-hint]", node).id = `${id}-ttl-hint`;
    for (const error of $$("[data-policy-error]", node)) {
      const part = error.dataset.policyError;
      error.id = `${id}-${part ? part.replaceAll("_", "-") : "policy"}-error`;
      error.dataset.errorFor = part ? `${key}.${part}` : key;
    }
    $("[data-policy-error='allowed_methods']", node).id = `${id}-methods-error`;
    approval.setAttribute("aria-describedby", `${id}-approval-hint ${id}-require-approval-error ${id}-policy-error`);
    ttl.setAttribute("aria-describedby", `${id}-ttl-hint ${id}-max-token-ttl-error ${id}-policy-error`);
    list.append(node);
  }
}

function readControl(control) {
  if (control.type === "checkbox") return control.checked;
  if (control.tagName === "TEXTAREA") {
    return control.value.split("\n").map((line) => line.trim()).filter(Boolean);
  }
  return control.value.trim();
}

function readForm() {
  const values = { scalars: {}, members: {}, policies: {} };
  for (const control of scalarControls()) values.scalars[control.dataset.field] = readControl(control);
  for (const box of $$("input[data-member-of]", form())) {
    (values.members[box.dataset.memberOf] ??= {})[box.dataset.member] = box.checked;
  }
  for (const node of $$("[data-policy]", form())) {
    values.policies[node.dataset.policy] = {
      allowed_methods: $$("[data-policy-method]", node).filter((b) => b.checked).map((b) => b.dataset.policyMethod),
      require_approval: $("[data-policy-approval]", node).checked,
      max_token_ttl: $("[data-policy-ttl]", node).value.trim(),
    };
  }
  return values;
}

function fillForm(settings) {
  for (const control of scalarControls()) {
    const value = settings[control.dataset.field];
    if (control.type === "checkbox") control.checked = Boolean(value);
    else if (control.tagName === "TEXTAREA") control.value = (value || []).join("\n");
    else control.value = value ?? "";
  }
  for (const box of $$("input[data-member-of]", form())) {
    box.checked = (settings[box.dataset.memberOf] || []).includes(box.dataset.member);
  }
  for (const node of $$("[data-policy]", form())) {
    const policy = settings.action_policies[node.dataset.policy] || {};
    for (const box of $$("[data-policy-method]", node)) {
      box.checked = (policy.allowed_methods || []).includes(box.dataset.policyMethod);
    }
    $("[data-policy-approval]", node).checked = Boolean(policy.require_approval);
    $("[data-policy-ttl]", node).value = policy.max_token_ttl ?? "";
  }
  state.loaded = settings;
  state.snapshot = readForm();
  clearErrors(form());
  $("#save-problems").replaceChildren();
  showUnsaved();
}

function showUnsaved() {
  const n = state.snapshot ? Object.keys(changes()).length : 0;
  $("#unsaved").textContent = n ? `${n} unsaved change${n === 1 ? "" : "s"}` : "";
}

// Editing a field takes its error away (the next save says whether it is still wrong).
function editedField(event) {
  const control = event.target;
  const group = control.closest("fieldset[aria-describedby]");
  for (const owner of [control, group]) {
    if (!owner) continue;
    for (const id of (owner.getAttribute("aria-describedby") || "").split(/\s+/)) {
      const error = id && document.getElementById(id);
      if (error && error.dataset.errorFor !== undefined) error.textContent = "";
    }
    const controls = owner.tagName === "FIELDSET" ? $$("input, select, textarea", owner) : [owner];
    for (const element of controls) element.removeAttribute("aria-invalid");
  }
  showUnsaved();
}

// Only what the operator changed: each field by its path; of the checkbox groups, the
// boxes switched; of the policies, the actions whose policy was edited.
function changes() {
  const now = readForm();
  const before = state.snapshot;
  const changed = {};
  const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
  for (const [path, value] of Object.entries(now.scalars)) {
    if (!same(value, before.scalars[path])) changed[path] = value;
  }
  for (const [field, members] of Object.entries(now.members)) {
    for (const [member, on] of Object.entries(members)) {
      if (on !== before.members[field][member]) (changed[field] ??= {})[member] = on;
    }
  }
  for (const [action, policy] of Object.entries(now.policies)) {
    if (!same(policy, before.policies[action])) (changed.action_policies ??= {})[action] = policy;
  }
  return changed;
}

// While an environment's settings load, its controls are disabled: nothing typed then
// could be overwritten by what arrives (and a browser test waits until they are enabled).
function lockSettings(locked) {
  for (const element of $$("[data-lock]", form())) element.disabled = locked;
}

async function loadSettings() {
  const status = $("#save-status");
  clearStatus(status);
  lockSettings(true);
  const settings = await api.get(`/api/settings?environment_id=${encodeURIComponent(state.environment)}`);
  fillForm(settings);
  lockSettings(false);
  document.body.dataset.environment = settings.environment_id;
  const changed = settings.update_time ? `last changed ${when(settings.update_time)}` : "default settings";
  $("#environment-status").textContent = `Environment ${settings.environment_id}: ${changed}.`;
}

async function save(event) {
  event.preventDefault();
  const status = $("#save-status");
  const problems = $("#save-problems");
  clearErrors(form());
  problems.replaceChildren();
  clearStatus(status);
  const changed = changes();
  const count = Object.keys(changed).length;
  if (count === 0) {
    setStatus(status, "ok", "No changes to save.");
    return;
  }
  const button = $("#save");
  button.disabled = true;
  setStatus(status, "info", "Saving…");
  const before = state.loaded.revision;
  try {
    const settings = await api.post("/api/settings", { environment_id: state.environment, changes: changed });
    fillForm(settings);
    let message = `Saved at ${when(settings.update_time)}.`;
    if (settings.revision > before + 1) {
      message += " Someone else changed other settings since you opened them: theirs are kept and shown here.";
    }
    setStatus(status, "ok", message);
    $("#environment-status").textContent = `Environment ${settings.environment_id}: last changed ${when(settings.update_time)}.`;
  } catch (error) {
    if (error instanceof ApiError && Object.keys(error.fields).length) {
      const unplaced = showFieldErrors(form(), error.fields);
      for (const message of unplaced) {
        const item = document.createElement("li");
        item.textContent = message;
        problems.append(item);
      }
      const n = Object.keys(error.fields).length;
      setStatus(status, "error", `Not saved: ${n === 1 ? "one field needs" : `${n} fields need`} attention. Nothing was changed.`, error.reason || error.status);
    } else {
      setStatus(status, "error", `Not saved. ${problem(error)}`, error.reason || "");
    }
  } finally {
    button.disabled = false;
  }
}

// --- environments ------------------------------------------------------------------

function addEnvironments(ids) {
  const select = $("#environment");
  for (const id of ids) {
    if ($$("option", select).some((option) => option.value === id)) continue;
    const option = document.createElement("option");
    option.value = option.textContent = id;
    select.append(option);
  }
}

async function loadEnvironments(token = "") {
  const page = await api.get(`/api/environments?page_token=${encodeURIComponent(token)}`);
  addEnvironments(page.environments);
  state.environmentsNext = page.next_page_token;
  $("#environments-more").hidden = !page.next_page_token;
}

async function switchEnvironment(id) {
  clearStatus($("#page-status"));
  const unsaved = state.snapshot ? Object.keys(changes()).length : 0;
  const left = state.environment;
  state.environment = id;
  $("#environment").value = id;
  $("#settings-form").hidden = false;
  const url = new URL(window.location.href);
  url.searchParams.set("env", id);
  window.history.replaceState(null, "", url);
  state.user = null;
  $("#user-card").hidden = true;
  clearStatus($("#lookup-status"));
  await loadSettings();
  if (unsaved && left !== id) {
    setStatus($("#save-status"), "info", `Your unsaved changes to ${left} were discarded.`);
  }
  resetAudit();
  if (!$("#audit").hidden) await loadAudit();
}

async function createEnvironment(event) {
  event.preventDefault();
  const creation = $("#create-environment");
  clearErrors(creation);
  const input = $("#new-environment-id");
  const id = input.value.trim();
  if (!id) {
    showFieldErrors(creation, { environment_id: "Enter an ID for the new environment." });
    return;
  }
  try {
    await api.post("/api/environments", { environment_id: id });
  } catch (error) {
    const fields = error instanceof ApiError && Object.keys(error.fields).length ? error.fields : { environment_id: problem(error) };
    showFieldErrors(creation, fields);
    return;
  }
  addEnvironments([id]);
  input.value = "";
  creation.hidden = true;
  $("#environment-new").setAttribute("aria-expanded", "false");
  await switchEnvironment(id);
  setStatus($("#save-status"), "ok", `Environment ${id} created with the default settings.`);
  $("#environment").focus();
}

// --- audit log ---------------------------------------------------------------------

function resetAudit() {
  state.auditPages = [""];
  state.auditNext = "";
  $("#audit-table tbody").replaceChildren();
  clearStatus($("#audit-status"));
}

// A body row of a table that stacks its cells on a phone (dashboard.css, .stack): the
// explicit roles keep it a table for screen readers whatever its display, and each
// cell carries its column's name to show before it.
function tableRow(table) {
  const row = document.createElement("tr");
  row.setAttribute("role", "row");
  row.dataset.columns = $$("th", table).map((th) => th.textContent).join("\n");
  return row;
}

// The cell's content goes in a box of its own: beside its label on a phone.
function cell(row, ...content) {
  const td = document.createElement("td");
  td.setAttribute("role", "cell");
  td.dataset.label = row.dataset.columns.split("\n")[row.children.length] || "";
  const inner = document.createElement("div");
  inner.append(...content);
  td.append(inner);
  row.append(td);
  return inner;
}

function fact(list, term, value) {
  if (value === "" || value === null || value === undefined) return;
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.append(value);
  list.append(dt, dd);
}

function detailValue(value) {
  return plain(value.replace(/\b[A-Z]+(?:_[A-Z]+)+\b/g, labelFor));
}

function eventRow(event) {
  const row = tableRow($("#audit-table"));
  row.dataset.type = event.type;
  cell(row, timeElement(event.occurred_at));
  const what = cell(row, labelFor(event.type));
  if (event.method) what.append(` · ${labelFor(event.method)}`);
  if (event.type === "AUDIT_EVENT_TYPE_USER_RESET" && event.details.reason) {
    const reason = document.createElement("div");
    reason.className = "reason";
    reason.textContent = `Reason: ${event.details.reason}`;
    what.append(reason);
  }
  cell(row, event.user_id || "Environment-wide");
  const more = document.createElement("details");
  const summary = document.createElement("summary");
  summary.textContent = "More";
  const list = document.createElement("dl");
  list.className = "facts";
  for (const [key, value] of Object.entries(event.details)) {
    const term = key.replaceAll("_", " ");
    fact(list, term.charAt(0).toUpperCase() + term.slice(1), detailValue(value));
  }
  fact(list, "Device", event.device_id);
  fact(list, "User told", event.notify_user ? "Yes: the user must be told of this" : "");
  fact(list, "Client address", event.client_ip);
  fact(list, "Client browser", event.client_user_agent);
  fact(list, "Called by", event.caller);
  fact(list, "Request ID", event.request_id);
  fact(list, "Event ID", event.event_id);
  more.append(summary, list);
  cell(row, more);
  return row;
}

// A datetime-local value (the operator's own time) as an instant in UTC; "" when empty.
function instant(input) {
  return input.value ? new Date(input.value).toISOString() : "";
}

function auditQuery(token) {
  const query = new URLSearchParams({
    environment_id: state.environment,
    user_id: $("#audit-user").value.trim(),
    type: $("#audit-type").value,
    since: instant($("#audit-since")),
    until: instant($("#audit-until")),
    page_token: token,
  });
  return `/api/audit?${query}`;
}

async function loadAudit() {
  const status = $("#audit-status");
  const token = state.auditPages[state.auditPages.length - 1];
  const filterForm = $("#audit-filters");
  clearStatus(status);
  clearErrors(filterForm);
  let page;
  try {
    page = await api.get(auditQuery(token));
  } catch (error) {
    const fields = error instanceof ApiError ? error.fields : {};
    const unplaced = Object.keys(fields).length ? showFieldErrors(filterForm, fields) : [problem(error)];
    setStatus(status, "error", unplaced.length ? unplaced.join(" ") : "Check the filters.", error.reason || "");
    return;
  }
  $("#audit-table tbody").replaceChildren(...page.events.map(eventRow));
  state.auditNext = page.next_page_token;
  $("#audit-next").disabled = !page.next_page_token;
  $("#audit-prev").disabled = state.auditPages.length <= 1;
  const user = $("#audit-user").value.trim();
  const type = $("#audit-type").value;
  const since = instant($("#audit-since"));
  const until = instant($("#audit-until"));
  const filters = [
    user && `user ${user}`,
    type && labelFor(type),
    since && `from ${when(since)}`,
    until && `until ${when(until)}`,
  ]
    .filter(Boolean)
    .join(", ");
  const which = filters ? ` matching ${filters}` : "";
  const n = page.events.length;
  const pageNumber = state.auditPages.length;
  const message = n ? `Page ${pageNumber}: ${n} event${n === 1 ? "" : "s"}${which}, newest first.` : `No events${which}.`;
  setStatus(status, "ok", message);
}

// --- user lookup and reset ---------------------------------------------------------

function renderUser(user) {
  state.user = user;
  $("#user-title").textContent = `User ${user.user_id}`;
  const facts = $("#user-facts");
  facts.replaceChildren();
  fact(facts, "Factors", user.enrolled_methods.length ? user.enrolled_methods.map(labelFor).join(", ") : "None set up");
  fact(facts, "Locked out", user.locked_until ? `Until ${when(user.locked_until)}` : "No");
  fact(
    facts,
    "Authenticator app and passkeys",
    user.recovery_required ? "Blocked after too many failures: a recovery code or a reset opens them" : "Working",
  );
  fact(facts, "Recovery codes left", String(user.recovery_codes_remaining));
  if (user.enrollment_required) fact(facts, "Onboarding", "Must set up a factor before going on");
  const rows = user.devices.map((device) => {
    const row = tableRow($("#devices-table"));
    row.dataset.deviceId = device.device_id;
    cell(row, device.alias || "Unnamed", device.is_default ? " (default)" : "");
    cell(row, labelFor(device.method));
    cell(row, timeElement(device.created_at));
    cell(row, timeElement(device.last_used_at));
    return row;
  });
  $("#devices-table tbody").replaceChildren(...rows);
  $("#devices-table").hidden = rows.length === 0;
  $("#no-devices").hidden = rows.length !== 0;
  $("#user-card").hidden = false;
}

async function lookup(event) {
  event?.preventDefault();
  const lookupForm = $("#lookup-form");
  const status = $("#lookup-status");
  clearErrors(lookupForm);
  clearStatus(status);
  const user = $("#lookup-user").value.trim();
  if (!user) {
    showFieldErrors(lookupForm, { user_id: "Enter the user's ID." });
    return;
  }
  hideConfirmation();
  try {
    const query = new URLSearchParams({ environment_id: state.environment, user_id: user });
    renderUser(await api.get(`/api/users/status?${query}`));
  } catch (error) {
    $("#user-card").hidden = true;
    if (error instanceof ApiError && Object.keys(error.fields).length) showFieldErrors(lookupForm, error.fields);
    else setStatus(status, "error", problem(error), error.reason || "");
    return;
  }
  setStatus(status, "ok", `Showing user ${user}.`);
}

function hideConfirmation() {
  $("#reset-confirmation").hidden = true;
  $("#reset").disabled = false;
}

function askReset(event) {
  event.preventDefault();
  const resetForm = $("#reset-form");
  clearErrors(resetForm);
  clearStatus($("#reset-status"));
  const reason = $("#reset-reason").value.trim();
  if (!reason) {
    showFieldErrors(resetForm, { reason: "Say why, e.g. the support ticket: the audit log keeps it." });
    return;
  }
  const user = state.user;
  const n = user.devices.length;
  $("#reset-confirm-text").textContent =
    `This removes ${n === 1 ? "the one device" : `all ${n} devices`} of ${user.user_id} and their recovery codes, ` +
    `and ends their action tokens. It cannot be undone. Reason recorded: “${reason}”.`;
  $("#reset-confirmation").hidden = false;
  $("#reset").disabled = true;
  $("#reset-confirm-title").focus();
}

async function confirmReset() {
  const status = $("#reset-status");
  const user = state.user.user_id;
  const reason = $("#reset-reason").value.trim();
  $("#reset-confirm").disabled = true;
  try {
    const result = await api.post("/api/users/reset", { environment_id: state.environment, user_id: user, reason });
    hideConfirmation();
    $("#reset-reason").value = "";
    const query = new URLSearchParams({ environment_id: state.environment, user_id: user });
    renderUser(await api.get(`/api/users/status?${query}`));
    const devices = `${result.devices_removed} device${result.devices_removed === 1 ? "" : "s"} removed`;
    const tokens = `${result.tokens_revoked} action token${result.tokens_revoked === 1 ? "" : "s"} ended`;
    setStatus(status, "ok", `MFA reset for ${user}: ${devices}, ${tokens}.`);
    $("#user-title").focus();
  } catch (error) {
    hideConfirmation();
    if (error instanceof ApiError && Object.keys(error.fields).length) showFieldErrors($("#reset-form"), error.fields);
    setStatus(status, "error", `Not reset. ${problem(error)}`, error.reason || "");
  } finally {
    $("#reset-confirm").disabled = false;
  }
}

// --- screens -----------------------------------------------------------------------

const SCREENS = ["settings", "audit", "users"];

function screenFromHash() {
  const name = window.location.hash.slice(1);
  return SCREENS.includes(name) ? name : "settings";
}

async function show(name, focus) {
  const screen = $(`#${name}`);
  if (focus) showScreen(screen);
  else for (const other of $$("[data-screen]")) other.hidden = other !== screen;
  for (const tab of $$("[data-tab]")) {
    if (tab.dataset.tab === name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
  }
  if (name === "audit" && state.environment && !$("#audit-table tbody").children.length) await loadAudit();
}

async function start() {
  $("#user-title").tabIndex = -1;
  buildPolicies();
  form().addEventListener("submit", save);
  form().addEventListener("input", editedField);
  form().addEventListener("change", editedField);
  $("#discard").addEventListener("click", () => {
    fillForm(state.loaded);
    setStatus($("#save-status"), "info", "Changes discarded.");
  });
  $("#environment").addEventListener("change", guarded((event) => switchEnvironment(event.target.value)));
  $("#environments-more").addEventListener("click", guarded(() => loadEnvironments(state.environmentsNext)));
  $("#environment-new").addEventListener("click", () => {
    const creation = $("#create-environment");
    creation.hidden = !creation.hidden;
    $("#environment-new").setAttribute("aria-expanded", String(!creation.hidden));
    if (!creation.hidden) $("#new-environment-id").focus();
  });
  $("#environment-create-cancel").addEventListener("click", () => {
    $("#create-environment").hidden = true;
    $("#environment-new").setAttribute("aria-expanded", "false");
    $("#environment-new").focus();
  });
  $("#create-environment").addEventListener("submit", guarded(createEnvironment));
  $("#audit-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    resetAudit();
    loadAudit();
  });
  $("#audit-clear").addEventListener("click", () => {
    for (const input of $$("input", $("#audit-filters"))) input.value = "";
    $("#audit-type").value = "";
    resetAudit();
    loadAudit();
  });
  $("#audit-next").addEventListener("click", () => {
    state.auditPages.push(state.auditNext);
    loadAudit();
  });
  $("#audit-prev").addEventListener("click", () => {
    state.auditPages.pop();
    loadAudit();
  });
  $("#lookup-form").addEventListener("submit", lookup);
  $("#reset-form").addEventListener("submit", askReset);
  $("#reset-confirm").addEventListener("click", confirmReset);
  $("#reset-cancel").addEventListener("click", () => {
    hideConfirmation();
    $("#reset").focus();
  });
  window.addEventListener("hashchange", () => {
    // The skip link's #main is no screen: it moves the focus, not the page.
    if (SCREENS.includes(window.location.hash.slice(1))) show(screenFromHash(), true);
  });

  try {
    await loadEnvironments();
    await openFirstEnvironment();
  } catch (error) {
    setStatus($("#page-status"), "error", problem(error), error.reason || "");
  } finally {
    await show(screenFromHash(), false);
    document.body.dataset.ready = "true";
  }
}

async function openFirstEnvironment() {
  const wanted = new URL(window.location.href).searchParams.get("env");
  const options = $$("#environment option").map((option) => option.value);
  const first = options.includes(wanted) ? wanted : options[0];
  if (!first) {
    $("#environment-status").textContent = "No environment yet: create one with “New environment”.";
    $("#settings-form").hidden = true;
    return;
  }
  await switchEnvironment(first);
}

start();
