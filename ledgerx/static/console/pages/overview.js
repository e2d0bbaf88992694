// Overview: today's live numbers for the project (liveMetrics over graphql-transport-ws).
// Each metric's usage has its own chart and axis.

import { subscribe } from "../api.js";
import { el, heading, errorBox } from "../ui.js";
import { COLORS, drawLine, drawBars, formatNumber } from "./charts.js";

const LIVE_METRICS = `subscription($p: ID!) { liveMetrics(projectId: $p) {
  projectId at sequence initial events firstEventAt
  usage { metricKey name units events }
  spendToday creditsAddedToday totalBalance walletCount wallets { walletId name balance }
  activeUsers activeApiKeys } }`;
const MAX_POINTS = 120;

const CARDS = [
  ["spend-today", "Spend today"],
  ["credits-added-today", "Credits added today"],
  ["total-balance", "Total balance"],
  ["usage-events", "Usage events, last minute"],
  ["usage-units", "Usage units, last minute"],
  ["active-users", "Active users"],
  ["active-api-keys", "Active API keys"],
  ["wallet-count", "Wallets"],
];

export default {
  id: "overview",
  title: "Overview",
  admin: false,
  needsProject: true,
  async render(root, ctx) {
    heading(root, "Overview", el("span", { class: "muted" }, ctx.project ? ctx.project.name : ""));
    const figures = {};
    const cards = el(
      "div",
      { class: "cards" },
      CARDS.map(([id, label]) => {
        figures[id] = el("p", { id, class: "figure", dataset: { value: "" } }, "–");
        return el("section", { class: "card", "aria-label": label }, el("h2", {}, label), figures[id]);
      }),
    );
    const usageCharts = el("div", { id: "usage-charts", class: "charts" });
    const spendCanvas = el("canvas", { id: "spend-chart", width: 640, height: 200, role: "img", "aria-label": "Spend today over time" });
    const balanceCanvas = el("canvas", { id: "balance-chart", width: 640, height: 200, role: "img", "aria-label": "Wallet balances" });
    const metricsBody = el("tbody");
    const lastUpdate = el("span", { id: "last-update" }, "–");
    const lag = el("span", { id: "lag" }, "–");
    const messageCount = el("span", { id: "message-count", dataset: { value: "0" } }, "0");
    const eventCount = el("span", { id: "event-count", dataset: { value: "0" } }, "0");
    const problem = el("div", { id: "live-error" });
    root.append(
      problem,
      cards,
      el("h2", {}, "Usage over the last minute"),
      el("p", { class: "muted" }, "One chart per metric, each on its own scale."),
      usageCharts,
      el(
        "div",
        { class: "charts" },
        el("figure", { class: "panel" }, el("figcaption", {}, "Spend today"), spendCanvas),
        el("figure", { class: "panel" }, el("figcaption", {}, "Wallet balances"), balanceCanvas),
      ),
      el(
        "div",
        { class: "panel table-wrap" },
        el(
          "table",
          { id: "metrics-table" },
          el("caption", {}, "Metrics, last minute"),
          el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Metric"), el("th", { scope: "col", class: "num" }, "Events / min"), el("th", { scope: "col", class: "num" }, "Units / min"))),
          metricsBody,
        ),
      ),
      el(
        "p",
        { class: "muted footer-line" },
        el("span", {}, "Messages: ", messageCount),
        el("span", {}, "Events folded: ", eventCount),
        el("span", {}, "Last update: ", lastUpdate),
        el("span", {}, "Lag: ", lag),
      ),
    );

    const usage = new Map(); // metricKey -> { canvas, points, color }
    const spend = [];
    let messages = 0;
    let events = 0;
    let lastWallets = [];

    const setFigure = (node, value) => {
      node.dataset.value = String(value);
      node.textContent = formatNumber(value);
    };
    const redraw = () => {
      for (const s of usage.values()) drawLine(s.canvas, s.points, { color: s.color });
      drawLine(spendCanvas, spend, { color: COLORS[1] });
      drawBars(balanceCanvas, lastWallets, { empty: "no wallets yet" });
    };

    const onData = (data, err) => {
      const status = document.getElementById("status");
      if (err) {
        problem.replaceChildren(errorBox(err));
        status.textContent = `stream ended: ${err.code}`;
        status.dataset.state = "error";
        return;
      }
      problem.replaceChildren();
      status.textContent = "live";
      status.dataset.state = "live";
      const m = data.liveMetrics;
      const t = Date.parse(m.at);
      messages += 1;
      events += m.events;
      setFigure(figures["spend-today"], m.spendToday);
      setFigure(figures["credits-added-today"], m.creditsAddedToday);
      setFigure(figures["total-balance"], m.totalBalance);
      setFigure(figures["wallet-count"], m.walletCount);
      setFigure(figures["active-users"], m.activeUsers);
      setFigure(figures["active-api-keys"], m.activeApiKeys);
      setFigure(figures["usage-events"], m.usage.reduce((a, u) => a + u.events, 0));
      setFigure(figures["usage-units"], m.usage.reduce((a, u) => a + Number(u.units), 0));
      setFigure(messageCount, messages);
      setFigure(eventCount, events);
      lastUpdate.textContent = new Date(t).toLocaleTimeString();
      lag.textContent = m.firstEventAt ? `${Math.max(0, Date.now() - Date.parse(m.firstEventAt))} ms` : "–";
      for (const u of m.usage) {
        let s = usage.get(u.metricKey);
        if (!s) {
          const color = COLORS[usage.size % COLORS.length];
          const canvas = el("canvas", { width: 640, height: 160, role: "img", "aria-label": `${u.name}: units per minute`, dataset: { metric: u.metricKey } });
          s = { canvas, points: [], color };
          usage.set(u.metricKey, s);
          usageCharts.append(el("figure", { class: "panel", dataset: { metric: u.metricKey } }, el("figcaption", {}, `${u.name} (${u.metricKey}), units`), canvas));
        }
        s.points.push([t, Number(u.units)]);
        if (s.points.length > MAX_POINTS) s.points.shift();
        let row = metricsBody.querySelector(`tr[data-metric="${CSS.escape(u.metricKey)}"]`);
        if (!row) {
          row = el("tr", { dataset: { metric: u.metricKey } }, el("td"), el("td", { class: "num" }), el("td", { class: "num" }));
          metricsBody.append(row);
        }
        row.cells[0].textContent = u.name;
        row.cells[1].textContent = formatNumber(u.events);
        row.cells[1].dataset.value = String(u.events);
        row.cells[2].textContent = formatNumber(u.units);
        row.cells[2].dataset.value = u.units;
      }
      spend.push([t, Number(m.spendToday)]);
      if (spend.length > MAX_POINTS) spend.shift();
      lastWallets = m.wallets.map((w) => ({ label: w.name, value: Number(w.balance) }));
      redraw();
    };

    const status = document.getElementById("status");
    status.textContent = "connecting…";
    status.dataset.state = "connecting";
    const stop = subscribe(LIVE_METRICS, { p: ctx.projectId }, onData);
    const onResize = () => redraw();
    window.addEventListener("resize", onResize);
    ctx.onCleanup(() => {
      stop();
      window.removeEventListener("resize", onResize);
      status.textContent = "signed in";
      status.dataset.state = "signed-in";
    });
  },
};
