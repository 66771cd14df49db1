// Spawns the herald testbed binary (path in $HERALD_TESTBED) on a free port and
// waits for it to announce its address.
//
//   const server = await startServer();
//   io(server.url, ...);
//   await server.stop();

import { spawn } from "node:child_process";
import { accessSync, constants } from "node:fs";

const LISTENING_RE = /^listening on (\S+):(\d+)\s*$/;
const STDERR_KEEP = 64 * 1024;

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

export function testbedPath() {
  const bin = process.env.HERALD_TESTBED;
  if (!bin) {
    throw new Error(
      "HERALD_TESTBED is not set; point it at the compiled testbed " +
        "(e.g. target/debug/examples/testbed)",
    );
  }
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    throw new Error(`HERALD_TESTBED=${bin} is not an executable file`);
  }
  return bin;
}

/**
 * Start the testbed. Resolves once it printed `listening on <host>:<port>`.
 *
 * @param {object} [opts]
 * @param {number} [opts.startTimeoutMs] deadline for the listening line
 * @param {Record<string,string>} [opts.env] extra environment variables
 * @returns {Promise<{url: string, host: string, port: number,
 *   stop: () => Promise<{code: number|null, signal: string|null}>,
 *   logs: () => string, exited: () => boolean}>}
 */
export async function startServer({ startTimeoutMs = 15_000, env = {} } = {}) {
  const bin = testbedPath();
  const child = spawn(bin, [], {
    env: { ...process.env, ...env, PORT: "0" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.add(child);

  let stderr = "";
  const verbose = !!process.env.HERALD_TEST_VERBOSE;
  child.stderr.setEncoding("utf8");
  child.stderr.on("data", (chunk) => {
    if (verbose) process.stderr.write(chunk);
    stderr = (stderr + chunk).slice(-STDERR_KEEP);
  });

  let exitInfo = null;
  const exited = new Promise((resolve) => {
    child.once("exit", (code, signal) => {
      exitInfo = { code, signal };
      children.delete(child);
      resolve(exitInfo);
    });
  });

  const address = await new Promise((resolve, reject) => {
    let buf = "";
    let found = false;
    const fail = (msg) => {
      clearTimeout(timer);
      child.kill("SIGKILL");
      reject(new Error(`${msg}\n--- testbed stderr ---\n${stderr}`));
    };
    const timer = setTimeout(
      () => fail(`testbed did not print its listening line within ${startTimeoutMs} ms`),
      startTimeoutMs,
    );
    child.once("error", (err) => fail(`failed to spawn ${bin}: ${err.message}`));
    child.once("exit", (code, signal) => {
      if (!found) fail(`testbed exited before listening (code=${code}, signal=${signal})`);
    });
    child.stdout.setEncoding("utf8");
    // Keep draining stdout for the whole lifetime so the pipe never fills up.
    child.stdout.on("data", (chunk) => {
      if (verbose) process.stderr.write(chunk);
      if (found) return;
      buf += chunk;
      let nl;
      while ((nl = buf.indexOf("\n")) !== -1) {
        const line = buf.slice(0, nl).replace(/\r$/, "");
        buf = buf.slice(nl + 1);
        const m = LISTENING_RE.exec(line);
        if (m) {
          found = true;
          clearTimeout(timer);
          resolve({ host: m[1], port: Number(m[2]) });
          return;
        }
      }
    });
  });

  const url = `http://${address.host}:${address.port}`;

  async function stop({ timeoutMs = 5_000 } = {}) {
    if (exitInfo) return exitInfo;
    child.kill("SIGTERM");
    let timer;
    const killed = new Promise((resolve) => {
      timer = setTimeout(() => {
        child.kill("SIGKILL");
        resolve();
      }, timeoutMs);
    });
    await Promise.race([exited, killed]);
    clearTimeout(timer);
    return exited;
  }

  return {
    url,
    host: address.host,
    port: address.port,
    stop,
    logs: () => stderr,
    exited: () => exitInfo !== null,
  };
}
