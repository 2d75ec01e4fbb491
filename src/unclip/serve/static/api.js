// Renders /openapi.json as a plain reference page (the server runs offline, so no Swagger UI CDN).
"use strict";

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function resolve(spec, schema) {
  while (schema && schema.$ref) schema = spec.components.schemas[schema.$ref.split("/").pop()];
  return schema || {};
}

function typeName(spec, schema) {
  schema = resolve(spec, schema);
  if (schema.anyOf) return schema.anyOf.map((s) => typeName(spec, s)).join(" | ");
  if (schema.enum) return schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.const !== undefined) return JSON.stringify(schema.const);
  if (schema.type === "array") return `${typeName(spec, schema.items)}[]`;
  if (schema.format === "binary") return "file";
  return schema.title && !schema.type ? schema.title : (schema.type || "object");
}

function limits(spec, schema) {
  schema = resolve(spec, schema);
  const parts = [];
  for (const s of [schema, ...(schema.anyOf || [])]) {
    if (s.minimum !== undefined) parts.push(`≥ ${s.minimum}`);
    if (s.maximum !== undefined) parts.push(`≤ ${s.maximum}`);
    if (s.minLength !== undefined) parts.push(`min length ${s.minLength}`);
    if (s.maxLength !== undefined) parts.push(`max length ${s.maxLength}`);
  }
  return parts.join(", ");
}

function fieldTable(spec, rows) {
  const table = el("table", undefined, "fields");
  const head = table.createTHead().insertRow();
  for (const title of ["name", "type", "required", "default", "limits", "description"]) head.append(el("th", title));
  const body = table.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    tr.append(el("td", row.name, "code"), el("td", typeName(spec, row.schema)), el("td", row.required ? "yes" : ""),
              el("td", row.schema && row.schema.default !== undefined ? JSON.stringify(row.schema.default) : ""),
              el("td", limits(spec, row.schema)), el("td", row.description || (row.schema || {}).description || ""));
  }
  return table;
}

function objectRows(spec, schema) {
  schema = resolve(spec, schema);
  const required = new Set(schema.required || []);
  return Object.entries(schema.properties || {}).map(([name, property]) => (
    { name, schema: property, required: required.has(name), description: resolve(spec, property).description }));
}

function operation(spec, method, path, op) {
  const section = el("section", undefined, "endpoint");
  const title = el("h2");
  title.append(el("span", method.toUpperCase(), `method ${method}`), el("span", ` ${path}`, "code"));
  section.append(title, el("p", op.summary || ""));
  if (op.description) section.append(el("p", op.description, "muted"));
  const params = (op.parameters || []).map((p) => ({ name: `${p.name} (${p.in})`, schema: p.schema,
                                                     required: p.required, description: p.description }));
  if (params.length) section.append(el("h3", "parameters"), fieldTable(spec, params));
  const content = (op.requestBody || {}).content || {};
  for (const [type, media] of Object.entries(content)) {
    section.append(el("h3", `body: ${type}`), fieldTable(spec, objectRows(spec, media.schema)));
  }
  const codes = Object.entries(op.responses || {}).map(([code, r]) => `${code} ${r.description || ""}`);
  section.append(el("h3", "responses"), el("p", codes.join(" · "), "muted"));
  return section;
}

async function render() {
  const root = document.getElementById("api");
  try {
    const spec = await (await fetch("/openapi.json")).json();
    root.innerHTML = "";
    root.append(el("h1", `${spec.info.title} ${spec.info.version}`), el("p", spec.info.description || ""));
    for (const [path, methods] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(methods)) root.append(operation(spec, method, path, op));
    }
    const schemas = el("section", undefined, "endpoint");
    schemas.append(el("h2", "response bodies"));
    for (const name of ["JobOut", "ResultOut", "ImageOut", "ProgressOut", "ErrorOut"]) {
      if (spec.components.schemas[name]) {
        schemas.append(el("h3", name), fieldTable(spec, objectRows(spec, { $ref: `#/components/schemas/${name}` })));
      }
    }
    root.append(schemas);
  } catch (error) {
    root.textContent = `cannot read /openapi.json: ${error.message}`;
  }
}

render();
