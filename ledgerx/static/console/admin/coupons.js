// Platform admins: coupons (list, create, archive).

import { busy, el, errorBox, field, form, formatAmount, formatTime, table } from "../ui.js";
import { frame, input, inputError, money, parseMoney, select, statusBadge, wholeNumber } from "./common.js";

const COUPON = `id code name percentOff amountOff { amount currency } bonusCredits bonusCreditsValidDays duration
  durationInMonths maxRedemptions timesRedeemed expiresAt appliesTo archived createdAt`;
const LIST = `query($a: Boolean!) { coupons(includeArchived: $a) { ${COUPON} } }`;
const CATALOG = `query { plans { id name } creditPacks { id name } }`;
const CREATE = `mutation($i: CreateCouponInput!) { createCoupon(input: $i) { ${COUPON} } }`;
const ARCHIVE = `mutation($id: ID!) { archiveCoupon(id: $id) { ${COUPON} } }`;

function discount(c) {
  const parts = [];
  if (c.percentOff !== null && c.percentOff !== undefined) parts.push(`${c.percentOff}% off`);
  if (c.amountOff) parts.push(`${money(c.amountOff)} off`);
  if (c.bonusCredits) parts.push(`${formatAmount(c.bonusCredits)} bonus credits${c.bonusCreditsValidDays ? ` (${c.bonusCreditsValidDays} days)` : ""}`);
  return parts.join(" + ") || "–";
}

function duration(c) {
  return c.duration === "REPEATING" ? `repeating, ${c.durationInMonths} months` : c.duration.toLowerCase();
}

function createForm(ctx, catalog, onCreated) {
  const code = input("code", { required: true, maxlength: "40", autocapitalize: "characters", spellcheck: "false" });
  const name = input("name", { required: true });
  const kind = select("discount", [["percent", "Percent off"], ["amount", "Amount off"], ["none", "No discount (bonus credits only)"]], "percent");
  const percentOff = input("percentOff", { inputmode: "decimal", placeholder: "e.g. 20" });
  const amountOff = input("amountOff", { inputmode: "decimal", placeholder: "e.g. 5.00" });
  const currency = input("currency", { value: "USD", maxlength: "3", size: "4" });
  const bonusCredits = input("bonusCredits", { inputmode: "numeric" });
  const bonusDays = input("bonusCreditsValidDays", { inputmode: "numeric" });
  const durationSel = select("duration", [["ONCE", "Once"], ["REPEATING", "Repeating"], ["FOREVER", "Forever"]], "ONCE");
  const months = input("durationInMonths", { inputmode: "numeric" });
  const maxRedemptions = input("maxRedemptions", { inputmode: "numeric" });
  const expiresAt = input("expiresAt", { type: "datetime-local" });
  const targets = [
    ...catalog.plans.map((p) => ({ id: p.id, label: `Plan: ${p.name}` })),
    ...catalog.creditPacks.map((p) => ({ id: p.id, label: `Credit pack: ${p.name}` })),
  ];
  const boxes = targets.map((t) => {
    const box = el("input", { type: "checkbox", name: "appliesTo", value: t.id, id: `applies-${t.id}` });
    return el("div", { class: "adm-check" }, box, el("label", { for: box.id }, t.label));
  });
  const appliesTo = el(
    "fieldset",
    { class: "adm-fieldset" },
    el("legend", {}, "Applies to (none ticked: everything)"),
    boxes.length ? boxes : el("p", { class: "muted" }, "No plans or credit packs yet."),
  );
  const showFields = () => {
    percentOff.disabled = kind.value !== "percent";
    amountOff.disabled = currency.disabled = kind.value !== "amount";
    months.disabled = durationSel.value !== "REPEATING";
  };
  kind.addEventListener("change", showFields);
  durationSel.addEventListener("change", showFields);
  showFields();

  const f = form(
    [
      el(
        "div",
        { class: "adm-grid" },
        field("Code (3–40 letters, digits or dashes)", code),
        field("Name", name),
        field("Discount", kind),
        field("Percent off", percentOff),
        field("Amount off", amountOff),
        field("Currency", currency),
        field("Bonus credits", bonusCredits),
        field("Bonus credits valid for (days)", bonusDays),
        field("Duration", durationSel),
        field("Duration in months (repeating)", months),
        field("Max redemptions", maxRedemptions),
        field("Expires at (UTC)", expiresAt),
      ),
      appliesTo,
    ],
    "Create coupon",
    async (formEl) => {
      const i = { code: code.value.trim(), name: name.value.trim(), duration: durationSel.value };
      if (!i.code) throw inputError("code", "enter a code");
      if (!i.name) throw inputError("name", "enter a name");
      if (kind.value === "percent") {
        const p = percentOff.value.trim();
        if (!/^\d+(\.\d{1,2})?$/.test(p)) throw inputError("percentOff", "enter a percentage above 0, at most 100, two decimals");
        i.percentOff = Number(p);
      } else if (kind.value === "amount") {
        const cur = currency.value.trim().toUpperCase();
        if (!/^[A-Z]{3}$/.test(cur)) throw inputError("currency", "enter a three-letter currency code");
        i.amountOff = { amount: parseMoney(amountOff.value, cur, "amountOff"), currency: cur };
      }
      const bonus = wholeNumber(bonusCredits.value, "bonusCredits", { min: 1 });
      if (bonus) i.bonusCredits = bonus;
      const days = wholeNumber(bonusDays.value, "bonusCreditsValidDays", { min: 1 });
      if (days) i.bonusCreditsValidDays = Number(days);
      if (i.duration === "REPEATING") i.durationInMonths = Number(wholeNumber(months.value, "durationInMonths", { min: 1, optional: false }));
      const max = wholeNumber(maxRedemptions.value, "maxRedemptions", { min: 1 });
      if (max) i.maxRedemptions = Number(max);
      if (expiresAt.value) i.expiresAt = `${expiresAt.value.length === 16 ? `${expiresAt.value}:00` : expiresAt.value}Z`;
      const chosen = [...formEl.querySelectorAll('input[name="appliesTo"]:checked')].map((b) => b.value);
      if (chosen.length) i.appliesTo = chosen;
      const made = (await ctx.gql(CREATE, { i })).createCoupon;
      formEl.reset();
      showFields();
      onCreated(made);
    },
  );
  f.id = "coupon-form";
  f.setAttribute("aria-labelledby", "coupon-form-heading");
  return f;
}

export default {
  id: "coupons",
  title: "Coupons",
  admin: true,
  needsProject: false,
  async render(root, ctx) {
    const page = frame(root, ctx, "Coupons");
    if (!page) return;
    const showArchived = el("input", { type: "checkbox", id: "coupons-archived", name: "includeArchived" });
    const out = el("div", { id: "coupon-list" });
    const status = el("div", { class: "adm-status", id: "coupon-status", role: "status", "aria-live": "polite" });
    let coupons = [];

    const draw = () => {
      out.replaceChildren(
        table(
          [
            { label: "Code", value: (c) => el("code", {}, c.code) },
            { label: "Name", value: (c) => c.name },
            { label: "Discount", value: discount },
            { label: "Duration", value: duration },
            { label: "Redeemed", value: (c) => `${c.timesRedeemed}${c.maxRedemptions ? ` of ${c.maxRedemptions}` : ""}`, numeric: true },
            { label: "Expires", value: (c) => (c.expiresAt ? formatTime(c.expiresAt) : "never") },
            { label: "Applies to", value: (c) => (c.appliesTo.length ? `${c.appliesTo.length} item${c.appliesTo.length === 1 ? "" : "s"}` : "everything") },
            { label: "Status", value: (c) => statusBadge(c.archived ? "ARCHIVED" : "ACTIVE") },
            { label: "Actions", value: (c) => (c.archived ? null : archiveButton(c)) },
          ],
          coupons,
          { caption: "Coupons, newest first", empty: "No coupons yet." },
        ),
      );
      for (const tr of out.querySelectorAll("tbody tr")) {
        const c = coupons[tr.sectionRowIndex];
        tr.dataset.id = c.id;
        tr.dataset.code = c.code;
        tr.dataset.archived = String(c.archived);
      }
    };

    // Two steps (Archive, then Confirm): archiving cannot be undone.
    const archiveButton = (c) => {
      const wrap = el("span", { class: "adm-row-actions" });
      const ask = el("button", { type: "button", class: "adm-archive secondary", "aria-label": `Archive ${c.code}` }, "Archive");
      ask.addEventListener("click", () => {
        const yes = el("button", { type: "button", class: "adm-confirm adm-danger", "aria-label": `Confirm: archive ${c.code}` }, "Confirm archive");
        const no = el("button", { type: "button", class: "adm-cancel" }, "Cancel");
        no.addEventListener("click", () => { wrap.replaceChildren(ask); ask.focus(); });
        yes.addEventListener("click", async () => {
          yes.disabled = true;
          try {
            const done = (await busy(ctx.gql(ARCHIVE, { id: c.id }))).archiveCoupon;
            status.replaceChildren(`Archived ${done.code}.`);
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

    const load = async () => {
      try {
        coupons = (await busy(ctx.gql(LIST, { a: showArchived.checked }))).coupons;
        draw();
      } catch (err) {
        out.replaceChildren(errorBox(err));
      }
    };
    showArchived.addEventListener("change", load);

    let catalog = { plans: [], creditPacks: [] };
    try {
      catalog = await busy(ctx.gql(CATALOG));
    } catch (err) {
      status.replaceChildren(errorBox(err));
    }
    const created = (c) => {
      status.replaceChildren(`Created coupon ${c.code}.`);
      load();
    };
    page.append(
      el(
        "section",
        { class: "adm-section", "aria-labelledby": "coupon-list-heading" },
        el("h2", { id: "coupon-list-heading" }, "All coupons"),
        el("div", { class: "adm-check" }, showArchived, el("label", { for: "coupons-archived" }, "Show archived coupons")),
        status,
        out,
      ),
      el(
        "section",
        { class: "adm-section", "aria-labelledby": "coupon-form-heading" },
        el("h2", { id: "coupon-form-heading" }, "New coupon"),
        createForm(ctx, catalog, created),
      ),
    );
    await load();
  },
};

