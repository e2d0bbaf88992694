// Usage: a metric's units and events per bucket (usageSummary), each on its own chart and axis.

import { el, heading, table, field, formatTime, errorBox, busy } from "../ui.js";
import { COLORS, drawLine, formatNumber } from "./charts.js";

const METRICS = `query($p: ID!) { usageMetrics(projectId: $p) { key name aggregation unitPrice } }`;
const SUMMARY = `query($i: UsageSummaryInput!) { usageSummary(input: $i) { bucket units events } }`;
const RANGES = {
  hour: { label: "Last hour, per minute", ms: 3600e3, granularity: "MINUTE" },
  day: { label: "Last 24 hours, per hour", ms: 24 * 3600e3, granularity: "HOUR" },
  month: { label: "Last 30 days, per day", ms: 30 * 24 * 3600e3, granularity: "DAY" },
};

function floorTo(ms, granularity) {
  const d = new Date(ms);
  if (granularity === "MINUTE") d.setUTCSeconds(0, 0);
  else if (granularity === "HOUR") d.setUTCMinutes(0, 0, 0);
  else d.setUTCHours(0, 0, 0, 0);
  return d.getTime();
}

export default {
  id: "usage",
  title: "Usage",
  admin: false,
  needsProject: true,
  async render(root, ctx) {
    heading(root, "Usage");
    const { usageMetrics: metrics } = await ctx.gql(METRICS, { p: ctx.projectId });
    if (!metrics.length) {
      root.append(el("p", { class: "empty" }, "This project defines no metrics yet (defineMetric)."));
      return;
    }
    const metric = el("select", { name: "metric" }, metrics.map((m) => el("option", { value: m.key }, `${m.name} (${m.key})`)));
    const range = el("select", { name: "range" }, Object.entries(RANGES).map(([k, r]) => el("option", { value: k }, r.label)));
    range.value = "day";
    const unitsCanvas = el("canvas", { id: "usage-units-chart", width: 640, height: 200, role: "img", "aria-label": "Units per bucket" });
    const eventsCanvas = el("canvas", { id: "usage-events-chart", width: 640, height: 200, role: "img", "aria-label": "Events per bucket" });
    const totals = el("p", { id: "usage-totals", class: "muted" });
    const tableBox = el("div", { id: "usage-table" });
    const problem = el("div");
    root.append(
      el("div", { class: "panel filters" }, field("Metric", metric), field("Range", range)),
      problem,
      totals,
      el(
        "div",
        { class: "charts" },
        el("figure", { class: "panel" }, el("figcaption", {}, "Units"), unitsCanvas),
        el("figure", { class: "panel" }, el("figcaption", {}, "Events"), eventsCanvas),
      ),
      tableBox,
    );
    let points = [];
    let seq = 0; // only the latest request's answer is shown
    const draw = () => {
      const r = RANGES[range.value];
      const fmt = r.granularity === "DAY" ? (t) => new Date(t).toISOString().slice(5, 10) : (t) => new Date(t).toISOString().slice(11, 16);
      drawLine(unitsCanvas, points.map((p) => [Date.parse(p.bucket), Number(p.units)]), { color: COLORS[0], empty: "no usage", timeFormat: fmt });
      drawLine(eventsCanvas, points.map((p) => [Date.parse(p.bucket), Number(p.events)]), { color: COLORS[1], empty: "no usage", timeFormat: fmt });
    };
    const load = async () => {
      const mine = ++seq;
      problem.replaceChildren();
      const r = RANGES[range.value];
      const to = floorTo(Date.now(), r.granularity) + (r.granularity === "MINUTE" ? 60e3 : r.granularity === "HOUR" ? 3600e3 : 86400e3);
      const from = floorTo(to - r.ms, r.granularity);
      try {
        const data = await busy(ctx.gql(SUMMARY, { i: { projectId: ctx.projectId, metricKey: metric.value, from: new Date(from).toISOString(), to: new Date(to).toISOString(), granularity: r.granularity } }));
        if (mine !== seq) return;
        points = data.usageSummary;
      } catch (err) {
        if (mine !== seq) return;
        problem.replaceChildren(errorBox(err));
        points = [];
      }
      const units = points.reduce((a, p) => a + Number(p.units), 0);
      const events = points.reduce((a, p) => a + Number(p.events), 0);
      totals.dataset.units = String(units);
      totals.dataset.events = String(events);
      totals.textContent = `${formatNumber(units)} units in ${formatNumber(events)} events over the range.`;
      const nonEmpty = points.filter((p) => Number(p.events) > 0).reverse();
      tableBox.replaceChildren(
        table(
          [
            { label: "Bucket", value: (p) => formatTime(p.bucket) },
            { label: "Units", value: (p) => formatNumber(p.units), numeric: true },
            { label: "Events", value: (p) => formatNumber(p.events), numeric: true },
          ],
          nonEmpty,
          { empty: "No usage in this range.", caption: "Buckets with usage, newest first" },
        ),
      );
      draw();
    };
    metric.addEventListener("change", load);
    range.addEventListener("change", load);
    const onResize = () => draw();
    window.addEventListener("resize", onResize);
    ctx.onCleanup(() => window.removeEventListener("resize", onResize));
    await load();
  },
};
