// The agent's REST API: bearer token from sessionStorage, JSON errors as ApiError, uploads by XHR.

const TOKEN_KEY = 'cnet.api-token';
const TIMEOUT_MS = 15000;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let unauthorizedHook = () => {};

/** Called with the ApiError whenever the agent answers 401. */
export function onUnauthorized(fn) {
  unauthorizedHook = fn;
}

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch {
    return '';
  }
}

export function setToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token lives only as long as this page
  }
  memoryToken = token || '';
}

let memoryToken = '';

function token() {
  return getToken() || memoryToken;
}

function authHeaders() {
  const t = token();
  return t ? {Authorization: `Bearer ${t}`} : {};
}

async function errorFrom(resp) {
  let code = `http_${resp.status}`;
  let message = `${resp.status} ${resp.statusText || 'error'}`;
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(resp.status, code, message);
}

export async function request(method, path, body) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  const headers = {Accept: 'application/json', ...authHeaders()};
  const init = {method, headers, signal: controller.signal, cache: 'no-store'};
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (exc) {
    const reason = exc.name === 'AbortError' ? 'timed out' : 'cannot reach the agent';
    throw new ApiError(0, 'network', `${method} ${path}: ${reason}`);
  } finally {
    clearTimeout(timer);
  }
  if (!resp.ok) {
    const err = await errorFrom(resp);
    if (resp.status === 401) unauthorizedHook(err);
    throw err;
  }
  return resp.json();
}

/**
 * POST multipart form data with upload progress (fetch cannot report it).
 * ``onProgress(loaded, total)``; resolves with the JSON reply, rejects with ApiError.
 */
export function upload(path, formData, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', path);
    xhr.responseType = 'text';
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.setRequestHeader('Accept', 'application/json');
    xhr.upload.addEventListener('progress', (ev) => {
      if (ev.lengthComputable) onProgress(ev.loaded, ev.total);
    });
    xhr.addEventListener('load', () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(body);
        return;
      }
      const e = body && body.error ? body.error : {};
      const err = new ApiError(xhr.status, e.code || `http_${xhr.status}`,
        e.message || `${xhr.status} ${xhr.statusText || 'upload failed'}`);
      if (xhr.status === 401) unauthorizedHook(err);
      reject(err);
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, 'network', 'upload failed: cannot reach the agent')));
    xhr.addEventListener('abort', () => reject(new ApiError(0, 'aborted', 'upload cancelled')));
    xhr.send(formData);
  });
}

/** The WebSocket URL of the event stream, with ``?token=`` when a token is set. */
export function eventsUrl() {
  const proto = window.location.protocol === 'https:' ? 'wss:' : 'ws:';
  const t = token();
  const query = t ? `?token=${encodeURIComponent(t)}` : '';
  return `${proto}//${window.location.host}/api/events${query}`;
}

const enc = encodeURIComponent;

export const api = {
  health: () => request('GET', '/api/health'),
  nodes: () => request('GET', '/api/nodes'),
  resources: () => request('GET', '/api/resources'),
  workloads: (scope = 'local') =>
    request('GET', scope === 'subtree' ? '/api/workloads?scope=subtree' : '/api/workloads'),
  submit: (spec) => request('POST', '/api/workloads', spec),
  stop: (id) => request('POST', `/api/workloads/${enc(id)}/stop`),
  remove: (id) => request('DELETE', `/api/workloads/${enc(id)}`),
  logs: (id, tail) => request('GET', `/api/workloads/${enc(id)}/logs?tail=${enc(tail)}`),
  upload: (formData, onProgress) => upload('/api/workloads', formData, onProgress),
};
