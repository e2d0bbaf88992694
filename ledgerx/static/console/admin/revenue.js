// Platform admins: revenue over a range (revenueAnalytics) and live figures (liveRevenue).

import { subscribe } from "../api.js";
import { busy, el, errorBox, field, formatAmount, formatTime, table } from "../ui.js";
import { card, formatMoney, frame, input, percent, select } from "./common.js";

const ANALYTICS = `query($from: DateTime!, $to: DateTime!, $g: AnalyticsGranularity!, $c: String!) {
  revenueAnalytics(from: $from, to: $to, granularity: $g, currency: $c) {
    from to granularity currency mrr arr mrrAtStart newMrr reactivationMrr expansionMrr contractionMrr
    churnedMrr netNewMrr customers customersAtStart newCustomers churnedCustomers customerChurnRate
    grossRevenue refunds netRevenue payments
    mrrSeries { bucket mrr newMrr churnedMrr netNewMrr customers newCustomers churnedCustomers customerChurnRate }
    revenueSeries { bucket gross refunds net payments }
    activeSubscriptionsByPlan { planId name interval subscriptions mrr }
  }
}`;

const LIVE = `subscription($c: String!) {
  liveRevenue(currency: $c) {
    currency at mrr arr customers activeSubscriptions revenueToday refundsToday paymentsToday sequence
    recentPayments { id projectId kind status amount amountRefunded currency createdAt }
  }
}`;

function day(d) {
  return d.toISOString().slice(0, 10);
}

// Default range: the first day of the month eleven months ago through today (to is exclusive:
// the start of tomorrow, UTC).
function defaultRange() {
  const now = new Date();
  const from = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - 11, 1));
  const to = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1));
  return { from: day(from), to: day(to) };
}

// A bar chart of a series (SVG drawn with attributes and classes only: the CSP allows no styles).
function barChart(points, value, label) {
  const NS = "http://www.w3.org/2000/svg";
  const width = 600;
  const height = 160;
  const values = points.map((p) => Number(value(p)));
  const max = Math.max(1, ...values.map((v) => Math.abs(v)));
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "adm-chart");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  svg.dataset.points = String(points.length);
  const bw = points.length ? width / points.length : width;
  points.forEach((p, i) => {
    const h = Math.max(values[i] ? 2 : 0, Math.round((Math.abs(values[i]) / max) * (height - 10)));
    const r = document.createElementNS(NS, "rect");
    r.setAttribute("x", String(i * bw + bw * 0.15));
    r.setAttribute("y", String(height - h));
    r.setAttribute("width", String(Math.max(1, bw * 0.7)));
    r.setAttribute("height", String(h));
    r.setAttribute("class", values[i] < 0 ? "adm-bar adm-bar-neg" : "adm-bar");
    const t = document.createElementNS(NS, "title");
    t.textContent = `${formatTime(p.bucket)}: ${value(p)}`;
    r.append(t);
    svg.append(r);
  });
  return svg;
}

function renderAnalytics(out, a) {
  const cur = a.currency;
  const m = (v) => formatMoney(v, cur);
  out.replaceChildren(
    el("p", { class: "muted", id: "revenue-range" }, `${formatTime(a.from)} to ${formatTime(a.to)} (${a.granularity.toLowerCase()}, ${cur})`),
    el(
      "div",
      { class: "adm-cards", id: "revenue-figures" },
      card("MRR", m(a.mrr), a.mrr, "rev-mrr"),
      card("ARR", m(a.arr), a.arr, "rev-arr"),
      card("Net new MRR", m(a.netNewMrr), a.netNewMrr, "rev-net-new-mrr"),
      card("Paying customers", formatAmount(String(a.customers)), String(a.customers), "rev-customers"),
      card("Customer churn", percent(a.customerChurnRate), a.customerChurnRate, "rev-churn-rate"),
      card("Gross revenue", m(a.grossRevenue), a.grossRevenue, "rev-gross"),
      card("Refunds", m(a.refunds), a.refunds, "rev-refunds"),
      card("Net revenue", m(a.netRevenue), a.netRevenue, "rev-net"),
      card("Payments", formatAmount(String(a.payments)), String(a.payments), "rev-payments"),
    ),
    el("h2", {}, "MRR movements"),
    table(
      [
        { label: "Movement", value: (r) => r[0] },
        { label: "MRR", value: (r) => el("span", { dataset: { value: r[1] } }, m(r[1])), numeric: true },
      ],
      [
        ["MRR at start", a.mrrAtStart],
        ["New", a.newMrr],
        ["Reactivation", a.reactivationMrr],
        ["Expansion", a.expansionMrr],
        ["Contraction", a.contractionMrr],
        ["Churned", a.churnedMrr],
        ["Net new", a.netNewMrr],
        ["MRR at end", a.mrr],
      ],
      { caption: "MRR movements over the range" },
    ),
    el("h2", {}, "Customers"),
    table(
      [
        { label: "At start", value: (r) => formatAmount(String(r.customersAtStart)), numeric: true },
        { label: "New", value: (r) => formatAmount(String(r.newCustomers)), numeric: true },
        { label: "Churned", value: (r) => formatAmount(String(r.churnedCustomers)), numeric: true },
        { label: "At end", value: (r) => formatAmount(String(r.customers)), numeric: true },
        { label: "Churn rate", value: (r) => percent(r.customerChurnRate), numeric: true },
      ],
      [a],
      { caption: "Customer churn over the range" },
    ),
    el("h2", {}, "MRR by bucket"),
    a.mrrSeries.length ? barChart(a.mrrSeries, (p) => p.mrr, "MRR by bucket") : null,
    table(
      [
        { label: "Bucket", value: (p) => formatTime(p.bucket) },
        { label: "MRR", value: (p) => m(p.mrr), numeric: true },
        { label: "New", value: (p) => m(p.newMrr), numeric: true },
        { label: "Churned", value: (p) => m(p.churnedMrr), numeric: true },
        { label: "Net new", value: (p) => m(p.netNewMrr), numeric: true },
        { label: "Customers", value: (p) => formatAmount(String(p.customers)), numeric: true },
        { label: "Churn", value: (p) => percent(p.customerChurnRate), numeric: true },
      ],
      a.mrrSeries,
      { caption: "MRR series", empty: "No buckets in this range." },
    ),
    el("h2", {}, "Revenue by bucket"),
    table(
      [
        { label: "Bucket", value: (p) => formatTime(p.bucket) },
        { label: "Gross", value: (p) => m(p.gross), numeric: true },
        { label: "Refunds", value: (p) => m(p.refunds), numeric: true },
        { label: "Net", value: (p) => m(p.net), numeric: true },
        { label: "Payments", value: (p) => formatAmount(String(p.payments)), numeric: true },
      ],
      a.revenueSeries,
      { caption: "Revenue series", empty: "No buckets in this range." },
    ),
    el("h2", {}, "Paying subscriptions by plan"),
    table(
      [
        { label: "Plan", value: (p) => p.name },
        { label: "Interval", value: (p) => p.interval },
        { label: "Subscriptions", value: (p) => formatAmount(String(p.subscriptions)), numeric: true },
        { label: "MRR", value: (p) => m(p.mrr), numeric: true },
      ],
      a.activeSubscriptionsByPlan,
      { caption: "Subscriptions by plan at the end of the range", empty: "No paying subscriptions." },
    ),
  );
}

function renderLive(out, status, live) {
  const m = (v) => formatMoney(v, live.currency);
  status.textContent = `Live · ${formatTime(live.at)}`;
  status.dataset.state = "live";
  status.dataset.sequence = String(live.sequence);
  out.replaceChildren(
    el(
      "div",
      { class: "adm-cards" },
      card("MRR now", m(live.mrr), live.mrr, "live-mrr"),
      card("ARR now", m(live.arr), live.arr, "live-arr"),
      card("Customers", formatAmount(String(live.customers)), String(live.customers), "live-customers"),
      card("Active subscriptions", formatAmount(String(live.activeSubscriptions)), String(live.activeSubscriptions), "live-subscriptions"),
      card("Revenue today", m(live.revenueToday), live.revenueToday, "live-revenue-today"),
      card("Refunds today", m(live.refundsToday), live.refundsToday, "live-refunds-today"),
      card("Payments today", formatAmount(String(live.paymentsToday)), String(live.paymentsToday), "live-payments-today"),
    ),
    table(
      [
        { label: "When", value: (p) => formatTime(p.createdAt) },
        { label: "Project", value: (p) => el("code", {}, p.projectId) },
        { label: "Kind", value: (p) => p.kind },
        { label: "Status", value: (p) => p.status },
        { label: "Amount", value: (p) => formatMoney(p.amount, p.currency), numeric: true },
        { label: "Refunded", value: (p) => formatMoney(p.amountRefunded, p.currency), numeric: true },
      ],
      live.recentPayments,
      { caption: "Newest payments", empty: "No payments yet." },
    ),
  );
}

export default {
  id: "revenue",
  title: "Revenue",
  admin: true,
  needsProject: false,
  async render(root, ctx) {
    const page = frame(root, ctx, "Revenue");
    if (!page) return undefined;
    const range = defaultRange();
    const from = input("from", { type: "date", value: range.from, required: true });
    const to = input("to", { type: "date", value: range.to, required: true });
    const granularity = select("granularity", [["DAY", "Day"], ["WEEK", "Week"], ["MONTH", "Month"]], "MONTH");
    const currency = input("currency", { value: "USD", maxlength: "3", size: "4", required: true, autocapitalize: "characters" });
    const out = el("div", { id: "revenue-analytics", "aria-live": "polite" });
    const liveStatus = el("p", { class: "adm-live", id: "live-status", dataset: { state: "connecting" }, "aria-live": "polite" }, "Connecting…");
    const liveOut = el("div", { id: "live-revenue" });

    let stop = null;
    let liveCurrency = null;
    const startLive = (cur) => {
      if (stop && liveCurrency === cur) return;
      if (stop) stop();
      liveCurrency = cur;
      liveStatus.textContent = "Connecting…";
      liveStatus.dataset.state = "connecting";
      stop = subscribe(LIVE, { c: cur }, (data, err) => {
        if (!page.isConnected) { if (stop) stop(); stop = null; return; }
        if (err) {
          liveStatus.dataset.state = "error";
          liveStatus.replaceChildren(errorBox(err));
          return;
        }
        renderLive(liveOut, liveStatus, data.liveRevenue);
      });
    };
    // The shell replaces the main region on navigation; end the stream with the page.
    const onHash = () => {
      if (!page.isConnected || !location.hash.startsWith("#/revenue")) {
        if (stop) stop();
        stop = null;
        window.removeEventListener("hashchange", onHash);
      }
    };
    window.addEventListener("hashchange", onHash);

    const load = async () => {
      const cur = currency.value.trim().toUpperCase() || "USD";
      currency.value = cur;
      try {
        const data = await busy(
          ctx.gql(ANALYTICS, { from: `${from.value}T00:00:00Z`, to: `${to.value}T00:00:00Z`, g: granularity.value, c: cur }),
        );
        renderAnalytics(out, data.revenueAnalytics);
      } catch (err) {
        out.replaceChildren(errorBox(err));
        return;
      }
      startLive(cur); // the live figures follow the currency the range is shown in
    };

    const form = el(
      "form",
      { class: "adm-toolbar", id: "revenue-form", "aria-label": "Revenue range" },
      field("From (UTC)", from),
      field("To (UTC, exclusive)", to),
      field("Granularity", granularity),
      field("Currency", currency),
      el("div", { class: "actions" }, el("button", { type: "submit" }, "Show")),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      load();
    });

    page.append(
      el("section", { class: "adm-section", "aria-labelledby": "live-heading" }, el("h2", { id: "live-heading" }, "Live"), liveStatus, liveOut),
      el("section", { class: "adm-section", "aria-labelledby": "range-heading" }, el("h2", { id: "range-heading" }, "Over a range"), form, out),
    );
    await load();
    return () => { if (stop) stop(); stop = null; window.removeEventListener("hashchange", onHash); };
  },
};
