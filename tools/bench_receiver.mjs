// The webhook receiver of `make bench` (tools/bench.py): HTTPS on 127.0.0.1, 204 to every
// POST of /hook, counted; GET /count answers how many so far. Node's own server (its HTTP
// parser is native code) stands for another machine at a fraction of the CPU a Python
// one takes from the machine under test. Nothing is verified here: the tests do that.
// Usage: node bench_receiver.mjs PORT CERT.pem KEY.pem
import { readFileSync } from "node:fs";
import { createServer } from "node:https";

const [port, cert, key] = process.argv.slice(2);
let received = 0;

const server = createServer({ cert: readFileSync(cert), key: readFileSync(key) }, (request, response) => {
  if (request.method === "POST" && request.url === "/hook") {
    request.resume(); // the body is read and dropped
    request.on("end", () => {
      received += 1;
      response.writeHead(204).end();
    });
  } else if (request.method === "GET" && request.url === "/count") {
    response.writeHead(200, { "content-type": "text/plain" }).end(String(received));
  } else {
    response.writeHead(404).end();
  }
});
server.keepAliveTimeout = 60_000; // the dispatcher keeps its connections between batches
server.listen(Number(port), "127.0.0.1", () => console.log("listening"));
