// Runs a wasm32-wasip1 program under Node's WASI, that is inside V8 (the engine Envoy's wasm
// runtime is): `node wasi-run.mjs <program.wasm> <dir to expose> [args...]`. `make bench`
// passes `--no-liftoff --no-wasm-lazy-compilation` so that V8 compiles the whole module
// optimised before it runs, as Envoy does.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";

const [program, dir, ...args] = process.argv.slice(2);
const wasi = new WASI({
  version: "preview1",
  args: [program, ...args],
  env: process.env,
  preopens: { [dir]: dir },
});
const module = await WebAssembly.compile(await readFile(program));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exitCode = wasi.start(instance);
