// Helpers for driving the real `herald` binary (path in $HERALD_BIN):
//
//   const server = await startHerald({ config: { auth: { jwt_secret: "s" } } });
//   const res = await server.api("GET", "/api/v1/users/u1/presence", undefined, "key");
//   await server.stop();
//
//   jwt("u1", { secret: "s", expSecondsFromNow: 60 })

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { accessSync, constants, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const LISTENING_RE = /listening on (\S+):(\d+)/;
const ADMIN_RE = /admin listener on (\S+):(\d+)/;
const OUTPUT_KEEP = 64 * 1024;
const VERBOSE = !!process.env.HERALD_E2E_VERBOSE;

// Every child still alive; killed if this process goes away without stop().
const children = new Set();

function killAll() {
  for (const child of children) {
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }
  children.clear();
}

process.on("exit", killAll);
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.once(signal, () => {
    killAll();
    process.kill(process.pid, signal);
  });
}

/** Absolute path of the binary under test, from $HERALD_BIN. */
export function heraldBin() {
  const bin = process.env.HERALD_BIN;
  if (!bin) {
    throw new Error("HERALD_BIN is not set; point it at the herald binary (e.g. target/debug/herald)");
  }
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    throw new Error(`HERALD_BIN=${bin} is not an executable file`);
  }
  return bin;
}

// ---------------------------------------------------------------------------
// Config files

function tomlValue(value) {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  if (Array.isArray(value)) return `[${value.map(tomlValue).join(", ")}]`;
  throw new Error(`cannot write ${JSON.stringify(value)} as a TOML value`);
}

/**
 * Render `{ section: { key: value } }` as TOML. Only what the tests need:
 * one level of tables holding strings, numbers, booleans and arrays of those.
 */
export function toToml(config) {
  const out = [];
  for (const [section, entries] of Object.entries(config)) {
    out.push(`[${section}]`);
    for (const [key, value] of Object.entries(entries)) out.push(`${key} = ${tomlValue(value)}`);
    out.push("");
  }
  return out.join("\n");
}

// ---------------------------------------------------------------------------
// Processes

// The child's environment: ours minus any HERALD_* settings (so a developer's
// shell cannot change what a test sees), quiet logs, plus the test's own env.
function childEnv(extra) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("HERALD_")) env[k] = v;
  }
  env.HERALD_LOG = process.env.HERALD_E2E_LOG || "warn";
  // No admin listener unless a test asks for one: its default address is one per machine.
  env.HERALD_ADMIN_LISTEN = "";
  // Stopped at once (no drain) unless a test asks for one.
  env.HERALD_SHUTDOWN_GRACE_SECS = "0";
  env.HERALD_SHUTDOWN_DRAIN_SECS = "0";
  return { ...env, ...extra };
}

// Write the config (object or raw TOML string) into a fresh temp dir.
function prepareConfig(config) {
  if (config == null) return { dir: null, file: null };
  const dir = mkdtempSync(join(tmpdir(), "herald-e2e-"));
  const file = join(dir, "herald.toml");
  writeFileSync(file, typeof config === "string" ? config : toToml(config));
  return { dir, file };
}

function buildArgs({ listen, devAuth, demo, configFile, args }) {
  const out = ["serve", "--listen", listen];
  if (devAuth) out.push("--dev-auth");
  if (demo) out.push("--demo");
  if (configFile) out.push("--config", configFile);
  return out.concat(args);
}

function spawnHerald(argv, env) {
  const bin = heraldBin();
  // Each server runs in a scratch directory of its own, so its embedded message store
  // (./herald-data) never lands in the repository and never leaks between tests.
  const cwd = mkdtempSync(join(tmpdir(), "herald-e2e-run-"));
  const child = spawn(bin, argv, { env, cwd, stdio: ["ignore", "pipe", "pipe"] });
  child.once("close", () => rmSync(cwd, { recursive: true, force: true }));
  children.add(child);
  let stdout = "";
  let stderr = "";
  child.stdout.setEncoding("utf8");
  child.stderr.setEncoding("utf8");
  // Keep draining both pipes for the whole lifetime so they never fill up.
  child.stdout.on("data", (chunk) => {
    if (VERBOSE) process.stderr.write(chunk);
    stdout = (stdout + chunk).slice(-OUTPUT_KEEP);
  });
  child.stderr.on("data", (chunk) => {
    if (VERBOSE) process.stderr.write(chunk);
    stderr = (stderr + chunk).slice(-OUTPUT_KEEP);
  });
  let exitInfo = null;
  const spawnError = new Promise((resolve) => child.once("error", resolve));
  const exited = new Promise((resolve) => {
    child.once("close", (code, signal) => {
      exitInfo = { code, signal };
      children.delete(child);
      resolve(exitInfo);
    });
  });
  return {
    child,
    exited,
    spawnError,
    exitInfo: () => exitInfo,
    stdout: () => stdout,
    stderr: () => stderr,
  };
}

/**
 * Start `herald serve` and resolve once it printed `listening on host:port`.
 *
 * @param {object} [opts]
 * @param {string} [opts.listen] value for --listen (default 127.0.0.1:0)
 * @param {boolean} [opts.devAuth] pass --dev-auth
 * @param {boolean} [opts.demo] pass --demo
 * @param {object|string} [opts.config] config file contents ({section: {key: value}} or TOML)
 * @param {Record<string,string>} [opts.env] extra environment variables
 * @param {string[]} [opts.args] extra command line arguments
 * @param {number} [opts.startTimeoutMs] deadline for the listening line
 */
export async function startHerald({
  listen = "127.0.0.1:0",
  devAuth = false,
  demo = false,
  config = null,
  env = {},
  args = [],
  startTimeoutMs = 20_000,
} = {}) {
  const { dir, file } = prepareConfig(config);
  const cleanup = () => dir && rmSync(dir, { recursive: true, force: true });
  const proc = spawnHerald(buildArgs({ listen, devAuth, demo, configFile: file, args }), childEnv(env));
  const { child } = proc;

  let address;
  try {
    address = await new Promise((resolve, reject) => {
      let buf = "";
      const fail = (msg) => {
        clearTimeout(timer);
        child.kill("SIGKILL");
        reject(new Error(`${msg}\n--- herald stdout ---\n${proc.stdout()}\n--- herald stderr ---\n${proc.stderr()}`));
      };
      const timer = setTimeout(
        () => fail(`herald did not print its listening line within ${startTimeoutMs} ms`),
        startTimeoutMs,
      );
      proc.spawnError.then((err) => fail(`failed to spawn herald: ${err.message}`));
      proc.exited.then(({ code, signal }) => fail(`herald exited before listening (code=${code}, signal=${signal})`));
      const onData = (chunk) => {
        buf += chunk;
        let nl;
        while ((nl = buf.indexOf("\n")) !== -1) {
          const line = buf.slice(0, nl).replace(/\r$/, "");
          buf = buf.slice(nl + 1);
          const m = LISTENING_RE.exec(line);
          if (m) {
            clearTimeout(timer);
            child.stdout.off("data", onData);
            resolve({ host: m[1], port: Number(m[2]) });
            return;
          }
        }
      };
      child.stdout.on("data", onData);
    });
  } catch (err) {
    cleanup();
    throw err;
  }

  const url = `http://${address.host}:${address.port}`;

  // With an admin listener asked for (HERALD_ADMIN_LISTEN in `env`), its address follows.
  let adminUrl = null;
  if (env.HERALD_ADMIN_LISTEN) {
    const deadline = Date.now() + startTimeoutMs;
    let m;
    while (!(m = ADMIN_RE.exec(proc.stdout()))) {
      if (Date.now() > deadline || proc.exitInfo()) {
        child.kill("SIGKILL");
        cleanup();
        throw new Error(`herald did not print its admin listener line\n${proc.stdout()}\n${proc.stderr()}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    adminUrl = `http://${m[1]}:${m[2]}`;
  }

  async function stop({ timeoutMs = 5_000 } = {}) {
    if (!proc.exitInfo()) {
      child.kill("SIGTERM");
      let timer;
      const killed = new Promise((resolve) => {
        timer = setTimeout(() => {
          child.kill("SIGKILL");
          resolve();
        }, timeoutMs);
      });
      await Promise.race([proc.exited, killed]);
      clearTimeout(timer);
    }
    const info = await proc.exited;
    cleanup();
    return info;
  }

  return {
    url,
    host: address.host,
    port: address.port,
    /** The admin listener's base URL, when one was asked for. */
    adminUrl,
    stop,
    /** api(method, path, body, key) against this server; see api() below. */
    api: (method, path, body, key) => api(url, method, path, body, key),
    stdout: proc.stdout,
    stderr: proc.stderr,
    logs: () => `--- herald stdout ---\n${proc.stdout()}\n--- herald stderr ---\n${proc.stderr()}`,
    exited: () => proc.exitInfo() !== null,
  };
}

/**
 * Run herald with options that are expected to make it exit on its own
 * (e.g. a refused configuration). Resolves with its exit status and output;
 * if it is still running after `timeoutMs` it is killed and `timedOut` is set.
 */
export async function runHerald({
  listen = "127.0.0.1:0",
  devAuth = false,
  demo = false,
  config = null,
  env = {},
  args = [],
  timeoutMs = 10_000,
} = {}) {
  const { dir, file } = prepareConfig(config);
  const proc = spawnHerald(buildArgs({ listen, devAuth, demo, configFile: file, args }), childEnv(env));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    proc.child.kill("SIGKILL");
  }, timeoutMs);
  const result = await Promise.race([
    proc.exited,
    proc.spawnError.then((err) => {
      throw new Error(`failed to spawn herald: ${err.message}`);
    }),
  ]);
  clearTimeout(timer);
  if (dir) rmSync(dir, { recursive: true, force: true });
  return { ...result, timedOut, stdout: proc.stdout(), stderr: proc.stderr() };
}

// ---------------------------------------------------------------------------
// JWT

function b64url(input) {
  return Buffer.from(input).toString("base64url");
}

/**
 * An HS256 JWT for user `sub`. `expSecondsFromNow` may be negative for an
 * expired token, or null for none; `claims` adds or overrides claims.
 */
export function jwt(sub, { secret, expSecondsFromNow = 3600, claims = {} } = {}) {
  if (typeof secret !== "string" || secret === "") throw new Error("jwt(): secret is required");
  const now = Math.floor(Date.now() / 1000);
  const payload = { sub, iat: now };
  if (expSecondsFromNow !== null) payload.exp = now + expSecondsFromNow;
  Object.assign(payload, claims);
  const header = { alg: "HS256", typ: "JWT" };
  const signingInput = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(payload))}`;
  const signature = createHmac("sha256", secret).update(signingInput).digest("base64url");
  return `${signingInput}.${signature}`;
}

// ---------------------------------------------------------------------------
// HTTP API

/**
 * Call the HTTP API. `body`: undefined for none, a string or Buffer sent
 * verbatim (for malformed input), anything else sent as JSON. `key`: the
 * bearer key, or undefined for no Authorization header.
 *
 * Resolves with { status, headers, text, json } where json is the parsed body
 * or undefined when it is not JSON.
 */
export async function api(baseUrl, method, path, body, key, { timeoutMs = 10_000 } = {}) {
  const headers = {};
  let payload;
  if (body !== undefined) {
    payload = typeof body === "string" || Buffer.isBuffer(body) ? body : JSON.stringify(body);
    headers["content-type"] = "application/json";
  }
  if (key !== undefined) headers.authorization = `Bearer ${key}`;
  const res = await fetch(baseUrl + path, {
    method,
    headers,
    body: payload,
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

/** One-line description of a response, for assertion messages. */
export function describeResponse(method, path, res) {
  const ct = res.headers.get("content-type");
  return `${method} ${path} -> ${res.status} (content-type: ${ct}) ${res.text.slice(0, 300)}`;
}
