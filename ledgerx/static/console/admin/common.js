// Shared by the platform-admin pages: money as exact strings, the page frame, hash parameters.

import { el, errorBox } from "../ui.js";

// ISO 4217 currencies without minor units (the rest have two; LedgerX bills in these).
const ZERO_DECIMALS = new Set(["BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"]);

export function decimalsOf(currency) {
  return ZERO_DECIMALS.has(String(currency || "").toUpperCase()) ? 0 : 2;
}

function group(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

// "123456", "USD" -> "USD 1,234.56" (string arithmetic: exact at any size, never a float).
export function formatMoney(minor, currency) {
  if (minor === null || minor === undefined || minor === "") return "–";
  const m = /^(-?)(\d+)$/.exec(String(minor));
  const cur = String(currency || "").toUpperCase();
  if (!m) return `${cur} ${minor}`;
  const places = decimalsOf(cur);
  let digits = m[2].replace(/^0+(?=\d)/, "");
  if (places === 0) return `${m[1]}${cur} ${group(digits)}`;
  digits = digits.padStart(places + 1, "0");
  const whole = digits.slice(0, -places);
  const frac = digits.slice(-places);
  return `${m[1]}${cur} ${group(whole)}.${frac}`;
}

export function money(value) {
  return value ? formatMoney(value.amount, value.currency) : "–";
}

// "12.5", "USD" -> "1250": what an operator types in major units, as minor units (exact).
export function parseMoney(text, currency, field) {
  const s = String(text || "").trim().replace(/,/g, "");
  const places = decimalsOf(currency);
  const m = /^(\d+)(?:\.(\d*))?$/.exec(s);
  if (!m || (m[2] && m[2].length > places)) {
    throw inputError(
      field,
      places ? `enter an amount like 12.50 (at most ${places} decimals)` : `enter a whole amount (${currency} has no minor unit)`,
    );
  }
  const frac = (m[2] || "").padEnd(places, "0");
  return (m[1] + frac).replace(/^0+(?=\d)/, "");
}

// The same shape as an ApiError, for what the page refuses before asking the API.
export function inputError(field, message) {
  const e = new Error(message);
  e.code = "BAD_USER_INPUT";
  e.field = field;
  return e;
}

export function wholeNumber(text, field, { min = 0, optional = true } = {}) {
  const s = String(text || "").trim();
  if (!s) {
    if (optional) return null;
    throw inputError(field, "required");
  }
  if (!/^\d+$/.test(s) || BigInt(s) < BigInt(min)) throw inputError(field, `enter a whole number of at least ${min}`);
  return s;
}

export function percent(decimal) {
  const n = Number(decimal);
  return Number.isFinite(n) ? `${(n * 100).toFixed(2)}%` : String(decimal);
}

// The hash's parts after the page id: "#/stripe-inbox/whe_1" -> ["whe_1"].
export function hashParams(ctx) {
  if (ctx && Array.isArray(ctx.params)) return ctx.params;
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean);
  return parts.slice(1).map(decodeURIComponent);
}

// The frame of every admin page; refuses to draw for non-admins (the API refuses them too).
export function frame(root, ctx, title) {
  root.replaceChildren();
  const page = el("div", { class: "adm" });
  root.append(page);
  document.title = `${title} · LedgerX console`;
  page.append(el("div", { class: "page-head" }, el("h1", { id: "page-title", tabindex: "-1" }, title)));
  const user = ctx && ctx.user;
  if (!user || !user.isPlatformAdmin) {
    page.append(errorBox({ code: "FORBIDDEN", message: "This page is for platform admins." }));
    return null;
  }
  ensureStylesheet();
  return page;
}

// admin.css beside the console's files (a <link>, allowed by style-src 'self'); the shell may link
// it itself, in which case this finds it and adds nothing.
export function ensureStylesheet() {
  const href = new URL("../admin.css", import.meta.url).href;
  for (const link of document.querySelectorAll('link[rel="stylesheet"]')) if (link.href === href) return;
  document.head.append(el("link", { rel: "stylesheet", href }));
}

export function card(label, value, raw, id) {
  return el(
    "div",
    { class: "adm-card", id, dataset: { value: raw ?? "" } },
    el("h3", { class: "adm-card-label" }, label),
    el("p", { class: "adm-figure" }, value),
  );
}

export function statusBadge(status) {
  return el("span", { class: "adm-badge", dataset: { status: String(status || "").toLowerCase() } }, status);
}

export function select(name, options, value) {
  return el(
    "select",
    { name },
    options.map(([v, label]) => el("option", { value: v, selected: v === value ? true : null }, label)),
  );
}

export function input(name, props = {}) {
  const node = el("input", { name, type: "text", autocomplete: "off", ...props });
  if (props.value !== undefined && props.value !== null) node.defaultValue = props.value; // what form.reset() restores
  return node;
}
