// Interop driver for tests/tests/webhook_signatures.rs: the official `standardwebhooks` package
// on one side of a signature and genrt on the other, so that a mistake shared by our signer and
// our verifier cannot pass unnoticed.
//
//   node webhooks.mjs verify   stdin {secret, headers, body}         -> {ok: true} | {ok: false, error}
//   node webhooks.mjs sign     stdin {secret, msg_id, timestamp, body} -> {headers: {...}}
//
// `timestamp` is in unix seconds; `body` is the raw payload as a string.
import { Webhook } from "standardwebhooks";

// Written for old Node too (no top-level await, no optional chaining), because
// scripts/install-deps.sh installs whatever `nodejs` the distribution ships.
function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on("data", (chunk) => chunks.push(chunk));
    process.stdin.on("end", () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString("utf8")));
      } catch (err) {
        reject(err);
      }
    });
    process.stdin.on("error", reject);
  });
}

function verify({ secret, headers, body }) {
  try {
    // jsonParse is off because verification must not depend on the body being JSON.
    new Webhook(secret).verify(body, headers, { jsonParse: false });
    return { ok: true };
  } catch (err) {
    return { ok: false, error: String(err && err.message ? err.message : err) };
  }
}

function sign({ secret, msg_id, timestamp, body }) {
  // The package takes a Date and signs its whole seconds.
  const signature = new Webhook(secret).sign(msg_id, new Date(timestamp * 1000), body);
  return {
    headers: {
      "webhook-id": msg_id,
      "webhook-timestamp": String(timestamp),
      "webhook-signature": signature,
    },
  };
}

const commands = { verify, sign };
const command = commands[process.argv[2]];
if (!command) {
  process.stderr.write(`usage: node webhooks.mjs (${Object.keys(commands).join("|")}) < input.json\n`);
  process.exit(2);
}
readStdin()
  .then((input) => process.stdout.write(`${JSON.stringify(command(input))}\n`))
  .catch((err) => {
    process.stderr.write(`webhooks.mjs ${process.argv[2]}: ${err}\n`);
    process.exit(2);
  });
