// Helpers shared by the tenant pages.

import { el, table, errorBox, busy } from "../ui.js";

// A Relay connection shown as a table with a "Load more" button.
// fetchPage(after) -> { edges: [{ node }], pageInfo: { hasNextPage, endCursor } }
export async function pagedTable(columns, fetchPage, { empty, caption, id = null } = {}) {
  const box = el("div", { class: "paged", id });
  const rows = [];
  let after = null;
  const more = el("button", { type: "button", class: "secondary load-more" }, "Load more");
  const status = el("div", { class: "form-status" });
  const draw = (hasNext) => {
    box.replaceChildren(...[table(columns, rows, { empty, caption }), hasNext ? more : null, status].filter(Boolean));
  };
  const load = async () => {
    const conn = await fetchPage(after);
    rows.push(...conn.edges.map((e) => e.node));
    after = conn.pageInfo.endCursor;
    draw(conn.pageInfo.hasNextPage);
  };
  more.addEventListener("click", async () => {
    more.disabled = true;
    try { await busy(load()); } catch (err) { status.replaceChildren(errorBox(err)); } finally { more.disabled = false; }
  });
  await load();
  return box;
}

export function badge(text, kind = null) {
  return el("span", { class: ["badge", kind ? `badge-${kind}` : null], dataset: { value: text } }, text);
}

export function statusBadge(status) {
  const kind = { ACTIVE: "good", SUCCEEDED: "good", PAID: "good", PAUSED: "warn", PENDING: "warn", OPEN: "warn", DRAFT: "warn", FAILED: "bad", VOID: "bad", UNCOLLECTIBLE: "bad", EXPIRED: "bad", VOIDED: "bad", DEPLETED: null }[status];
  return badge(status, kind);
}

export function section(title, ...children) {
  return el("section", { class: "panel", "aria-label": title }, el("h2", {}, title), ...children);
}

export function backLink(href, text) {
  return el("p", { class: "back" }, el("a", { href }, `← ${text}`));
}

export function shortId(id) {
  return el("code", { class: "id", title: id }, id);
}
