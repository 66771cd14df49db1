// Compiled (not run) by `npm run typecheck`: the ESM entry's declarations as an
// application uses them. A type error here fails the tests.
import { HeraldClient, HeraldError, MemoryStorage, positionKey, type HeraldMessage, type UnreadState } from "herald-client";

const client = new HeraldClient("http://127.0.0.1:3000", {
  token: async () => "a.b.c",
  deviceId: "tab-1",
  storage: new MemoryStorage(),
  since: null,
  handlerErrors: "skip",
  socketOptions: { transports: ["websocket"] },
});

client.on("message", async ({ event, data, seq, id, ts }: HeraldMessage) => {
  const s: number | undefined = seq;
  const i: string | undefined = id;
  const t: number | undefined = ts;
  void [event, data, s, i, t];
});
client.on("unread", (state: UnreadState) => {
  const n: number = state.unread + state.lastSeq + state.readUpTo;
  void n;
});
client.on("reset", ({ storedSeq, lastSeq }) => void (storedSeq + lastSeq));
client.on("error", (err) => {
  const code: HeraldError["code"] = err.code;
  void code;
});
client.on("disconnect", (reason) => void reason.length);

const upTo: Promise<number> = client.read(3);
const closed: Promise<void> = client.close();
const last: number = client.lastSeq;
const connected: boolean = client.connected;
const key: string = positionKey("u", "d");
client.socket.emit("anything");
void [upTo, closed, last, connected, key];

// @ts-expect-error: the token is a string or a function
new HeraldClient("http://127.0.0.1:3000", { token: 42 });
// @ts-expect-error: unknown event
client.on("nonsense", () => {});
// @ts-expect-error: read takes a seq
void client.read("3");

// Async storage is accepted.
new HeraldClient("http://127.0.0.1:3000", {
  userId: "u",
  storage: { getItem: async (k: string) => k, setItem: async (_k: string, _v: string) => {} },
});
