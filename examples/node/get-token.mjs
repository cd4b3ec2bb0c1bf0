// Gets an access token from tokenbroker's REST gateway with Node's fetch.
// TOKENBROKER_URL (e.g. http://127.0.0.1:8080) and TOKENBROKER_API_KEY come
// from the environment; the provider is the first argument.
const provider = process.argv[2] ?? "sandbox";
const res = await fetch(`${process.env.TOKENBROKER_URL}/v1/providers/${provider}/token`, {
  method: "POST",
  headers: {
    "Authorization": `Bearer ${process.env.TOKENBROKER_API_KEY}`,
    "Content-Type": "application/json",
  },
  body: JSON.stringify({ min_ttl: "60s" }),
});
const body = await res.json();
if (!res.ok) {
  console.error(`tokenbroker: ${res.status} ${body.message}`);
  process.exit(1);
}
// Use it: fetch(apiURL, { headers: { Authorization: `${body.token_type} ${body.access_token}` } })
console.log(body.access_token);
