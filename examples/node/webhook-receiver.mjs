// Receives tokenbroker's webhook deliveries with Node's http and crypto
// modules, verified as the Standard Webhooks specification says. The
// signing secret (whsec_...) comes from WEBHOOK_SECRET; PORT is where to
// listen (3000; 0 picks a free port). Each event is printed once, as a line
// of JSON, however often it is delivered.
import { createServer } from "node:http";
import { createHmac, timingSafeEqual } from "node:crypto";

const key = Buffer.from(process.env.WEBHOOK_SECRET.replace(/^whsec_/, ""), "base64");
const seen = new Set(); // webhook-ids handled; keep them in a database in production

function verified(headers, body) {
  const id = headers["webhook-id"], ts = headers["webhook-timestamp"];
  if (!id || !/^\d+$/.test(ts ?? "") || Math.abs(Date.now() / 1000 - Number(ts)) > 300) return false;
  const want = createHmac("sha256", key).update(`${id}.${ts}.`).update(body).digest();
  return (headers["webhook-signature"] ?? "").split(" ").some((sig) => {
    const [version, mac] = sig.split(",");
    const got = Buffer.from(mac ?? "", "base64");
    return version === "v1" && got.length === want.length && timingSafeEqual(got, want);
  });
}

const server = createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks); // the raw bytes: verify before parsing
    if (req.method !== "POST" || !verified(req.headers, body)) {
      res.writeHead(401).end();
      return;
    }
    const id = req.headers["webhook-id"];
    if (!seen.has(id)) { // a retry or a redelivery has the same webhook-id
      seen.add(id);
      const event = JSON.parse(body);
      // Act on it: page someone when a grant needs reauthorization, etc.
      console.log(JSON.stringify(event));
    }
    res.writeHead(204).end(); // any 2xx: delivered
  });
});
server.listen(Number(process.env.PORT ?? 3000), "127.0.0.1", () => {
  console.error(`listening on http://127.0.0.1:${server.address().port}`);
});
