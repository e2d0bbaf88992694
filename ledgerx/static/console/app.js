// LedgerX console: the shell. Signs in (or restores the session from the HttpOnly refresh
// cookie), lists the caller's projects, and renders one page object per `#/<page>/<params…>`
// into the main region. Tenant pages come from ./pages/, platform-admin pages from
// ./admin/index.js (default export: an array of page objects).
//
// A page object: { id, title, admin: bool, needsProject: bool, nav?: bool (default true),
//   async render(root, ctx) } with ctx = { projectId, project, projects, user, gql, navigate(hash),
//   params, onCleanup(fn), refreshProjects() }. render may also return a cleanup function.

import { gql, session } from "./api.js";
import { el, errorBox, busy } from "./ui.js";
import tenantPages from "./pages/index.js";
import adminPages from "./admin/index.js";

const $ = (id) => document.getElementById(id);
const PROJECT_KEY = "ledgerx.console.project";
const PROJECTS = `query { projects(first: 100) { edges { node { id name externalKey status testMode viewerRole } } } }`;

const state = { projects: [], projectId: null, cleanups: [], renderSeq: 0, started: false };

function allPages() {
  const user = session.getUser();
  const admin = Array.isArray(adminPages) && user && user.isPlatformAdmin ? adminPages : [];
  return [...tenantPages, ...admin.map((p) => ({ admin: true, ...p }))];
}

function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.dataset.state = kind;
}

export function navigate(hash) {
  const target = hash.startsWith("#") ? hash : `#${hash}`;
  if (location.hash === target) render();
  else location.hash = target;
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [id, ...params] = raw.split("/").filter(Boolean).map((p) => decodeURIComponent(p));
  return { id: id || "", params };
}

function defaultPage() {
  return state.projectId ? "overview" : "projects";
}

function buildNav(activeId) {
  const user = session.getUser();
  const link = (p) =>
    el("li", {}, el("a", { href: `#/${p.id}`, "aria-current": p.id === activeId ? "page" : null, dataset: { page: p.id } }, p.title));
  const tenant = tenantPages.filter((p) => p.nav !== false);
  $("nav-tenant").replaceChildren(...tenant.map(link));
  const admin = user && user.isPlatformAdmin && Array.isArray(adminPages) ? adminPages.filter((p) => p.nav !== false) : [];
  $("nav-admin").replaceChildren(...admin.map(link));
  $("nav-admin").hidden = admin.length === 0;
  $("nav-admin-title").hidden = admin.length === 0;
}

function runCleanups() {
  const list = state.cleanups;
  state.cleanups = [];
  for (const fn of list) {
    try { fn(); } catch (e) { console.error(e); }
  }
}

function projectPicker() {
  const picker = $("project-picker");
  picker.replaceChildren(...state.projects.map((p) => el("option", { value: p.id }, p.name)));
  picker.disabled = state.projects.length === 0;
  if (state.projectId) picker.value = state.projectId;
  picker.parentElement.hidden = state.projects.length === 0;
}

export function selectProject(projectId) {
  if (!state.projects.some((p) => p.id === projectId)) return false;
  state.projectId = projectId;
  try { localStorage.setItem(PROJECT_KEY, projectId); } catch (e) { /* storage off */ }
  $("project-picker").value = projectId;
  return true;
}

async function loadProjects() {
  const data = await gql(PROJECTS);
  state.projects = data.projects.edges.map((e) => e.node);
  let stored = null;
  try { stored = localStorage.getItem(PROJECT_KEY); } catch (e) { /* storage off */ }
  const keep = [state.projectId, stored].find((id) => id && state.projects.some((p) => p.id === id));
  state.projectId = keep || (state.projects[0] ? state.projects[0].id : null);
  projectPicker();
  return state.projects;
}

function noProjectState(root, page) {
  const user = session.getUser();
  document.title = `${page.title} · LedgerX console`;
  root.append(
    el("h1", { id: "page-title", tabindex: "-1" }, page.title),
    el(
      "div",
      { class: "panel empty-state", id: "no-project" },
      el("p", {}, "Pick a project first: this page shows one project's data."),
      el("p", {}, el("a", { href: "#/projects" }, "Find or create a project")),
      user && user.isPlatformAdmin ? el("p", { class: "muted" }, "As a platform admin you can also use the admin pages in the menu.") : null,
    ),
  );
}

async function render() {
  const user = session.getUser();
  if (!user) return;
  const seq = ++state.renderSeq;
  runCleanups();
  let { id, params } = parseHash();
  if (!id) {
    history.replaceState(null, "", `#/${defaultPage()}`);
    id = defaultPage();
  }
  const page = allPages().find((p) => p.id === id);
  buildNav(page ? page.id : null);
  const root = $("page");
  root.replaceChildren();
  root.dataset.page = id;
  delete root.dataset.ready;
  if (!page) {
    document.title = "Not found · LedgerX console";
    root.append(el("h1", { id: "page-title", tabindex: "-1" }, "Page not found"), el("p", {}, el("a", { href: `#/${defaultPage()}` }, "Back to the console")));
    root.dataset.ready = "1";
    return seq;
  }
  if (page.needsProject && !state.projectId) {
    noProjectState(root, page);
    root.dataset.ready = "1";
    return seq;
  }
  const cleanups = [];
  const ctx = {
    projectId: state.projectId,
    project: state.projects.find((p) => p.id === state.projectId) || null,
    projects: state.projects,
    user,
    gql,
    navigate,
    params,
    selectProject: (pid) => {
      const ok = selectProject(pid);
      return ok;
    },
    refreshProjects: async () => { await loadProjects(); return state.projects; },
    onCleanup: (fn) => { if (seq === state.renderSeq) state.cleanups.push(fn); else fn(); },
  };
  document.title = `${page.title} · LedgerX console`;
  try {
    const done = await busy(Promise.resolve(page.render(root, ctx)));
    if (typeof done === "function") ctx.onCleanup(done);
  } catch (err) {
    if (seq !== state.renderSeq) return seq;
    console.warn("page failed:", err && err.message);
    if (!root.querySelector("h1")) root.prepend(el("h1", { id: "page-title", tabindex: "-1" }, page.title));
    root.append(errorBox(err));
  }
  if (seq === state.renderSeq) root.dataset.ready = "1";
  void cleanups;
  return seq;
}

function focusPage() {
  const h = document.getElementById("page-title");
  if (h) h.focus({ preventScroll: false });
}

async function showSignedIn(user) {
  $("signin").hidden = true;
  $("session-bar").hidden = false;
  $("nav").hidden = false;
  $("user-email").textContent = user.email;
  setStatus("signed in", "signed-in");
  try {
    await loadProjects();
  } catch (err) {
    $("page").replaceChildren(el("h1", { id: "page-title" }, "Console"), errorBox(err));
    return;
  }
  await render();
}

function showSignedOut(message = "") {
  runCleanups();
  state.projects = [];
  state.projectId = null;
  $("page").replaceChildren();
  $("nav").hidden = true;
  $("session-bar").hidden = true;
  $("user-email").textContent = "";
  $("signin").hidden = false;
  // Nothing of the last session stays in the form: a fresh, empty sign-in.
  $("signin-form").reset();
  $("password").value = "";
  $("signin-error").textContent = message;
  document.title = "Sign in · LedgerX console";
  setStatus("signed out", "signed-out");
}

async function onSubmit(event) {
  event.preventDefault();
  const button = $("signin-button");
  $("signin-error").textContent = "";
  button.disabled = true;
  try {
    await session.signIn($("email").value.trim(), $("password").value);
    $("password").value = "";
  } catch (err) {
    $("signin-error").textContent = err.message;
  } finally {
    button.disabled = false;
  }
}

async function start() {
  $("signin-form").addEventListener("submit", onSubmit);
  $("signout").addEventListener("click", () => session.signOut());
  $("project-picker").addEventListener("change", (e) => {
    selectProject(e.target.value);
    const { id } = parseHash();
    const page = allPages().find((p) => p.id === id);
    // Entity pages (#/wallets/<id>) belong to the old project: go to the page's list.
    if (page && page.id !== "projects") navigate(`#/${page.id}`);
    else render();
  });
  window.addEventListener("hashchange", async () => {
    // Only the latest render takes the focus: a slower, older one finishing later must not pull
    // it back to its title while the user (or a later navigation) has moved on.
    const seq = await render();
    if (seq !== undefined && seq === state.renderSeq) focusPage();
  });
  let wasSignedIn = false;
  session.onSessionChange((user) => {
    if (user && !wasSignedIn) { wasSignedIn = true; showSignedIn(user); }
    else if (!user && wasSignedIn) { wasSignedIn = false; showSignedOut(); }
    else if (user) $("user-email").textContent = user.email;
  });
  setStatus("restoring session…", "connecting");
  const user = await session.restoreSession();
  if (!user) showSignedOut();
  document.body.dataset.ready = "1";
}

start();
