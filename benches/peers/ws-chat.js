// A Node.js WebSocket broadcast chat on the `ws` package, kept as a
// benchmark peer for chatd's web port: every text message a client sends
// goes to every other client of the room (one room here) as "<name> text",
// one text frame per message, like chatd's /ws. Written the way the `ws`
// README's broadcast example is: one send() per recipient, the library's
// defaults (no compression, unbounded buffering for slow readers: ws keeps
// queueing in user space and never pushes back).
// Usage: node ws-chat.js [PORT] [HOST]   (port 0: the kernel picks; printed)
'use strict';
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] || 0);
const host = process.argv[3] || '127.0.0.1';
let seq = 0;

const server = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});
const wss = new WebSocketServer({ server, path: '/ws' });
wss.on('connection', (ws) => {
  const name = `user${++seq}`;
  ws.send(`*** welcome, ${name}`);
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    const out = `<${name}> ${data}`;
    for (const c of wss.clients) {
      if (c !== ws && c.readyState === WebSocket.OPEN) c.send(out);
    }
  });
  ws.on('error', () => {});
});
server.listen({ port, host, backlog: 4096 }, () => {
  console.log(`listening on ${host}:${server.address().port}`);
});
