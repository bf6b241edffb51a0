// whatsapp-api-js (npm) as a webhook receiver, for scripts/bench-webhook: its documented
// Node http setup, verifying the signature and emitting each status to a handler that
// records it forward only in memory (what the floor does).
import { createServer } from "node:http";
import { WhatsAppAPI } from "whatsapp-api-js";
import { NodeNext } from "whatsapp-api-js/setup/node";

const [host, port] = (process.argv[2] || "127.0.0.1:3901").split(":");
const Whatsapp = new WhatsAppAPI(
    NodeNext({ token: "unused", appSecret: process.env.KIRIM_META_APP_SECRET, v: "v23.0" }),
);
const rank = { sent: 1, delivered: 2, read: 3, failed: 4 };
const statuses = new Map();
Whatsapp.on.status = ({ id, status }) => {
    if ((rank[status] || 0) > (statuses.get(id) || 0)) statuses.set(id, rank[status] || 0);
};
createServer((req, res) => {
    if (req.method !== "POST") { res.writeHead(501); res.end(); return; }
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
        const body = Buffer.concat(chunks).toString();
        try {
            // post() checks the signature and answers what the handler returned.
            await Whatsapp.post(JSON.parse(body), body, req.headers["x-hub-signature-256"]);
            res.writeHead(200);
        } catch (err) {
            res.writeHead(err && err.httpStatus ? err.httpStatus : 500);
        }
        res.end();
    });
}).listen(Number(port), host);
