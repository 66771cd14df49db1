// The admin page, served by the admin listener from the binary (no external assets),
// in headless Chromium behind the admin password: it loads, its figures move under a
// small load, the user lookup finds a connected test user with their connection's
// details, a test push reaches that user, and "Disconnect everywhere" disconnects them.
// With HERALD_E2E_SCREENSHOT=path it also saves a screenshot (docs/admin.png).

import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";

import { chromium } from "playwright-core";

import { api, startHerald } from "./lib/herald.js";
import { ClientPool, EventLog, waitFor, waitUntil } from "./lib/clients.js";

const CHROMIUM = process.env.HERALD_E2E_CHROMIUM || "/usr/bin/chromium";
const TEST = { timeout: 60_000 };
const PASSWORD = "an-admin-password-0123456789";

const pool = new ClientPool();
let herald;
let browser;

before(async () => {
  herald = await startHerald({
    devAuth: true,
    env: { HERALD_ADMIN_LISTEN: "127.0.0.1:0", HERALD_ADMIN_PASSWORD: PASSWORD },
  });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking"],
  });
});

after(async () => {
  pool.closeAll();
  await browser?.close();
  await herald?.stop();
});

/** The text of `selector` on `page` once `check` holds for it. */
async function textWhen(page, selector, what, check, ms = 15_000) {
  return waitUntil(what, () => page.locator(selector).first().textContent(), check, { ms, intervalMs: 100 });
}

describe("the admin page", () => {
  it("needs the password", TEST, async () => {
    const res = await fetch(herald.adminUrl + "/");
    assert.equal(res.status, 401);
    assert.match(res.headers.get("www-authenticate") || "", /Basic/);
  });

  it("shows live figures, finds a user, pushes to them and disconnects them", TEST, async () => {
    const context = await browser.newContext({
      httpCredentials: { username: "ops", password: PASSWORD },
      viewport: { width: 1280, height: 900 },
    });
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(herald.adminUrl + "/");

    // A user with two devices, one of them on long-polling.
    const ada = await pool.connect("v4", herald.url, { userId: "ada" }, { transports: ["websocket"] });
    await pool.connect("v2", herald.url, { userId: "ada" }, { transports: ["polling"] });
    const log = new EventLog(ada, ["load", "test"]);
    await textWhen(page, "#connections", "two connections shown", (t) => Number(t) >= 2);
    await textWhen(page, "#users", "one user shown", (t) => Number(t) >= 1);

    // A small load: 20 durable pushes a second for a few seconds.
    let n = 0;
    const load = setInterval(() => {
      n += 1;
      api(herald.url, "POST", "/api/v1/push", { to: { users: ["ada"] }, event: "load", data: n }).catch(() => {});
    }, 50);
    try {
      await textWhen(page, "#pushes-rate", "pushes/s above zero", (t) => Number(t) > 0);
      await textWhen(page, "#p50", "a delivery p50", (t) => /[µm]?s$/.test(t || ""));
      await textWhen(page, "#commit-p99", "a commit p99", (t) => /[µm]?s$/.test(t || ""));
    } finally {
      clearInterval(load);
    }
    await log.nth("load", 1);
    // The node is listed.
    await textWhen(page, "#nodes", "this node listed", (t) => /local/.test(t) && /this node/.test(t));

    // Lookup: both connections, with transport, protocol, address and device.
    await page.fill("#lookup-input", "ada");
    await page.click("#lookup-btn");
    await page.locator("#conn-table").waitFor({ timeout: 10_000 });
    const rows = await page.locator("#conn-table tbody tr").allTextContents();
    assert.equal(rows.length, 2, rows.join("\n"));
    assert.ok(rows.some((r) => r.includes("websocket") && r.includes("127.0.0.1")), rows.join("\n"));
    assert.ok(rows.some((r) => r.includes("polling")), rows.join("\n"));
    assert.ok(Number(await page.locator("#unread").textContent()) >= 1);

    // A test push from the page reaches the user.
    await page.fill("#push-user", "ada");
    await page.fill("#push-event", "test");
    await page.fill("#push-data", '{"from":"admin"}');
    await page.click("#push-btn");
    await textWhen(page, "#push-result", "the push answered", (t) => /stored, seq \d+/.test(t || ""));
    const [pushed] = await log.nth("test", 1);
    assert.deepEqual(pushed, { from: "admin" });

    if (process.env.HERALD_E2E_SCREENSHOT) {
      await page.screenshot({ path: process.env.HERALD_E2E_SCREENSHOT, fullPage: true });
    }

    // Disconnect everywhere: the client is told the server disconnected it.
    const gone = waitFor(ada, "disconnect");
    await page.click("#disconnect-btn");
    const [reason] = await gone;
    assert.equal(reason, "io server disconnect");
    await page.locator("#disconnected").waitFor({ timeout: 10_000 });
    await page.locator("#no-connections").waitFor({ timeout: 10_000 });
    assert.deepEqual(errors, []);
    await context.close();
  });
});
