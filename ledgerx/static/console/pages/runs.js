// Billing runs: the latest runs of every rule of the project, newest first.

import { el, heading, table, formatAmount, formatTime } from "../ui.js";
import { statusBadge } from "./common.js";

const RUNS = `query($p: ID!) { billingRules(projectId: $p, first: 100) { edges { node { id name
  runs(first: 20) { edges { node { id scheduledAt periodStart periodEnd status trigger amount units attempts error startedAt } } } } } } }`;

export default {
  id: "runs",
  title: "Billing runs",
  admin: false,
  needsProject: true,
  async render(root, ctx) {
    heading(root, "Billing runs");
    const data = await ctx.gql(RUNS, { p: ctx.projectId });
    const runs = data.billingRules.edges.flatMap(({ node: rule }) => rule.runs.edges.map(({ node }) => ({ ...node, rule })));
    runs.sort((a, b) => (a.startedAt < b.startedAt ? 1 : a.startedAt > b.startedAt ? -1 : 0));
    root.append(
      el("p", { class: "muted" }, "The latest 20 runs of each rule. A rule's page lists all of its runs."),
      el(
        "div",
        { id: "all-runs" },
        table(
          [
            { label: "Started", value: (r) => formatTime(r.startedAt) },
            { label: "Rule", value: (r) => el("a", { href: `#/rules/${encodeURIComponent(r.rule.id)}` }, r.rule.name) },
            { label: "Scheduled", value: (r) => formatTime(r.scheduledAt) },
            { label: "Trigger", value: (r) => r.trigger },
            { label: "Amount", value: (r) => formatAmount(r.amount), numeric: true },
            { label: "Attempts", value: (r) => String(r.attempts), numeric: true },
            { label: "Status", value: (r) => statusBadge(r.status) },
            { label: "Error", value: (r) => r.error || "–" },
          ],
          runs,
          { empty: "No billing runs yet.", caption: "Billing runs, newest first" },
        ),
      ),
    );
  },
};
