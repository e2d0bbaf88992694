// Charts on <canvas>, drawn by hand. Every chart has one series' axis: series of different
// units (tokens and API calls, units and events) never share a y-axis.

export const COLORS = ["#1f5fd6", "#b35900", "#17733f", "#8a35bd", "#b42626", "#08788a"];
const INK = "#1d2430";
const MUTED = "#545d6e";
const GRID = "#dde1e8";

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

export function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export function formatNumber(v) {
  const n = Number(v);
  return Number.isFinite(n) ? n.toLocaleString("en-US", { maximumFractionDigits: 4 }) : String(v);
}

// One line on its own axis: points [[timeMs, value], ...]. The canvas records what it drew
// (data-points, data-last, data-ymax) for tests and for a text alternative.
export function drawLine(canvas, points, { color = COLORS[0], empty = "waiting for data…", timeFormat = null } = {}) {
  const { ctx, w, h } = prepare(canvas);
  const pad = { l: 52, r: 12, t: 10, b: 22 };
  canvas.dataset.points = String(points.length);
  canvas.dataset.last = points.length ? String(points[points.length - 1][1]) : "";
  if (!points.length) {
    canvas.dataset.ymax = "";
    ctx.fillStyle = MUTED;
    ctx.fillText(empty, pad.l, h / 2);
    return;
  }
  const t0 = Math.min(...points.map((p) => p[0]));
  const t1 = Math.max(t0 + 1000, ...points.map((p) => p[0]));
  const vmax = niceMax(Math.max(...points.map((p) => p[1])));
  const vmin = Math.min(0, ...points.map((p) => p[1]));
  canvas.dataset.ymax = String(vmax);
  const x = (t) => pad.l + ((t - t0) / (t1 - t0)) * (w - pad.l - pad.r);
  const y = (v) => h - pad.b - ((v - vmin) / (vmax - vmin || 1)) * (h - pad.t - pad.b);
  ctx.strokeStyle = GRID;
  ctx.fillStyle = MUTED;
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const v = vmin + ((vmax - vmin) * i) / 4;
    ctx.beginPath();
    ctx.moveTo(pad.l, y(v));
    ctx.lineTo(w - pad.r, y(v));
    ctx.stroke();
    ctx.fillText(formatNumber(v), 4, y(v) + 4);
  }
  const fmt = timeFormat || ((t) => new Date(t).toLocaleTimeString());
  ctx.fillText(fmt(t0), pad.l, h - 6);
  const end = fmt(t1);
  ctx.fillText(end, w - pad.r - ctx.measureText(end).width, h - 6);
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.beginPath();
  points.forEach(([t, v], i) => (i ? ctx.lineTo(x(t), y(v)) : ctx.moveTo(x(t), y(v))));
  ctx.stroke();
  const [lt, lv] = points[points.length - 1];
  ctx.fillStyle = color;
  ctx.beginPath();
  ctx.arc(x(lt), y(lv), 3, 0, 2 * Math.PI);
  ctx.fill();
}

// bars: [{ label, value }]
export function drawBars(canvas, bars, { empty = "nothing yet" } = {}) {
  const { ctx, w, h } = prepare(canvas);
  const pad = { l: 52, r: 12, t: 10, b: 34 };
  canvas.dataset.bars = String(bars.length);
  if (!bars.length) {
    ctx.fillStyle = MUTED;
    ctx.fillText(empty, pad.l, h / 2);
    return;
  }
  const vmax = niceMax(Math.max(...bars.map((b) => b.value)));
  const vmin = Math.min(0, ...bars.map((b) => b.value));
  const y = (v) => h - pad.b - ((v - vmin) / (vmax - vmin || 1)) * (h - pad.t - pad.b);
  const slot = (w - pad.l - pad.r) / bars.length;
  ctx.fillStyle = MUTED;
  ctx.fillText(formatNumber(vmax), 4, y(vmax) + 4);
  ctx.fillText(formatNumber(vmin), 4, y(vmin) + 4);
  bars.forEach((b, i) => {
    const bx = pad.l + i * slot + slot * 0.15;
    const bw = Math.min(slot * 0.7, 90);
    ctx.fillStyle = b.value < 0 ? COLORS[4] : COLORS[0];
    ctx.fillRect(bx, Math.min(y(b.value), y(0)), bw, Math.abs(y(b.value) - y(0)));
    ctx.fillStyle = INK;
    const label = b.label.length > 12 ? b.label.slice(0, 11) + "…" : b.label;
    ctx.fillText(label, bx, h - 18);
    ctx.fillText(formatNumber(b.value), bx, h - 5);
  });
}
