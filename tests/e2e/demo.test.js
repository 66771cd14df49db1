// End-to-end test of herald's demo: the ticker pushes `hello` {x, y} every
// second, and the /demo page (loading socket.io-client 4.x or 2.3.0 from the
// server itself) shows the latest values in #xy. The page runs in Debian's
// Chromium, driven through playwright-core; only the server's own origin may
// be reached, so the test passes offline.

import { after, afterEach, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { startHerald } from "./lib/herald.js";
import { ClientPool, EventLog, waitUntil } from "./lib/clients.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.HERALD_E2E_CHROMIUM || "/usr/bin/chromium";
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--headless",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
// The ticker fires once a second; three distinct readings need ~2 s.
const CHANGE_DEADLINE_MS = 10_000;
const TEST = { timeout: 60_000 };
const XY_RE = /^x=(\d+), y=(\d+)$/;

// The client bundles the demo page gets, straight from node_modules.
const require = createRequire(import.meta.url);
function bundle(pkg, file) {
  const path = join(dirname(require.resolve(`${pkg}/package.json`)), "dist", file);
  assert.ok(existsSync(path), `missing ${path}; run npm ci in ${HERE}`);
  return path;
}
const CLIENT_V4 = bundle("socket.io-client", "socket.io.min.js");
const CLIENT_V2 = bundle("socket.io-client-v2", "socket.io.js");
// herald-client's browser bundle, built by clients/js/test/run.sh (or `node build.mjs`).
const CLIENT_HERALD = join(HERE, "..", "..", "clients", "js", "dist", "herald-client.browser.js");
assert.ok(existsSync(CLIENT_HERALD), `missing ${CLIENT_HERALD}; build it: cd clients/js && npm ci && node build.mjs`);

let server;
let browser;
const pool = new ClientPool();

before(async () => {
  server = await startHerald({
    demo: true,
    devAuth: true,
    env: {
      HERALD_DEMO_CLIENT_V4: CLIENT_V4,
      HERALD_DEMO_CLIENT_V2: CLIENT_V2,
      HERALD_DEMO_CLIENT_HERALD: CLIENT_HERALD,
    },
  });
});

after(async () => {
  pool.closeAll();
  await browser?.close().catch(() => {});
  if (!server) return;
  const crashed = server.exited();
  await server.stop();
  if (crashed) throw new Error(`herald exited during the tests\n${server.logs()}`);
});

afterEach(() => pool.closeAll());

function assertTick(args, what) {
  const [data] = args;
  assert.ok(data && typeof data === "object", `${what}: hello without an object: ${JSON.stringify(args)}`);
  for (const k of ["x", "y"]) {
    assert.ok(
      Number.isInteger(data[k]) && data[k] >= 0 && data[k] <= 99,
      `${what}: ${k} should be an integer 0-99: ${JSON.stringify(data)}`,
    );
  }
}

describe("demo ticker", () => {
  for (const version of ["v4", "v2"]) {
    it(`sends hello {x, y} every second to a ${version} client`, TEST, async () => {
      const sock = await pool.connect(version, server.url, { userId: `ticker-${version}` });
      const log = new EventLog(sock, ["hello"]);
      const started = Date.now();
      assertTick(await log.nth("hello", 1, 3_000), "tick 1");
      assertTick(await log.nth("hello", 3, 5_000), "tick 3");
      // Three ticks a second apart take at least ~1 s after the first one.
      assert.ok(Date.now() - started >= 1_000, "ticks arrive faster than once a second");
    });
  }
});

describe("demo page in Chromium", () => {
  before(async () => {
    assert.ok(existsSync(CHROMIUM), `${CHROMIUM} not found; install Debian's chromium package`);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30_000 });
  });

  for (const client of ["4", "2"]) {
    it(`/demo?client=${client} shows changing x, y`, TEST, async () => {
      const context = await browser.newContext();
      try {
        const page = await context.newPage();
        const origin = new URL(server.url).origin;
        const problems = [];
        const consoleErrors = [];
        const ioUrls = [];
        let scriptStatus = null;

        // Only the server's own origin: anything else (a CDN) is refused and recorded.
        await context.route("**/*", (route) => {
          const url = route.request().url();
          if (new URL(url).origin === origin) return route.continue();
          problems.push(`request outside the server's origin: ${url}`);
          return route.abort();
        });
        page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
        page.on("console", (msg) => {
          if (msg.type() === "error") consoleErrors.push(`console error: ${msg.text()} (${msg.location().url})`);
        });
        page.on("request", (req) => {
          if (new URL(req.url()).pathname.startsWith("/socket.io/")) ioUrls.push(req.url());
        });
        page.on("websocket", (ws) => ioUrls.push(ws.url()));
        page.on("response", (res) => {
          const u = new URL(res.url());
          if (u.pathname === "/demo/socket.io.js") scriptStatus = { url: res.url(), status: res.status() };
        });

        const res = await page.goto(`${server.url}/demo?client=${client}`, { waitUntil: "load" });
        assert.equal(res.status(), 200, `GET /demo?client=${client}`);

        const readings = [];
        await waitUntil(
          "#xy to change twice",
          async () => {
            const text = (await page.locator("#xy").textContent({ timeout: 1_000 }))?.trim() ?? null;
            if (text !== null && XY_RE.test(text) && readings.at(-1) !== text) readings.push(text);
            return readings;
          },
          (r) => r.length >= 3,
          { ms: CHANGE_DEADLINE_MS, intervalMs: 100 },
        ).catch((err) => {
          const seen = [...problems, ...consoleErrors].join("\n");
          throw new Error(`${err.message}\nreadings: ${JSON.stringify(readings)}\n${seen}`);
        });

        for (const text of readings) {
          const [, x, y] = XY_RE.exec(text);
          assert.ok(Number(x) <= 99 && Number(y) <= 99, `out of range: ${text}`);
        }

        // The page took the requested client bundle from the server...
        assert.ok(scriptStatus, "the page never loaded /demo/socket.io.js");
        assert.equal(new URL(scriptStatus.url).searchParams.get("v"), client, `script URL ${scriptStatus.url}`);
        assert.equal(scriptStatus.status, 200, `GET ${scriptStatus.url}`);
        // ...and that bundle is the one talking: 2.x speaks Engine.IO 3, 4.x Engine.IO 4.
        const eio = client === "2" ? "3" : "4";
        assert.ok(ioUrls.length > 0, "no Socket.IO traffic seen");
        for (const u of ioUrls) {
          assert.equal(new URL(u).host, new URL(server.url).host, `Socket.IO traffic to another host: ${u}`);
          assert.equal(new URL(u).searchParams.get("EIO"), eio, `client=${client} made ${u}`);
        }
        assert.deepStrictEqual(problems, [], `the page should load cleanly and offline\n${consoleErrors.join("\n")}`);
      } finally {
        await context.close();
      }
    });
  }

  it("shows the demo user's inbox, pushes to it, and keeps two tabs' badges in step", TEST, async () => {
    const context = await browser.newContext();
    try {
      const origin = new URL(server.url).origin;
      await context.route("**/*", (route) =>
        new URL(route.request().url()).origin === origin ? route.continue() : route.abort(),
      );
      const [one, two] = [await context.newPage(), await context.newPage()];
      for (const p of [one, two]) {
        await p.goto(`${server.url}/demo`, { waitUntil: "load" });
        await waitUntil("connected", () => p.locator("#status").textContent(), (t) => t?.startsWith("connected as"), {
          ms: 10_000,
          intervalMs: 100,
        });
      }
      // The inbox runs on herald-client.
      assert.equal(await one.locator("#status").getAttribute("data-client"), "herald-client");
      // One browser, one demo user: both tabs.
      const user = await one.locator("#user").textContent();
      assert.equal(await two.locator("#user").textContent(), user);
      const items = (p) => p.locator("#messages li").allTextContents();
      const badge = (p) => p.locator("#badge").textContent();
      // The page's own push box.
      await one.locator("#text").fill("first");
      await one.locator("#send button").first().click();
      for (const p of [one, two]) {
        await waitUntil("the first message", () => items(p), (l) => l.length === 1 && l[0] === "#1first", {
          ms: 10_000,
          intervalMs: 100,
        });
        assert.equal(await badge(p), "1");
      }
      // The curl line the page shows pushes to the same user.
      const curl = await one.locator("#curl").textContent();
      assert.ok(curl.includes(`"users":["${user}"]`), curl);
      const res = await server.api("POST", "/api/v1/push", { to: { users: [user] }, event: "note", data: { text: "second" } });
      assert.equal(res.status, 200, res.text);
      for (const p of [one, two]) {
        await waitUntil("the second message", () => items(p), (l) => l[0] === "#2second", { ms: 10_000, intervalMs: 100 });
        assert.equal(await badge(p), "2");
      }
      // Read in one tab: the other's badge follows.
      await one.locator("#read").click();
      await waitUntil("the other tab's badge", () => badge(two), (b) => b === "0", { ms: 10_000, intervalMs: 100 });
      // A reload shows the same messages again, once each.
      await two.reload({ waitUntil: "load" });
      await waitUntil("the inbox after a reload", () => items(two), (l) => l.join("|") === "#2second|#1first", {
        ms: 10_000,
        intervalMs: 100,
      });
    } finally {
      await context.close();
    }
  });

  it("says so plainly when the Socket.IO client cannot be loaded", TEST, async () => {
    // No demo.client_* configured: the page would load the client from a CDN, which is
    // out of reach here.
    const bare = await startHerald({ demo: true, devAuth: true });
    const context = await browser.newContext();
    try {
      const origin = new URL(bare.url).origin;
      await context.route("**/*", (route) =>
        new URL(route.request().url()).origin === origin ? route.continue() : route.abort(),
      );
      const page = await context.newPage();
      await page.goto(`${bare.url}/demo`, { waitUntil: "load" });
      const status = await page.locator("#status").textContent();
      assert.match(status, /could not be loaded/);
      assert.match(status, /client_v4/);
    } finally {
      await context.close();
      await bare.stop();
    }
  });
});
