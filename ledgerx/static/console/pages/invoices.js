// Invoices: the project's invoices, newest first; each issued one opens its PDF via the
// signed pdfUrl (it works without signing in, and expires).

import { el, heading, formatAmount, formatTime } from "../ui.js";
import { pagedTable, statusBadge } from "./common.js";

const INVOICES = `query($p: ID!, $after: String) { invoices(projectId: $p, first: 20, after: $after) {
  edges { node { id number kind status billingReason total { amount currency } amountPaid { amount currency } createdAt issuedAt pdfUrl } }
  pageInfo { hasNextPage endCursor } } }`;

function money(m) {
  return m ? `${formatAmount(m.amount)} ${m.currency}` : "–";
}

export default {
  id: "invoices",
  title: "Invoices",
  admin: false,
  needsProject: true,
  async render(root, ctx) {
    heading(root, "Invoices");
    root.append(
      el("p", { class: "muted" }, "Amounts are in minor units (cents). PDF links are signed and expire; reload the page for fresh ones."),
      await pagedTable(
        [
          { label: "Number", value: (i) => i.number || el("span", { class: "muted" }, "not issued") },
          { label: "Created", value: (i) => formatTime(i.createdAt) },
          { label: "Kind", value: (i) => i.kind },
          { label: "Reason", value: (i) => i.billingReason || "–" },
          { label: "Total", value: (i) => money(i.total), numeric: true },
          { label: "Paid", value: (i) => money(i.amountPaid), numeric: true },
          { label: "Status", value: (i) => statusBadge(i.status) },
          {
            label: "PDF",
            value: (i) =>
              i.pdfUrl
                ? el("a", { href: i.pdfUrl, target: "_blank", rel: "noopener noreferrer", class: "pdf-link", dataset: { invoice: i.id } }, "Open PDF", el("span", { class: "visually-hidden" }, ` of ${i.number}`))
                : "–",
          },
        ],
        async (after) => (await ctx.gql(INVOICES, { p: ctx.projectId, after })).invoices,
        { empty: "No invoices yet.", caption: "Invoices, newest first", id: "invoices-table" },
      ),
    );
  },
};
