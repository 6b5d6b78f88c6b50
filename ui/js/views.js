// Rendering: node facts, resource bars, neighbours, the tree and the workloads table.
// Everything from the server goes in as text (h() / textContent), never as HTML.

import {h, replace, setText, safeLink} from './dom.js';
import * as fmt from './format.js';

export const KINDS = [
  {kind: 'cpu', label: 'CPU'},
  {kind: 'memory', label: 'Memory'},
  {kind: 'gpu', label: 'GPU'},
  {kind: 'storage', label: 'Storage'},
];

const LIVE = new Set(['pending', 'running', 'stopping']);

const pct = (part, whole) => (whole > 0 ? Math.max(0, Math.min(100, (100 * part) / whole)) : 0);
const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : 0);
/** What is available of ``kind``: as the node reports it, else capacity less allocated. */
const free = (node, kind, cap, alloc) =>
  (node.available && kind in node.available ? num(node.available[kind]) : cap - alloc);

export function statusPill(status, extraClass = '') {
  const s = String(status || 'unknown');
  return h('span', {class: `pill pill-${s.replace(/[^a-z_-]/gi, '')} ${extraClass}`.trim(),
    dataset: {status: s}}, s);
}

function meter(nodeId, kind, label, what, value, max, cls) {
  const width = pct(value, max);
  return h('div', {
    class: `bar ${cls}`, role: 'meter', 'aria-label': `${label} ${what} on ${nodeId}`,
    'aria-valuemin': 0, 'aria-valuemax': max, 'aria-valuenow': value,
    'aria-valuetext': `${fmt.amount(kind, value)} of ${fmt.amount(kind, max)}`,
    dataset: {what, value: String(value)},
  }, h('div', {class: 'bar-fill', style: {width: `${width}%`}}));
}

/** Full resource bars (this node): allocated over capacity, measured usage beneath, figures. */
export function renderResources(container, node) {
  const nodeId = node.node_id || '';
  const rows = KINDS.map(({kind, label}) => {
    const cap = num(node.capacity?.[kind]);
    const alloc = num(node.allocated?.[kind]);
    const avail = free(node, kind, cap, alloc);
    const used = num(node.usage?.[kind]);
    const none = cap <= 0;
    const hot = cap > 0 && alloc / cap >= 0.9 ? ' hot' : '';
    return h('div', {class: `res${none ? ' res-none' : ''}${hot}`, dataset: {node: nodeId, kind}},
      h('div', {class: 'res-head'},
        h('span', {class: 'res-name'}, label),
        h('span', {class: 'res-figures'},
          none ? 'none' : `${fmt.short(kind, alloc)} / ${fmt.amount(kind, cap)}`)),
      meter(nodeId, kind, label, 'allocated', alloc, cap, 'bar-alloc'),
      meter(nodeId, kind, label, 'used', used, cap, 'bar-usage'),
      h('div', {class: 'res-foot'},
        h('span', {}, none ? 'not present on this node' : `${fmt.short(kind, avail)} free`),
        none && !used ? null : h('span', {}, `${fmt.short(kind, used)} used`)));
  });
  const legend = h('p', {class: 'legend'},
    h('span', {class: 'key'}, 'allocated to workloads'),
    h('span', {class: 'key key-used'}, 'measured use'));
  replace(container, ...rows, deviceList(node), legend);
}

/** The node's GPUs: each device, the workload holding it, NVML's measured use (if any). */
export function deviceList(node) {
  const devices = Array.isArray(node.devices) ? node.devices : [];
  if (!devices.length) return null;
  return h('ul', {class: 'devices', 'aria-label': `GPUs of ${node.node_id || ''}`},
    devices.map((d) => {
      const measured = [
        typeof d.utilization === 'number' ? `${d.utilization}% busy` : null,
        typeof d.memory_used === 'number' && num(d.memory) > 0
          ? `${fmt.bytes(d.memory_used)} / ${fmt.bytes(d.memory)}`
          : (num(d.memory) > 0 ? fmt.bytes(d.memory) : null),
      ].filter(Boolean).join(' · ');
      return h('li', {class: `device${d.holder ? ' device-held' : ''}`,
        dataset: {uuid: String(d.uuid ?? ''), holder: String(d.holder ?? '')}},
      h('span', {class: 'device-name'}, `GPU ${d.index ?? '?'} ${d.name || ''}`.trim()),
      h('span', {class: 'device-uuid', title: String(d.uuid ?? '')}, String(d.uuid ?? '')),
      h('span', {class: 'device-holder'}, d.holder ? `held by ${d.holder}` : 'free'),
      measured ? h('span', {class: 'device-use'}, measured) : null);
    }));
}

/** One combined bar per kind (neighbour cards): allocated fill with a usage tick. */
function compactResources(node) {
  const nodeId = node.node_id || '';
  return h('div', {class: 'res-compact'}, KINDS.map(({kind, label}) => {
    const cap = num(node.capacity?.[kind]);
    const alloc = num(node.allocated?.[kind]);
    const used = num(node.usage?.[kind]);
    const avail = free(node, kind, cap, alloc);
    return h('div', {class: 'rc', dataset: {node: nodeId, kind}},
      h('span', {class: 'rc-name'}, label),
      h('div', {class: 'bar bar-alloc', role: 'meter',
        'aria-label': `${label} allocated on ${nodeId}`, 'aria-valuemin': 0,
        'aria-valuemax': cap, 'aria-valuenow': alloc,
        'aria-valuetext': `${fmt.amount(kind, alloc)} of ${fmt.amount(kind, cap)}, ${fmt.amount(kind, avail)} free, ${fmt.amount(kind, used)} used`},
      h('div', {class: 'bar-fill', style: {width: `${pct(alloc, cap)}%`}}),
      h('div', {class: 'bar-tick', style: {left: `${pct(used, cap)}%`}})),
      h('span', {class: 'rc-fig'},
        cap > 0 ? `${fmt.short(kind, alloc)}/${fmt.short(kind, cap)} · ${fmt.short(kind, avail)} free` : '—'));
  }));
}

/** A "seen 3s ago" label that the app's 1-second ticker keeps current. */
export function ageLabel(lastSeen, fetchedAt, prefix = 'seen ') {
  const el = h('span', {class: 'age', dataset: {lastSeen: String(lastSeen ?? ''), fetchedAt: String(fetchedAt), prefix}});
  tickAge(el);
  return el;
}

export function tickAge(el) {
  const raw = el.dataset.lastSeen;
  if (raw === '') {
    setText(el, `${el.dataset.prefix}never`);
    return;
  }
  const age = Number(raw) + (Date.now() - Number(el.dataset.fetchedAt)) / 1000;
  setText(el, `${el.dataset.prefix}${fmt.ago(age)}`);
}

function nodeCard(node, role, fetchedAt) {
  const status = node.status || 'unknown';
  return h('article', {class: `ncard ncard-${status}`, dataset: {node: node.node_id || '', role},
    'aria-label': `${role} ${node.node_id || ''}`},
  h('div', {class: 'ncard-head'},
    h('span', {class: 'ncard-id'}, node.node_id || '?'),
    h('span', {class: 'role'}, role),
    statusPill(status)),
  h('div', {class: 'ncard-meta'},
    ageLabel(node.last_seen, fetchedAt),
    node.address ? safeLink(node.address) : null,
    subtreeText(node.subtree)),
  node.capacity ? compactResources(node) : null,
  deviceList(node));
}

/** A short text of a child's subtree summary, whatever fields it carries. */
function subtreeText(summary) {
  if (!summary || typeof summary !== 'object') return null;
  const parts = [];
  const named = {nodes: 'nodes', live_workloads: 'live workloads'};
  for (const [key, value] of Object.entries(summary)) {
    if (key in named && typeof value === 'number') parts.push(`${value} ${named[key]}`);
    else if (typeof value === 'number' || typeof value === 'string') parts.push(`${key} ${value}`);
    else if (Array.isArray(value)) parts.push(`${key} ${value.length}`);
    else if (value && typeof value === 'object' && key === 'available') {
      const bits = [];
      if ('cpu' in value) bits.push(`${fmt.number(value.cpu)} cpu`);
      if ('memory' in value) bits.push(`${fmt.bytes(value.memory)} mem`);
      if (bits.length) parts.push(`free ${bits.join(', ')}`);
    }
  }
  return parts.length ? h('span', {class: 'subtree'}, `subtree: ${parts.join(' · ')}`) : null;
}

/** Parent, peers and children (this node left out). */
export function renderNeighbours(container, countEl, view, fetchedAt) {
  const self = view.node_id;
  const not = (n) => n && n.node_id !== self;
  const parent = not(view.parent) ? [view.parent] : [];
  const peers = (view.peers || []).filter(not);
  const children = (view.children || []).filter(not);
  const groups = [['Parent', 'parent', parent], ['Peers', 'peer', peers], ['Children', 'child', children]];
  const total = parent.length + peers.length + children.length;
  const lost = [...parent, ...peers, ...children].filter((n) => n.status === 'lost').length;
  setText(countEl, total ? `${total} linked${lost ? `, ${lost} lost` : ''}` : '');
  if (!total) {
    replace(container, h('p', {class: 'empty'},
      'No parent, peers or children reported yet: this node is running on its own.'));
    return;
  }
  replace(container, ...groups.filter(([, , list]) => list.length).map(([title, role, list]) =>
    h('div', {class: 'ngroup', dataset: {group: role}},
      h('h3', {class: 'subhead'}, `${title} (${list.length})`),
      h('div', {class: 'ncards'}, list.map((n) => nodeCard(n, role, fetchedAt))))));
}

/** The tree below this node: children, and their own children or subtree where reported. */
export function renderTree(container, view, fetchedAt) {
  const self = view.self || {node_id: view.node_id, status: 'alive'};
  const flat = Array.isArray(view.nodes) ? view.nodes : [];
  const seen = new Set([self.node_id]);
  const kidsOf = (node) => {
    let kids = [];
    if (node === self) kids = view.children || [];
    else if (Array.isArray(node.children)) kids = node.children;
    else if (node.subtree && Array.isArray(node.subtree.nodes)) kids = node.subtree.nodes;
    else if (node.subtree && Array.isArray(node.subtree.children)) kids = node.subtree.children;
    const byParent = flat.filter((n) => n && (n.parent === node.node_id || n.parent_id === node.node_id));
    const all = [...kids, ...byParent].filter((n) => n && typeof n === 'object' && n.node_id);
    return all.filter((n) => (seen.has(n.node_id) ? false : (seen.add(n.node_id), true)));
  };
  const item = (node, isSelf, depth) => {
    const kids = depth < 12 ? kidsOf(node) : [];
    return h('li', {dataset: {node: node.node_id}},
      h('div', {class: 'tnode'},
        h('span', {class: 'tnode-id'}, node.node_id),
        isSelf ? h('span', {class: 'role'}, 'this node') : null,
        statusPill(node.status || 'unknown'),
        isSelf ? null : ageLabel(node.last_seen, fetchedAt),
        isSelf ? null : subtreeText(node.subtree)),
      kids.length ? h('ul', {}, kids.map((k) => item(k, false, depth + 1))) : null);
  };
  const root = item(self, true, 0);
  const hasKids = root.querySelector('ul');
  replace(container, h('ul', {class: 'tree'}, root),
    hasKids ? null : h('p', {class: 'muted small'}, 'No child nodes below this one.'));
}

/** The workloads table, updated row by row so focus and pending clicks survive live updates. */
export class WorkloadTable {
  constructor(tbody, emptyEl, countEl, actions) {
    this.tbody = tbody;
    this.emptyEl = emptyEl;
    this.countEl = countEl;
    this.actions = actions; // {logs(wl), stop(wl), remove(wl)}
    this.items = new Map();
    this.rows = new Map();
    this.filter = 'all';
  }

  setAll(list) {
    const ids = new Set(list.map((w) => w.id));
    for (const id of [...this.items.keys()]) if (!ids.has(id)) this.items.delete(id);
    for (const wl of list) this.items.set(wl.id, wl);
    this.render();
  }

  upsert(wl) {
    this.items.set(wl.id, {...(this.items.get(wl.id) || {}), ...wl});
    this.render();
  }

  remove(id) {
    this.items.delete(id);
    this.render();
  }

  get(id) {
    return this.items.get(id);
  }

  setFilter(filter) {
    this.filter = filter;
    this.render();
  }

  visible(wl) {
    if (this.filter === 'live') return LIVE.has(wl.status);
    if (this.filter === 'ended') return !LIVE.has(wl.status);
    return true;
  }

  render() {
    const list = [...this.items.values()].filter((w) => this.visible(w))
      .sort((a, b) => (b.created_at || 0) - (a.created_at || 0) || String(a.id).localeCompare(String(b.id)));
    const keep = new Set(list.map((w) => w.id));
    for (const [id, row] of this.rows) {
      if (!keep.has(id)) {
        row.remove();
        this.rows.delete(id);
      }
    }
    let prev = null;
    for (const wl of list) {
      let row = this.rows.get(wl.id);
      if (!row) {
        row = this.makeRow(wl);
        this.rows.set(wl.id, row);
      }
      this.fill(row, wl);
      const want = prev ? prev.nextSibling : this.tbody.firstChild;
      if (want !== row) this.tbody.insertBefore(row, want);
      prev = row;
    }
    this.emptyEl.hidden = list.length > 0;
    this.tbody.parentElement.classList.toggle('is-empty', list.length === 0);
    const total = this.items.size;
    const live = [...this.items.values()].filter((w) => LIVE.has(w.status)).length;
    setText(this.countEl, total ? `${live} live · ${total} total` : '');
    this.onChange?.(live, total);
  }

  makeRow(wl) {
    const cell = (label, cls = '') => h('td', {class: cls, dataset: {label}});
    const row = h('tr', {dataset: {id: wl.id, testid: 'wl-row'}});
    row.cells_ = {
      name: cell('Name', 'c-name'), type: cell('Type'), node: cell('Node'),
      status: cell('Status', 'c-status'), endpoint: cell('Endpoint', 'c-endpoint'),
      pid: cell('PID', 'num'), restarts: cell('Restarts', 'num'), created: cell('Created', 'c-time'),
      actions: cell('Actions', 'c-actions'),
    };
    const logs = h('button', {type: 'button', class: 'btn btn-small', dataset: {action: 'logs'},
      onclick: () => this.actions.logs(this.items.get(wl.id) || wl)}, 'Logs');
    const stop = h('button', {type: 'button', class: 'btn btn-small', dataset: {action: 'stop'},
      onclick: () => this.actions.stop(this.items.get(wl.id) || wl, stop)}, 'Stop');
    const del = h('button', {type: 'button', class: 'btn btn-small btn-danger', dataset: {action: 'delete'},
      onclick: () => this.confirmDelete(wl.id, del)}, 'Delete');
    row.buttons_ = {logs, stop, del};
    row.cells_.actions.append(h('div', {class: 'actions'}, logs, stop, del));
    row.append(...Object.values(row.cells_));
    return row;
  }

  /** First click arms the button, a second within 4 s deletes (no blocking confirm()). */
  confirmDelete(id, button) {
    if (button.dataset.armed === '1') {
      clearTimeout(button.disarm_);
      button.dataset.armed = '';
      setText(button, 'Delete');
      this.actions.remove(this.items.get(id), button);
      return;
    }
    button.dataset.armed = '1';
    setText(button, 'Confirm delete');
    button.disarm_ = setTimeout(() => {
      button.dataset.armed = '';
      setText(button, 'Delete');
    }, 4000);
  }

  fill(row, wl) {
    const c = row.cells_;
    row.dataset.status = wl.status || '';
    row.dataset.name = wl.name || '';
    setText(c.name, wl.name);
    c.name.title = `id ${wl.id}`;
    setText(c.type, wl.type);
    setText(c.node, wl.node_id);
    const statusKey = `${wl.status}|${wl.message || ''}|${wl.exit_code ?? ''}`;
    if (c.status.dataset.key !== statusKey) {
      c.status.dataset.key = statusKey;
      const hasExit = wl.exit_code !== null && wl.exit_code !== undefined;
      const note = wl.status === 'failed' || wl.status === 'lost' ? wl.message
        : wl.status === 'completed' || wl.status === 'stopped'
          ? (hasExit ? `exit ${wl.exit_code}` : wl.message) : null;
      replace(c.status, statusPill(wl.status), note ? h('span', {class: 'note'}, note) : null);
    }
    const where = `${wl.endpoint || ''}|${wl.data_key || ''}`;
    if (c.endpoint.dataset.where !== where) {
      c.endpoint.dataset.where = where;
      // Stored data has no endpoint; its key (the S3 prefix the gateway serves) stands in.
      replace(c.endpoint, wl.endpoint ? safeLink(wl.endpoint)
        : wl.data_key ? h('span', {class: 'muted', title: 'data key'}, `key ${wl.data_key}`) : '—');
      c.endpoint.classList.toggle('is-empty', !wl.endpoint && !wl.data_key);
    }
    setText(c.pid, wl.process_pid ?? '—');
    setText(c.restarts, wl.restart_count ?? 0);
    setText(c.created, fmt.clock(wl.created_at));
    c.created.title = fmt.isoTime(wl.created_at);
    const {logs, stop, del} = row.buttons_;
    const name = wl.name || wl.id;
    logs.setAttribute('aria-label', `Logs of ${name}`);
    stop.setAttribute('aria-label', `Stop ${name}`);
    del.setAttribute('aria-label', `Delete ${name}`);
    stop.disabled = !LIVE.has(wl.status) || wl.status === 'stopping';
  }
}
