// Compiled (not run) by `npm run typecheck`: the CommonJS entry's declarations.
import herald = require("herald-client");

const client = new herald.HeraldClient("http://127.0.0.1:3000", { userId: "u" });
client.on("message", (m) => void m.seq);
const err: herald.HeraldError | undefined = undefined;
void [client, err];
