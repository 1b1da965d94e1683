// What a Wasm module costs before it runs: its size, the sizes of its code and data
// sections, and how long V8 takes to compile it. One JSON line per file.
// Usage: node --no-liftoff --no-wasm-lazy-compilation module.mjs FILE.wasm...
// (those flags make V8 compile every function with its optimizing compiler, up front;
// without them the time is Liftoff's, or lazy.) V8 caches a module it has compiled, so each
// file is compiled once per process: run the script again for more samples.
import { readFile } from "node:fs/promises";
import { argv } from "node:process";

const args = argv.slice(2);

const NAMES = ["custom", "type", "import", "function", "table", "memory", "global", "export",
  "start", "element", "code", "data", "datacount", "tag"];

function leb(bytes, at) {
  let value = 0, shift = 0, b;
  do {
    b = bytes[at++];
    value += (b & 0x7f) * 2 ** shift;
    shift += 7;
  } while (b & 0x80);
  return [value, at];
}

function sections(bytes) {
  const out = {};
  let at = 8;
  while (at < bytes.length) {
    const id = bytes[at++];
    let size;
    [size, at] = leb(bytes, at);
    let name = NAMES[id] ?? `id${id}`;
    if (id === 0) {
      const [len, p] = leb(bytes, at);
      name = "custom:" + new TextDecoder().decode(bytes.subarray(p, p + len));
    }
    out[name] = (out[name] ?? 0) + size;
    at += size;
  }
  return out;
}

for (const file of args) {
  const bytes = await readFile(file);
  const start = performance.now();
  await WebAssembly.compile(bytes);
  const compileMs = performance.now() - start;
  const s = sections(bytes);
  console.log(JSON.stringify({
    file: file.split("/").pop(),
    bytes: bytes.length,
    code_bytes: s.code ?? 0,
    data_bytes: s.data ?? 0,
    sections: s,
    compile_ms: Number(compileMs.toFixed(1)),
  }));
}
