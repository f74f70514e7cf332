// Prints, as JSON, the shapes a .d.ts declares, read with the TypeScript compiler's parser:
//   { interfaces: { Name: { prop: { type, optional } } },   inherited props included,
//     aliases: { Name: type },
//     methods: { Class: { method: returnType } } }
// Each type is its source text with the declaration's type parameters replaced by their
// defaults (so `Job<Result = unknown>`'s `result: Result | null` reads `unknown | null`).
// Usage: node dts-shapes.mjs <typescript module path> <file.d.ts>

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";

const [typescriptPath, file] = process.argv.slice(2);
const ts = createRequire(import.meta.url)(typescriptPath);
const source = ts.createSourceFile(file, readFileSync(file, "utf8"), ts.ScriptTarget.Latest, true);

function defaultsOf(node) {
  const defaults = new Map();
  for (const param of node.typeParameters || []) {
    defaults.set(param.name.text, param.default ? param.default.getText(source) : "unknown");
  }
  return defaults;
}

function resolve(typeNode, defaults) {
  const text = typeNode ? typeNode.getText(source) : "any";
  return text.replace(/\b[A-Z][A-Za-z]*\b/g, (name) => (defaults.has(name) ? defaults.get(name) : name));
}

const declarations = new Map();
ts.forEachChild(source, (node) => {
  if (node.name) declarations.set(node.name.text, node);
});

function propsOf(name) {
  const node = declarations.get(name);
  if (!node || !ts.isInterfaceDeclaration(node)) throw new Error(`no interface ${name}`);
  const defaults = defaultsOf(node);
  const props = {};
  for (const clause of node.heritageClauses || []) {
    for (const base of clause.types) Object.assign(props, propsOf(base.expression.getText(source)));
  }
  for (const member of node.members) {
    if (ts.isPropertySignature(member)) {
      props[member.name.getText(source)] = { type: resolve(member.type, defaults), optional: Boolean(member.questionToken) };
    }
  }
  return props;
}

const shapes = { interfaces: {}, aliases: {}, methods: {} };
for (const [name, node] of declarations) {
  if (ts.isInterfaceDeclaration(node)) shapes.interfaces[name] = propsOf(name);
  else if (ts.isTypeAliasDeclaration(node)) shapes.aliases[name] = resolve(node.type, defaultsOf(node));
  else if (ts.isClassDeclaration(node)) {
    shapes.methods[name] = {};
    for (const member of node.members) {
      if (ts.isMethodDeclaration(member)) shapes.methods[name][member.name.getText(source)] = resolve(member.type, defaultsOf(member));
    }
  }
}
process.stdout.write(JSON.stringify(shapes));
