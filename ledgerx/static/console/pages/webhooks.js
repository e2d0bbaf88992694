// Webhook endpoints (create, send a test event) and their deliveries (redeliver).

import { el, heading, table, field, form, button, formatTime, errorBox, busy } from "../ui.js";
import { pagedTable, section, statusBadge, backLink, shortId, badge } from "./common.js";

const ENDPOINT_FIELDS = "id url events enabled disabledReason description failingSince createdAt";
const ENDPOINTS = `query($p: ID!, $after: String) { webhookEndpoints(projectId: $p, first: 50, after: $after) {
  edges { node { ${ENDPOINT_FIELDS} } } pageInfo { hasNextPage endCursor } } }`;
const DELIVERY_FIELDS = "id eventId eventType status attempts lastStatusCode lastError nextAttemptAt createdAt deliveredAt";
const ENDPOINT = `query($id: ID!) { webhookEndpoint(id: $id) { ${ENDPOINT_FIELDS}
  deliveries(first: 50) { edges { node { ${DELIVERY_FIELDS} } } pageInfo { hasNextPage endCursor } } } }`;
const CREATE = `mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) { endpoint { id url } secret } }`;
const TEST = `mutation($id: ID!) { sendTestWebhook(endpointId: $id) { ${DELIVERY_FIELDS} } }`;
const REDELIVER = `mutation($id: ID!) { redeliverWebhook(deliveryId: $id) { ${DELIVERY_FIELDS} } }`;

async function list(root, ctx) {
  heading(root, "Webhooks");
  root.append(
    await pagedTable(
      [
        { label: "Endpoint", value: (e) => el("a", { href: `#/webhooks/${encodeURIComponent(e.id)}`, dataset: { endpoint: e.id } }, e.url) },
        { label: "Events", value: (e) => e.events.join(", ") },
        { label: "State", value: (e) => (e.enabled ? badge("enabled", "good") : badge("disabled", "bad")) },
        { label: "Failing since", value: (e) => formatTime(e.failingSince) },
        { label: "Description", value: (e) => e.description || "–" },
      ],
      async (after) => (await ctx.gql(ENDPOINTS, { p: ctx.projectId, after })).webhookEndpoints,
      { empty: "No webhook endpoints yet.", caption: "Webhook endpoints", id: "endpoints-table" },
    ),
  );
  const url = el("input", { name: "url", type: "url", required: true, autocomplete: "off", placeholder: "https://example.com/hooks/ledgerx" });
  const events = el("input", { name: "events", autocomplete: "off", value: "*" });
  const description = el("input", { name: "description", autocomplete: "off" });
  const secretBox = el("div", { id: "endpoint-secret", "aria-live": "polite" });
  root.append(
    el(
      "section",
      { class: "panel", "aria-label": "Add an endpoint", id: "create-endpoint" },
      el("h2", {}, "Add an endpoint"),
      form([field("URL", url), field("Event types (comma-separated, * for all)", events), field("Description (optional)", description)], "Add endpoint", async () => {
        const i = {
          projectId: ctx.projectId,
          url: url.value.trim(),
          events: events.value.split(",").map((s) => s.trim()).filter(Boolean),
          description: description.value.trim() || null,
        };
        const { createWebhookEndpoint: made } = await ctx.gql(CREATE, { i });
        secretBox.replaceChildren(
          el(
            "div",
            { class: "notice", role: "status" },
            el("p", {}, "Endpoint added. Its signing secret is shown once, copy it now:"),
            el("code", { class: "secret" }, made.secret),
            el("p", {}, el("a", { href: `#/webhooks/${encodeURIComponent(made.endpoint.id)}` }, "Open the endpoint")),
          ),
        );
      }),
      secretBox,
    ),
  );
}

async function detail(root, ctx, endpointId) {
  const load = async () => (await ctx.gql(ENDPOINT, { id: endpointId })).webhookEndpoint;
  let endpoint = await load();
  heading(root, "Webhook endpoint");
  root.prepend(backLink("#/webhooks", "All endpoints"));
  const status = el("div", { "aria-live": "polite", id: "webhook-status" });
  const deliveriesBox = el("div", { id: "deliveries" });
  const draw = () => {
    const rows = endpoint.deliveries.edges.map((e) => e.node);
    deliveriesBox.replaceChildren(
      table(
        [
          { label: "Created", value: (d) => formatTime(d.createdAt) },
          { label: "Event", value: (d) => d.eventType },
          { label: "Status", value: (d) => statusBadge(d.status) },
          { label: "Attempts", value: (d) => String(d.attempts), numeric: true },
          { label: "Last answer", value: (d) => (d.lastStatusCode ? String(d.lastStatusCode) : d.lastError || "–") },
          { label: "Delivered", value: (d) => formatTime(d.deliveredAt) },
          { label: "Id", value: (d) => shortId(d.id) },
          { label: "", value: (d) => button("Redeliver", () => redeliver(d), { class: "secondary", dataset: { delivery: d.id }, "aria-label": `Redeliver ${d.eventType} ${d.id}` }) },
        ],
        rows,
        { empty: "No deliveries yet.", caption: "Deliveries, newest first" },
      ),
    );
  };
  const refresh = async () => {
    endpoint = await load();
    draw();
  };
  async function redeliver(d) {
    status.replaceChildren();
    try {
      const { redeliverWebhook: again } = await busy(ctx.gql(REDELIVER, { id: d.id }));
      status.dataset.redelivered = again.id;
      status.textContent = `Redelivery queued: ${again.eventType} (${again.status.toLowerCase()}).`;
      await refresh();
    } catch (err) {
      status.replaceChildren(errorBox(err));
    }
  }
  async function sendTest() {
    status.replaceChildren();
    try {
      const { sendTestWebhook: d } = await busy(ctx.gql(TEST, { id: endpointId }));
      status.textContent = `Test event queued (${d.status.toLowerCase()}).`;
      await refresh();
    } catch (err) {
      status.replaceChildren(errorBox(err));
    }
  }
  const item = (k, v) => [el("dt", {}, k), el("dd", {}, v)];
  root.append(
    el(
      "div",
      { class: "panel" },
      el(
        "dl",
        { class: "facts" },
        ...item("URL", el("code", {}, endpoint.url)),
        ...item("Events", endpoint.events.join(", ")),
        ...item("State", endpoint.enabled ? badge("enabled", "good") : badge(`disabled: ${endpoint.disabledReason || ""}`, "bad")),
        ...item("Description", endpoint.description || "–"),
        ...item("Id", shortId(endpoint.id)),
      ),
      el("div", { class: "actions" }, button("Send test event", sendTest, { id: "send-test" }), button("Refresh", () => busy(refresh()), { class: "secondary", id: "refresh-deliveries" })),
      status,
    ),
    section("Deliveries", deliveriesBox),
  );
  draw();
}

export default {
  id: "webhooks",
  title: "Webhooks",
  admin: false,
  needsProject: true,
  async render(root, ctx) {
    if (ctx.params[0]) return detail(root, ctx, ctx.params[0]);
    return list(root, ctx);
  },
};
