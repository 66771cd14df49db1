// Builds what the ESM source cannot serve as it is:
//   dist/index.cjs                 the CommonJS entry (require), socket.io-client left external
//   dist/index.d.cts               its types (the same declarations as types/index.d.ts)
//   dist/herald-client.browser.js  one file for a <script> tag, socket.io-client included,
//                                  exposing `Herald` ({ HeraldClient, MemoryStorage, ... })
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, "dist");
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist);

const common = {
  entryPoints: [join(root, "src/index.js")],
  bundle: true,
  target: "es2022",
  legalComments: "none",
  logLevel: "warning",
};

await build({
  ...common,
  outfile: join(dist, "index.cjs"),
  format: "cjs",
  platform: "neutral",
  external: ["socket.io-client"],
});

await build({
  ...common,
  outfile: join(dist, "herald-client.browser.js"),
  format: "iife",
  globalName: "Herald",
  platform: "browser",
  minify: true,
  sourcemap: true,
});

copyFileSync(join(root, "types/index.d.ts"), join(dist, "index.d.cts"));
