// Billing runs: the latest runs of every rule of the project, newest first.

import { el, heading, table, formatAmount, formatTime } from "../ui.js";
import { statusBadge } from "./common.js";

// The API caps a query's cost (fields × page sizes): 50 rules × 10 runs stays well inside it.
const RUNS = `query($p: ID!) { billingRules(projectId: $p, first: 50) { edges { node { id name
  runs(first: 10) { edges { node { id scheduledAt status trigger amount attempts error startedAt } } } } } } }`;

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
      el("p", { class: "muted" }, "The latest 10 runs of each of the first 50 rules. A rule's page lists all of its runs."),
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
