// Waits with deadlines, and a recorder of what a HeraldClient hands the application.
// Nothing here sleeps to wait for an event.

/** Default deadline of one wait. */
export const WAIT_MS = Number(process.env.HERALD_CLIENT_WAIT_MS || 10_000);

/**
 * Poll `probe` (sync or async) until `check(value)` holds; resolve with that value. On
 * timeout the error shows the last value seen.
 */
export async function waitUntil(what, probe, check = Boolean, { ms = WAIT_MS, intervalMs = 25 } = {}) {
  const deadline = Date.now() + ms;
  let last;
  let lastError;
  for (;;) {
    try {
      last = await probe();
      lastError = undefined;
      if (check(last)) return last;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) {
      const seen = lastError ? `error: ${lastError.message}` : `last value: ${JSON.stringify(last)?.slice(0, 500)}`;
      throw new Error(`timed out after ${ms} ms waiting for ${what} (${seen})`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

/** 1..n (or from..to) as an array. */
export function range(from, to) {
  if (to === undefined) [from, to] = [1, from];
  return Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);
}

/**
 * Everything a client emits, in order, and waits on it: `until(what, check)` resolves
 * once `check(recorder)` holds, re-checked on every event.
 */
export class Recorder {
  constructor(client) {
    this.client = client;
    this.messages = [];
    this.unread = [];
    this.errors = [];
    this.resets = [];
    this.connects = 0;
    this.disconnects = [];
    this.waiters = new Set();
    client.on("message", (m) => this.#add(this.messages, m));
    client.on("unread", (u) => this.#add(this.unread, u));
    client.on("error", (e) => this.#add(this.errors, e));
    client.on("reset", (r) => this.#add(this.resets, r));
    client.on("connect", () => {
      this.connects++;
      this.#changed();
    });
    client.on("disconnect", (reason) => this.#add(this.disconnects, reason));
  }

  #add(list, value) {
    list.push(value);
    this.#changed();
  }

  #changed() {
    for (const w of [...this.waiters]) w();
  }

  /** Seqs of the stored messages handed over, in order. */
  seqs() {
    return this.messages.filter((m) => m.seq !== undefined).map((m) => m.seq);
  }

  /** The last `unread` state. */
  lastUnread() {
    return this.unread.at(-1);
  }

  errorCodes() {
    return this.errors.map((e) => e.code);
  }

  until(what, check, ms = WAIT_MS) {
    return new Promise((resolve, reject) => {
      let timer;
      const probe = () => {
        let ok;
        try {
          ok = check(this);
        } catch (err) {
          finish();
          reject(err);
          return;
        }
        if (ok) {
          finish();
          resolve(this);
        }
      };
      const finish = () => {
        clearTimeout(timer);
        this.waiters.delete(probe);
      };
      timer = setTimeout(() => {
        finish();
        const errs = this.errors.map((e) => `${e.code}: ${e.message}`).slice(-5);
        reject(
          new Error(
            `timed out after ${ms} ms waiting for ${what}; seqs ${compact(this.seqs())}, ` +
              `connects ${this.connects}, last errors ${JSON.stringify(errs)}`,
          ),
        );
      }, ms);
      this.waiters.add(probe);
      probe();
    });
  }

  /** Resolves once the stored messages handed over end with seq `n`. */
  untilSeq(n, ms = WAIT_MS) {
    return this.until(`seq ${n}`, (r) => r.seqs().includes(n), ms);
  }
}

/** A long list of numbers, shortened into runs for messages: [1-5, 7, 9-12]. */
export function compact(nums) {
  const out = [];
  for (let i = 0; i < nums.length; ) {
    let j = i;
    while (j + 1 < nums.length && nums[j + 1] === nums[j] + 1) j++;
    out.push(i === j ? `${nums[i]}` : `${nums[i]}-${nums[j]}`);
    i = j + 1;
  }
  return `[${out.join(", ")}]`;
}
