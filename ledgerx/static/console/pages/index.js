// The tenant pages of the console, in menu order.
import projects from "./projects.js";
import overview from "./overview.js";
import wallets from "./wallets.js";
import usage from "./usage.js";
import rules from "./rules.js";
import runs from "./runs.js";
import invoices from "./invoices.js";
import webhooks from "./webhooks.js";
import audit from "./audit.js";

export default [projects, overview, wallets, usage, rules, runs, invoices, webhooks, audit];
