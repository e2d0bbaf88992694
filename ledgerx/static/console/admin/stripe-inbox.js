// Platform admins: the Stripe webhook inbox (newest first), one event's detail, and Replay.

import { busy, el, errorBox, field, formatTime, table } from "../ui.js";
import { frame, hashParams, input, select, statusBadge } from "./common.js";

const STATUSES = ["PENDING", "PROCESSING", "PROCESSED", "FAILED", "DEAD", "IGNORED"];
const FIELDS = "id stripeEventId type status attempts source createdAt receivedAt processedAt nextAttemptAt lastError result projectId";
const LIST = `query($s: WebhookEventStatus, $t: String, $first: Int, $after: String) {
  webhookEvents(status: $s, type: $t, first: $first, after: $after) {
    nodes { ${FIELDS} }
    pageInfo { hasNextPage endCursor }
  }
}`;
const ONE = `query($id: ID!) {
  webhookEvent(id: $id) { ${FIELDS} payload attemptLog { attempt trigger ok result error startedAt finishedAt } }
}`;
const REPLAY = `mutation($id: ID!) { replayWebhookEvent(id: $id) { ${FIELDS} } }`;
const PAGE_SIZE = 25;
// Replay stands out where it is most likely wanted.
const NEEDS_REPLAY = new Set(["FAILED", "DEAD"]);

// "customer.subscription.created" may wrap after its dots, never inside a word.
function breakable(type) {
  const parts = String(type).split(".");
  return parts.flatMap((p, i) => (i < parts.length - 1 ? [`${p}.`, el("wbr")] : [p]));
}

function short(text, n = 80) {
  if (!text) return null;
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

async function replay(ctx, event, status) {
  status.replaceChildren(el("span", {}, `Replaying ${event.stripeEventId}…`));
  try {
    const data = await busy(ctx.gql(REPLAY, { id: event.id }));
    const done = data.replayWebhookEvent;
    status.replaceChildren(
      el(
        "p",
        { class: "adm-result", dataset: { status: done.status, attempts: String(done.attempts) } },
        `Replayed ${done.stripeEventId}: now `,
        statusBadge(done.status),
        ` after ${done.attempts} attempt${done.attempts === 1 ? "" : "s"}.`,
        done.lastError && done.status !== "PROCESSED" ? ` Error: ${done.lastError}` : "",
      ),
    );
    return done;
  } catch (err) {
    status.replaceChildren(errorBox(err));
    return null;
  }
}

async function renderDetail(page, ctx, id) {
  const back = el("p", {}, el("a", { href: "#/stripe-inbox" }, "← All inbox events"));
  const body = el("div", { id: "inbox-detail" });
  const status = el("div", { class: "adm-status", id: "replay-status", role: "status", "aria-live": "polite" });
  page.append(back, body);
  const draw = async () => {
    let e;
    try {
      e = (await busy(ctx.gql(ONE, { id }))).webhookEvent;
    } catch (err) {
      body.replaceChildren(errorBox(err));
      return;
    }
    const replayButton = el(
      "button",
      { type: "button", id: "replay-button", onclick: async () => {
        replayButton.disabled = true;
        const done = await replay(ctx, e, status);
        replayButton.disabled = false;
        if (done) await draw();
      } },
      "Replay",
    );
    const row = (label, value) => [el("dt", {}, label), el("dd", {}, value ?? "–")];
    body.replaceChildren(
      el("h2", {}, el("code", {}, e.type)),
      el(
        "dl",
        { class: "adm-dl", id: "event-fields", dataset: { status: e.status, attempts: String(e.attempts) } },
        row("Inbox id", el("code", {}, e.id)),
        row("Stripe event", el("code", {}, e.stripeEventId)),
        row("Status", statusBadge(e.status)),
        row("Attempts", String(e.attempts)),
        row("Source", e.source),
        row("Created (Stripe)", formatTime(e.createdAt)),
        row("Received", formatTime(e.receivedAt)),
        row("Processed", e.processedAt ? formatTime(e.processedAt) : null),
        row("Next attempt", e.nextAttemptAt ? formatTime(e.nextAttemptAt) : null),
        row("Project", e.projectId ? el("code", {}, e.projectId) : null),
        row("Result", e.result),
        row("Last error", e.lastError ? el("span", { class: "adm-error-text" }, e.lastError) : null),
      ),
      el("div", { class: "actions" }, replayButton),
      status,
      el("h2", {}, "Attempts"),
      table(
        [
          { label: "#", value: (a) => String(a.attempt), numeric: true },
          { label: "Trigger", value: (a) => a.trigger },
          { label: "OK", value: (a) => (a.ok ? "yes" : "no") },
          { label: "Started", value: (a) => formatTime(a.startedAt) },
          { label: "Finished", value: (a) => formatTime(a.finishedAt) },
          { label: "Result or error", value: (a) => a.error || a.result },
        ],
        e.attemptLog,
        { caption: "Processing attempts, oldest first", empty: "Not processed yet." },
      ),
      el("h2", {}, "Payload"),
      el("pre", { class: "adm-json", tabindex: "0", "aria-label": "Event payload (JSON)" }, JSON.stringify(e.payload, null, 2)),
    );
  };
  await draw();
}

async function renderList(page, ctx) {
  const status = select("status", [["", "Any status"], ...STATUSES.map((s) => [s, s])], "");
  const type = input("type", { placeholder: "e.g. invoice.paid", spellcheck: "false" });
  const out = el("div", { id: "inbox-list" });
  const replayStatus = el("div", { class: "adm-status", id: "replay-status", role: "status", "aria-live": "polite" });
  const more = el("div", { class: "actions" });
  let rows = [];

  const draw = () => {
    out.replaceChildren(
      table(
        [
          { label: "Received", value: (e) => formatTime(e.receivedAt) },
          { label: "Type", value: (e) => el("a", { href: `#/stripe-inbox/${encodeURIComponent(e.id)}`, class: "adm-event-link" }, breakable(e.type)) },
          { label: "Status", value: (e) => statusBadge(e.status) },
          { label: "Attempts", value: (e) => String(e.attempts), numeric: true },
          { label: "Stripe event", value: (e) => el("code", {}, e.stripeEventId) },
          { label: "Last error", value: (e) => (e.lastError ? el("span", { class: "adm-error-text", title: e.lastError }, short(e.lastError)) : null) },
          {
            label: "Actions",
            value: (e) =>
              el(
                "button",
                { type: "button", class: ["adm-replay", NEEDS_REPLAY.has(e.status) ? null : "secondary"], "aria-label": `Replay ${e.type} ${e.stripeEventId}`, onclick: async (ev) => {
                  ev.currentTarget.disabled = true;
                  const done = await replay(ctx, e, replayStatus);
                  if (done) {
                    rows = rows.map((r) => (r.id === done.id ? done : r));
                    draw();
                  }
                } },
                "Replay",
              ),
          },
        ],
        rows,
        { caption: "Stripe webhook inbox, newest first", empty: "No inbox events match." },
      ),
    );
    for (const tr of out.querySelectorAll("tbody tr")) {
      const e = rows[tr.sectionRowIndex];
      tr.dataset.id = e.id;
      tr.dataset.stripeEventId = e.stripeEventId;
      tr.dataset.status = e.status;
      tr.dataset.attempts = String(e.attempts);
    }
  };

  let cursor = null;
  const load = async (append) => {
    try {
      const data = await busy(
        ctx.gql(LIST, { s: status.value || null, t: type.value.trim() || null, first: PAGE_SIZE, after: append ? cursor : null }),
      );
      const conn = data.webhookEvents;
      rows = append ? rows.concat(conn.nodes) : conn.nodes;
      cursor = conn.pageInfo.endCursor;
      draw();
      more.replaceChildren(
        conn.pageInfo.hasNextPage ? el("button", { type: "button", id: "inbox-more", onclick: () => load(true) }, "Load older events") : null,
      );
    } catch (err) {
      out.replaceChildren(errorBox(err));
      more.replaceChildren();
    }
  };

  const form = el(
    "form",
    { class: "adm-toolbar", id: "inbox-filter", "aria-label": "Filter the inbox" },
    field("Status", status),
    field("Event type", type),
    el("div", { class: "actions" }, el("button", { type: "submit" }, "Filter")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load(false);
  });
  page.append(form, replayStatus, out, more);
  await load(false);
}

export default {
  id: "stripe-inbox",
  title: "Stripe inbox",
  admin: true,
  needsProject: false,
  async render(root, ctx) {
    const page = frame(root, ctx, "Stripe inbox");
    if (!page) return;
    const [id] = hashParams(ctx);
    if (id) await renderDetail(page, ctx, id);
    else await renderList(page, ctx);
  },
};
