// CNET dashboard: loads the node, its neighbours and workloads, keeps them live over the
// /api/events WebSocket (polling while the socket is down) and wires the actions.

import {$, h, replace, setText} from './js/dom.js';
import {api, ApiError, eventsUrl, getToken, onUnauthorized, setToken} from './js/api.js';
import {EventStream} from './js/events.js';
import {SubmitForm} from './js/forms.js';
import * as fmt from './js/format.js';
import {renderNeighbours, renderResources, renderTree, tickAge, WorkloadTable} from './js/views.js';

const POLL_MS = 2000;          // while the WebSocket is down
const NODES_REFRESH_MS = 5000; // neighbours' ages and measured usage while live
const LOGS_FOLLOW_MS = 2000;

const state = {
  nodeId: null,
  view: null,          // GET /api/nodes
  viewAt: Date.now(),
  health: null,        // GET /api/health
  healthAt: Date.now(),
  selfEventAt: 0,      // when the last resources event for this node arrived
  recent: new Map(),   // workload id -> {at, wl|null}: events newer than a fetch in flight
  reachable: true,
  authorized: true,
  scope: 'local',      // workloads of this node only, or of the whole subtree below it
  booted: false,
};

const el = {
  brandNode: $('#brand-node'),
  conn: $('#conn'),
  banner: $('#banner'),
  nodeId: $('#node-id'),
  nodeStatus: $('#node-status'),
  nodeAddress: $('#node-address'),
  nodeUptime: $('#node-uptime'),
  nodeWorkloads: $('#node-workloads'),
  nodeResources: $('#node-resources'),
  neighbours: $('#neighbours'),
  topologyCount: $('#topology-count'),
  tree: $('#tree'),
  tokenButton: $('#token-button'),
};

// -- errors ------------------------------------------------------------------------------

let bannerTimer = null;
function showError(message) {
  const close = h('button', {type: 'button', class: 'btn btn-small btn-ghost', 'aria-label': 'Dismiss'}, '×');
  close.addEventListener('click', () => { el.banner.hidden = true; });
  replace(el.banner, h('span', {}, message), close);
  el.banner.hidden = false;
  clearTimeout(bannerTimer);
  bannerTimer = setTimeout(() => { el.banner.hidden = true; }, 10000);
}

function errorText(err) {
  if (err instanceof ApiError && err.status) return `${err.status} ${err.code}: ${err.message}`;
  return err.message || String(err);
}

// -- this node ---------------------------------------------------------------------------

function renderSelf() {
  const self = state.view?.self;
  const id = state.nodeId || self?.node_id || state.health?.node_id || '…';
  setText(el.nodeId, id);
  setText(el.brandNode, id);
  document.title = `${id} · CNET`;
  setText(el.nodeAddress, state.health?.address || self?.address || '…');
  const status = !state.reachable ? 'unreachable' : (self?.status || (state.health ? 'alive' : '…'));
  setText(el.nodeStatus, status);
  el.nodeStatus.className = `pill pill-${status}`;
  el.nodeStatus.dataset.status = status;
  tickUptime();
  if (self && self.capacity) renderResources(el.nodeResources, {...self, node_id: id});
}

function tickUptime() {
  const h0 = state.health;
  if (!h0) return;
  const up = state.reachable ? h0.uptime + (Date.now() - state.healthAt) / 1000 : null;
  setText(el.nodeUptime, up === null ? '—' : fmt.duration(up));
}

function renderTopology() {
  if (!state.view) return;
  renderNeighbours(el.neighbours, el.topologyCount, state.view, state.viewAt);
  renderTree(el.tree, state.view, state.viewAt);
  const ids = (state.view.nodes || []).map((n) => n.node_id).filter(Boolean);
  form.setNodeOptions([...new Set(ids)]);
}

/** Apply one node's resource vectors (from an event) to whichever entry has that id. */
function applyResources(nodeId, res) {
  const view = state.view;
  if (!view) return;
  const vec = {};
  for (const k of ['capacity', 'allocated', 'available', 'usage']) if (res[k]) vec[k] = res[k];
  if (nodeId === state.nodeId) {
    view.self = {...(view.self || {node_id: nodeId}), ...vec};
    state.selfEventAt = Date.now();
    renderSelf();
    return;
  }
  let hit = false;
  for (const list of [view.parent ? [view.parent] : [], view.peers || [], view.children || [], view.nodes || []]) {
    for (const n of list) if (n && n.node_id === nodeId) { Object.assign(n, vec); hit = true; }
  }
  if (hit) renderTopology();
}

// -- loading -----------------------------------------------------------------------------

async function loadNodes() {
  const started = Date.now();
  const view = await api.nodes();
  // A resources event that arrived while this request was in flight is newer than its reply.
  if (state.selfEventAt > started && state.view?.self && view.self) {
    for (const k of ['capacity', 'allocated', 'available']) view.self[k] = state.view.self[k];
  }
  state.view = view;
  state.viewAt = Date.now();
  state.nodeId = view.node_id || state.nodeId;
  renderSelf();
  renderTopology();
}

async function loadWorkloads() {
  const started = Date.now();
  const reply = await api.workloads(state.scope);
  const byId = new Map(reply.workloads.map((w) => [w.id, w]));
  for (const [id, r] of state.recent) {
    if (r.at < started) { state.recent.delete(id); continue; }
    if (r.wl) byId.set(id, r.wl); else byId.delete(id);
  }
  table.setAll([...byId.values()]);
}

async function loadHealth() {
  state.health = await api.health();
  state.healthAt = Date.now();
  state.nodeId = state.health.node_id || state.nodeId;
  renderSelf();
}

async function loadAll() {
  try {
    await Promise.all([loadHealth(), loadNodes(), loadWorkloads()]);
    setReachable(true);
    return true;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return false;
    if (err instanceof ApiError && err.status === 0) setReachable(false);
    else showError(errorText(err));
    return false;
  }
}

function setReachable(ok) {
  if (state.reachable === ok) return;
  state.reachable = ok;
  renderSelf();
  renderConn();
}

// -- live updates --------------------------------------------------------------------------

function handleEvent(evt) {
  switch (evt.type) {
    case 'hello':
      state.nodeId = evt.node_id || state.nodeId;
      if (evt.resources) applyResources(state.nodeId, evt.resources);
      loadAll(); // catch up with whatever happened while we were not listening
      break;
    case 'workload':
      if (evt.workload && evt.workload.id) {
        state.recent.set(evt.workload.id, {at: Date.now(), wl: evt.workload});
        table.upsert(evt.workload);
        if (logs.current && logs.current.id === evt.workload.id) logs.current = evt.workload;
      }
      break;
    case 'workload_deleted':
      state.recent.set(evt.id, {at: Date.now(), wl: null});
      table.remove(evt.id);
      break;
    case 'resources':
      if (evt.resources) applyResources(evt.node_id || state.nodeId, evt.resources);
      // Below this node, an allocation change is a workload starting or ending there.
      if (evt.node_id && evt.node_id !== state.nodeId) scheduleSubtreeRefresh();
      break;
    case 'node':
      if (evt.node && evt.node.node_id) applyNode(evt.node);
      scheduleNodesRefresh();
      scheduleSubtreeRefresh();
      break;
    default:
      break; // unknown event types are for newer dashboards
  }
}

function applyNode(node) {
  const view = state.view;
  if (!view) return;
  for (const list of [view.parent ? [view.parent] : [], view.peers || [], view.children || []]) {
    for (const n of list) if (n && n.node_id === node.node_id) Object.assign(n, node);
  }
  state.viewAt = Date.now();
  renderTopology();
}

let nodesRefreshTimer = null;
let subtreeRefreshTimer = null;

function scheduleSubtreeRefresh() {
  if (state.scope !== 'subtree' || subtreeRefreshTimer) return;
  subtreeRefreshTimer = setTimeout(() => {
    subtreeRefreshTimer = null;
    loadWorkloads().catch(() => {});
  }, 150);
}

function scheduleNodesRefresh() {
  if (nodesRefreshTimer) return;
  nodesRefreshTimer = setTimeout(() => {
    nodesRefreshTimer = null;
    loadNodes().catch(() => {});
  }, 150);
}

function renderConn() {
  let s = stream.state;
  let text;
  if (!state.authorized) { s = 'locked'; text = 'token needed'; }
  else if (s === 'live') text = 'live';
  else if (!state.reachable) { s = 'offline'; text = 'agent unreachable · retrying'; }
  else if (s === 'connecting') text = 'connecting';
  else { s = 'polling'; text = 'polling · reconnecting'; }
  el.conn.dataset.state = s;
  el.conn.className = `conn conn-${s}`;
  setText(el.conn.querySelector('.conn-text'), text);
}

const stream = new EventStream({
  url: eventsUrl,
  onEvent: handleEvent,
  onState: () => renderConn(),
});

// One periodic tick drives polling, neighbour refresh and the age labels.
let lastPoll = 0;
let lastNodes = Date.now();
async function tick() {
  const now = Date.now();
  tickUptime();
  for (const age of document.querySelectorAll('.age[data-last-seen]')) tickAge(age);
  for (const [id, r] of state.recent) if (now - r.at > 60000) state.recent.delete(id); // > any fetch
  if (!state.booted || !state.authorized) return;
  if (stream.state !== 'live' && now - lastPoll >= POLL_MS) {
    lastPoll = now;
    await loadAll();
  } else if (stream.state === 'live' && now - lastNodes >= NODES_REFRESH_MS) {
    lastNodes = now;
    loadNodes().catch(() => {});
  }
}

// -- actions -------------------------------------------------------------------------------

const table = new WorkloadTable($('#wl-body'), $('#wl-empty'), $('#wl-count'), {
  logs: (wl) => logs.open(wl),
  async stop(wl, button) {
    button.disabled = true;
    try {
      table.upsert(await api.stop(wl.id));
    } catch (err) {
      showError(`Stop ${wl.name}: ${errorText(err)}`);
      button.disabled = false;
    }
  },
  async remove(wl, button) {
    button.disabled = true;
    try {
      await api.remove(wl.id);
      state.recent.set(wl.id, {at: Date.now(), wl: null});
      table.remove(wl.id);
    } catch (err) {
      showError(`Delete ${wl.name}: ${errorText(err)}`);
      button.disabled = false;
    }
  },
});
// "This node" counts what was submitted or runs here, not what the subtree view adds.
table.onChange = () => {
  const mine = [...table.items.values()].filter((w) => w.node_id === state.nodeId || 'via' in w);
  const live = mine.filter((w) => ['pending', 'running', 'stopping'].includes(w.status)).length;
  setText(el.nodeWorkloads, `${live} live / ${mine.length}`);
};
$('#wl-filter').addEventListener('change', (ev) => table.setFilter(ev.target.value));
$('#wl-scope').addEventListener('change', (ev) => {
  state.scope = ev.target.value;
  loadWorkloads().catch((err) => showError(errorText(err)));
});

const form = new SubmitForm($('#submit-form'), {
  onSubmitted(wl) {
    state.recent.set(wl.id, {at: Date.now(), wl});
    table.upsert(wl);
  },
});

// -- logs viewer ---------------------------------------------------------------------------

const logs = {
  dialog: $('#logs-dialog'),
  text: $('#logs-text'),
  meta: $('#logs-meta'),
  title: $('#logs-title'),
  tail: $('#logs-tail'),
  follow: $('#logs-follow'),
  current: null,
  timer: null,

  open(wl) {
    this.current = wl;
    setText(this.title, `Logs — ${wl.name}`);
    setText(this.text, '');
    setText(this.meta, `${wl.type} on ${wl.node_id} · ${wl.status}`);
    if (!this.dialog.open) this.dialog.showModal();
    this.refresh();
    clearInterval(this.timer);
    this.timer = setInterval(() => {
      if (this.follow.checked && this.current && ['pending', 'running', 'stopping'].includes(this.current.status)) this.refresh();
    }, LOGS_FOLLOW_MS);
  },

  async refresh() {
    const wl = this.current;
    if (!wl) return;
    const box = this.text;
    const atBottom = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
    try {
      const reply = await api.logs(wl.id, this.tail.value);
      if (this.current !== wl && this.current?.id !== wl.id) return;
      setText(box, reply.logs || '');
      const lines = reply.logs ? reply.logs.split('\n').filter(Boolean).length : 0;
      setText(this.meta, `${wl.type} on ${wl.node_id} · ${this.current.status} · last ${lines} line${lines === 1 ? '' : 's'}` +
        (lines ? '' : ' (no output yet)'));
      if (atBottom) box.scrollTop = box.scrollHeight;
    } catch (err) {
      setText(this.meta, `Could not load logs: ${errorText(err)}`);
    }
  },

  close() {
    clearInterval(this.timer);
    this.timer = null;
    this.current = null;
    if (this.dialog.open) this.dialog.close();
  },
};
$('#logs-close').addEventListener('click', () => logs.close());
$('#logs-refresh').addEventListener('click', () => logs.refresh());
logs.tail.addEventListener('change', () => logs.refresh());
logs.dialog.addEventListener('close', () => { clearInterval(logs.timer); logs.timer = null; logs.current = null; });

// -- token ---------------------------------------------------------------------------------

const tokenDialog = $('#token-dialog');
const tokenInput = $('#token-input');
const tokenError = $('#token-error');

function askToken(message) {
  state.authorized = false;
  renderConn();
  stream.stop();
  setText(tokenError, message || '');
  if (!tokenDialog.open) {
    tokenInput.value = '';
    tokenDialog.showModal();
    tokenInput.focus();
  }
}

onUnauthorized(() => {
  askToken(getToken() ? 'That token was refused. Try again.' : '');
});

$('#token-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const token = tokenInput.value.trim();
  if (!token) {
    setText(tokenError, 'Enter the token.');
    return;
  }
  setToken(token);
  state.authorized = true;
  tokenDialog.close();
  el.tokenButton.hidden = false;
  await start();
});
tokenDialog.addEventListener('cancel', (ev) => {
  if (!state.authorized) ev.preventDefault(); // nothing to show without a token
});
el.tokenButton.addEventListener('click', () => {
  setToken('');
  askToken('Enter a new token.');
});

// -- start ---------------------------------------------------------------------------------

async function start() {
  const ok = await loadAll();
  if (!state.authorized) return; // waiting for a token
  state.booted = true;
  if (!ok) lastPoll = Date.now();
  stream.restart();
  renderConn();
}

el.tokenButton.hidden = !getToken();
// /api/health needs no token: show who we are even before one is entered.
loadHealth().catch(() => setReachable(false));
start();
setInterval(tick, 1000);
