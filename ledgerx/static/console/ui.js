// LedgerX console: small DOM helpers shared by every page (tenant and admin).

import { ApiError } from "./api.js";

// el("a", { href: "#/x", class: "btn", dataset: { id: 1 }, onclick: fn }, "text", node, [more], null)
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class" || key === "className") node.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2).toLowerCase(), value);
    else if (key === "value" && "value" in node) node.value = value;
    else if (key === "checked" && "checked" in node) node.checked = !!value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.append(child);
    else node.append(document.createTextNode(String(child)));
  }
}

// columns: [{ label, value: row => string|Node, numeric?: bool }]
export function table(columns, rows, { empty = "Nothing here yet.", caption = null } = {}) {
  if (!rows || !rows.length) return el("p", { class: "empty" }, empty);
  const t = el(
    "table",
    {},
    caption ? el("caption", {}, caption) : null,
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col", class: c.numeric ? "num" : null }, c.label)))),
    el(
      "tbody",
      {},
      rows.map((row) =>
        el(
          "tr",
          {},
          columns.map((c) => {
            const v = c.value(row);
            return el("td", { class: c.numeric ? "num" : null, "data-label": c.label }, v === null || v === undefined ? "–" : v);
          }),
        ),
      ),
    ),
  );
  // Wide tables scroll inside their own box, never the page.
  return el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption || "table" }, t);
}

let fieldIds = 0;
// A labelled control: <label for=id>text</label><input id=id>.
export function field(labelText, inputElement) {
  if (!inputElement.id) inputElement.id = `f${++fieldIds}`;
  return el("div", { class: "field" }, el("label", { for: inputElement.id }, labelText), inputElement);
}

// "1234567" -> "1,234,567" (a BigInt string, exact at any size; negative too).
export function formatAmount(value) {
  if (value === null || value === undefined || value === "") return "–";
  const s = String(value);
  const m = /^(-?)(\d+)(\.\d+)?$/.exec(s);
  if (!m) return s;
  return m[1] + m[2].replace(/\B(?=(\d{3})+(?!\d))/g, ",") + (m[3] || "");
}

export function formatTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z").replace(/Z$/, " UTC");
}

export function errorBox(err) {
  const code = err instanceof ApiError ? err.code : (err && err.code) || "ERROR";
  const message = (err && err.message) || String(err);
  return el(
    "div",
    { class: "error-box", role: "alert", dataset: { code } },
    el("strong", {}, code),
    " ",
    message,
    err && err.field ? el("span", { class: "muted" }, ` (field: ${err.field})`) : null,
  );
}

// Marks the main region busy while a promise runs; returns the promise's result.
export async function busy(promise) {
  const main = document.getElementById("main");
  const count = main ? Number(main.dataset.busy || 0) + 1 : 0;
  if (main) { main.dataset.busy = String(count); main.setAttribute("aria-busy", "true"); }
  try {
    return await promise;
  } finally {
    if (main) {
      const left = Number(main.dataset.busy || 1) - 1;
      main.dataset.busy = String(left);
      if (left <= 0) main.removeAttribute("aria-busy");
    }
  }
}

// A heading for a page's main region, and document.title.
export function heading(root, title, ...extra) {
  document.title = `${title} · LedgerX console`;
  const h = el("h1", { id: "page-title", tabindex: "-1" }, title);
  root.append(el("div", { class: "page-head" }, h, ...extra));
  return h;
}

// A form whose submit handler shows ApiErrors inline (and which field they name).
export function form(controls, submitLabel, onSubmit, { cancel = null } = {}) {
  const status = el("div", { class: "form-status", "aria-live": "polite" });
  const submit = el("button", { type: "submit" }, submitLabel);
  const f = el("form", { class: "form", novalidate: true }, controls, el("div", { class: "actions" }, submit, cancel), status);
  f.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.replaceChildren();
    for (const bad of f.querySelectorAll("[aria-invalid]")) bad.removeAttribute("aria-invalid");
    submit.disabled = true;
    try {
      await busy(onSubmit(f));
    } catch (err) {
      status.replaceChildren(errorBox(err));
      if (err && err.field) {
        const input = f.querySelector(`[name="${CSS.escape(err.field)}"]`);
        if (input) { input.setAttribute("aria-invalid", "true"); input.focus(); }
      }
    } finally {
      submit.disabled = false;
    }
  });
  return f;
}

export function button(label, onClick, props = {}) {
  return el("button", { type: "button", ...props, onclick: onClick }, label);
}

export function link(href, ...children) {
  return el("a", { href }, ...children);
}
