// Runs a wasm32-wasip1 program under Node's WASI, which executes it with V8 (the engine
// Envoy's Wasm runtime uses): the core's tests (make test-wasm) and the bench's programs.
// Usage: node run-wasi.mjs PROGRAM.wasm [ARGS...]
//
// Imports other than WASI's (the proxy-wasm host functions of a program that links the
// filter's crate) are never called by these programs; they are stubbed so that the module
// can be instantiated.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, exit } from "node:process";

const [file, ...args] = argv.slice(2);
const wasi = new WASI({ version: "preview1", args: [file, ...args], env: {}, returnOnExit: true });
const module = await WebAssembly.compile(await readFile(file));
const imports = wasi.getImportObject();
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.kind === "function" && !(imports[imp.module] && imports[imp.module][imp.name])) {
    imports[imp.module] ??= {};
    imports[imp.module][imp.name] = () => {
      throw new Error(`${imp.module}.${imp.name} is not available here`);
    };
  }
}
const instance = await WebAssembly.instantiate(module, imports);
// A program linking the filter's crate also exports the filter's `_initialize`, which WASI
// refuses next to `_start`; only the command's own entry point is handed over.
const { _start, memory } = instance.exports;
exit(wasi.start({ exports: { _start, memory } }));
