// What the browser tests drive: one HeraldClient of the browser bundle at a time, with
// the page's localStorage as its (default) storage, and a log of everything it emits.
window.harness = (() => {
  let client = null;
  const log = { messages: [], unread: [], errors: [], resets: [], connects: 0 };

  return {
    log,

    /**
     * Starts a client; `token` is a JWT string handed out by an async token function;
     * `handlerDelayMs` makes every message take that long to handle, as an app's might.
     */
    start(url, options) {
      const { token, handlerDelayMs, ...rest } = options;
      client = new Herald.HeraldClient(url, token === undefined ? rest : { ...rest, token: async () => token });
      if (handlerDelayMs !== undefined) {
        client.on("message", () => new Promise((resolve) => setTimeout(resolve, handlerDelayMs)));
      }
      client.on("message", ({ event, data, id, seq, ts }) => log.messages.push({ event, data, id, seq, ts }));
      client.on("unread", (state) => log.unread.push(state));
      client.on("error", (err) => log.errors.push({ code: err.code, message: err.message }));
      client.on("reset", (info) => log.resets.push(info));
      client.on("connect", () => log.connects++);
    },

    /** Seqs of the stored messages handed over, in order. */
    seqs() {
      return log.messages.filter((m) => m.seq !== undefined).map((m) => m.seq);
    },

    async close() {
      await client.close();
    },

    /** Cuts the transport under the client, as a network would; true if it was open. */
    dropTransport() {
      const engine = client.socket.io.engine;
      if (engine && engine.readyState === "open") {
        engine.close();
        return true;
      }
      return false;
    },

    /** The client's read(); resolves with the stored position. */
    read(seq) {
      return client.read(seq);
    },

    connected() {
      return client.connected;
    },

    storage() {
      return Object.fromEntries(Object.keys(localStorage).map((k) => [k, localStorage.getItem(k)]));
    },
  };
})();
