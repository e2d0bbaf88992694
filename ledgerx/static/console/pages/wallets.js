// Wallets: the project's wallets; one wallet's balance, credit grants and transactions.

import { el, heading, table, formatAmount, formatTime } from "../ui.js";
import { pagedTable, section, statusBadge, backLink, shortId, badge } from "./common.js";

const WALLETS = `query($p: ID!, $after: String) { wallets(projectId: $p, first: 50, after: $after) {
  edges { node { id name currency balance creditLimit lowBalanceThreshold createdAt } } pageInfo { hasNextPage endCursor } } }`;
const WALLET = `query($id: ID!) { wallet(id: $id) { id projectId name currency balance creditLimit lowBalanceThreshold createdAt updatedAt
  autoTopUp { enabled threshold creditPackId lastStatus lastAttemptAt } } }`;
const GRANTS = `query($id: ID!, $after: String) { wallet(id: $id) { grants(first: 20, after: $after) {
  edges { node { id amount remaining category priority expiresAt status createdAt } } pageInfo { hasNextPage endCursor } } } }`;
const TXNS = `query($id: ID!, $after: String) { wallet(id: $id) { transactions(first: 20, after: $after) {
  edges { node { id type kind amount balanceAfter reason reference createdAt refundedAmount grantDraws { grantId amount } } }
  pageInfo { hasNextPage endCursor } } } }`;

async function list(root, ctx) {
  heading(root, "Wallets");
  root.append(
    await pagedTable(
      [
        { label: "Wallet", value: (w) => el("a", { href: `#/wallets/${encodeURIComponent(w.id)}`, dataset: { wallet: w.id } }, w.name) },
        { label: "Balance", value: (w) => formatAmount(w.balance), numeric: true },
        { label: "Currency", value: (w) => w.currency },
        { label: "Credit limit", value: (w) => formatAmount(w.creditLimit), numeric: true },
        { label: "Created", value: (w) => formatTime(w.createdAt) },
      ],
      async (after) => (await ctx.gql(WALLETS, { p: ctx.projectId, after })).wallets,
      { empty: "No wallets in this project yet.", caption: "Wallets", id: "wallets-table" },
    ),
  );
}

async function detail(root, ctx, walletId) {
  const { wallet: w } = await ctx.gql(WALLET, { id: walletId });
  heading(root, `Wallet ${w.name}`);
  root.prepend(backLink("#/wallets", "All wallets"));
  root.append(
    el(
      "div",
      { class: "cards" },
      el("section", { class: "card", "aria-label": "Balance" }, el("h2", {}, "Balance"), el("p", { class: "figure", id: "wallet-balance", dataset: { value: w.balance } }, `${formatAmount(w.balance)} ${w.currency}`)),
      el("section", { class: "card", "aria-label": "Credit limit" }, el("h2", {}, "Credit limit"), el("p", { class: "figure" }, formatAmount(w.creditLimit))),
      el("section", { class: "card", "aria-label": "Low balance threshold" }, el("h2", {}, "Low balance at"), el("p", { class: "figure" }, formatAmount(w.lowBalanceThreshold))),
      el("section", { class: "card", "aria-label": "Auto top-up" }, el("h2", {}, "Auto top-up"), el("p", { class: "figure small" }, w.autoTopUp && w.autoTopUp.enabled ? `below ${formatAmount(w.autoTopUp.threshold)}` : "off")),
    ),
    el("p", { class: "muted" }, "Id ", shortId(w.id)),
  );
  const grants = await pagedTable(
    [
      { label: "Grant", value: (g) => shortId(g.id) },
      { label: "Amount", value: (g) => formatAmount(g.amount), numeric: true },
      { label: "Remaining", value: (g) => formatAmount(g.remaining), numeric: true },
      { label: "Category", value: (g) => g.category },
      { label: "Priority", value: (g) => String(g.priority), numeric: true },
      { label: "Expires", value: (g) => formatTime(g.expiresAt) },
      { label: "Status", value: (g) => statusBadge(g.status) },
    ],
    async (after) => (await ctx.gql(GRANTS, { id: walletId, after })).wallet.grants,
    { empty: "No credit grants.", caption: "Credit grants", id: "grants-table" },
  );
  const txns = await pagedTable(
    [
      { label: "When", value: (t) => formatTime(t.createdAt) },
      { label: "Type", value: (t) => badge(t.type, t.type === "CREDIT" ? "good" : null) },
      { label: "Kind", value: (t) => t.kind },
      { label: "Amount", value: (t) => formatAmount(t.amount), numeric: true },
      { label: "Balance after", value: (t) => formatAmount(t.balanceAfter), numeric: true },
      { label: "Reason", value: (t) => t.reason || t.reference || "–" },
      { label: "Grants drawn", value: (t) => (t.grantDraws.length ? t.grantDraws.map((d) => `${d.grantId}: ${formatAmount(d.amount)}`).join(", ") : "–") },
      { label: "Id", value: (t) => shortId(t.id) },
    ],
    async (after) => (await ctx.gql(TXNS, { id: walletId, after })).wallet.transactions,
    { empty: "No transactions.", caption: "Transactions, newest first", id: "transactions-table" },
  );
  root.append(section("Credit grants", grants), section("Transactions", txns));
  void table;
}

export default {
  id: "wallets",
  title: "Wallets",
  admin: false,
  needsProject: true,
  async render(root, ctx) {
    if (ctx.params[0]) return detail(root, ctx, ctx.params[0]);
    return list(root, ctx);
  },
};
