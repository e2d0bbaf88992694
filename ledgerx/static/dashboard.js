// LedgerX live dashboard: sign in, pick a project, watch liveMetrics (and liveRevenue for platform
// admins) over graphql-transport-ws. No dependencies, no build step.
"use strict";

// ---------------------------------------------------------------------------------------------
// A graphql-transport-ws client (https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md)
// ---------------------------------------------------------------------------------------------
class GraphQLWs {
  constructor(url, connectionParams, onClose) {
    this.url = url;
    this.params = connectionParams;
    this.onClose = onClose;
    this.sinks = new Map();
    this.nextId = 1;
    this.ws = null;
  }

  connect() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url, "graphql-transport-ws");
      this.ws = ws;
      let acked = false;
      const timer = setTimeout(() => { if (!acked) ws.close(4408, "connection_ack timeout"); }, 10000);
      ws.onopen = () => this.send({ type: "connection_init", payload: this.params });
      ws.onmessage = (event) => {
        let msg;
        try { msg = JSON.parse(event.data); } catch (e) { ws.close(4400, "invalid message"); return; }
        switch (msg.type) {
          case "connection_ack": acked = true; clearTimeout(timer); resolve(this); break;
          case "ping": this.send({ type: "pong" }); break;
          case "pong": break;
          case "next": { const s = this.sinks.get(msg.id); if (s) s.next(msg.payload); break; }
          case "error": { const s = this.sinks.get(msg.id); this.sinks.delete(msg.id); if (s) s.error(msg.payload); break; }
          case "complete": { const s = this.sinks.get(msg.id); this.sinks.delete(msg.id); if (s) s.complete(); break; }
          default: ws.close(4400, "unexpected message type");
        }
      };
      ws.onclose = (event) => {
        clearTimeout(timer);
        if (!acked) reject(new Error(`connection refused (${event.code} ${event.reason || ""})`.trim()));
        const sinks = [...this.sinks.values()];
        this.sinks.clear();
        for (const s of sinks) s.error([{ message: "connection closed", extensions: { code: "CLOSED", closeCode: event.code } }]);
        if (acked && this.onClose) this.onClose(event);
      };
    });
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }

  // sink: { next(payload), error(errors), complete() }; returns a function that unsubscribes.
  subscribe(query, variables, sink) {
    const id = String(this.nextId++);
    this.sinks.set(id, sink);
    this.send({ id, type: "subscribe", payload: { query, variables } });
    return () => {
      if (this.sinks.delete(id)) this.send({ id, type: "complete" });
    };
  }

  close() {
    this.onClose = null;
    this.sinks.clear();
    if (this.ws) this.ws.close(1000, "bye");
  }
}

// ---------------------------------------------------------------------------------------------
// GraphQL over HTTP
// ---------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(errors) {
    super(errors.map((e) => e.message).join("; "));
    this.code = (errors[0] && errors[0].extensions && errors[0].extensions.code) || "ERROR";
  }
}

async function gql(query, variables, token) {
  const headers = { "content-type": "application/json", accept: "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch("/graphql", { method: "POST", headers, body: JSON.stringify({ query, variables }), credentials: "same-origin" });
  const body = await res.json();
  if (body.errors && body.errors.length) throw new ApiError(body.errors);
  return body.data;
}

const LOG_IN = `mutation($i: LogInInput!) { logIn(input: $i) { accessToken refreshToken expiresIn user { id email isPlatformAdmin } } }`;
const REFRESH = `mutation($t: String) { refreshSession(refreshToken: $t) { accessToken refreshToken expiresIn user { id email isPlatformAdmin } } }`;
const LOG_OUT = `mutation($t: String) { logOut(refreshToken: $t) }`;
const PROJECTS = `query { projects(first: 100) { edges { node { id name } } } }`;
const LIVE_METRICS = `subscription($p: ID!) { liveMetrics(projectId: $p) {
  projectId at sequence initial events firstEventAt
  usage { metricKey name units events }
  spendToday creditsAddedToday totalBalance walletCount wallets { walletId name balance }
  activeUsers activeApiKeys } }`;
const LIVE_REVENUE = `subscription($c: String!) { liveRevenue(currency: $c) {
  currency at sequence mrr arr customers activeSubscriptions revenueToday paymentsToday
  recentPayments { id projectId amount currency status createdAt } } }`;

// ---------------------------------------------------------------------------------------------
// Charts on <canvas>, drawn by hand
// ---------------------------------------------------------------------------------------------
const COLORS = ["#2f6fed", "#e0730b", "#1f8a4c", "#9b3fd1", "#c62f2f", "#0b93a6"];
const MAX_POINTS = 120;

function prepare(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width;
  const h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  return { ctx, w, h };
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// series: [{ label, color, points: [[timeMs, value], ...] }]
function drawLines(canvas, series) {
  const { ctx, w, h } = prepare(canvas);
  const pad = { l: 48, r: 12, t: 10, b: 22 };
  const all = series.flatMap((s) => s.points);
  if (!all.length) {
    ctx.fillStyle = "#6b7485";
    ctx.fillText("waiting for data…", pad.l, h / 2);
    return;
  }
  const t0 = Math.min(...all.map((p) => p[0]));
  const t1 = Math.max(t0 + 1000, ...all.map((p) => p[0]));
  const vmax = niceMax(Math.max(...all.map((p) => p[1])));
  const vmin = Math.min(0, ...all.map((p) => p[1]));
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (w - pad.l - pad.r);
  const y = (v) => h - pad.b - ((v - vmin) / (vmax - vmin || 1)) * (h - pad.t - pad.b);
  ctx.strokeStyle = "#dde1e8";
  ctx.fillStyle = "#6b7485";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = vmin + ((vmax - vmin) * i) / 4;
    ctx.beginPath();
    ctx.moveTo(pad.l, y(v));
    ctx.lineTo(w - pad.r, y(v));
    ctx.stroke();
    ctx.fillText(formatNumber(v), 4, y(v) + 4);
  }
  ctx.fillText(new Date(t0).toLocaleTimeString(), pad.l, h - 6);
  const end = new Date(t1).toLocaleTimeString();
  ctx.fillText(end, w - pad.r - ctx.measureText(end).width, h - 6);
  for (const s of series) {
    if (!s.points.length) continue;
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    s.points.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
    ctx.stroke();
    const [lt, lv] = s.points[s.points.length - 1];
    ctx.fillStyle = s.color;
    ctx.beginPath();
    ctx.arc(x(lt), y(lv), 3, 0, 2 * Math.PI);
    ctx.fill();
  }
  canvas.dataset.points = String(Math.max(...series.map((s) => s.points.length)));
  canvas.dataset.last = series.map((s) => (s.points.length ? String(s.points[s.points.length - 1][1]) : "")).join(",");
}

// bars: [{ label, value }]
function drawBars(canvas, bars) {
  const { ctx, w, h } = prepare(canvas);
  const pad = { l: 48, r: 12, t: 10, b: 34 };
  canvas.dataset.bars = String(bars.length);
  if (!bars.length) {
    ctx.fillStyle = "#6b7485";
    ctx.fillText("no wallets yet", pad.l, h / 2);
    return;
  }
  const vmax = niceMax(Math.max(...bars.map((b) => b.value)));
  const vmin = Math.min(0, ...bars.map((b) => b.value));
  const y = (v) => h - pad.b - ((v - vmin) / (vmax - vmin || 1)) * (h - pad.t - pad.b);
  const slot = (w - pad.l - pad.r) / bars.length;
  ctx.fillStyle = "#6b7485";
  ctx.fillText(formatNumber(vmax), 4, y(vmax) + 4);
  ctx.fillText(formatNumber(vmin), 4, y(vmin) + 4);
  bars.forEach((b, i) => {
    const bx = pad.l + i * slot + slot * 0.15;
    const bw = Math.min(slot * 0.7, 90);
    ctx.fillStyle = b.value < 0 ? "#c62f2f" : COLORS[0];
    ctx.fillRect(bx, Math.min(y(b.value), y(0)), bw, Math.abs(y(b.value) - y(0)));
    ctx.fillStyle = "#1d2430";
    const label = b.label.length > 12 ? b.label.slice(0, 11) + "…" : b.label;
    ctx.fillText(label, bx, h - 18);
    ctx.fillText(formatNumber(b.value), bx, h - 5);
  });
}

// ---------------------------------------------------------------------------------------------
// The page
// ---------------------------------------------------------------------------------------------
const $ = (id) => document.getElementById(id);
const state = { token: null, refresh: null, user: null, client: null, stopMetrics: null, stopRevenue: null, projectId: null, usage: new Map(), spend: [], mrr: [], messages: 0, events: 0, retries: 0 };

function formatNumber(v) {
  const n = Number(v);
  return Number.isFinite(n) ? n.toLocaleString("en-US", { maximumFractionDigits: 4 }) : String(v);
}

function setFigure(id, value) {
  const el = $(id);
  el.dataset.value = String(value);
  el.textContent = formatNumber(value);
}

function setStatus(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind;
}

function errorCode(errors) {
  return (errors && errors[0] && errors[0].extensions && errors[0].extensions.code) || "ERROR";
}

async function signIn(event) {
  event.preventDefault();
  $("signin-error").textContent = "";
  $("signin-button").disabled = true;
  try {
    const data = await gql(LOG_IN, { i: { email: $("email").value, password: $("password").value } });
    await startSession(data.logIn);
  } catch (e) {
    $("signin-error").textContent = e.message;
    setStatus("signed out", "signed-out");
  } finally {
    $("signin-button").disabled = false;
  }
}

async function startSession(auth) {
  state.token = auth.accessToken;
  state.refresh = auth.refreshToken;
  state.user = auth.user;
  $("user-email").textContent = auth.user.email;
  $("signin").hidden = true;
  $("app").hidden = false;
  const data = await gql(PROJECTS, {}, state.token);
  const picker = $("project-picker");
  const previous = state.projectId;
  picker.replaceChildren();
  for (const { node } of data.projects.edges) {
    const opt = document.createElement("option");
    opt.value = node.id;
    opt.textContent = node.name;
    picker.append(opt);
  }
  if (previous && [...picker.options].some((o) => o.value === previous)) picker.value = previous;
  await connect();
}

async function connect() {
  if (state.client) state.client.close();
  setStatus("connecting…", "connecting");
  const client = new GraphQLWs(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/graphql`, { authorization: `Bearer ${state.token}` }, () => reconnectSoon());
  state.client = client;
  await client.connect();
  state.retries = 0;
  watchProject($("project-picker").value);
  if (state.user && state.user.isPlatformAdmin) watchRevenue();
}

function reconnectSoon() {
  setStatus("reconnecting…", "error");
  const delay = Math.min(30000, 500 * 2 ** state.retries++);
  setTimeout(() => connect().catch(() => reconnectSoon()), delay);
}

async function renew() {
  // The access token expired (the server ended the stream): rotate the session, reconnect.
  try {
    const data = await gql(REFRESH, { t: state.refresh });
    await startSession(data.refreshSession);
  } catch (e) {
    signOut();
    $("signin-error").textContent = "Your session ended; sign in again.";
  }
}

function resetProject(projectId) {
  state.projectId = projectId;
  state.usage = new Map();
  state.spend = [];
  state.messages = 0;
  state.events = 0;
  $("metrics-table").tBodies[0].replaceChildren();
  $("usage-legend").replaceChildren();
}

function watchProject(projectId) {
  if (state.stopMetrics) state.stopMetrics();
  state.stopMetrics = null;
  if (!projectId) { setStatus("no projects", "error"); return; }
  resetProject(projectId);
  state.stopMetrics = state.client.subscribe(LIVE_METRICS, { p: projectId }, {
    next: (payload) => {
      if (payload.errors && payload.errors.length) return streamEnded(payload.errors);
      setStatus("live", "live");
      renderMetrics(payload.data.liveMetrics);
    },
    error: (errors) => streamEnded(errors),
    complete: () => {},
  });
}

function streamEnded(errors) {
  const code = errorCode(errors);
  if (code === "CLOSED") return; // the socket went away: the reconnect loop takes over
  if (code === "UNAUTHENTICATED") { renew(); return; }
  setStatus(`stream ended: ${code}`, "error");
}

function renderMetrics(m) {
  const t = Date.parse(m.at);
  state.messages += 1;
  state.events += m.events;
  setFigure("spend-today", m.spendToday);
  setFigure("credits-added-today", m.creditsAddedToday);
  setFigure("total-balance", m.totalBalance);
  setFigure("wallet-count", m.walletCount);
  setFigure("active-users", m.activeUsers);
  setFigure("active-api-keys", m.activeApiKeys);
  setFigure("usage-events", m.usage.reduce((a, u) => a + u.events, 0));
  setFigure("usage-units", m.usage.reduce((a, u) => a + Number(u.units), 0));
  setFigure("message-count", state.messages);
  setFigure("event-count", state.events);
  $("last-update").textContent = new Date(t).toLocaleTimeString();
  $("lag").textContent = m.firstEventAt ? `${Math.max(0, Date.now() - Date.parse(m.firstEventAt))} ms` : "–";

  const body = $("metrics-table").tBodies[0];
  m.usage.forEach((u) => {
    let series = state.usage.get(u.metricKey);
    if (!series) {
      series = { label: u.name, color: COLORS[state.usage.size % COLORS.length], points: [] };
      state.usage.set(u.metricKey, series);
      const li = document.createElement("li");
      const sw = document.createElement("span");
      sw.className = `swatch c${(state.usage.size - 1) % COLORS.length}`;
      li.append(sw, document.createTextNode(u.name));
      $("usage-legend").append(li);
    }
    series.points.push([t, Number(u.units)]);
    if (series.points.length > MAX_POINTS) series.points.shift();
    let row = body.querySelector(`tr[data-metric="${CSS.escape(u.metricKey)}"]`);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.metric = u.metricKey;
      for (let k = 0; k < 3; k++) row.append(document.createElement("td"));
      body.append(row);
    }
    row.cells[0].textContent = u.name;
    row.cells[1].textContent = formatNumber(u.events);
    row.cells[1].dataset.value = String(u.events);
    row.cells[2].textContent = formatNumber(u.units);
    row.cells[2].dataset.value = u.units;
  });
  state.spend.push([t, Number(m.spendToday)]);
  if (state.spend.length > MAX_POINTS) state.spend.shift();
  drawLines($("usage-chart"), [...state.usage.values()]);
  drawLines($("spend-chart"), [{ label: "spend", color: COLORS[1], points: state.spend }]);
  drawBars($("balance-chart"), m.wallets.map((w) => ({ label: w.name, value: Number(w.balance) })));
}

function watchRevenue() {
  if (state.stopRevenue) state.stopRevenue();
  state.mrr = [];
  $("revenue").hidden = false;
  state.stopRevenue = state.client.subscribe(LIVE_REVENUE, { c: "USD" }, {
    next: (payload) => {
      if (payload.errors && payload.errors.length) { $("revenue").hidden = true; return; }
      renderRevenue(payload.data.liveRevenue);
    },
    error: () => { $("revenue").hidden = true; },
    complete: () => {},
  });
}

function renderRevenue(r) {
  setFigure("mrr", r.mrr);
  setFigure("arr", r.arr);
  setFigure("revenue-today", r.revenueToday);
  setFigure("payments-today", r.paymentsToday);
  setFigure("customers", r.customers);
  state.mrr.push([Date.parse(r.at), Number(r.mrr)]);
  if (state.mrr.length > MAX_POINTS) state.mrr.shift();
  drawLines($("mrr-chart"), [{ label: "MRR", color: COLORS[2], points: state.mrr }]);
  const list = $("payments-list");
  const known = new Set([...list.children].map((li) => li.dataset.id));
  list.replaceChildren(...r.recentPayments.map((p) => {
    const li = document.createElement("li");
    li.dataset.id = p.id;
    if (known.size && !known.has(p.id)) li.className = "fresh";
    li.textContent = `${new Date(p.createdAt).toLocaleTimeString()} · ${formatNumber(p.amount)} ${p.currency} · ${p.status} · ${p.projectId}`;
    return li;
  }));
}

function signOut() {
  if (state.refresh) gql(LOG_OUT, { t: state.refresh }).catch(() => {});
  if (state.client) state.client.close();
  Object.assign(state, { token: null, refresh: null, user: null, client: null, stopMetrics: null, stopRevenue: null });
  $("app").hidden = true;
  $("revenue").hidden = true;
  $("signin").hidden = false;
  setStatus("signed out", "signed-out");
}

document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", signOut);
  $("project-picker").addEventListener("change", (e) => { if (state.client) watchProject(e.target.value); });
  window.addEventListener("resize", () => {
    drawLines($("usage-chart"), [...state.usage.values()]);
    drawLines($("spend-chart"), [{ label: "spend", color: COLORS[1], points: state.spend }]);
  });
});
