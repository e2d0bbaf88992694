// Platform admins: plans (all of them, archived too), create and edit.

import { busy, el, errorBox, field, form, formatAmount, formatTime, table } from "../ui.js";
import { decimalsOf, frame, hashParams, input, inputError, money, parseMoney, select, statusBadge, wholeNumber } from "./common.js";

const PLAN = `id name tier interval price { amount currency } includedCredits rateLimit { burst perSecond }
  monthlyQuotas { metric limit } features entitlements { featureKey type enabled limit metricKey period config }
  trialDays rolloverCredits archived archivedAt stripePriceId createdAt updatedAt`;
const LIST = `query { plans(includeArchived: true) { ${PLAN} } }`;
const CREATE = `mutation($i: CreatePlanInput!) { createPlan(input: $i) { ${PLAN} } }`;
const UPDATE = `mutation($i: UpdatePlanInput!) { updatePlan(input: $i) { ${PLAN} } }`;
const ARCHIVE = `mutation($id: ID!) { archivePlan(id: $id) { ${PLAN} } }`;

const ENTITLEMENT_EXAMPLE = '[{"featureKey": "sso", "type": "BOOLEAN"},\n {"featureKey": "api_calls", "type": "METERED", "limit": "10000", "metricKey": "api_calls"}]';

// Minor units back to what an operator types ("1250", "USD" -> "12.50").
function major(minor, currency) {
  const places = decimalsOf(currency);
  if (!places) return String(minor);
  const digits = String(minor).padStart(places + 1, "0");
  return `${digits.slice(0, -places)}.${digits.slice(-places)}`;
}

function lines(text) {
  return String(text || "").split("\n").map((l) => l.trim()).filter(Boolean);
}

function parseQuotas(text) {
  return lines(text).map((line) => {
    const m = /^([^=\s]+)\s*=\s*(\d+)$/.exec(line);
    if (!m) throw inputError("monthlyQuotas", `"${line}": write one quota a line as metric=limit`);
    return { metric: m[1], limit: m[2] };
  });
}

function parseEntitlements(text) {
  const s = String(text || "").trim();
  if (!s) return [];
  let value;
  try {
    value = JSON.parse(s);
  } catch (e) {
    throw inputError("entitlements", `not JSON: ${e.message}`);
  }
  if (!Array.isArray(value)) throw inputError("entitlements", "a JSON array of entitlements");
  return value;
}

function entitlementInputs(plan) {
  return plan.entitlements.map((e) => {
    const out = { featureKey: e.featureKey, type: e.type, enabled: e.enabled };
    if (e.limit !== null) out.limit = e.limit;
    if (e.metricKey !== null) out.metricKey = e.metricKey;
    if (e.period !== null) out.period = e.period;
    if (e.config !== null) out.config = e.config;
    return out;
  });
}

function planForm(ctx, plan, done, cancel) {
  const editing = !!plan;
  const cur0 = plan ? plan.price.currency : "USD";
  const name = input("name", { required: true, value: plan ? plan.name : "" });
  const tier = select("tier", [["FREE", "Free"], ["PRO", "Pro"], ["ENTERPRISE", "Enterprise"]], plan ? plan.tier : "PRO");
  const interval = select("interval", [["MONTH", "Monthly"], ["YEAR", "Yearly"]], plan ? plan.interval : "MONTH");
  tier.disabled = interval.disabled = editing; // fixed once created
  const price = input("price", { inputmode: "decimal", required: true, value: plan ? major(plan.price.amount, cur0) : "", placeholder: "e.g. 29.00" });
  const currency = input("currency", { value: cur0, maxlength: "3", size: "4" });
  const included = input("includedCredits", { inputmode: "numeric", value: plan ? plan.includedCredits : "0" });
  const trial = input("trialDays", { inputmode: "numeric", value: plan ? String(plan.trialDays) : "0" });
  const burst = input("rateLimitBurst", { inputmode: "numeric", value: plan && plan.rateLimit ? String(plan.rateLimit.burst) : "" });
  const perSecond = input("rateLimitPerSecond", { inputmode: "decimal", value: plan && plan.rateLimit ? String(plan.rateLimit.perSecond) : "" });
  const rollover = el("input", { type: "checkbox", name: "rolloverCredits", id: editing ? "plan-edit-rollover" : "plan-rollover", checked: plan ? plan.rolloverCredits : false });
  const features = el("textarea", { name: "features", rows: "3" }, plan ? plan.features.join("\n") : "");
  const quotas = el("textarea", { name: "monthlyQuotas", rows: "3", placeholder: "api_calls=100000" }, plan ? plan.monthlyQuotas.map((q) => `${q.metric}=${q.limit}`).join("\n") : "");
  const entitlements = el(
    "textarea",
    { name: "entitlements", rows: "4", spellcheck: "false", placeholder: ENTITLEMENT_EXAMPLE },
    plan && plan.entitlements.length ? JSON.stringify(entitlementInputs(plan), null, 1) : "",
  );

  const f = form(
    [
      el(
        "div",
        { class: "adm-grid" },
        field("Name", name),
        field("Tier", tier),
        field("Interval", interval),
        field("Price", price),
        field("Currency", currency),
        field("Included credits per period", included),
        field("Trial days", trial),
        field("Rate limit: burst (empty: the default)", burst),
        field("Rate limit: per second", perSecond),
      ),
      el("div", { class: "adm-check" }, rollover, el("label", { for: rollover.id }, "Included credits roll over (never expire)")),
      el("div", { class: "adm-grid adm-grid-wide" },
        field("Features (one a line)", features),
        field("Monthly quotas (metric=limit, one a line)", quotas),
        field("Entitlements (JSON array)", entitlements),
      ),
    ],
    editing ? "Save plan" : "Create plan",
    async () => {
      const cur = currency.value.trim().toUpperCase();
      if (!/^[A-Z]{3}$/.test(cur)) throw inputError("currency", "enter a three-letter currency code");
      const i = {};
      const n = name.value.trim();
      if (!n) throw inputError("name", "enter a name");
      const amount = parseMoney(price.value, cur, "price");
      const credits = wholeNumber(included.value, "includedCredits", { optional: false });
      const trialDays = Number(wholeNumber(trial.value, "trialDays", { optional: false }));
      let rateLimit = null;
      if (burst.value.trim() || perSecond.value.trim()) {
        const b = wholeNumber(burst.value, "rateLimitBurst", { min: 1, optional: false });
        const ps = Number(perSecond.value.trim());
        if (!perSecond.value.trim() || !Number.isFinite(ps) || ps <= 0) throw inputError("rateLimitPerSecond", "enter a rate above 0");
        rateLimit = { burst: Number(b), perSecond: ps };
      }
      const featureList = lines(features.value);
      const quotaList = parseQuotas(quotas.value);
      const entitlementList = parseEntitlements(entitlements.value);
      let saved;
      if (!editing) {
        Object.assign(i, {
          name: n, tier: tier.value, interval: interval.value, price: { amount, currency: cur },
          includedCredits: credits, trialDays, rolloverCredits: rollover.checked, rateLimit,
          features: featureList, monthlyQuotas: quotaList, entitlements: entitlementList,
        });
        saved = (await ctx.gql(CREATE, { i })).createPlan;
      } else {
        // Only what changed: an unchanged price makes no new Stripe Price.
        i.id = plan.id;
        if (n !== plan.name) i.name = n;
        if (amount !== plan.price.amount || cur !== plan.price.currency) i.price = { amount, currency: cur };
        if (credits !== plan.includedCredits) i.includedCredits = credits;
        if (trialDays !== plan.trialDays) i.trialDays = trialDays;
        if (rollover.checked !== plan.rolloverCredits) i.rolloverCredits = rollover.checked;
        if (JSON.stringify(rateLimit) !== JSON.stringify(plan.rateLimit)) {
          if (rateLimit) i.rateLimit = rateLimit;
          else i.clearRateLimit = true;
        }
        if (JSON.stringify(featureList) !== JSON.stringify(plan.features)) i.features = featureList;
        if (JSON.stringify(quotaList) !== JSON.stringify(plan.monthlyQuotas)) i.monthlyQuotas = quotaList;
        if (JSON.stringify(entitlementList) !== JSON.stringify(entitlementInputs(plan))) i.entitlements = entitlementList;
        saved = (await ctx.gql(UPDATE, { i })).updatePlan;
      }
      done(saved, editing);
    },
    { cancel: cancel ? el("button", { type: "button", class: "adm-cancel", onclick: cancel }, "Cancel") : null },
  );
  f.id = editing ? "plan-edit-form" : "plan-form";
  return f;
}

export default {
  id: "plans",
  title: "Plans",
  admin: true,
  needsProject: false,
  async render(root, ctx) {
    const page = frame(root, ctx, "Plans");
    if (!page) return;
    const out = el("div", { id: "plan-list" });
    const status = el("div", { class: "adm-status", id: "plan-status", role: "status", "aria-live": "polite" });
    const editor = el("section", { class: "adm-section", id: "plan-editor", "aria-labelledby": "plan-edit-heading", hidden: true });
    let plans = [];

    const closeEditor = () => {
      editor.hidden = true;
      editor.replaceChildren();
    };
    const saved = (p, editing) => {
      status.replaceChildren(`${editing ? "Saved" : "Created"} plan ${p.name}.`);
      if (editing) closeEditor();
      load();
    };
    const edit = (p) => {
      editor.hidden = false;
      const h = el("h2", { id: "plan-edit-heading", tabindex: "-1" }, `Edit ${p.name}`);
      editor.replaceChildren(h, planForm(ctx, p, saved, () => { closeEditor(); out.querySelector(`tr[data-id="${p.id}"] .adm-edit`)?.focus(); }));
      h.focus();
    };

    const archiveButton = (p) => {
      const wrap = el("span", { class: "adm-row-actions" });
      const ask = el("button", { type: "button", class: "adm-archive secondary", "aria-label": `Archive ${p.name}` }, "Archive");
      ask.addEventListener("click", () => {
        const yes = el("button", { type: "button", class: "adm-confirm adm-danger", "aria-label": `Confirm: archive ${p.name}` }, "Confirm archive");
        const no = el("button", { type: "button", class: "adm-cancel" }, "Cancel");
        no.addEventListener("click", () => { wrap.replaceChildren(ask); ask.focus(); });
        yes.addEventListener("click", async () => {
          yes.disabled = true;
          try {
            const done = (await busy(ctx.gql(ARCHIVE, { id: p.id }))).archivePlan;
            status.replaceChildren(`Archived ${done.name}.`);
            await load();
          } catch (err) {
            status.replaceChildren(errorBox(err));
            yes.disabled = false;
          }
        });
        wrap.replaceChildren(yes, no);
        yes.focus();
      });
      wrap.append(ask);
      return wrap;
    };

    const draw = () => {
      out.replaceChildren(
        table(
          [
            { label: "Plan", value: (p) => el("span", {}, el("strong", {}, p.name), el("br"), el("span", { class: "muted" }, `${p.tier} · ${p.interval === "YEAR" ? "yearly" : "monthly"}`)) },
            { label: "Price", value: (p) => el("span", { class: "adm-nowrap" }, money(p.price)), numeric: true },
            { label: "Included credits", value: (p) => formatAmount(p.includedCredits), numeric: true },
            { label: "Trial", value: (p) => (p.trialDays ? `${p.trialDays} days` : "none") },
            { label: "Rate limit", value: (p) => (p.rateLimit ? `${p.rateLimit.burst} burst, ${p.rateLimit.perSecond}/s` : "default") },
            {
              label: "Grants",
              value: (p) =>
                el(
                  "ul",
                  { class: "adm-grants" },
                  p.monthlyQuotas.map((q) => el("li", {}, `${q.metric}: ${formatAmount(q.limit)} a month`)),
                  p.entitlements.map((e) => el("li", {}, `${e.featureKey} (${e.type.toLowerCase()}${e.enabled ? "" : ", off"})`)),
                  p.features.map((f) => el("li", { class: "muted" }, f)),
                ),
            },
            { label: "Status", value: (p) => el("span", {}, statusBadge(p.archived ? "ARCHIVED" : "ACTIVE"), p.archivedAt ? ` ${formatTime(p.archivedAt)}` : "") },
            {
              label: "Actions",
              value: (p) =>
                el(
                  "span",
                  { class: "adm-row-actions" },
                  el("button", { type: "button", class: "adm-edit secondary", "aria-label": `Edit ${p.name}`, onclick: () => edit(p) }, "Edit"),
                  p.archived ? null : archiveButton(p),
                ),
            },
          ],
          plans,
          { caption: "Plans, archived ones included", empty: "No plans yet." },
        ),
      );
      for (const tr of out.querySelectorAll("tbody tr")) {
        const p = plans[tr.sectionRowIndex];
        tr.dataset.id = p.id;
        tr.dataset.name = p.name;
        tr.dataset.archived = String(p.archived);
      }
    };

    const load = async () => {
      try {
        plans = (await busy(ctx.gql(LIST))).plans;
        draw();
      } catch (err) {
        out.replaceChildren(errorBox(err));
      }
    };

    page.append(
      el("section", { class: "adm-section", "aria-labelledby": "plan-list-heading" }, el("h2", { id: "plan-list-heading" }, "All plans"), status, out),
      editor,
      el("section", { class: "adm-section", "aria-labelledby": "plan-form-heading" }, el("h2", { id: "plan-form-heading" }, "New plan"), planForm(ctx, null, saved, null)),
    );
    await load();
    const [id] = hashParams(ctx);
    const wanted = id && plans.find((p) => p.id === id);
    if (wanted) edit(wanted);
  },
};
