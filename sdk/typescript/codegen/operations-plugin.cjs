// A graphql-codegen plugin: one typed method per operation document, on the class `Operations`
// (src/generated/operations.ts), which the hand-written `LedgerX` client extends.
//
// - The method's name is the operation's name in lowerCamelCase (DebitWallet -> debitWallet); it
//   answers the operation's single root field, typed by typescript-operations.
// - A mutation whose only variable is `input` takes that input as its argument. When the input
//   type has a required `idempotencyKey`, the argument's key is optional and made up
//   (crypto.randomUUID) when missing; so is each key of a list of keyed inputs (a batch's events).
//   Such a mutation is safe to send again, so the transport retries it after a network error.
// - Other operations take their variables as one object (optional when every variable is).
// - Subscriptions return an async iterator of the root field's values.
// The JSDoc is the root field's description in schema.graphql. Output is sorted by name, so the
// file depends only on the schema and the documents.
"use strict";

const {
  Kind,
  getNamedType,
  isInputObjectType,
  isListType,
  isNonNullType,
  typeFromAST,
} = require("graphql");

function lowerFirst(name) {
  return name.charAt(0).toLowerCase() + name.slice(1);
}

function suffix(operation) {
  return { query: "Query", mutation: "Mutation", subscription: "Subscription" }[operation];
}

function hasRequiredKey(type) {
  const field = isInputObjectType(type) ? type.getFields().idempotencyKey : undefined;
  return field !== undefined && isNonNullType(field.type);
}

/** The paths (below the input) of lists whose items are inputs with a required idempotencyKey. */
function keyedLists(type) {
  const out = [];
  if (!isInputObjectType(type)) return out;
  for (const field of Object.values(type.getFields()).sort((a, b) => a.name.localeCompare(b.name))) {
    let t = isNonNullType(field.type) ? field.type.ofType : field.type;
    if (isListType(t) && hasRequiredKey(getNamedType(t))) out.push(field.name);
  }
  return out;
}

function comment(text, indent) {
  if (!text) return "";
  const lines = text.trim().split("\n").map((l) => l.replace(/\*\//g, "*\\/").trimEnd());
  return `${indent}/**\n${lines.map((l) => `${indent} *${l ? " " + l : ""}`).join("\n")}\n${indent} */\n`;
}

module.exports = {
  plugin(schema, documents) {
    const ops = [];
    for (const source of documents) {
      for (const def of source.document.definitions) {
        if (def.kind !== Kind.OPERATION_DEFINITION) continue;
        if (!def.name) throw new Error(`an operation without a name in ${source.location}`);
        const roots = def.selectionSet.selections.filter((s) => s.kind === Kind.FIELD);
        if (roots.length !== 1) throw new Error(`${def.name.value}: one root field expected`);
        const root = roots[0];
        const rootType = {
          query: schema.getQueryType(),
          mutation: schema.getMutationType(),
          subscription: schema.getSubscriptionType(),
        }[def.operation];
        const schemaField = rootType.getFields()[root.name.value];
        const variables = (def.variableDefinitions || []).map((v) => ({
          name: v.variable.name.value,
          type: typeFromAST(schema, v.type),
          required: v.type.kind === Kind.NON_NULL_TYPE && !v.defaultValue,
        }));
        ops.push({
          name: def.name.value,
          method: lowerFirst(def.name.value),
          operation: def.operation,
          root: root.alias ? root.alias.value : root.name.value,
          description: schemaField ? schemaField.description : "",
          variables,
        });
      }
    }
    ops.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

    const imports = new Set();
    const types = new Set();
    const helpers = new Set(["Transport"]);
    const helperTypes = new Set(["RequestOptions"]);
    const body = [];
    for (const op of ops) {
      const result = `${op.name}${suffix(op.operation)}`;
      const vars = `${result}Variables`;
      const doc = `${op.name}Document`;
      imports.add(doc);
      types.add(result);
      if (op.variables.length > 0) types.add(vars);
      const answer = `${result}["${op.root}"]`;
      const onlyInput = op.variables.length === 1 && op.variables[0].name === "input";
      const inputType = onlyInput ? getNamedType(op.variables[0].type) : undefined;
      const keyed = op.operation === "mutation" && inputType !== undefined && hasRequiredKey(inputType);
      const lists = op.operation === "mutation" && inputType !== undefined ? keyedLists(inputType) : [];
      const doc_ = comment(op.description, "  ");
      if (op.operation === "subscription") {
        helperTypes.add("LiveSubscription");
        const optional = op.variables.every((v) => !v.required);
        const arg = op.variables.length === 0 ? "" : `variables${optional ? "?" : ""}: ${vars}`;
        const pass = op.variables.length === 0 ? "{}" : optional ? "variables ?? {}" : "variables";
        body.push(
          `${doc_}  ${op.method}(${arg}): LiveSubscription<${answer}> {\n` +
            `    return this.subscribe(${doc}, "${op.name}", ${pass}, "${op.root}");\n  }\n`,
        );
      } else if (onlyInput) {
        const input = `${vars}["input"]`;
        let argType = input;
        if (keyed) argType = `WithOptionalKey<${argType}>`;
        for (const l of lists) argType = `WithOptionalKeys<${argType}, "${l}">`;
        if (keyed) helperTypes.add("WithOptionalKey");
        if (lists.length) helperTypes.add("WithOptionalKeys");
        if (keyed) helpers.add("withKey");
        if (lists.length) helpers.add("withKeys");
        const listArg = lists.length ? `, ${JSON.stringify(lists)}` : "";
        let expr = keyed ? "withKey(input)" : "input";
        if (lists.length) expr = `withKeys(${expr}${listArg})`;
        // Safe to send twice: a query, or a mutation whose input carries an idempotency key.
        const idempotent = op.operation === "query" || keyed || lists.length > 0;
        const cast = keyed || lists.length ? ` as ${vars}` : "";
        body.push(
          `${doc_}  async ${op.method}(input: ${argType}, options?: RequestOptions): Promise<${answer}> {\n` +
            `    const variables = ${expr === "input" ? "{ input }" : `{ input: ${expr} }`}${cast};\n` +
            `    const data = await this.execute(${doc}, "${op.name}", variables, { idempotent: ${idempotent}, ...options });\n` +
            `    return data.${op.root};\n  }\n`,
        );
      } else {
        const optional = op.variables.every((v) => !v.required);
        const arg = op.variables.length === 0 ? "" : `variables${optional ? "?" : ""}: ${vars}, `;
        const pass = op.variables.length === 0 ? "{}" : optional ? "variables ?? {}" : "variables";
        const idempotent = op.operation === "query";
        body.push(
          `${doc_}  async ${op.method}(${arg}options?: RequestOptions): Promise<${answer}> {\n` +
            `    const data = await this.execute(${doc}, "${op.name}", ${pass}, { idempotent: ${idempotent}, ...options });\n` +
            `    return data.${op.root};\n  }\n`,
        );
      }
    }

    const names = ops.map((o) => `  ${JSON.stringify(o.method)}: { operation: ${JSON.stringify(o.operation)}, name: ${JSON.stringify(o.name)}, root: ${JSON.stringify(o.root)} },`);
    return [
      "// Generated by `npm run generate` (codegen/operations-plugin.cjs) from sdk/operations: do not edit.",
      `import {\n${[...imports].sort().map((t) => `  ${t},`).join("\n")}\n} from "./graphql.js";`,
      `import type {\n${[...types].sort().map((t) => `  ${t},`).join("\n")}\n} from "./graphql.js";`,
      `import { ${[...helpers].sort().join(", ")} } from "../transport.js";`,
      `import type { ${[...helperTypes].sort().join(", ")} } from "../transport.js";`,
      "",
      "/** Every operation of sdk/operations: the method, its kind, its name and its root field. */",
      "export const OPERATIONS = {",
      ...names,
      "} as const;",
      "",
      "/** One typed method per operation document (see codegen/operations-plugin.cjs). */",
      "export class Operations extends Transport {",
      body.join("\n"),
      "}",
      "",
    ].join("\n");
  },
};
