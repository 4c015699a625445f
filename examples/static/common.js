// Shared by the example apps (the user's screens and the dashboard): calls to the app's
// own JSON API, with the CSRF header every state-changing request needs (examples/web.py).

const CSRF_COOKIE = "csrf";

function csrfToken() {
  for (const part of document.cookie.split(";")) {
    const [name, ...value] = part.trim().split("=");
    if (name === CSRF_COOKIE) return decodeURIComponent(value.join("="));
  }
  return "";
}

// An API refusal: `status` (the gRPC status name or INVALID_ARGUMENT), `reason` (the
// ErrorReason), `fields` (field path -> what is wrong), `retryAfter` (seconds, or null).
export class ApiError extends Error {
  constructor(httpStatus, error, retryAfter) {
    super(error.message || `request failed (${httpStatus})`);
    this.httpStatus = httpStatus;
    this.status = error.status || "";
    this.reason = error.reason || "";
    this.fields = error.fields || {};
    this.retryAfter = retryAfter;
  }
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin" };
  if (method !== "GET") {
    headers["Content-Type"] = "application/json";
    headers["X-CSRF-Token"] = csrfToken();
    init.body = JSON.stringify(body ?? {});
  }
  const response = await fetch(path, init);
  const answer = await response.json().catch(() => ({}));
  if (!response.ok) {
    const retry = response.headers.get("Retry-After");
    throw new ApiError(response.status, answer.error || {}, retry === null ? null : Number(retry));
  }
  return answer;
}

export const api = {
  get: (path) => call("GET", path),
  post: (path, body) => call("POST", path, body),
};

// Show `element` and hide its siblings marked data-screen (one screen at a time), and move
// the keyboard focus to its first heading so a screen reader announces the change.
export function showScreen(element) {
  for (const screen of document.querySelectorAll("[data-screen]")) {
    screen.hidden = screen !== element;
  }
  const heading = element.querySelector("h1, h2");
  if (heading) {
    heading.tabIndex = -1;
    heading.focus();
  }
}
