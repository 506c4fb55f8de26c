// The dynafast console: polls /console/data every two seconds and redraws each section in place.
// Plain JavaScript, no library: the page must work with no internet access.
"use strict";

const POLL_MS = 2000;
const TRANSFER_ROWS = 10;
const PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777",
                 "#4b5563", "#65a30d", "#7c3aed", "#0d9488"];
let polls = 0;
let ringKey = null;

// -- readable numbers ----------------------------------------------------------------------------------------
const intFormat = new Intl.NumberFormat("en-US", {maximumFractionDigits: 0});
const oneDecimal = new Intl.NumberFormat("en-US", {maximumFractionDigits: 1});

function fmtInt(x) { return x == null ? "–" : intFormat.format(x); }
function fmtRate(x) { return x == null ? "–" : (x < 10 ? oneDecimal.format(x) : intFormat.format(x)); }
function fmtMs(ms) {
  if (ms == null) return "–";
  if (ms < 1) return (ms * 1000).toFixed(0) + " µs";
  if (ms < 1000) return (ms < 10 ? ms.toFixed(2) : ms.toFixed(1)) + " ms";
  return (ms / 1000).toFixed(2) + " s";
}
function fmtBytes(b) {
  if (b == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return (i === 0 ? intFormat.format(b) : b.toFixed(b < 10 ? 2 : 1)) + " " + units[i];
}
function fmtDuration(s) {
  if (s == null) return "–";
  if (s < 60) return s.toFixed(0) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + Math.floor(s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}
function fmtClock(t) { return new Date(t * 1000).toLocaleTimeString("en-GB", {hour12: false}); }
function pct(part, whole) { return whole ? (100 * part / whole).toFixed(1) + " %" : "–"; }
function esc(s) {
  return String(s).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"})[c]);
}
function swatch(color) { return `<span class="swatch" style="background:${color}"></span>`; }
function bar(fraction, cls, size) {
  const width = Math.max(0, Math.min(1, fraction)) * 100;
  return `<span class="bar ${size || ""}"><span class="${cls || "fill"}" style="width:${width.toFixed(1)}%"></span></span>`;
}
function fill(selector, rows, columns, emptyText) {
  const body = document.querySelector(selector + " tbody");
  body.innerHTML = rows.length ? rows.join("") : `<tr><td class="empty" colspan="${columns}">${esc(emptyText)}</td></tr>`;
}

// -- the data ------------------------------------------------------------------------------------------------
function colors(data) {
  const ids = data.members.map(m => m.id).sort();
  const out = {};
  ids.forEach((id, i) => { out[id] = PALETTE[i % PALETTE.length]; });
  return out;
}
function latest(status) {
  const slots = status && status.recent ? status.recent.slots : [];
  return slots.length ? slots[slots.length - 1] : null;  // [time, ops, errors, p50, p99, max]
}

// -- sections ------------------------------------------------------------------------------------------------
function renderSummary(data) {
  const c = data.config;
  document.getElementById("summary").textContent =
    `ring version ${fmtInt(c.ring_version)} · ${fmtInt(c.partitions)} partitions · n=${c.n} r=${c.r} w=${c.w} dw=${c.dw}`
    + ` · ${data.members.length} members`;
}

function renderMembers(data, color) {
  const byId = Object.fromEntries(data.nodes.map(n => [n.id, n]));
  const rows = data.members.map(m => {
    const node = byId[m.id];
    const reachable = node && node.reachable;
    const down = m.state === "down" || (node && !reachable);
    const state = !reachable && m.state === "up" && node ? "unreachable" : m.state;
    const last = reachable ? latest(node.status) : null;
    const uptime = reachable ? node.status.uptime : null;
    const why = node && node.error ? ` title="${esc(node.error)}"` : "";
    return `<tr data-node="${esc(m.id)}" data-state="${esc(state)}" class="${down ? "down" : esc(m.state)}">`
      + `<td>${swatch(color[m.id])}${esc(m.id)}</td><td>${esc(m.address)}</td><td>${esc(m.zone || "–")}</td>`
      + `<td class="state ${down ? "down" : esc(m.state)}"${why}>${esc(state)}</td>`
      + `<td>${bar(m.partitions / data.config.partitions)}${pct(m.partitions, data.config.partitions)}`
      + ` <span class="muted">(${fmtInt(m.partitions)})</span></td>`
      + `<td class="num">${fmtDuration(uptime)}</td>`
      + `<td class="num ops">${last ? fmtRate(last[1]) : "–"}</td>`
      + `<td class="num">${last ? fmtMs(last[3]) : "–"}</td><td class="num">${last ? fmtMs(last[4]) : "–"}</td>`
      + `<td class="num">${last ? fmtRate(last[2]) : "–"}</td></tr>`;
  });
  fill("#members", rows, 10, "no members");
}

// A line chart on a canvas: series [{id, color, width, points: [[t, v], ...]}] over the last minute.
function drawChart(canvas, series, now, format) {
  const ratio = window.devicePixelRatio || 1;
  const cssWidth = canvas.clientWidth || 560, cssHeight = canvas.clientHeight || 200;
  canvas.width = cssWidth * ratio;
  canvas.height = cssHeight * ratio;
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, cssWidth, cssHeight);
  const left = 64, right = 8, top = 8, bottom = 20;
  const w = cssWidth - left - right, h = cssHeight - top - bottom;
  let max = 0;
  series.forEach(s => s.points.forEach(p => { if (p[1] != null && p[1] > max) max = p[1]; }));
  max = niceCeiling(max);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b7280";
  g.strokeStyle = "#e3e6eb";
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const y = top + h - h * i / 4;
    g.beginPath(); g.moveTo(left, y); g.lineTo(left + w, y); g.stroke();
    g.fillText(i ? format(max * i / 4) : "0", left - 6, y);
  }
  g.textAlign = "center";
  g.textBaseline = "top";
  for (let s = 60; s >= 0; s -= 15) {
    g.textAlign = s === 60 ? "left" : (s === 0 ? "right" : "center");
    g.fillText(s ? `-${s} s` : "now", left + w - w * s / 60, top + h + 4);
  }
  const x = t => left + w - w * (now - t) / 60;
  const y = v => top + h - h * v / max;
  series.forEach(s => {
    g.strokeStyle = s.color;
    g.lineWidth = s.width || 1.5;
    g.beginPath();
    let drawing = false;
    s.points.forEach(p => {
      if (p[1] == null || now - p[0] > 60) { drawing = false; return; }
      if (drawing) g.lineTo(x(p[0]), y(p[1])); else g.moveTo(x(p[0]), y(p[1]));
      drawing = true;
    });
    g.stroke();
  });
}
function niceCeiling(v) {
  if (!(v > 0)) return 1;
  const step = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= v) return m * step;
  return 10 * step;
}

function renderCharts(data, color) {
  const ops = [], lat = [], opsLegend = [], latLegend = [];
  data.nodes.forEach(node => {
    const slots = node.reachable && node.status.recent ? node.status.recent.slots : [];
    const last = slots.length ? slots[slots.length - 1] : null;
    ops.push({id: node.id, color: color[node.id], points: slots.map(s => [s[0], s[1]])});
    lat.push({id: node.id, color: color[node.id], width: 1, points: slots.map(s => [s[0], s[3]])});
    lat.push({id: node.id, color: color[node.id], width: 2.5, points: slots.map(s => [s[0], s[4]])});
    const value = node.reachable ? (last ? fmtRate(last[1]) + " ops/s" : "–") : "unreachable";
    opsLegend.push(`<span data-node="${esc(node.id)}">${swatch(color[node.id])}${esc(node.id)}`
      + `<span class="value">${value}</span></span>`);
    const latency = node.reachable ? (last ? `p50 ${fmtMs(last[3])} · p99 ${fmtMs(last[4])}` : "–") : "unreachable";
    latLegend.push(`<span data-node="${esc(node.id)}">${swatch(color[node.id])}${esc(node.id)}`
      + `<span class="value">${latency}</span></span>`);
  });
  drawChart(document.getElementById("chart-ops"), ops, data.time, fmtRate);
  drawChart(document.getElementById("chart-latency"), lat, data.time, fmtMs);
  document.getElementById("legend-ops").innerHTML = opsLegend.join("");
  document.getElementById("legend-latency").innerHTML = latLegend.join("");
}

function wedge(a0, a1, r0, r1) {
  const p = (a, r) => `${(r * Math.sin(a)).toFixed(2)} ${(-r * Math.cos(a)).toFixed(2)}`;
  const large = a1 - a0 > Math.PI ? 1 : 0;
  return `M${p(a0, r1)}A${r1} ${r1} 0 ${large} 1 ${p(a1, r1)}L${p(a1, r0)}A${r0} ${r0} 0 ${large} 0 ${p(a0, r0)}Z`;
}

function renderRing(data, color) {
  const ring = data.ring;
  const streaming = new Set();
  data.nodes.forEach(node => {
    if (node.reachable) node.status.transfers.in_progress.forEach(t => streaming.add(t.partition));
  });
  // Replicas on a member that is down or out of reach are drawn faded.
  const reachable = Object.fromEntries(data.nodes.map(n => [n.id, n.reachable]));
  const down = new Set(data.members.filter(m => m.state === "down" || reachable[m.id] === false).map(m => m.id));
  const key = JSON.stringify([ring.version, ring.moving, [...streaming], ring.nodes, Object.values(color), [...down]]);
  if (key !== ringKey) {
    ringKey = key;
    const moving = new Set(ring.moving);
    const parts = [];
    const step = 2 * Math.PI / ring.partitions;
    const gap = ring.partitions <= 256 ? step * 0.06 : 0;
    const width = 52 / ring.n;
    for (let p = 0; p < ring.partitions; p++) {
      const a0 = p * step + gap / 2, a1 = (p + 1) * step - gap / 2;
      const names = ring.replicas[p].map(i => ring.nodes[i]);
      let title = `partition ${p}: ${names.join(", ")}`;
      if (ring.next) title += ` → ${ring.next[p].map(i => ring.nodes[i]).join(", ")}`;
      if (streaming.has(p)) title += " (streaming)"; else if (moving.has(p)) title += " (to move)";
      names.forEach((name, rank) => {
        const outer = 96 - rank * width;
        parts.push(`<path d="${wedge(a0, a1, outer - width + 1, outer)}" fill="${color[name] || "#999"}"`
          + `${down.has(name) ? ' class="down-node"' : ""} data-partition="${p}"><title>${esc(title)}</title></path>`);
      });
      if (moving.has(p) || streaming.has(p)) {
        parts.push(`<path class="${streaming.has(p) ? "streaming-mark" : "moving-mark"}" data-moving="${p}"`
          + ` d="${wedge(a0, a1, 98, 106)}"><title>${esc(title)}</title></path>`);
      }
    }
    parts.push(`<text y="-4">${fmtInt(ring.partitions)} partitions</text>`);
    parts.push(`<text y="8">n=${ring.n} · ring v${ring.version}</text>`);
    document.getElementById("ring-map").innerHTML = parts.join("");
  }
  const primary = {}, held = {};
  ring.replicas.forEach(r => r.forEach((i, rank) => {
    const id = ring.nodes[i];
    held[id] = (held[id] || 0) + 1;
    if (rank === 0) primary[id] = (primary[id] || 0) + 1;
  }));
  const legend = data.members.map(m => `<span data-node="${esc(m.id)}">${swatch(color[m.id])}${esc(m.id)}`
    + `<span class="value">first of ${fmtInt(primary[m.id] || 0)}, holds ${fmtInt(held[m.id] || 0)}</span></span>`);
  legend.push(`<span>${swatch("var(--moving)")}to move (${fmtInt(ring.moving.length)})</span>`);
  legend.push(`<span>${swatch("var(--streaming)")}streaming now (${fmtInt(streaming.size)})</span>`);
  document.getElementById("ring-legend").innerHTML = legend.join("");
}

function renderTransfers(data, color) {
  const running = [];
  let completed = 0, sent = 0;
  data.nodes.forEach(node => {
    if (!node.reachable) return;
    const t = node.status.transfers;
    completed += t.completed;
    sent += t.bytes_sent;
    t.in_progress.forEach(x => running.push(Object.assign({from: node.id, done: x.total ? x.sent / x.total : 0}, x)));
  });
  // The furthest along first; a long list is cut (the ring map shows every partition on the move).
  running.sort((a, b) => b.done - a.done || a.partition - b.partition);
  const rows = running.slice(0, TRANSFER_ROWS).map(x => `<tr data-partition="${x.partition}"><td>${fmtInt(x.partition)}</td>`
    + `<td>${swatch(color[x.from])}${esc(x.from)}</td><td>${swatch(color[x.target] || "#999")}${esc(x.target)}</td>`
    + `<td>${bar(x.done)}${fmtInt(x.sent)} / ${fmtInt(x.total)} objects (${pct(x.sent, x.total)})</td></tr>`);
  if (running.length > TRANSFER_ROWS) {
    rows.push(`<tr><td class="empty" colspan="4">and ${fmtInt(running.length - TRANSFER_ROWS)} more</td></tr>`);
  }
  const own = data.nodes[0].status.transfers;
  document.getElementById("transfers-summary").textContent =
    `${fmtInt(own.pending_cluster_wide)} transfers pending cluster-wide · ${fmtInt(completed)} completed`
    + ` · ${fmtBytes(sent)} sent`;
  fill("#transfers", rows, 4, "no transfer in progress");
}

function renderHints(data, color) {
  const rows = [];
  data.nodes.forEach(node => {
    if (!node.reachable) return;
    const pending = node.status.hints_pending || {};
    Object.keys(pending).sort().forEach(owner => {
      rows.push(`<tr><td>${swatch(color[node.id])}${esc(node.id)}</td><td>${swatch(color[owner] || "#999")}${esc(owner)}</td>`
        + `<td class="num">${fmtInt(pending[owner])}</td></tr>`);
    });
  });
  fill("#hints", rows, 3, "no hints pending");
}

function renderAntiEntropy(data, color) {
  const held = {};
  data.ring.replicas.forEach(r => r.forEach(i => { held[data.ring.nodes[i]] = (held[data.ring.nodes[i]] || 0) + 1; }));
  const rows = data.nodes.map(node => {
    if (!node.reachable) {
      return `<tr class="down" data-node="${esc(node.id)}"><td>${swatch(color[node.id])}${esc(node.id)}</td>`
        + `<td colspan="5" class="state down">unreachable</td></tr>`;
    }
    const ae = node.status.antientropy, repair = node.status.repair;
    const total = held[node.id] || 0;
    const repairText = repair.vnodes_repairing  // vnodes repairing after amnesia, or repaired
      ? `${fmtInt(repair.vnodes_repairing)} left` : (repair.vnodes_repaired ? `${fmtInt(repair.vnodes_repaired)} done` : "–");
    return `<tr data-node="${esc(node.id)}"><td>${swatch(color[node.id])}${esc(node.id)}</td>`
      + `<td>${bar(total ? ae.partitions_exchanged / total : 0, "fill", "short")}${fmtInt(ae.partitions_exchanged)} / ${fmtInt(total)}</td>`
      + `<td class="num">${fmtInt(ae.exchanges)}</td><td class="num">${fmtInt(ae.keys_repaired)}</td>`
      + `<td class="num">${ae.last_exchange_age == null ? "never" : fmtDuration(ae.last_exchange_age) + " ago"}</td>`
      + `<td>${repairText}</td></tr>`;
  });
  fill("#antientropy", rows, 6, "no member");
}

function renderStorage(data, color) {
  const rows = data.nodes.map(node => {
    if (!node.reachable) {
      return `<tr class="down" data-node="${esc(node.id)}"><td>${swatch(color[node.id])}${esc(node.id)}</td>`
        + `<td colspan="7" class="state down">unreachable</td></tr>`;
    }
    const s = node.status.storage;
    const all = (s.live_bytes || 0) + (s.dead_bytes || 0);
    const live = all ? s.live_bytes / all : 0;
    return `<tr data-node="${esc(node.id)}"><td>${swatch(color[node.id])}${esc(node.id)}</td>`
      + `<td class="num">${fmtInt(s.keys)}</td><td class="num">${fmtBytes(s.live_bytes)}</td>`
      + `<td class="num">${fmtBytes(s.dead_bytes)}</td><td class="num">${fmtBytes(s.disk_bytes)}</td>`
      + `<td class="num">${fmtInt(s.segments)}</td><td class="num">${fmtInt(s.merges)}</td>`
      + `<td><span class="bar"><span class="live" style="width:${(live * 100).toFixed(1)}%"></span>`
      + `<span class="dead" style="width:${((1 - live) * 100 * (all ? 1 : 0)).toFixed(1)}%"></span></span>`
      + `${all ? pct(s.live_bytes, all) + " live" : ""}</td></tr>`;
  });
  fill("#storage", rows, 8, "no member");
}

function renderErrors(data, color) {
  const events = [];
  data.nodes.forEach(node => {
    if (!node.reachable) {
      events.push({time: data.time, node: node.id, level: "error", source: "console",
                   message: `cannot reach ${node.id}: ${node.error}`, count: 1});
      return;
    }
    (node.status.recent ? node.status.recent.events : []).forEach(e => events.push(Object.assign({node: node.id}, e)));
  });
  events.sort((a, b) => b.time - a.time);
  const rows = events.slice(0, 30).map(e => `<tr><td>${fmtClock(e.time)}</td>`
    + `<td>${swatch(color[e.node])}${esc(e.node)}</td><td class="level-${esc(e.level)}">${esc(e.level)}</td>`
    + `<td>${esc(e.source)}</td><td class="message">${esc(e.message)}`
    + `${e.count > 1 ? ` <span class="muted">×${fmtInt(e.count)}</span>` : ""}</td></tr>`);
  fill("#errors", rows, 5, "nothing to report");
}

function render(data) {
  const color = colors(data);
  renderSummary(data);
  renderMembers(data, color);
  renderCharts(data, color);
  renderRing(data, color);
  renderTransfers(data, color);
  renderHints(data, color);
  renderAntiEntropy(data, color);
  renderStorage(data, color);
  renderErrors(data, color);
}

// -- polling -------------------------------------------------------------------------------------------------
async function poll() {
  const status = document.getElementById("poll");
  try {
    const response = await fetch("/console/data", {cache: "no-store"});
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const data = await response.json();
    render(data);
    polls += 1;
    document.body.dataset.polls = String(polls);
    status.className = "poll ok";
    status.textContent = `updated ${fmtClock(data.time)}`;
  } catch (err) {
    status.className = "poll failed";
    status.textContent = `cannot reach node ${document.body.dataset.node}: ${err.message}; retrying`;
  }
  setTimeout(poll, POLL_MS);
}

poll();
