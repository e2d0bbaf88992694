// Billing rules: list, create (with a live preview of the draft from previewBillingRuleDraft), and
// one rule's page (edit with a preview of the next runs: previewBillingRuleChange while there are
// unsaved edits, previewBillingRule otherwise; pause/resume, run now, its runs).

import { subscribe } from "../api.js";
import { el, heading, table, field, form, button, formatAmount, formatTime, errorBox, busy } from "../ui.js";
import { pagedTable, section, statusBadge, backLink, shortId } from "./common.js";

const RULE_FIELDS = `id walletId name mode currency amount metricKey unitPrice weekdays monthDays cron timezone timeOfDay
  startAt catchUp status pausedReason nextRunAt periodStart lastError retryAt graceUntil createdAt updatedAt`;
const RULES = `query($p: ID!, $after: String) { billingRules(projectId: $p, first: 50, after: $after) {
  edges { node { ${RULE_FIELDS} } } pageInfo { hasNextPage endCursor } } }`;
const RULE = `query($id: ID!) { billingRule(id: $id) { ${RULE_FIELDS} } }`;
const RUNS = `query($id: ID!, $after: String) { billingRule(id: $id) { runs(first: 20, after: $after) {
  edges { node { id scheduledAt periodStart periodEnd status trigger amount units attempts error transactionId startedAt } }
  pageInfo { hasNextPage endCursor } } } }`;
const PREVIEW_ITEM = `at localAt timezone periodStart amount units`;
const PREVIEW = `query($id: ID!, $n: Int!) { previewBillingRule(id: $id, count: $n) { ${PREVIEW_ITEM} } }`;
const PREVIEW_DRAFT = `query($i: CreateBillingRuleInput!, $n: Int!) { previewBillingRuleDraft(input: $i, count: $n) { ${PREVIEW_ITEM} } }`;
const PREVIEW_CHANGE = `query($i: UpdateBillingRuleInput!, $n: Int!) { previewBillingRuleChange(input: $i, count: $n) { ${PREVIEW_ITEM} } }`;
const WALLETS = `query($p: ID!) { wallets(projectId: $p, first: 100) { edges { node { id name currency } } } }`;
const METRICS = `query($p: ID!) { usageMetrics(projectId: $p) { key name } }`;
const CREATE = `mutation($i: CreateBillingRuleInput!) { createBillingRule(input: $i) { id } }`;
const UPDATE = `mutation($i: UpdateBillingRuleInput!) { updateBillingRule(input: $i) { ${RULE_FIELDS} } }`;
const PAUSE = `mutation($id: ID!) { pauseBillingRule(id: $id) { id status } }`;
const RESUME = `mutation($id: ID!) { resumeBillingRule(id: $id) { id status } }`;
const RUN = `mutation($id: ID!) { runBillingRule(id: $id) { id status amount } }`;
const LIVE = `subscription($p: ID!) { liveMetrics(projectId: $p) { initial events } }`;

export const MODES = ["DAILY_FLAT", "SELECTED_DAYS", "MONTHLY_FLAT", "USAGE_BASED", "HYBRID", "CRON"];
const WEEKDAYS = ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"];
// Which inputs each mode uses.
const USES = {
  DAILY_FLAT: ["amount"],
  SELECTED_DAYS: ["amount", "weekdays"],
  MONTHLY_FLAT: ["amount", "monthDays"],
  USAGE_BASED: ["metricKey", "unitPrice"],
  HYBRID: ["amount", "metricKey", "unitPrice"],
  CRON: ["amount", "cron"],
};

function schedule(r) {
  if (r.mode === "CRON") return `cron ${r.cron}`;
  if (r.mode === "SELECTED_DAYS") return `${r.weekdays.map((d) => d.slice(0, 3).toLowerCase()).join(", ")} at ${r.timeOfDay}`;
  if (r.mode === "MONTHLY_FLAT") return `day ${r.monthDays.join(", ") || "1"} at ${r.timeOfDay}`;
  return `daily at ${r.timeOfDay}`;
}

// The rule's inputs: returns { node, read() } where read() gives the input object (only fields
// the mode uses, plus the common ones).
function ruleInputs({ rule = null, wallets = [], metrics = [] }) {
  const mode = el("select", { name: "mode", disabled: !!rule }, MODES.map((m) => el("option", { value: m }, m)));
  if (rule) mode.value = rule.mode;
  const wallet = el("select", { name: "walletId" }, wallets.map((w) => el("option", { value: w.id }, `${w.name} (${w.currency})`)));
  const name = el("input", { name: "name", required: true, autocomplete: "off", value: rule ? rule.name : "" });
  const amount = el("input", { name: "amount", inputmode: "numeric", autocomplete: "off", value: rule && rule.amount !== null ? rule.amount : "" });
  const metricKey = metrics.length
    ? el("select", { name: "metricKey" }, el("option", { value: "" }, "—"), metrics.map((m) => el("option", { value: m.key }, `${m.name} (${m.key})`)))
    : el("input", { name: "metricKey", autocomplete: "off" });
  if (rule && rule.metricKey) metricKey.value = rule.metricKey;
  const unitPrice = el("input", { name: "unitPrice", inputmode: "decimal", autocomplete: "off", placeholder: "the metric's price", value: rule && rule.unitPrice !== null ? rule.unitPrice : "" });
  const days = WEEKDAYS.map((d) => el("input", { type: "checkbox", name: "weekdays", value: d, id: `wd-${d.toLowerCase()}`, checked: rule ? rule.weekdays.includes(d) : false }));
  const weekdays = el("fieldset", { class: "weekdays", dataset: { uses: "weekdays" } }, el("legend", {}, "Weekdays"), days.map((c, i) => el("label", { for: c.id, class: "check" }, c, WEEKDAYS[i].slice(0, 3))));
  const monthDays = el("input", { name: "monthDays", autocomplete: "off", placeholder: "1, 15", value: rule ? rule.monthDays.join(", ") : "" });
  const cron = el("input", { name: "cron", autocomplete: "off", placeholder: "0 9 * * 1-5", value: rule && rule.cron ? rule.cron : "" });
  const timezone = el("input", { name: "timezone", autocomplete: "off", value: rule ? rule.timezone : Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC" });
  const timeOfDay = el("input", { name: "timeOfDay", autocomplete: "off", placeholder: "00:00", value: rule ? rule.timeOfDay : "" });
  const wrap = {
    amount: field("Amount (credits per run)", amount),
    metricKey: field("Metric", metricKey),
    unitPrice: field("Unit price (optional)", unitPrice),
    weekdays,
    monthDays: field("Days of the month", monthDays),
    cron: field("Cron expression", cron),
  };
  for (const [k, node] of Object.entries(wrap)) node.dataset.uses = k;
  const sync = () => {
    const uses = USES[mode.value];
    for (const [k, node] of Object.entries(wrap)) node.hidden = !uses.includes(k);
  };
  mode.addEventListener("change", sync);
  sync();
  const node = el(
    "div",
    { class: "grid-form" },
    rule ? null : field("Wallet", wallet),
    field("Name", name),
    field("Mode", mode),
    Object.values(wrap),
    field("Time zone", timezone),
    field("Time of day (HH:MM)", timeOfDay),
  );
  const read = () => {
    const uses = USES[mode.value];
    const i = { name: name.value.trim(), timezone: timezone.value.trim() || null };
    if (timeOfDay.value.trim()) i.timeOfDay = timeOfDay.value.trim();
    if (!rule) { i.walletId = wallet.value; i.mode = mode.value; }
    if (uses.includes("amount")) i.amount = amount.value.trim() || null;
    if (uses.includes("metricKey")) i.metricKey = metricKey.value.trim() || null;
    if (uses.includes("unitPrice") && unitPrice.value.trim()) i.unitPrice = unitPrice.value.trim();
    if (uses.includes("weekdays")) i.weekdays = days.filter((c) => c.checked).map((c) => c.value);
    if (uses.includes("monthDays")) i.monthDays = monthDays.value.split(/[\s,]+/).filter(Boolean).map(Number);
    if (uses.includes("cron")) i.cron = cron.value.trim() || null;
    if (rule) for (const k of Object.keys(i)) if (i[k] === null) delete i[k];
    return i;
  };
  return { node, read };
}

const PREVIEW_COUNT = 5;
const PREVIEW_DELAY_MS = 300;

function previewTable(items, { empty, caption }) {
  return table(
    [
      { label: "Runs at (UTC)", value: (p) => formatTime(p.at) },
      { label: "Local time", value: (p) => `${String(p.localAt).replace("T", " ").slice(0, 16)} ${p.timezone}` },
      { label: "Period from", value: (p) => formatTime(p.periodStart) },
      { label: "Would charge", value: (p) => formatAmount(p.amount), numeric: true },
      { label: "Units", value: (p) => (p.units === null ? "–" : p.units), numeric: true },
    ],
    items,
    { empty, caption },
  );
}

// Draws previews into `region`, only ever the latest one asked for: an answer to an older
// request that arrives late is dropped. A field error marks that field of the form `formOf()` gives
// (aria-invalid, without moving focus: the user is typing). The region's dataset says what it
// shows: count and first (amount of the first run), source ("draft" | "saved"), error (a code),
// loaded (how many previews were drawn).
function previewer(region, formOf) {
  let seq = 0;
  let timer = null;
  let marked = [];
  const unmark = () => {
    for (const n of marked) n.removeAttribute("aria-invalid");
    marked = [];
  };
  const show = async (source, fetchItems, options) => {
    const mine = ++seq;
    clearTimeout(timer);
    timer = null;
    region.setAttribute("aria-busy", "true");
    try {
      const items = await fetchItems();
      if (mine !== seq) return;
      unmark();
      region.replaceChildren(previewTable(items, options()));
      region.dataset.count = String(items.length);
      region.dataset.first = items.length ? items[0].amount : "";
      delete region.dataset.error;
    } catch (err) {
      if (mine !== seq) return;
      unmark();
      const box = errorBox(err);
      box.removeAttribute("role"); // the region is a polite live region; no alert on every keystroke
      region.replaceChildren(box);
      region.dataset.count = "";
      region.dataset.first = "";
      region.dataset.error = (err && err.code) || "ERROR";
      if (err && err.field) {
        marked = [...formOf().querySelectorAll(`[name="${CSS.escape(err.field)}"]`)];
        for (const n of marked) n.setAttribute("aria-invalid", "true");
      }
    } finally {
      if (mine === seq) {
        region.dataset.source = source;
        region.dataset.loaded = String(Number(region.dataset.loaded || 0) + 1);
        region.removeAttribute("aria-busy");
      }
    }
  };
  return {
    now: show,
    // After the user stops typing; any answer still on its way is stale from now on.
    later(...args) {
      seq++;
      clearTimeout(timer);
      timer = setTimeout(() => show(...args), PREVIEW_DELAY_MS);
    },
    cancel() {
      seq++;
      clearTimeout(timer);
      timer = null;
      region.removeAttribute("aria-busy");
    },
  };
}

async function list(root, ctx) {
  heading(root, "Billing rules");
  const [{ wallets }, { usageMetrics }] = await Promise.all([ctx.gql(WALLETS, { p: ctx.projectId }), ctx.gql(METRICS, { p: ctx.projectId })]);
  root.append(
    await pagedTable(
      [
        { label: "Rule", value: (r) => el("a", { href: `#/rules/${encodeURIComponent(r.id)}`, dataset: { rule: r.id } }, r.name) },
        { label: "Mode", value: (r) => r.mode },
        { label: "Amount", value: (r) => (r.amount === null ? "–" : formatAmount(r.amount)), numeric: true },
        { label: "Schedule", value: (r) => `${schedule(r)} (${r.timezone})` },
        { label: "Next run", value: (r) => formatTime(r.nextRunAt) },
        { label: "Status", value: (r) => statusBadge(r.status) },
      ],
      async (after) => (await ctx.gql(RULES, { p: ctx.projectId, after })).billingRules,
      { empty: "No billing rules yet.", caption: "Billing rules", id: "rules-table" },
    ),
  );
  const walletList = wallets.edges.map((e) => e.node);
  if (!walletList.length) {
    root.append(section("Create a billing rule", el("p", { class: "empty" }, "Create a wallet first: a rule charges one wallet.")));
    return;
  }
  const inputs = ruleInputs({ wallets: walletList, metrics: usageMetrics });
  const createForm = form([inputs.node], "Create rule", async () => {
    const data = await ctx.gql(CREATE, { i: inputs.read() });
    ctx.navigate(`#/rules/${encodeURIComponent(data.createBillingRule.id)}`);
  });
  const draftPreview = el(
    "div",
    { id: "draft-preview", role: "region", "aria-labelledby": "draft-preview-title", "aria-live": "polite" },
    el("p", { class: "muted" }, "Fill in the form to see the next runs here."),
  );
  const drafts = previewer(draftPreview, () => createForm);
  const previewDraft = () => {
    const i = inputs.read();
    // The name does not change the schedule or the amounts: a preview needs none yet (creating does).
    if (!i.name) i.name = "New rule";
    return ctx.gql(PREVIEW_DRAFT, { i, n: PREVIEW_COUNT }).then((d) => d.previewBillingRuleDraft);
  };
  const draftOptions = () => ({ empty: "No upcoming runs.", caption: "Next runs, if the rule were created now" });
  const onEdit = () => drafts.later("draft", previewDraft, draftOptions);
  createForm.addEventListener("input", onEdit);
  createForm.addEventListener("change", onEdit);
  ctx.onCleanup(() => drafts.cancel());
  root.append(
    el(
      "section",
      { class: "panel", "aria-label": "Create a billing rule", id: "create-rule" },
      el("h2", {}, "Create a billing rule"),
      createForm,
      el("h3", { id: "draft-preview-title" }, "Preview"),
      el("p", { class: "muted" }, "What the next runs would charge, as you type (previewBillingRuleDraft; nothing is created)."),
      draftPreview,
    ),
  );
}

async function detail(root, ctx, ruleId) {
  let { billingRule: rule } = await ctx.gql(RULE, { id: ruleId });
  const { usageMetrics } = await ctx.gql(METRICS, { p: ctx.projectId });
  heading(root, `Billing rule ${rule.name}`);
  root.prepend(backLink("#/rules", "All billing rules"));

  const facts = el("dl", { class: "facts", id: "rule-facts" });
  const statusLine = el("div", { class: "actions", id: "rule-actions" });
  const actionStatus = el("div", { "aria-live": "polite" });
  const preview = el("div", { id: "rule-preview", "aria-live": "polite" });
  const runsBox = el("div", { id: "rule-runs" });

  const drawFacts = () => {
    const item = (k, v) => [el("dt", {}, k), el("dd", {}, v)];
    facts.replaceChildren(
      ...item("Status", statusBadge(rule.status)),
      ...item("Mode", rule.mode),
      ...item("Schedule", `${schedule(rule)} (${rule.timezone})`),
      ...item("Amount", rule.amount === null ? "–" : formatAmount(rule.amount)),
      ...item("Metric", rule.metricKey || "–"),
      ...item("Next run", formatTime(rule.nextRunAt)),
      ...item("Wallet", el("a", { href: `#/wallets/${encodeURIComponent(rule.walletId)}` }, rule.walletId)),
      ...item("Id", shortId(rule.id)),
      ...(rule.pausedReason ? item("Paused because", rule.pausedReason) : []),
      ...(rule.lastError ? item("Last error", rule.lastError) : []),
    );
    const paused = rule.status === "PAUSED";
    statusLine.replaceChildren(
      button(paused ? "Resume" : "Pause", () => act(paused ? RESUME : PAUSE, paused ? "resumeBillingRule" : "pauseBillingRule"), { id: "rule-toggle" }),
      button("Run now", runNow, { id: "rule-run", class: "secondary" }),
    );
  };

  // The preview follows the edit form (made below).
  const inputs = ruleInputs({ rule, metrics: usageMetrics });
  const saved = el("div", { "aria-live": "polite", id: "rule-saved" });
  let editForm = null;
  const previews = previewer(preview, () => editForm);
  const snapshot = () => JSON.stringify(inputs.read());
  let baseline = snapshot(); // the form as the rule stands: no unsaved edits
  const savedOptions = () => ({
    empty: rule.status === "PAUSED" ? "Paused: no runs are due." : "No upcoming runs.",
    caption: "Next runs, as the rule stands now",
  });
  const draftOptions = () => ({
    empty: rule.status === "PAUSED" ? "Paused: no runs are due." : "No upcoming runs.",
    caption: "Next runs, with your unsaved changes",
  });
  const fetchSaved = () => ctx.gql(PREVIEW, { id: ruleId, n: PREVIEW_COUNT }).then((d) => d.previewBillingRule);
  const fetchChange = () =>
    ctx.gql(PREVIEW_CHANGE, { i: { id: ruleId, ...inputs.read() }, n: PREVIEW_COUNT }).then((d) => d.previewBillingRuleChange);
  const dirty = () => snapshot() !== baseline;
  // Now (after a save, pause, usage): the draft while there are unsaved edits, else the rule's own.
  const loadPreview = () => (dirty() ? previews.now("draft", fetchChange, draftOptions) : previews.now("saved", fetchSaved, savedOptions));
  const onEdit = () => (dirty() ? previews.later("draft", fetchChange, draftOptions) : previews.later("saved", fetchSaved, savedOptions));

  const loadRuns = async () => {
    runsBox.replaceChildren(
      await pagedTable(
        [
          { label: "Started", value: (r) => formatTime(r.startedAt) },
          { label: "Scheduled", value: (r) => formatTime(r.scheduledAt) },
          { label: "Period", value: (r) => `${formatTime(r.periodStart)} – ${formatTime(r.periodEnd)}` },
          { label: "Trigger", value: (r) => r.trigger },
          { label: "Amount", value: (r) => formatAmount(r.amount), numeric: true },
          { label: "Status", value: (r) => statusBadge(r.status) },
          { label: "Error", value: (r) => r.error || "–" },
        ],
        async (after) => (await ctx.gql(RUNS, { id: ruleId, after })).billingRule.runs,
        { empty: "No runs yet.", caption: "Runs, newest first", id: "runs-table" },
      ),
    );
  };

  async function act(mutation, key) {
    actionStatus.replaceChildren();
    try {
      const data = await busy(ctx.gql(mutation, { id: ruleId }));
      rule = { ...rule, ...data[key] };
      rule = (await ctx.gql(RULE, { id: ruleId })).billingRule;
      drawFacts();
      actionStatus.textContent = rule.status === "PAUSED" ? "Paused." : "Resumed.";
      await loadPreview();
      document.getElementById("rule-toggle").focus();
    } catch (err) {
      actionStatus.replaceChildren(errorBox(err));
    }
  }

  async function runNow() {
    actionStatus.replaceChildren();
    try {
      const { runBillingRule: run } = await busy(ctx.gql(RUN, { id: ruleId }));
      actionStatus.textContent = `Run ${run.status.toLowerCase()}: ${formatAmount(run.amount)} charged.`;
      await loadRuns();
    } catch (err) {
      actionStatus.replaceChildren(errorBox(err));
    }
  }

  editForm = form([inputs.node], "Save changes", async () => {
    saved.textContent = "";
    const sent = snapshot();
    const data = await ctx.gql(UPDATE, { i: { id: ruleId, ...inputs.read() } });
    rule = data.updateBillingRule;
    baseline = sent;
    drawFacts();
    await loadPreview();
    saved.textContent = dirty() ? "Saved." : "Saved; the preview shows the next runs as the rule now stands.";
  });
  editForm.id = "edit-rule";
  editForm.addEventListener("input", onEdit);
  editForm.addEventListener("change", onEdit);
  ctx.onCleanup(() => previews.cancel());

  // Usage-priced rules: the preview follows the period's usage as it arrives (a liveMetrics
  // message that folded domain events, usage among them; asked again at most once a second).
  let timer = null;
  if (rule.metricKey) {
    const stop = subscribe(LIVE, { p: ctx.projectId }, (data) => {
      const m = data && data.liveMetrics;
      if (!m || m.initial || m.events === 0) return;
      if (!timer) timer = setTimeout(() => { timer = null; loadPreview(); }, 1000);
    });
    ctx.onCleanup(() => { stop(); clearTimeout(timer); });
  }

  drawFacts();
  root.append(
    el("div", { class: "panel" }, facts, statusLine, actionStatus),
    el(
      "div",
      { class: "two-col" },
      section("Edit", editForm, saved),
      section(
        "Next runs (preview)",
        el(
          "p",
          { class: "muted" },
          "What the next runs would charge now; while you edit, with your unsaved changes (nothing is saved until you save)",
          rule.metricKey ? ", and updated as usage arrives." : ".",
        ),
        preview,
      ),
    ),
    section("Runs", runsBox),
  );
  await Promise.all([loadPreview(), loadRuns()]);
}

export default {
  id: "rules",
  title: "Billing rules",
  admin: false,
  needsProject: true,
  async render(root, ctx) {
    if (ctx.params[0]) return detail(root, ctx, ctx.params[0]);
    return list(root, ctx);
  },
};
