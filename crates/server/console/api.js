// The console's one way to the daemon: the public REST API under /api/v1, same origin, the
// session cookie sent by the browser, and X-Vmedia-Console on every request (the daemon
// refuses changes made with the cookie without it).

export class ApiError extends Error {
  constructor(status, detail, path) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.path = path;
  }
}

let pending = 0;
const listeners = new Set();
/** Calls `fn(count)` whenever the number of requests in flight changes. */
export function onPending(fn) { listeners.add(fn); }
function track(delta) { pending += delta; for (const fn of listeners) fn(pending); }

/** A request; answers the parsed JSON (or null), with the answer's ETag as `.etag` on objects. */
export async function api(path, { method = 'GET', body, headers = {}, raw = false } = {}) {
  const init = { method, credentials: 'same-origin', headers: { 'X-Vmedia-Console': '1', ...headers } };
  if (body !== undefined && !(body instanceof Blob)) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  } else if (body !== undefined) {
    init.body = body;
  }
  track(1);
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, `the daemon did not answer (${e.message})`, path);
  } finally {
    track(-1);
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const problem = await response.json();
      detail = problem.detail || problem.error || detail;
    } catch (_) { /* not a problem document */ }
    const error = new ApiError(response.status, detail, path);
    error.headers = response.headers;
    if (response.status === 401) window.dispatchEvent(new CustomEvent('vmedia-logged-out'));
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  const type = response.headers.get('Content-Type') || '';
  if (!type.includes('json')) return null;
  const data = await response.json();
  if (data && typeof data === 'object') {
    Object.defineProperty(data, 'etag', { value: response.headers.get('ETag'), enumerable: false });
  }
  return data;
}

/** Every page of a list answer (`{items, next}`), up to `max` items. */
export async function all(path, max = 5000) {
  const items = [];
  let next = path;
  while (next && items.length < max) {
    const page = await api(next);
    items.push(...page.items);
    next = page.next;
  }
  return items;
}

/** An error in words, with what to do about it. */
export function explain(error) {
  const what = error instanceof ApiError ? error.detail : String(error && error.message || error);
  const status = error instanceof ApiError ? error.status : -1;
  const todo = {
    0: 'Check that vmedia serve is running and reachable, then try again.',
    400: 'Correct the request and try again.',
    401: 'Your session ended: log in again.',
    403: 'Your role does not allow this. Ask an administrator for an operator role if you need it.',
    404: 'It may have been removed meanwhile: reload the page.',
    409: 'Something else is using it right now: wait a moment and try again.',
    412: 'Someone changed it since you loaded it: the page was reloaded, check and try again.',
    413: 'The request is too large for the daemon.',
    428: 'Reload the page and try again.',
    429: 'Too many attempts: wait a minute before trying again.',
  }[status] || (status >= 500 ? 'The daemon failed: see its log (journalctl -u vmedia) and try again.' : 'Try again.');
  // The API's own fallback: a route this daemon does not have (an older vmedia).
  if (status === 404 && /^no such resource: \/api\/v1\//.test(what)) {
    return { what, todo: 'This daemon does not offer it: update vmedia serve to a version that does.', status };
  }
  return { what, todo, status };
}
