// The page of the design herald grew from, unchanged (fixtures/seed-page.html, verbatim:
// socket.io-client 2.3.0, `io.connect('http://127.0.0.1:9092')`, no token, no user id),
// against `herald serve --dev-auth --demo --listen 127.0.0.1:9092`. Only its two script
// tags are pointed at local copies. Loaded in headless Chromium from another origin and
// as a file, it must show x and y changing: anonymous connections get the demo's
// broadcasts, and development mode lets any origin poll, the file's `null` included.

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { createRequire } from "node:module";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

import { chromium } from "playwright-core";

import { api, startHerald } from "./lib/herald.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);
const CHROMIUM = process.env.HERALD_E2E_CHROMIUM || "/usr/bin/chromium";
const TEST = { timeout: 60_000 };
const SEED = readFileSync(join(HERE, "fixtures", "seed-page.html"), "utf8");
const JQUERY = join(dirname(require.resolve("jquery/package.json")), "dist", "jquery.min.js");
const SOCKET_IO = join(dirname(require.resolve("socket.io-client-v2/package.json")), "dist", "socket.io.js");
const PORT = 9092;

/** The seed page with its two script sources replaced, nothing else. */
function seedPage(jquery, socketIo) {
  const page = SEED.replace("http://libs.baidu.com/jquery/2.0.0/jquery.min.js", jquery).replace(
    "https://lib.baomitu.com/socket.io/2.3.0/socket.io.js",
    socketIo,
  );
  assert.ok(page.includes(jquery) && page.includes(socketIo), "the seed page's script tags changed");
  assert.ok(page.includes("io.connect('http://127.0.0.1:9092')"), "the seed page must connect as written");
  return page;
}

let herald;
let site;
let browser;

before(async () => {
  herald = await startHerald({
    demo: true,
    devAuth: true,
    listen: `127.0.0.1:${PORT}`,
    env: { HERALD_ADMIN_LISTEN: "127.0.0.1:0" },
  }).catch((e) => {
    throw new Error(`herald could not listen on 127.0.0.1:${PORT}, where the seed page connects: ${e.message}`);
  });
  // Another origin: a page server of its own.
  site = createServer((req, res) => {
    const files = {
      "/": ["text/html", seedPage("/jquery.min.js", "/socket.io.js")],
      "/jquery.min.js": ["application/javascript", readFileSync(JQUERY)],
      "/socket.io.js": ["application/javascript", readFileSync(SOCKET_IO)],
    };
    const f = files[req.url];
    if (!f) return res.writeHead(404).end();
    res.writeHead(200, { "Content-Type": f[0] }).end(f[1]);
  });
  await new Promise((resolve) => site.listen(0, "127.0.0.1", resolve));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--allow-file-access-from-files"],
    timeout: 30_000,
  });
});

after(async () => {
  await browser?.close().catch(() => {});
  site?.close();
  await herald?.stop();
});

/** Waits until #x/#y have shown `n` different readings after the initial 0, 0. */
async function readings(page, n) {
  const seen = new Set();
  const deadline = Date.now() + 15_000;
  while (seen.size < n) {
    assert.ok(Date.now() < deadline, `x, y changed only ${seen.size} times: ${[...seen]}`);
    const text = await page.locator("#display").innerText();
    const m = /x=(\d+), y=(\d+)/.exec(text.replace(/\s+/g, " "));
    if (m && !(m[1] === "0" && m[2] === "0")) seen.add(`${m[1]},${m[2]}`);
    await page.waitForTimeout(200);
  }
  return seen;
}

describe("the seed's page, unchanged", () => {
  it("works from another origin", TEST, async () => {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(`http://127.0.0.1:${site.address().port}/`);
    await readings(page, 3);
    assert.deepEqual(errors, []);
    // Counted as anonymous connections.
    const metrics = await api(herald.adminUrl, "GET", "/metrics");
    assert.match(metrics.text, /herald_anonymous_connections [1-9]/);
    await page.close();
  });

  it("works opened as a file", TEST, async () => {
    const dir = mkdtempSync(join(tmpdir(), "herald-seed-"));
    const file = join(dir, "index.html");
    writeFileSync(file, seedPage(pathToFileURL(JQUERY).href, pathToFileURL(SOCKET_IO).href));
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(pathToFileURL(file).href);
    await readings(page, 3);
    assert.deepEqual(errors, []);
    await page.close();
  });
});
