// Projects: find a project by name, id or external key, pick it; create one.

import { el, heading, table, field, form, formatTime } from "../ui.js";
import { badge } from "./common.js";

const CREATE = `mutation($i: CreateProjectInput!) { createProject(input: $i) { id name } }`;

export default {
  id: "projects",
  title: "Projects",
  admin: false,
  needsProject: false,
  async render(root, ctx) {
    heading(root, "Projects");
    const projects = ctx.projects;
    const search = el("input", { type: "search", name: "q", autocomplete: "off", placeholder: "name, id or external key" });
    const results = el("div", { id: "project-list", "aria-live": "polite" });
    const pick = (p) => {
      ctx.selectProject(p.id);
      ctx.navigate("#/overview");
    };
    const draw = () => {
      const q = search.value.trim().toLowerCase();
      const shown = projects.filter((p) => !q || [p.name, p.id, p.externalKey || ""].some((s) => s.toLowerCase().includes(q)));
      const listed = table(
        [
          { label: "Project", value: (p) => el("button", { type: "button", class: "link", dataset: { project: p.id }, onclick: () => pick(p) }, p.name) },
          { label: "Id", value: (p) => el("code", {}, p.id) },
          { label: "External key", value: (p) => p.externalKey || "–" },
          { label: "Role", value: (p) => p.viewerRole || "–" },
          { label: "Status", value: (p) => badge(p.testMode ? `${p.status} · test` : p.status) },
          { label: "", value: (p) => (p.id === ctx.projectId ? badge("current", "good") : null) },
        ],
        shown,
        { empty: q ? "No project matches." : "No projects yet.", caption: "Your projects" },
      );
      // The last column (the current project's badge) has no visible heading; name it for screen readers.
      const lastTh = listed.querySelector("thead th:last-child");
      if (lastTh) lastTh.append(el("span", { class: "visually-hidden" }, "Current project"));
      results.replaceChildren(listed);
    };
    search.addEventListener("input", draw);

    if (!projects.length) {
      root.append(
        el(
          "div",
          { class: "panel empty-state", id: "no-projects" },
          el("h2", {}, "No projects yet"),
          el("p", {}, "You are not a member of any project. Create one below, or ask a project's owner to invite you."),
          ctx.user.isPlatformAdmin
            ? el("p", { id: "admin-hint" }, "You are a platform admin: the ", el("strong", {}, "Platform admin"), " pages in the menu work without a project.")
            : null,
        ),
      );
    } else {
      root.append(el("div", { class: "panel" }, field("Find a project", search), results));
      draw();
    }

    const name = el("input", { name: "name", required: true, autocomplete: "off" });
    const key = el("input", { name: "externalKey", autocomplete: "off" });
    const created = el("div", { "aria-live": "polite" });
    root.append(
      el(
        "section",
        { class: "panel", "aria-label": "Create a project" },
        el("h2", {}, "Create a project"),
        form([field("Name", name), field("External key (optional)", key)], "Create project", async () => {
          const data = await ctx.gql(CREATE, { i: { name: name.value.trim(), externalKey: key.value.trim() || null } });
          await ctx.refreshProjects();
          ctx.selectProject(data.createProject.id);
          created.textContent = `Created ${data.createProject.name}.`;
          ctx.navigate("#/overview");
        }),
        created,
      ),
    );
    void formatTime;
  },
};
