// Audit log: who changed what, newest first (project admins).

import { el, heading, formatTime } from "../ui.js";
import { pagedTable } from "./common.js";

const AUDIT = `query($p: ID!, $after: String) { auditLog(projectId: $p, first: 50, after: $after) {
  edges { node { id action actorType actorId targetType targetId requestId ip at } } pageInfo { hasNextPage endCursor } } }`;

export default {
  id: "audit",
  title: "Audit log",
  admin: false,
  needsProject: true,
  async render(root, ctx) {
    heading(root, "Audit log");
    root.append(
      await pagedTable(
        [
          { label: "When", value: (a) => formatTime(a.at) },
          { label: "Action", value: (a) => el("code", { class: "action" }, a.action) },
          { label: "Actor", value: (a) => `${a.actorType}${a.actorId ? ` ${a.actorId}` : ""}` },
          { label: "Target", value: (a) => (a.targetType ? `${a.targetType} ${a.targetId || ""}` : "–") },
          { label: "Request", value: (a) => a.requestId || "–" },
        ],
        async (after) => (await ctx.gql(AUDIT, { p: ctx.projectId, after })).auditLog,
        { empty: "No audit entries.", caption: "Audit log, newest first", id: "audit-table" },
      ),
    );
  },
};
