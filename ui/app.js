// clusterkit dashboard: plain JavaScript, no libraries, no build step.
//
// Data flow: one blocking query on /cluster (?index=N&wait=) delivers every
// committed change as soon as this node applies it; a once-a-second poll of
// /health/detailed and /consensus/configuration adds what moves without a
// state change (raft term and indexes, the leader, raft roles). Events are
// the differences between two successive states, so they stay live without
// a reload. The DOM is built with createElement and textContent only (the
// page's Content-Security-Policy allows no inline script or style, and no
// cluster value is ever parsed as HTML).
'use strict';

// Uncaught errors, kept for the browser test (tests/cluster/test_dashboard.py)
// and for anyone looking at the console.
window.__ckErrors = [];
window.addEventListener('error', (e) => window.__ckErrors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) => window.__ckErrors.push(String(e.reason)));

const POLL_MS = 1000;        // raft term/index, leader, roles
const WAIT = '25s';          // blocking query wait (the server caps it)
const RETRY_MIN_MS = 250;
const RETRY_MAX_MS = 5000;
const MAX_EVENTS = 200;
const DENSE_ABOVE = 256;     // partitions; above it cells lose their labels

const $ = (id) => document.getElementById(id);

const ui = {
  cluster: null,        // the last /cluster answer
  index: 0,             // its state_index
  health: null,         // the last /health/detailed answer
  roles: new Map(),     // node id -> raft role
  colors: new Map(),    // node id -> colour, assigned once per node
  leader: null,
  paused: null,
  focus: null,          // partition id under the pointer / tapped
  found: null,          // partition id of the last key lookup
  lastKey: null,        // that key, looked up again after every change
};

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('data-')) e.setAttribute(k, v);
      else e[k] = v;
    }
  }
  for (const c of children) {
    if (c != null) e.append(c);
  }
  return e;
}

class HttpError extends Error {
  constructor(status, code, message) {
    super(message || ('HTTP ' + status));
    this.status = status;
    this.code = code;
  }
}

async function getJSON(path) {
  // location.origin, not a relative URL: a page opened as
  // http://user:token@host/ui would resolve one to a URL with credentials,
  // which fetch() refuses. The browser adds the credentials it cached for
  // this origin by itself.
  const r = await fetch(location.origin + path, {headers: {Accept: 'application/json'}, cache: 'no-store',
                               credentials: 'same-origin'});
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const e = body && body.error;
    throw new HttpError(r.status, e && e.code, e && e.message);
  }
  return body;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Partition ids are "partition-N": order them by N.
function partitionNumber(id) {
  const m = /(\d+)$/.exec(id);
  return m ? Number(m[1]) : 0;
}

function colorOf(id) {
  if (!ui.colors.has(id)) {
    // Golden-angle hues keep neighbours apart however many nodes come.
    const hue = (ui.colors.size * 137.508 + 200) % 360;
    ui.colors.set(id, `hsl(${hue.toFixed(0)}, 62%, 42%)`);
  }
  return ui.colors.get(id);
}

function clock() {
  return new Date().toLocaleTimeString([], {hour12: false});
}

// ---------------------------------------------------------------------------
// Events: what changed between two states
// ---------------------------------------------------------------------------

function addEvent(text, detail) {
  const list = $('events');
  const empty = list.querySelector('.empty');
  if (empty) empty.remove();
  const li = el('li', {'data-kind': 'event'}, el('time', {text: clock()}), text);
  if (detail) li.title = detail;
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

function diffStates(prev, next) {
  const before = new Map(prev.cluster.nodes.map((n) => [n.id, n]));
  const after = new Map(next.cluster.nodes.map((n) => [n.id, n]));
  for (const [id, n] of after) {
    const o = before.get(id);
    if (!o) addEvent(`${id} joined (${n.status})`);
    else if (o.status !== n.status) addEvent(`${id}: ${o.status} → ${n.status}`);
  }
  for (const id of before.keys()) {
    if (!after.has(id)) addEvent(`${id} removed from the cluster`);
  }
  const moves = [];
  const pa = prev.cluster.partition_map.partitions || {};
  for (const [id, p] of Object.entries(next.cluster.partition_map.partitions || {})) {
    const o = pa[id];
    if (!o) continue;
    if (o.primary_node !== p.primary_node) {
      moves.push(`${id}: primary ${o.primary_node || '–'} → ${p.primary_node || '–'}`);
    } else if (o.replica_nodes.join(',') !== p.replica_nodes.join(',')) {
      moves.push(`${id}: replicas [${o.replica_nodes.join(', ')}] → [${p.replica_nodes.join(', ')}]`);
    }
  }
  moves.sort((a, b) => partitionNumber(a.split(':')[0]) - partitionNumber(b.split(':')[0]));
  if (moves.length === 1) addEvent(moves[0]);
  else if (moves.length > 1) {
    const shown = moves.slice(0, 3).join('; ') + (moves.length > 3 ? '; …' : '');
    addEvent(`${moves.length} partitions moved: ${shown}`, moves.join('\n'));
  }
}

// ---------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------

function counts(cluster) {
  const c = new Map();
  for (const p of Object.values(cluster.partition_map.partitions || {})) {
    const e = c.get(p.primary_node) || {primaries: 0, replicas: 0};
    e.primaries++;
    c.set(p.primary_node, e);
    for (const r of p.replica_nodes) {
      const f = c.get(r) || {primaries: 0, replicas: 0};
      f.replicas++;
      c.set(r, f);
    }
  }
  return c;
}

function renderSummary() {
  const c = ui.cluster && ui.cluster.cluster;
  const h = ui.health;
  const r = h && h.raft;
  $('sum-leader').textContent = (h && h.leader) || (r && r.leader_id) || 'none';
  $('sum-term').textContent = r ? String(r.term) : '–';
  $('sum-index').textContent = r ? `${r.commit_index} / ${r.applied_index}` : '–';
  $('sum-state').textContent = String(ui.index || (h && h.state_index) || '–');
  if (c) {
    const active = c.nodes.filter((n) => n.status === 'active').length;
    $('sum-nodes').textContent = `${active} / ${c.nodes.length} active`;
    $('sum-parts').textContent = `${c.config.partition_count} × ${c.config.replication_factor}`;
    $('cluster-name').textContent = c.name ? '· ' + c.name : '';
    document.title = `clusterkit · ${c.name || c.id}`;
  }
  if (h) {
    $('sum-rebalance').textContent = h.rebalance_paused ? 'paused' : 'on';
    $('served-by').textContent = h.node_id;
  }
  document.body.dataset.stateIndex = String(ui.index);
}

function renderNodes() {
  const c = ui.cluster.cluster;
  const per = counts(c);
  const tbody = $('nodes').tBodies[0];
  const rows = [];
  const nodes = c.nodes.slice().sort((a, b) => a.id.localeCompare(b.id));
  for (const n of nodes) {
    const k = per.get(n.id) || {primaries: 0, replicas: 0};
    const swatch = el('span', {class: 'swatch'});
    swatch.style.background = colorOf(n.id);
    const name = el('td', null, n.id);
    if (n.id === ui.leader) name.append(el('span', {class: 'leader-mark', title: 'leader', text: '★'}));
    const tr = el('tr', {'data-node': n.id, 'data-status': n.status},
      el('td', null, swatch), name,
      el('td', null, el('span', {class: 'status ' + n.status, text: n.status})),
      el('td', {text: n.zone || '–'}),
      el('td', {text: ui.roles.get(n.id) || '–', class: 'role'}),
      el('td', {text: n.ip || '–'}),
      el('td', {class: 'num', text: String(k.primaries)}),
      el('td', {class: 'num', text: String(k.replicas)}));
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
  highlightNodes();
}

function renderLegend() {
  const items = ui.cluster.cluster.nodes.slice().sort((a, b) => a.id.localeCompare(b.id)).map((n) => {
    const s = el('span', {class: 'swatch'});
    s.style.background = colorOf(n.id);
    return el('span', null, s, ' ' + n.id);
  });
  $('legend').replaceChildren(...items);
}

function renderGrid() {
  const c = ui.cluster.cluster;
  const status = new Map(c.nodes.map((n) => [n.id, n.status]));
  const parts = Object.values(c.partition_map.partitions || {})
    .sort((a, b) => partitionNumber(a.id) - partitionNumber(b.id));
  const grid = $('grid');
  grid.classList.toggle('dense', parts.length > DENSE_ABOVE);
  const cells = parts.map((p) => {
    const cell = el('div', {class: 'cell', role: 'gridcell', tabIndex: 0, 'data-partition': p.id,
                            'data-primary': p.primary_node || ''},
                    String(partitionNumber(p.id)));
    cell.style.background = p.primary_node ? colorOf(p.primary_node) : '#98a2b3';
    if (status.get(p.primary_node) !== 'active') cell.classList.add('orphan');
    cell.title = `${p.id}\nprimary: ${p.primary_node || 'none'}\nreplicas: ` +
      `${p.replica_nodes.join(', ') || 'none'}\nepoch: ${p.epoch}`;
    return cell;
  });
  grid.replaceChildren(...cells);
  markCells();
  showDetail();
}

function partition(id) {
  const c = ui.cluster && ui.cluster.cluster;
  return c && c.partition_map.partitions[id];
}

function markCells() {
  for (const cell of $('grid').children) {
    const id = cell.dataset.partition;
    cell.classList.toggle('focus', id === ui.focus);
    cell.classList.toggle('found', id === ui.found);
  }
}

function highlightNodes() {
  const p = ui.focus && partition(ui.focus);
  const owners = new Set(p ? [p.primary_node, ...p.replica_nodes] : []);
  for (const tr of $('nodes').tBodies[0].rows) tr.classList.toggle('hl', owners.has(tr.dataset.node));
}

function showDetail() {
  const p = ui.focus && partition(ui.focus);
  $('cell-detail').textContent = p
    ? `${p.id}: primary ${p.primary_node || 'none'}, replicas ${p.replica_nodes.join(', ') || 'none'}, epoch ${p.epoch}`
    : '\u00a0';
}

function setFocus(id) {
  if (ui.focus === id) return;
  ui.focus = id;
  markCells();
  highlightNodes();
  showDetail();
}

function render() {
  renderSummary();
  if (!ui.cluster) return;
  renderLegend();
  renderNodes();
  renderGrid();
}

function setLive(on, why) {
  const live = $('live');
  live.className = 'live ' + (on ? 'on' : 'off');
  live.textContent = on ? 'live' : why || 'reconnecting';
}

// ---------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------

// Follows the committed state: every answer is a newer state (or the same
// one after the wait ends), never a skipped one that matters, since each
// answer is the whole state.
async function followCluster() {
  let delay = RETRY_MIN_MS;
  for (;;) {
    try {
      const next = await getJSON(`/cluster?index=${ui.index}&wait=${WAIT}`);
      delay = RETRY_MIN_MS;
      setLive(true);
      if (next.state_index === ui.index && ui.cluster) continue;
      if (ui.cluster) diffStates(ui.cluster, next);
      ui.cluster = next;
      ui.index = next.state_index;
      render();
      // What depends on the state: the plan, the raft indexes that carried
      // the change, and the last lookup's owners.
      refreshPlan();
      refreshRaft();
      if (ui.lastKey !== null) showLookup(ui.lastKey);
    } catch (e) {
      setLive(false, e.status === 401 ? 'unauthorized' : e.status ? `HTTP ${e.status}` : 'reconnecting');
      await sleep(delay);
      delay = Math.min(delay * 2, RETRY_MAX_MS);
    }
  }
}

let raftPending = false;
async function refreshRaft() {
  if (raftPending) return;
  raftPending = true;
  try {
    const [h, conf] = await Promise.all([getJSON('/health/detailed'), getJSON('/consensus/configuration')]);
    const leader = h.leader || null;
    if (ui.health && leader !== ui.leader) {
      addEvent(leader ? `leader: ${ui.leader || 'none'} → ${leader} (term ${h.raft.term})` : 'no leader');
    }
    if (ui.health && h.rebalance_paused !== ui.paused) {
      addEvent(h.rebalance_paused ? 'rebalancing paused' : 'rebalancing resumed');
    }
    ui.health = h;
    ui.leader = leader;
    ui.paused = h.rebalance_paused;
    ui.roles = new Map(conf.servers.filter((s) => s.node_id).map((s) => [s.node_id, s.role]));
    renderSummary();
    if (ui.cluster) renderNodes();
  } catch (_) {
    // followCluster shows the connection state.
  } finally {
    raftPending = false;
  }
}

async function pollRaft() {
  for (;;) {
    await refreshRaft();
    await sleep(POLL_MS);
  }
}

let planPending = false;
async function refreshPlan() {
  if (planPending) return;
  planPending = true;
  try {
    const plan = await getJSON('/rebalance/plan');
    const box = $('moves');
    if (!plan.moves.length) {
      box.textContent = 'balanced: no moves planned';
    } else {
      const list = el('ul');
      for (const m of plan.moves.slice(0, 50)) {
        list.append(el('li', {text: `${m.partition || m.id || ''}: [${m.from.join(', ')}] → [${m.to.join(', ')}]`}));
      }
      box.replaceChildren(el('div', {text: `${plan.moves.length} moves planned (${plan.moved_slots} slots, ` +
                                             `${plan.moved_primaries} primaries)`}), list);
    }
  } catch (e) {
    $('moves').textContent = e.message;
  } finally {
    planPending = false;
  }
}

async function showLookup(key) {
  const out = $('lookup-result');
  try {
    const r = await getJSON('/partitions/key?key=' + encodeURIComponent(key));
    const p = r.partition;
    out.replaceChildren(el('b', {text: key}), ` → ${p.id}: primary ${p.primary_node || 'none'}, ` +
                        `replicas ${p.replica_nodes.join(', ') || 'none'}`);
    out.dataset.partition = p.id;
    out.dataset.primary = p.primary_node || '';
    ui.found = p.id;
    markCells();
  } catch (e) {
    out.replaceChildren(el('span', {class: 'err', text: e.message}));
  }
}

function lookup(ev) {
  ev.preventDefault();
  const key = $('lookup-key').value;
  if (key === '') return;
  ui.lastKey = key;
  showLookup(key);
}

function start() {
  $('events').append(el('li', {class: 'empty', text: 'No changes since the page loaded.'}));
  $('lookup').addEventListener('submit', lookup);
  const grid = $('grid');
  const over = (ev) => {
    const cell = ev.target.closest('.cell');
    if (cell) setFocus(cell.dataset.partition);
  };
  grid.addEventListener('mouseover', over);
  grid.addEventListener('focusin', over);
  grid.addEventListener('click', over); // phones: tap
  grid.addEventListener('mouseleave', () => setFocus(null));
  followCluster();
  pollRaft();
}

document.addEventListener('DOMContentLoaded', start);
