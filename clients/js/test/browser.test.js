// The browser bundle (dist/herald-client.browser.js) in Debian's Chromium, driven
// through playwright-core, against the real herald binary ($HERALD_BIN): the page comes
// from a loopback server of the test's own (another origin than herald's, so herald is
// configured to allow it), and the client keeps its positions in the page's localStorage.
// Only those two origins may be reached, so the test runs offline.

import { after, afterEach, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { positionKey } from "../src/index.js";
import { Herald, tokenFor } from "./lib/herald.js";
import { compact, range } from "./lib/wait.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = dirname(HERE);
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
const TEST = { timeout: 60_000 };
const LONG = { timeout: 180_000 };
const WAIT_MS = 10_000;
const FAST = { reconnectDelayMs: 50, reconnectDelayMaxMs: 500 };

// The page's files, by path.
const FILES = {
  "/": ["text/html", join(HERE, "browser/index.html")],
  "/index.html": ["text/html", join(HERE, "browser/index.html")],
  "/harness.js": ["text/javascript", join(HERE, "browser/harness.js")],
  "/herald-client.browser.js": ["text/javascript", join(ROOT, "dist/herald-client.browser.js")],
  "/herald-client.browser.js.map": ["application/json", join(ROOT, "dist/herald-client.browser.js.map")],
};

let pageServer;
let pageOrigin;
let herald;
let browser;
let context;
let page;
let problems;

/** Serves the test page and the bundle on 127.0.0.1:<free port>. */
function servePage() {
  return new Promise((resolve) => {
    const server = createServer((req, res) => {
      const file = FILES[new URL(req.url, "http://x").pathname];
      if (!file) {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { "content-type": file[0], "cache-control": "no-store" });
      res.end(readFileSync(file[1]));
    });
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

before(async () => {
  const bundle = FILES["/herald-client.browser.js"][1];
  assert.ok(existsSync(bundle), `missing ${bundle}; run npm run build`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} not found; install Debian's chromium package`);
  pageServer = await servePage();
  pageOrigin = `http://127.0.0.1:${pageServer.address().port}`;
  herald = await Herald.start({ transport: { cors_origins: [pageOrigin] } });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30_000 });
});

after(async () => {
  await browser?.close().catch(() => {});
  await herald?.destroy();
  pageServer?.close();
});

afterEach(async () => {
  await context?.close().catch(() => {});
  context = null;
});

/** A fresh browser profile (empty localStorage) with the test page open. */
async function openPage() {
  context = await browser.newContext();
  problems = [];
  const allowed = new Set([pageOrigin, new URL(herald.url).origin]);
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (allowed.has(new URL(url).origin)) return route.continue();
    problems.push(`request outside the test's origins: ${url}`);
    return route.abort();
  });
  page = await context.newPage();
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  if (process.env.HERALD_CLIENT_DEBUG_NET) {
    page.on("response", (res) => {
      if (res.status() !== 200) console.log(`response ${res.status()} ${res.request().method()} ${res.url()}`);
    });
    page.on("requestfailed", (req) => console.log(`failed ${req.method()} ${req.url()}: ${req.failure()?.errorText}`));
  }
  await reload();
}

/** Loads the page again: a new client, the same localStorage. */
async function reload() {
  const res = await page.goto(`${pageOrigin}/index.html`, { waitUntil: "load" });
  assert.equal(res.status(), 200);
}

function start(user, options = {}) {
  return page.evaluate(([url, options]) => window.harness.start(url, options), [
    herald.url,
    { token: tokenFor(user), ...FAST, ...options },
  ]);
}

const seqs = () => page.evaluate(() => window.harness.seqs());

async function untilSeq(n, ms = WAIT_MS) {
  try {
    await page.waitForFunction((n) => window.harness.seqs().includes(n), n, { timeout: ms, polling: 50 });
  } catch (err) {
    const log = await page.evaluate(() => ({ seqs: window.harness.seqs(), errors: window.harness.log.errors.slice(-5) }));
    throw new Error(`seq ${n} not handed over within ${ms} ms: seqs ${compact(log.seqs)}, errors ${JSON.stringify(log.errors)}, ${problems}`, { cause: err });
  }
}

/** Waits for `fn` to hold in the page; on timeout says what the client was doing. */
async function pageUntil(what, fn, ms = WAIT_MS) {
  try {
    await page.waitForFunction(fn, null, { timeout: ms, polling: 20 });
  } catch (err) {
    const state = await page.evaluate(() => ({
      seqs: window.harness.seqs().length,
      connects: window.harness.log.connects,
      errors: window.harness.log.errors.slice(-5),
    }));
    throw new Error(`${what} did not happen within ${ms} ms: ${JSON.stringify(state)}; ${problems}`, { cause: err });
  }
}

/** Pushes a marker and waits for it: afterwards the record is complete. */
async function settle(user) {
  const { seq } = await herald.push(user, { marker: true });
  await untilSeq(seq);
  return seq;
}

async function assertExactly(expected, what) {
  const got = await seqs();
  assert.deepEqual(got, expected, `${what}: got ${compact(got)}, want ${compact(expected)}`);
}

describe("herald-client in Chromium", () => {
  it("offline then online: a reloaded page gets exactly what it missed, from localStorage", TEST, async () => {
    await openPage();
    await start("bo", { deviceId: "browser-1" });
    await herald.push("bo", { n: 1 });
    await herald.push("bo", { n: 2 });
    await untilSeq(2);
    await page.evaluate(() => window.harness.close());

    for (let n = 3; n <= 5; n++) await herald.push("bo", { n });
    await reload();
    await start("bo", { deviceId: "browser-1" });
    await untilSeq(5);
    const marker = await settle("bo");
    await assertExactly([3, 4, 5, marker], "after the reload");
    const storage = await page.evaluate(() => window.harness.storage());
    assert.equal(storage[positionKey("bo", "browser-1")], String(marker));
    assert.deepEqual(problems, []);
  });

  it("two users one after the other on the same localStorage each get exactly their own", TEST, async () => {
    await openPage();
    for (let n = 1; n <= 3; n++) await herald.push("al", { n });
    await herald.push("cy", { n: 1, for: "cy" });
    await herald.push("cy", { n: 2, for: "cy" });

    await start("al");
    await untilSeq(3);
    await page.evaluate(() => window.harness.close());

    await reload();
    await start("cy");
    await untilSeq(2);
    const cyMarker = await settle("cy");
    await assertExactly([1, 2, cyMarker], "cy");
    const cyData = await page.evaluate(() => window.harness.log.messages.slice(0, 2).map((m) => m.data.for));
    assert.deepEqual(cyData, ["cy", "cy"]);
    await page.evaluate(() => window.harness.close());

    await herald.push("al", { n: 4 });
    await reload();
    await start("al");
    await untilSeq(4);
    const alMarker = await settle("al");
    await assertExactly([4, alMarker], "al again");
    const storage = await page.evaluate(() => window.harness.storage());
    assert.equal(storage[positionKey("al")], String(alMarker));
    assert.equal(storage[positionKey("cy")], String(cyMarker));
    assert.deepEqual(problems, []);
  });

  it("1,000 pushes while the transport keeps dropping: every seq once, in order", LONG, async () => {
    await openPage();
    // Messages queue up behind handlers that take a moment, so each reconnect resumes
    // from before what is queued and the client must drop what it gets twice.
    await start("di", { handlerDelayMs: 2 });
    await pageUntil("connected", () => window.harness.log.connects === 1);
    // Every 100 pushes the connection is cut under the client, one cut at a time, each
    // once the client is back from the last (the pushes go on meanwhile).
    let drops = 0;
    let cuts = Promise.resolve();
    const cut = async () => {
      await pageUntil("connected before a cut", () => window.harness.connected());
      if (await page.evaluate(() => window.harness.dropTransport())) drops++;
      // The engine closes once what it is writing is out.
      await pageUntil("the cut", () => !window.harness.connected());
    };
    const bySeq = new Map();
    let next = 1;
    let done = 0;
    const worker = async () => {
      while (next <= 1000) {
        const n = next++;
        const { seq } = await herald.push("di", { n });
        bySeq.set(seq, n);
        if (++done % 100 === 50) cuts = cuts.then(cut);
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
    await cuts;
    await untilSeq(1000, 60_000);
    const marker = await settle("di");
    await assertExactly(range(marker), "1,000 pushes");
    const messages = await page.evaluate(() => window.harness.log.messages.slice(0, 1000));
    for (const m of messages) assert.equal(m.data.n, bySeq.get(m.seq), `data of seq ${m.seq}`);
    assert.equal(drops, 10, "the transport was cut every 100 pushes");
    const connects = await page.evaluate(() => window.harness.log.connects);
    assert.ok(connects >= drops, `reconnected after each cut (connects: ${connects})`);
    assert.deepEqual(problems, []);
  });

  it("two tabs of one user: a read in one updates the other's unread count", TEST, async () => {
    await openPage();
    const other = await context.newPage();
    await other.goto(`${pageOrigin}/index.html`, { waitUntil: "load" });
    for (let n = 1; n <= 3; n++) await herald.push("gil", { n });
    await start("gil", { deviceId: "tab-a" });
    await other.evaluate(
      ([url, options]) => window.harness.start(url, options),
      [herald.url, { token: tokenFor("gil"), deviceId: "tab-b", ...FAST }],
    );
    await untilSeq(3);
    await other.waitForFunction(() => window.harness.seqs().includes(3), null, { timeout: WAIT_MS });
    const stored = await page.evaluate(() => window.harness.read(2));
    assert.equal(stored, 2);
    await other.waitForFunction(() => window.harness.log.unread.at(-1)?.readUpTo === 2, null, { timeout: WAIT_MS });
    const last = await other.evaluate(() => window.harness.log.unread.at(-1));
    assert.deepEqual(last, { unread: 1, lastSeq: 3, readUpTo: 2 });
    assert.deepEqual(problems, []);
  });
});
